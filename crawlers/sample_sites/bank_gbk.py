"""Sample site `bank_gbk`: a Chinese look-alike question bank, GBK-encoded, in HTML tables.

Each question is a <table> (题目 / options / 答案 / 解析), pages are grouped in chapters
(第一章 ...) and paginated with 下一页 links. Like look-alike sites do, it copies about one
question in seven from elements_qa, marked on the way ("Q: ...", "[Exam] ..."): the
planted near-duplicates, listed in the ground truth. Some questions carry an illustration
(skipped and counted); one page is served with a wrong charset header (utf-8 for GBK bytes);
/private/ is disallowed.
"""

from __future__ import annotations

import html
import random

from crawlers.sample_sites import elements_qa
from crawlers.sample_sites.elements_qa import mcq, qa
from crawlers.sample_sites.facts import CATEGORIES_ZH, ELEMENTS
from crawlers.sample_sites.serve import Page, html_page
from crawlers.sample_sites.site import SampleSite, paginate

PER_PAGE = 12
COPY_EVERY = 6  # one elements_qa question in six is copied: ~14% of this bank
CHAPTERS = [("第一章 元素符号与原子序数", "symbols"), ("第二章 元素分类与周期", "categories")]


# The mark a copying site leaves in front of a question it takes.
COPY_MARKS = ["Q: {}", "[Exam] {}", "Question: {}"]


def _copy_mark(question: str, n: int) -> str:
    """A light edit: never a verbatim copy (prepare would drop it as exact), never another question."""
    return COPY_MARKS[n % len(COPY_MARKS)].format(question)


def _questions(rng: random.Random) -> dict[str, list[dict]]:
    zh = [e[3] for e in ELEMENTS]
    symbols = [e[1] for e in ELEMENTS]
    cats = sorted(CATEGORIES_ZH.values())
    out: dict[str, list[dict]] = {"symbols": [], "categories": []}
    for z, sym, _, name, cat, period in ELEMENTS:
        fact = f"{name}的元素符号是{sym}，原子序数为{z}。"
        out["symbols"] += [
            mcq(rng, f"元素“{name}”的化学符号是（ ）。", sym, symbols, fact),
            mcq(rng, f"原子序数为{z}的元素是（ ）。", name, zh, fact),
            qa(f"{name}的原子序数是多少？", str(z), fact),
            qa(f"化学符号{sym}代表哪种元素？", name, fact),
        ]
        where = f"{name}（原子序数{z}）属于{CATEGORIES_ZH[cat]}，位于第{period}周期。"
        out["categories"] += [
            mcq(rng, f"{name}属于哪一类元素？", CATEGORIES_ZH[cat], cats, where),
            qa(f"{name}位于元素周期表第几周期？", f"第{period}周期", where),
        ]
    return out


def _table(tid: str, q: dict, image: str | None) -> str:
    img = f'<img src="{image}" alt="示意图">' if image else ""
    rows = [f'<table class="tm" id="{tid}">',
            f"<tr><th>题目</th><td class=\"stem\">{html.escape(q['question'])}{img}</td></tr>"]
    rows += [f'<tr class="opt"><td colspan="2">{k}．{html.escape(v)}</td></tr>' for k, v in q["options"].items()]
    rows += [f"<tr><th>答案</th><td class=\"key\">{html.escape(q['answer'])}</td></tr>",
             f"<tr><th>解析</th><td class=\"note\">{html.escape(q['explanation'])}</td></tr>", "</table>"]
    return "\n".join(rows)


def _page(title: str, chapter: str, body: str) -> bytes:
    return (
        '<!doctype html>\n<html lang="zh-CN"><head><meta http-equiv="Content-Type" '
        f'content="text/html; charset=gbk"><title>{html.escape(title)}</title></head>\n<body>\n'
        f'<h1>{html.escape(title)}</h1>\n<h2 class="chapter">{html.escape(chapter)}</h2>\n{body}\n</body></html>\n'
    ).encode("gbk")


def generate(seed: int) -> SampleSite:
    rng = random.Random(seed + 1)
    chapters = _questions(rng)
    source = elements_qa.generate(seed)
    copied = [qid for qid in source.items if qid.startswith("q-")][::COPY_EVERY]

    site = SampleSite(name="bank_gbk")
    for n, qid in enumerate(copied):
        q = dict(source.items[qid], question=_copy_mark(source.items[qid]["question"], n))
        chapters["symbols" if rng.random() < 0.5 else "categories"].append({**q, "copied_from": qid})
    for qs in chapters.values():
        rng.shuffle(qs)

    links, counter, images = [], 0, 0
    for (title, slug), qs in zip(CHAPTERS, chapters.values(), strict=True):
        blocks = []
        for q in qs:
            counter += 1
            tid = f"t-{counter:04d}"
            image = f"/img/{tid}.png" if counter % 37 == 0 else None
            images += image is not None
            blocks.append(_table(tid, q, image))
            site.valid.append(tid)
            site.items[tid] = {k: v for k, v in q.items() if k != "copied_from"}
            if "copied_from" in q:
                site.near_duplicates.append((tid, f"elements_qa/{q['copied_from']}"))
        links.append(f'<li><a class="chapter" href="/bank/{slug}/page-1.html">{html.escape(title)}</a></li>')
        for path, n, total, chunk, nxt in paginate(f"/bank/{slug}", blocks, PER_PAGE):
            nav = f"<p>第{n}页，共{total}页" + (f' <a class="next" href="{nxt}">下一页</a>' if nxt else "") + "</p>"
            body = _page(f"元素题库 {title}", title, "\n".join(chunk) + "\n" + nav)
            # One page declares utf-8 in its header although its bytes are GBK.
            charset = "utf-8" if (slug, n) == ("symbols", 2) else "gbk"
            site.pages[path] = html_page(body, charset)
    site.planted["wrong_charset"] = 1
    site.images = images

    links.append('<li><a class="chapter" href="/private/keys.html">内部答案</a></li>')
    site.pages["/bank/index.html"] = html_page(_page("元素题库", "目录", "<ul>\n" + "\n".join(links) + "\n</ul>"), "gbk")
    site.pages["/private/keys.html"] = html_page(_page("内部答案", "内部", _table(
        "t-private", qa("内部题目？", "无", "robots.txt 禁止抓取。"), None)), "gbk")
    site.disallowed.append("t-private")
    site.pages["/robots.txt"] = Page(b"User-agent: *\nDisallow: /private/\n", 200, {"Content-Type": "text/plain"})
    return site
