"""Sample site `standards`: standards-style documents (UTF-8), one page per document.

Numbered headings at three levels (h2 "3 Requirements", h3 "3.2 Halogens", h4 "3.2.1 Chlorine")
with normative paragraphs (shall / should / may; in the Chinese document 应 / 宜 / 可) between
them. The document spider must split each page into sections and keep that wording intact.
"""

from __future__ import annotations

import html

from crawlers.sample_sites.facts import CATEGORIES_ZH, ELEMENTS
from crawlers.sample_sites.serve import Page, html_page
from crawlers.sample_sites.site import SampleSite

DOCS = [
    ("ds-101", "DS 101 Storage of laboratory chemicals", "storage", "en"),
    ("ds-102", "DS 102 Labelling of chemical containers", "labelling", "en"),
    ("ds-103", "DS 103 Disposal of chemical waste", "disposal", "en"),
    ("gbz-104", "GB/Z 104 实验室化学品储存规范", "storage", "zh"),
]
PER_GROUP = 3  # element subsections under each category
GROUP_RULE = {
    "storage": "Substances of the {cat} group shall be stored in an area of their own.",
    "labelling": "Containers of the {cat} group shall carry the group's colour band.",
    "disposal": "Waste of the {cat} group shall be collected in a drum of its own.",
}


def _en_body(topic: str, name: str, symbol: str, category: str) -> str:
    return {
        "storage": f"Containers of {name} ({symbol}) shall be stored with other {category} substances only. "
                   f"They should be kept below eye level. Small quantities may be kept in a fume cupboard.",
        "labelling": f"Every container of {name} shall carry the symbol {symbol} and the hazard class. "
                     f"Labels should be readable from one metre. A supplier's label may replace ours.",
        "disposal": f"Waste containing {name} shall be collected apart from other {category} waste. "
                    f"It should be handed over within 30 days. Neutralised residues may be combined.",
    }[topic]


def _sections(topic: str, lang: str) -> list[tuple[int, str, str, str]]:
    """(heading level, number, title, body) in document order."""
    if lang == "zh":
        out = [(2, "1", "范围", "本规范规定实验室化学品储存的要求。本规范适用于教学和研究实验室。"),
               (2, "2", "术语和定义", "下列术语和定义适用于本文件。"),
               (2, "3", "要求", "")]
    else:
        out = [(2, "1", "Scope", f"This standard specifies requirements for the {topic} of laboratory chemicals. "
                "It applies to teaching and research laboratories."),
               (2, "2", "Normative references", f"The requirements for {topic} cite no other document."),
               (2, "3", "Requirements", "")]
    categories = sorted({e[4] for e in ELEMENTS})
    for i, cat in enumerate(categories, start=1):
        members = [e for e in ELEMENTS if e[4] == cat][:PER_GROUP]
        if lang == "zh":
            out.append((3, f"3.{i}", CATEGORIES_ZH[cat], f"{CATEGORIES_ZH[cat]}应单独分区储存。"))
        else:
            out.append((3, f"3.{i}", cat.capitalize(), GROUP_RULE[topic].format(cat=cat)))
        for j, (_, sym, name, zh, _, _) in enumerate(members, start=1):
            if lang == "zh":
                body = f"{zh}（{sym}）的容器应密封保存；宜远离热源；可存放于通风柜内。"
                out.append((4, f"3.{i}.{j}", zh, body))
            else:
                out.append((4, f"3.{i}.{j}", name, _en_body(topic, name, sym, cat)))
    return out


def _page(title: str, lang: str, sections, extra: str = "") -> bytes:
    parts = [f"<h{level}>{number} {html.escape(head)}</h{level}>" + (f"\n<p>{html.escape(body)}</p>" if body else "")
             for level, number, head, body in sections]
    return (
        f'<!doctype html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '</head>\n<body>\n<nav><a href="/std/index.html">All standards</a></nav>\n'
        f'<article class="standard">\n<h1>{html.escape(title)}</h1>\n' + "\n".join(parts) + extra +
        "\n</article>\n<footer>Published by the sample standards body.</footer>\n</body></html>\n"
    ).encode("utf-8")


def generate(seed: int) -> SampleSite:
    del seed  # the documents are fixed text; the parameter keeps every generator's signature
    site = SampleSite(name="standards")
    links = []
    for slug, title, topic, lang in DOCS:
        sections = _sections(topic, lang)
        site.pages[f"/std/{slug}.html"] = html_page(_page(title, lang, sections))
        site.valid += [f"{slug}#{number}" for _, number, _, _ in sections]
        site.items.update({f"{slug}#{number}": {"kind": "doc", "title": head, "text": body}
                           for _, number, head, body in sections})
        links.append(f'<li><a class="doc" href="/std/{slug}.html">{html.escape(title)}</a></li>')
    links.append('<li><a class="doc" href="/private/draft.html">Draft (members only)</a></li>')
    site.pages["/std/index.html"] = html_page(_page("Standards", "en", [], "<ul>\n" + "\n".join(links) + "\n</ul>"))
    site.pages["/private/draft.html"] = html_page(_page("DS 999 Draft", "en", [(2, "1", "Draft", "Not for crawlers.")]))
    site.disallowed.append("draft#1")
    site.pages["/robots.txt"] = Page(b"User-agent: *\nDisallow: /private/\n", 200, {"Content-Type": "text/plain"})
    return site
