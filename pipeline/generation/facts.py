"""Knowledge rows (synth.facts): the domain's facts as plain text the student trains on, stated both ways.

A fact seen once, one way, is stored but not retrieved from a question, and "A is B" does not teach "B is A"; so the
teacher restates each train question's fact (statement, reversed, asked back), each part verified on its own. Test
questions asked back become reverse evaluation items, never trained. Docs: docs/stages/synth.md#knowledge-rows.
"""

from __future__ import annotations

import re

from pipeline.data import chat_format
from pipeline.data.chat_format import answer_value
from pipeline.data.text import find, norm
from pipeline.generation import tasks

FORMS = ("qa", "section", "statement", "reversed", "asked_back")
TEACHER_FORMS = ("statement", "reversed", "asked_back")
MAX_ENTITY_CHARS = 80
MAX_TEXT_CHARS = 300
_LINE = re.compile(r"^[ \t*]*([^\W\d_][^\n:：]{0,29}?)[ \t*]*[:：][ \t]*(.*?)[ \t]*$", re.M)
_ASKS = re.compile(r"[?？]\s*$")
# a number of the question (an atomic number, a clause, a year) is part of the fact: a text that drops
# or changes it states another fact ("原子序数为5的元素" restated as "硼是原子序数为6的元素")
_NUMBER = re.compile(r"(?<![a-z0-9])\d+(?:\.\d+)*(?![a-z0-9])")


def output_labels(template_text: str) -> tuple[str, ...]:
    """The labels the teacher writes, in order: those of a worked example's lines from the label
    the template's last line opens (its slot) on. Read from the template, so a domain's own
    template (any language) brings its own labels."""
    blocks = [b for b in re.split(r"\n\s*\n", template_text.strip()) if _LINE.search(b)]
    if len(blocks) < 2:
        raise ValueError("a facts template needs worked examples and a slot, separated by blank lines")
    slot = [m.group(1).strip() for m in _LINE.finditer(blocks[-1])]
    example = [m.group(1).strip() for m in _LINE.finditer(blocks[-2])]
    if not slot or slot[-1] not in example:
        raise ValueError(f"the template's last line opens {slot[-1:]!r}, which its examples do not have")
    labels = tuple(example[example.index(slot[-1]):])
    if len(labels) != 1 + len(TEACHER_FORMS):
        raise ValueError(f"a facts example names the entity, then a statement, a reversed statement and the "
                         f"question asked back: 4 labels from the slot's on, got {labels!r}")
    return labels


def request(rec: dict, tpl, sampling, seed: int, teacher=None):
    # the prompt ends at the entity's label ("About:"), not on a new line: a completion teacher
    # given "About:\n" skips the entity and starts at the next label
    return tasks.request(tpl.render(question=rec["question"], gold=answer_value(rec)).rstrip(), sampling, seed,
                         task="facts", source=rec["id"], teacher=teacher)


def parse(output: str, labels: tuple[str, ...]) -> dict[str, str]:
    """{"entity", "statement", "reversed", "asked_back"} from one completion (the first line is the
    entity: the prompt ends with its label). Missing parts are empty."""
    body = output.lstrip(" \t")  # a newline first: the teacher left the entity out
    text = f"{labels[0]}: {body}"
    fields = dict.fromkeys(("entity", *TEACHER_FORMS), "")
    names = dict(zip(labels, ("entity", *TEACHER_FORMS), strict=True))
    for m in _LINE.finditer(text):
        name = names.get(m.group(1).strip())
        if name and not fields[name]:
            fields[name] = m.group(2).strip()
    return fields


def _text_reject(text: str, lang: str | None) -> str | None:
    if not text:
        return "missing"
    if len(text) > MAX_TEXT_CHARS:
        return "too_long"
    if tasks._MARKUP.search(text):
        return "markup"
    if tasks.repetitive(text):
        return "repetitive"
    if lang and not chat_format.language_matches(text, lang):
        return "wrong_language"
    return None


def check(rec: dict, fields: dict[str, str]) -> dict[str, str | None]:
    """Per teacher form, None (verified) or the reason it is rejected; an entity that is not the
    question's own words rejects every form with its reason."""
    entity, gold, question = norm(fields["entity"]), norm(answer_value(rec)), norm(rec["question"])
    reason = None
    if not entity:
        reason = "no_entity"
    elif len(entity) > MAX_ENTITY_CHARS or find(entity, question) < 0:
        reason = "entity_not_in_question"
    elif entity in gold or gold in entity:
        reason = "entity_is_answer"
    if reason:
        return dict.fromkeys(TEACHER_FORMS, reason)
    numbers = _NUMBER.findall(question)
    out: dict[str, str | None] = {}
    for form in TEACHER_FORMS:
        text = fields[form]
        why = _text_reject(text, rec.get("lang"))
        t = norm(text)
        at_entity, at_gold = find(entity, t), find(gold, t)
        if why is None and at_gold < 0:
            why = "no_answer"
        elif why is None and any(find(n, f"{t} {entity}" if form == "asked_back" else t) < 0 for n in numbers):
            why = "number_missing"  # the asked-back question is trained with the entity on its next line
        elif why is None and form == "asked_back":
            why = "names_entity" if at_entity >= 0 else None if _ASKS.search(text) else "not_a_question"
        elif why is None and at_entity < 0:
            why = "no_entity"
        elif why is None and _ASKS.search(text):
            why = "a_question"
        elif why is None and (at_entity < at_gold) != (form == "statement"):
            why = "wrong_direction"
        out[form] = why
    return out


def texts(rec: dict, fields: dict[str, str], verdict: dict[str, str | None]) -> list[tuple[str, str]]:
    """(form, text) of the verified parts: the statements as written, the question asked back
    with its answer, the entity, on the next line."""
    out = []
    for form in TEACHER_FORMS:
        if verdict[form] is None:
            out.append((form, f"{fields[form]}\n{fields['entity']}" if form == "asked_back" else fields[form]))
    return out


def qa_text(rec: dict) -> str:
    """The question and its answer (the explanation after it) as one text."""
    _, question, answer = chat_format.record_to_messages(rec, "")
    return f"{question['content']}\n{answer['content']}"


def section_text(doc: dict) -> str:
    head = " ".join(x for x in (doc.get("chapter"), doc.get("section"), doc.get("title")) if x)
    return f"{head}\n{doc['text']}" if head else doc["text"]
