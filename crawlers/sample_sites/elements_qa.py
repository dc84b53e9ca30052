"""Sample site `elements_qa`: an English question bank about the chemical elements (UTF-8).

Two paginated chapters of multiple-choice and free-form questions in <div> blocks, a FAQ
page whose questions are headings followed by answer paragraphs, and what real banks get
wrong: a truncated page, a question with an empty answer, a key that is not an option, a
too-short question, a repeated question, a page that answers 500, a redirect loop, and a
robots.txt that disallows /private/ (linked from the index).
"""

from __future__ import annotations

import html
import random

from crawlers.sample_sites.facts import CATEGORIES, ELEMENTS
from crawlers.sample_sites.serve import Page, RedirectLoop
from crawlers.sample_sites.site import SampleSite, paginate

KEYS = "ABCD"
PER_PAGE = 10
FAQ = [
    ("What is a noble gas?", "A noble gas is an element of group 18, such as helium, neon or argon; "
     "its full outer electron shell makes it very unreactive."),
    ("What does the atomic number count?", "The atomic number counts the protons in the nucleus of an atom."),
    ("What is a period of the periodic table?", "A period is a row of the periodic table; elements in the "
     "same period have the same number of electron shells."),
    ("What is a halogen?", "A halogen is an element of group 17, such as fluorine, chlorine, bromine or iodine."),
    ("What is a metalloid?", "A metalloid has properties between those of metals and nonmetals, as boron and "
     "silicon do."),
    ("Why are alkali metals stored under oil?", "Alkali metals react with the water vapour and oxygen in air, "
     "so they are kept under oil."),
]


def mcq(rng: random.Random, question: str, correct: str, pool: list[str], explanation: str) -> dict:
    options = rng.sample([p for p in pool if p != correct], 3) + [correct]
    rng.shuffle(options)
    return {"kind": "mcq", "question": question, "options": dict(zip(KEYS, options)),
            "answer": KEYS[options.index(correct)], "explanation": explanation}


def qa(question: str, answer: str, explanation: str) -> dict:
    return {"kind": "qa", "question": question, "options": {}, "answer": answer, "explanation": explanation}


def questions(rng: random.Random) -> dict[str, list[dict]]:
    names, symbols = [e[2] for e in ELEMENTS], [e[1] for e in ELEMENTS]
    chapters: dict[str, list[dict]] = {"symbols-and-numbers": [], "categories-and-periods": []}
    for z, sym, name, _, cat, period in ELEMENTS:
        fact = f"{name} has the symbol {sym} and atomic number {z}."
        chapters["symbols-and-numbers"] += [
            mcq(rng, f"What is the chemical symbol of {name}?", sym, symbols, fact),
            mcq(rng, f"Which element has atomic number {z}?", name, names, fact),
            qa(f"What is the atomic number of {name}?", str(z), fact),
            qa(f"Which element has the chemical symbol {sym}?", name, fact),
        ]
        where = f"{name} (atomic number {z}) is a {cat} in period {period}."
        chapters["categories-and-periods"] += [
            mcq(rng, f"To which category of elements does {name} belong?", cat, CATEGORIES, where),
            qa(f"In which period of the periodic table is {name}?", str(period), where),
        ]
    for qs in chapters.values():
        rng.shuffle(qs)
    return chapters


def page(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{body}\n</body></html>\n"
    ).encode("utf-8")


def question_html(qid: str, q: dict) -> str:
    parts = [f'<div class="question" id="{qid}" data-kind="{q["kind"]}">',
             f'  <p class="q-text">{html.escape(q["question"])}</p>']
    if q["options"]:
        parts.append('  <ol class="options">')
        parts += [f'    <li data-key="{k}">{html.escape(v)}</li>' for k, v in q["options"].items()]
        parts.append("  </ol>")
    parts.append(f'  <p class="answer">Answer: {html.escape(q["answer"])}</p>')
    parts.append(f'  <div class="explanation"><p>{html.escape(q["explanation"])}</p></div>')
    parts.append("</div>")
    return "\n".join(parts)


