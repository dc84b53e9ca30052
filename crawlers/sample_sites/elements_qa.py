"""A sample question bank about the chemical elements, written by us.

Two chapters, each paginated, mixing multiple-choice and free-form questions, plus the
things a real bank has: a robots.txt with a disallowed path (linked from the index), and a
few malformed questions (empty answer, a multiple-choice answer that is not an option, a
repeated question) that the prepare stage must reject and count.

`generate(seed, per_page)` returns {path: html bytes} and the list of valid question ids
(the ground truth for tests). Same seed, same site.
"""

from __future__ import annotations

import html
import random

# name, symbol, atomic number, category, period (public facts)
ELEMENTS = [
    ("Hydrogen", "H", 1, "nonmetal", 1), ("Helium", "He", 2, "noble gas", 1),
    ("Lithium", "Li", 3, "alkali metal", 2), ("Beryllium", "Be", 4, "alkaline earth metal", 2),
    ("Boron", "B", 5, "metalloid", 2), ("Carbon", "C", 6, "nonmetal", 2),
    ("Nitrogen", "N", 7, "nonmetal", 2), ("Oxygen", "O", 8, "nonmetal", 2),
    ("Fluorine", "F", 9, "halogen", 2), ("Neon", "Ne", 10, "noble gas", 2),
    ("Sodium", "Na", 11, "alkali metal", 3), ("Magnesium", "Mg", 12, "alkaline earth metal", 3),
    ("Aluminium", "Al", 13, "post-transition metal", 3), ("Silicon", "Si", 14, "metalloid", 3),
    ("Phosphorus", "P", 15, "nonmetal", 3), ("Sulfur", "S", 16, "nonmetal", 3),
    ("Chlorine", "Cl", 17, "halogen", 3), ("Argon", "Ar", 18, "noble gas", 3),
    ("Potassium", "K", 19, "alkali metal", 4), ("Calcium", "Ca", 20, "alkaline earth metal", 4),
    ("Scandium", "Sc", 21, "transition metal", 4), ("Titanium", "Ti", 22, "transition metal", 4),
    ("Vanadium", "V", 23, "transition metal", 4), ("Chromium", "Cr", 24, "transition metal", 4),
    ("Manganese", "Mn", 25, "transition metal", 4), ("Iron", "Fe", 26, "transition metal", 4),
    ("Cobalt", "Co", 27, "transition metal", 4), ("Nickel", "Ni", 28, "transition metal", 4),
    ("Copper", "Cu", 29, "transition metal", 4), ("Zinc", "Zn", 30, "transition metal", 4),
    ("Gallium", "Ga", 31, "post-transition metal", 4), ("Germanium", "Ge", 32, "metalloid", 4),
    ("Arsenic", "As", 33, "metalloid", 4), ("Selenium", "Se", 34, "nonmetal", 4),
    ("Bromine", "Br", 35, "halogen", 4), ("Krypton", "Kr", 36, "noble gas", 4),
    ("Rubidium", "Rb", 37, "alkali metal", 5), ("Strontium", "Sr", 38, "alkaline earth metal", 5),
    ("Silver", "Ag", 47, "transition metal", 5), ("Tin", "Sn", 50, "post-transition metal", 5),
    ("Iodine", "I", 53, "halogen", 5), ("Xenon", "Xe", 54, "noble gas", 5),
]
CATEGORIES = sorted({e[3] for e in ELEMENTS})
KEYS = "ABCD"


def _mcq(rng: random.Random, question: str, correct: str, pool: list[str], explanation: str) -> dict:
    distractors = rng.sample([p for p in pool if p != correct], 3)
    options = distractors + [correct]
    rng.shuffle(options)
    return {"kind": "mcq", "question": question, "options": dict(zip(KEYS, options)),
            "answer": KEYS[options.index(correct)], "explanation": explanation}


def _qa(question: str, answer: str, explanation: str) -> dict:
    return {"kind": "qa", "question": question, "options": {}, "answer": answer, "explanation": explanation}


