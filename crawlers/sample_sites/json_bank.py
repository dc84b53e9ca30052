"""Sample site `json_bank`: an English question bank behind a JSON API, for the json spider.

It serves the same questions paged by page number, by offset and by cursor, with options and answers in the shapes
real APIs use, and planted defects (an empty answer, an index outside the options, a body cut off mid-JSON, a drafts
endpoint robots.txt disallows). The endpoints: docs/your-domain.md ("JSON APIs").
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from crawlers.sample_sites.facts import CATEGORIES, ELEMENTS
from crawlers.sample_sites.serve import Page
from crawlers.sample_sites.site import SampleSite

KEYS = "ABCD"
QUESTIONS = 24
DEFAULT_SIZE = 10
STYLES = {"page": ("page", "per_page"), "offset": ("offset", "limit"), "cursor": ("cursor", "limit")}
"""style -> (position parameter, page size parameter)"""


def _json(data: dict, status: int = 200) -> Page:
    return Page(json.dumps(data, ensure_ascii=False).encode("utf-8"), status, {"Content-Type": "application/json"})


def _cursor(start: int) -> str:
    return base64.urlsafe_b64encode(f"after:{start}".encode()).decode()


@dataclass(frozen=True)
class QuestionsEndpoint:
    """One endpoint of the bank, paginated in one style. The query is parsed, so the order of its
    parameters does not matter; a malformed value answers 400."""

    style: str
    records: tuple

    def respond(self, request_path: str) -> Page:
        position, size_param = STYLES[self.style]
        query = dict(parse_qsl(urlsplit(request_path).query))
        try:
            size = int(query.get(size_param, DEFAULT_SIZE))
            if self.style == "page":
                start = (int(query.get(position, 1)) - 1) * size
            elif self.style == "offset":
                start = int(query.get(position, 0))
            else:
                token = query.get(position)
                start = int(base64.urlsafe_b64decode(token).decode().removeprefix("after:")) if token else 0
        except ValueError:
            return _json({"error": f"bad query: {request_path}"}, 400)
        chunk = list(self.records[max(start, 0):max(start, 0) + size])
        meta = {"total": len(self.records)}
        if self.style == "cursor":
            meta["next_cursor"] = _cursor(start + size) if start + size < len(self.records) else None
        return _json({"data": {"questions": chunk}, "meta": meta})


def _record(uid: str, question: str, answer, explanation: str, choices=None) -> dict:
    record = {"uid": uid, "stem": {"text": question}, "correct": answer, "rationale": explanation}
    if choices is not None:
        record["choices"] = choices
    return record


def _question(rng: random.Random, i: int, element: tuple) -> tuple[dict, dict]:
    """The API record of question `i` and what a correct crawl makes of it, in turn: options as
    an object with a key answer, a list with an index answer, a list with a text answer, none."""
    z, sym, name, _, cat, period = element
    fact = f"{name} (symbol {sym}, atomic number {z}) is a {cat} in period {period}."
    uid = f"jb-{i:04d}"
    shape = i % 4
    if shape == 3:
        question = f"How many electron shells does a neutral {name} atom have?"
        why = f"{name} is in period {period} — the period is the number of electron shells."
        return _record(uid, question, period, why), {"kind": "qa", "question": question, "options": {},
                                                      "answer": str(period), "explanation": why}
    pool, correct, question = {
        0: ([e[1] for e in ELEMENTS], sym, f"Which symbol stands for {name}?"),
        1: (CATEGORIES, cat, f"{name} is classified as which kind of element?"),
        2: ([e[2] for e in ELEMENTS], name, f"Which element has {z} protons in each atom?"),
    }[shape]
    texts = rng.sample([p for p in pool if p != correct], 3) + [correct]
    rng.shuffle(texts)
    key = KEYS[texts.index(correct)]
    choices, answer = {
        0: (dict(zip(KEYS, texts)), key),
        1: (texts, texts.index(correct)),
        2: (texts, correct),
    }[shape]
    truth = {"kind": "mcq", "question": question, "options": dict(zip(KEYS, texts)), "answer": key,
             "explanation": fact}
    return _record(uid, question, answer, fact, choices), truth


def generate(seed: int) -> SampleSite:
    rng = random.Random(seed)
    site = SampleSite(name="json_bank")
    records = []
    for i, element in enumerate(rng.sample(ELEMENTS, QUESTIONS), start=1):
        record, truth = _question(rng, i, element)
        records.append(record)
        site.valid.append(record["uid"])
        site.items[record["uid"]] = truth
    # Planted among the others; the item pipeline drops each under its reason.
    records.insert(7, _record("jb-0901", "Which gas makes up most of the air we breathe?", "",
                              "Left blank by the bank's editors."))
    records.insert(15, _record("jb-0902", "Which of these elements is a noble gas?", 7,
                               "The index points past the four options.", ["Iron", "Neon", "Tin", "Zinc"]))
    site.planted.update(empty_answer=1, answer_not_in_options=1)

    for style in STYLES:
        site.pages[f"/api/{style}/questions"] = QuestionsEndpoint(style, tuple(records))
    cut = json.dumps({"data": {"questions": records[:3]}}).encode()
    site.pages["/api/v0/questions"] = Page(cut[:len(cut) // 2], 200, {"Content-Type": "application/json"})
    site.planted["bad_json"] = 1
    draft = _record("jb-draft-1", "Which element is this unreviewed draft about?", "None", "Not published yet.")
    site.pages["/api/drafts/questions"] = QuestionsEndpoint("page", (draft,))
    site.disallowed.append("jb-draft-1")
    site.pages["/robots.txt"] = b"User-agent: *\nDisallow: /api/drafts/\n"
    return site