def generate(seed: int) -> SampleSite:
    rng = random.Random(seed)
    chapters = questions(rng)
    site = SampleSite(name="elements_qa")
    # Defects that reach the item pipeline or prepare, each counted there under its reason.
    dropped = {
        "empty_answer": qa("What is the chemical symbol of Gold?", "", "Left blank by the site's editors."),
        "answer_not_in_options": {"kind": "mcq", "question": "Which of these is a noble gas?",
                                  "options": {"A": "Iron", "B": "Neon", "C": "Tin", "D": "Zinc"}, "answer": "E",
                                  "explanation": "The key points at an option that does not exist."},
    }
    rejected_later = [qa("Zn?", "30", "Too short to be a question."), dict(chapters["symbols-and-numbers"][0])]
    chapters["categories-and-periods"] += list(dropped.values()) + rejected_later

    links = []
    counter = 0
    for chapter, qs in chapters.items():
        title = chapter.replace("-", " ").capitalize()
        links.append(f'<li><a class="chapter" href="/qa/{chapter}/page-1.html">{title}</a></li>')
        blocks = []
        for q in qs:
            counter += 1
            qid = f"q-{counter:04d}"
            blocks.append(question_html(qid, q))
            if any(q is d for d in dropped.values()):
                continue
            site.valid.append(qid)  # prepare still rejects the short and the repeated question
            if not any(q is r for r in rejected_later):
                site.items[qid] = q
        for path, n, total, chunk, nxt in paginate(f"/qa/{chapter}", blocks, PER_PAGE):
            nav = f'<p class="nav">Page {n} of {total}' + (f' <a rel="next" href="{nxt}">Next</a>' if nxt else "")
            site.pages[path] = page(f"{title}, page {n}", "\n".join(chunk) + "\n" + nav + "</p>")
    site.planted.update({reason: 1 for reason in dropped})

    faq = []
    for i, (question, answer) in enumerate(FAQ, start=1):
        faq.append(f'<h3 id="faq-{i}">{html.escape(question)}</h3>\n<p>{html.escape(answer)}</p>')
        site.valid.append(f"faq-{i}")
    site.pages["/qa/faq.html"] = page("Frequently asked questions", "\n".join(faq))
    links.append('<li><a class="chapter" href="/qa/faq.html">FAQ</a></li>')

    # A page cut off in the middle of its fourth question: three questions survive.
    archive = [qa(f"Which element is number {z} in the archive list?", name, f"{name} is element {z}.")
               for z, _, name, *_ in ELEMENTS[:5]]
    full = page("Archive", "\n".join(question_html(f"a-{i}", q) for i, q in enumerate(archive, start=1)))
    cut = full.index(b'<p class="answer">', full.index(b'id="a-4"'))
    site.pages["/qa/archive.html"] = full[:cut]
    site.valid += ["a-1", "a-2", "a-3"]
    site.planted["truncated_html"] = 1
    links.append('<li><a class="chapter" href="/qa/archive.html">Archive</a></li>')

    site.pages["/qa/broken/server-error.html"] = Page(b"<html><body>Internal error</body></html>", 500,
                                                      {"Content-Type": "text/html; charset=utf-8"})
    site.pages["/qa/broken/loop.html"] = RedirectLoop("/qa/broken/loop.html")
    site.planted.update({"http_500": 1, "redirect_loop": 1})
    links += ['<li><a class="chapter" href="/qa/broken/server-error.html">Mirror</a></li>',
              '<li><a class="chapter" href="/qa/broken/loop.html?n=1">Old mirror</a></li>',
              '<li><a class="chapter" href="/private/answers.html">Answer key</a></li>']

    site.pages["/qa/index.html"] = page("Elements question bank", "<ul>\n" + "\n".join(links) + "\n</ul>")
    site.pages["/private/answers.html"] = page("Answer key (not for crawlers)", question_html(
        "q-private", qa("Which element is the private answer key about?", "None", "Disallowed by robots.txt.")))
    site.disallowed.append("q-private")
    site.pages["/robots.txt"] = b"User-agent: *\nDisallow: /private/\n"
    return site