def _questions(rng: random.Random) -> dict[str, list[dict]]:
    names = [e[0] for e in ELEMENTS]
    symbols = [e[1] for e in ELEMENTS]
    chapters: dict[str, list[dict]] = {"symbols-and-numbers": [], "categories-and-periods": []}
    for name, sym, z, cat, period in ELEMENTS:
        fact = f"{name} has the symbol {sym} and atomic number {z}."
        chapters["symbols-and-numbers"] += [
            _mcq(rng, f"What is the chemical symbol of {name}?", sym, symbols, fact),
            _mcq(rng, f"Which element has atomic number {z}?", name, names, fact),
            _qa(f"What is the atomic number of {name}?", str(z), fact),
            _qa(f"Which element has the chemical symbol {sym}?", name, fact),
        ]
        where = f"{name} (atomic number {z}) is a {cat} in period {period}."
        chapters["categories-and-periods"] += [
            _mcq(rng, f"To which category of elements does {name} belong?", cat, CATEGORIES, where),
            _qa(f"In which period of the periodic table is {name}?", str(period), where),
        ]
    for qs in chapters.values():
        rng.shuffle(qs)
    return chapters


def _malformed() -> list[dict]:
    """Questions a real bank gets wrong; prepare must reject each under its reason."""
    return [
        _qa("What is the chemical symbol of Gold?", "", "Left blank by the site's editors."),
        {"kind": "mcq", "question": "Which of these is a noble gas?",
         "options": {"A": "Iron", "B": "Neon", "C": "Tin", "D": "Zinc"}, "answer": "E",
         "explanation": "The key points at an option that does not exist."},
        _qa("Zn?", "30", "Too short to be a question."),
    ]


def _page(title: str, body: str) -> bytes:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{body}\n</body></html>\n"
    ).encode("utf-8")


def _question_html(qid: str, q: dict) -> str:
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


def generate(seed: int, per_page: int) -> tuple[dict[str, bytes], list[str]]:
    """The whole site as {path: bytes}, and the ids of the valid questions on it."""
    rng = random.Random(seed)
    chapters = _questions(rng)
    # Defects go into the second chapter; one valid question is also repeated verbatim.
    bad = _malformed()
    repeated = dict(chapters["symbols-and-numbers"][0])
    chapters["categories-and-periods"] += bad + [repeated]

    site: dict[str, bytes] = {}
    valid: list[str] = []
    counter = 0
    links = []
    for chapter, questions in chapters.items():
        title = chapter.replace("-", " ").capitalize()
        links.append(f'<li><a class="chapter" href="/qa/{chapter}/page-1.html">{title}</a></li>')
        pages = [questions[i:i + per_page] for i in range(0, len(questions), per_page)]
        for n, page in enumerate(pages, start=1):
            blocks = []
            for q in page:
                counter += 1
                qid = f"q-{counter:04d}"
                blocks.append(_question_html(qid, q))
                if q not in bad and q is not repeated:
                    valid.append(qid)
            nav = f'<p class="nav">Page {n} of {len(pages)}'
            if n < len(pages):
                nav += f' <a rel="next" href="page-{n + 1}.html">Next</a>'
            nav += "</p>"
            site[f"/qa/{chapter}/page-{n}.html"] = _page(f"{title}, page {n}", "\n".join(blocks) + "\n" + nav)
    site["/qa/index.html"] = _page(
        "Elements question bank",
        "<ul>\n" + "\n".join(links) + '\n<li><a class="chapter" href="/private/answers.html">Answer key</a></li>\n</ul>',
    )
    site["/private/answers.html"] = _page("Answer key (not for crawlers)", _question_html("q-private", _qa(
        "Which element is the private answer key about?", "None", "Disallowed by robots.txt.")))
    site["/robots.txt"] = b"User-agent: *\nDisallow: /private/\n"
    return site, valid
