"""Knowledge rows (pipeline.generation.facts) and the knowledge items evaluation scores
(pipeline.evaluation.knowledge): what a teacher's statements must carry to be kept, and how the
test facts are asked both ways, ranked and grouped."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.data.text import find, norm
from pipeline.evaluation import knowledge, stats
from pipeline.generation import facts

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted(ROOT.glob("conf/synth/prompts/**/facts*.txt"))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_facts_template_names_four_output_labels(path):
    labels = facts.output_labels(path.read_text(encoding="utf-8"))
    assert len(labels) == 4 and len(set(labels)) == 4


def test_find_does_not_match_inside_a_word():
    assert find("s", norm("Sulfur has the symbol S.")) == len("sulfur has the symbol ")
    assert find("s", norm("硫的化学符号是S")) == 7 and find("12", norm("element 123")) == -1


EN = {"id": "q/1", "question": "What is the atomic number of neon?", "answer": "10", "lang": "en", "options": {}}
ZH = {"id": "q/2", "question": "化学符号S代表哪种元素？", "answer": "硫", "lang": "zh", "options": {}}


def _parse(rec, output):
    lang = "zh" if rec["lang"] == "zh" else "en"
    path = ROOT / ("conf/synth/prompts/fewshot/facts.zh.txt" if lang == "zh" else "conf/synth/prompts/fewshot/facts.txt")
    return facts.parse(output, facts.output_labels(path.read_text(encoding="utf-8")))


def test_a_statement_both_ways_and_the_question_asked_back_are_kept():
    fields = _parse(EN, " neon\nStatement: Neon has the atomic number 10.\nReversed: 10 is the atomic number of neon.\n"
                        "Asked back: Which element has the atomic number 10?")
    assert facts.check(EN, fields) == {"statement": None, "reversed": None, "asked_back": None}
    assert facts.texts(EN, fields, facts.check(EN, fields))[-1] == (
        "asked_back", "Which element has the atomic number 10?\nneon")
    fields = _parse(ZH, " S\n陈述：S是硫的化学符号。\n反述：硫的化学符号是S。\n反问：硫的化学符号是什么？")
    assert facts.check(ZH, fields) == {"statement": None, "reversed": None, "asked_back": None}


@pytest.mark.parametrize("output, expected", [
    # the direction is checked: both sentences name the entity first
    (" neon\nStatement: Neon has the atomic number 10.\nReversed: Neon's atomic number is 10.\n"
     "Asked back: Which element has the atomic number 10?",
     {"statement": None, "reversed": "wrong_direction", "asked_back": None}),
    # the entity must be words of the question
    (" argon\nStatement: Argon has the atomic number 10.\nReversed: 10 is argon's.\nAsked back: Which has 10?",
     dict.fromkeys(facts.TEACHER_FORMS, "entity_not_in_question")),
    # a statement without the gold answer, a question asked back that names the entity
    (" neon\nStatement: Neon is a noble gas.\nReversed: 10 is the atomic number of neon.\n"
     "Asked back: What is the atomic number 10 of neon?",
     {"statement": "no_answer", "reversed": None, "asked_back": "names_entity"}),
    # a loop, markup, a missing line
    (" neon\nStatement: Neon <b>10</b>.\nReversed: " + "10 10 " * 20 + "neon",
     {"statement": "markup", "reversed": "repetitive", "asked_back": "missing"}),
    (" neon\nStatement: Neon's atomic number is 10.", {"statement": None, "reversed": "missing", "asked_back": "missing"}),
])
def test_statements_that_do_not_state_the_fact_are_rejected_by_reason(output, expected):
    assert facts.check(EN, _parse(EN, output)) == expected


ZH_NUMBERED = {"id": "q/3", "question": "原子序数为5的元素是（ ）。", "answer": "C", "lang": "zh",
               "options": {"A": "镍", "B": "钌", "C": "硼", "D": "铝"}}


@pytest.mark.parametrize("rec, output, expected", [
    # seen in a default run: the entity "原子" let a changed atomic number through, and a question
    # asked back whose entity line lacks the number (trained as "锗是哪种元素？\n原子")
    (ZH_NUMBERED, " 原子\n陈述：原子序数为5的元素是硼。\n反述：硼是原子序数为6的元素。\n反问：硼是哪种元素？",
     {"statement": None, "reversed": "number_missing", "asked_back": "number_missing"}),
    (ZH_NUMBERED, " 原子序数为5\n陈述：原子序数为5的元素是硼。\n反述：硼是原子序数为5的元素。\n"
                  "反问：硼的原子序数是多少？",
     {"statement": None, "reversed": None, "asked_back": None}),
    ({"id": "q/4", "question": "Which element has atomic number 45?", "answer": "Rhodium", "lang": "en", "options": {}},
     " atomic number 45\nStatement: The element with atomic number 45 is rhodium.\nReversed: Rhodium is not an element."
     "\nAsked back: What is rhodium's atomic number?",
     {"statement": None, "reversed": "number_missing", "asked_back": None}),
    # a number inside a word is not one of the question's numbers
    ({"id": "q/5", "question": "What is the chemical formula of water, H2O's name?", "answer": "water", "lang": "en",
      "options": {}}, " chemical formula\nStatement: The chemical formula of water is this.\n"
     "Reversed: Water has a chemical formula.\nAsked back: What is water?",
     {"statement": None, "reversed": None, "asked_back": None}),
], ids=["changed_zh", "kept_zh", "dropped_en", "inside_a_word"])
def test_a_statement_that_drops_or_changes_a_number_of_the_question_is_rejected(rec, output, expected):
    assert facts.check(rec, _parse(rec, output)) == expected


def test_a_statement_in_another_language_is_rejected():
    fields = _parse(ZH, " S\n陈述：S is the symbol of 硫.\n反述：硫的化学符号是S。\n反问：硫的化学符号是什么？")
    assert facts.check(ZH, fields)["statement"] == "wrong_language"


def _records():
    recs = [{"id": f"bank/{i}", "site": "bank", "kind": "qa", "question": f"What is the atomic number of element{i}?",
             "answer": str(i), "options": {}, "split": "train"} for i in range(1, 30)]
    recs.append({"id": "bank/test", "site": "bank", "kind": "qa", "question": "What is the atomic number of neon?",
                 "answer": "10", "options": {}, "split": "test"})
    recs.append({"id": "bank/mc", "site": "bank", "kind": "mcq", "question": "Which element is a noble gas?",
                 "answer": "B", "options": {"A": "iron", "B": "neon", "C": "tin", "D": "lead"}, "split": "test"})
    return recs


def test_knowledge_items_ask_both_ways_rank_against_a_pool_and_know_what_training_stated():
    recs = _records()
    reverse = [{"source_ids": ["bank/test"], "messages": [{}, {"content": "Which element has the atomic number 10?"}, {}],
                "fact": {"entity": "neon", "answer": "10", "of": "bank/test"}}]
    text = [{"source_ids": [f"bank/{i}"], "text": f"element{i} has the atomic number {i}.",
             "fact": {"form": "statement", "entity": f"element{i}"}} for i in range(1, 30)]
    text.append({"source_ids": ["bank/1"], "text": "Neon has the atomic number 10.", "fact": {"form": "statement", "entity": None}})
    items, left_out = knowledge.build_items([recs[4], recs[-2], recs[-1]], reverse, recs, text)
    by = {i["id"]: i for i in items}
    fwd, back, mc = by["forward/bank/test"], by["reverse/bank/test"], by["forward/bank/mc"]
    # numbers ranked among numbers of the same site and kind, never the gold itself
    assert len(fwd["pool"]) >= knowledge.POOL_MIN and "10" not in fwd["pool"] and all(a.isdigit() for a in fwd["pool"])
    assert fwd["cloze"][0] == "10" and len(fwd["cloze"]) == 1 + knowledge.CLOZE_OTHERS
    # the reverse item asks for the entity, against the entities training named
    assert back["answer"] == "neon" and back["context"] == "Question: Which element has the atomic number 10?\nAnswer:"
    assert "element7" in back["pool"] and fwd["context"] == "Question: What is the atomic number of neon?\nAnswer:"
    # without a teacher's reverse question, the answer is given and the question asked, among three others
    asked = by["reverse/bank/5"]
    assert asked["context"] == "Answer: 5\nQuestion:" and asked["cloze"][0] == recs[4]["question"] and asked["pool"] == []
    assert len(set(asked["cloze"])) == 4 and all(q.startswith("What is the atomic number") for q in asked["cloze"])
    # stated: one train text names neon (the teacher's entity) and 10 together; without an entity, the
    # question's rare words ("element5") and the answer; the noble-gas question's rare words are in no text
    assert fwd["group"] == back["group"] == asked["group"] == "stated" and mc["group"] == "not_stated"
    assert mc["cloze"] == ["iron", "neon", "tin", "lead"] and mc["pool"] == []
    # no other multiple-choice question to ask the noble-gas one back against: left out, counted
    assert "reverse/bank/mc" not in by and left_out == {"too_few_candidates": 1}
    # without that text row the fact is the control
    items, _ = knowledge.build_items([recs[-2]], reverse, recs, text[:-1])
    assert {i["group"] for i in items} == {"not_stated"}


def test_knowledge_comparison_pairs_items_and_reports_power():
    rows = []
    for i in range(40):
        for model, right in (("base", i < 10), ("tuned", i < 25)):
            rows.append({"id": f"forward/{i}", "direction": "forward", "group": "stated" if i % 2 else "not_stated",
                         "model": model, "cloze_correct": right, "rank": 1 if right else 5, "rr": 1.0 if right else 0.2})
    out = knowledge.compare(rows)
    c = out["comparison"]
    assert c["knowledge.cloze"]["delta"] == pytest.approx(15 / 40) and c["knowledge.cloze"]["significant"]
    assert c["knowledge.rank_acc1"]["tuned_only"] == 15 and c["knowledge.mrr"]["delta"] == pytest.approx(15 * 0.8 / 40)
    assert {"knowledge.cloze.stated", "knowledge.cloze.not_stated", "knowledge.cloze.forward"} <= set(c)
    assert out["power"]["cloze"] == {"n": 40, "discordant": 15 / 40,
                                     "detectable_difference": stats.detectable_difference(40, 15 / 40)}
    summary = knowledge.summary([r for r in rows if r["model"] == "tuned"])
    assert summary["cloze"]["k"] == 25 and summary["by_group"]["stated"]["rank_acc1"]["n"] == 20
