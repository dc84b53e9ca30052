"""The crawl stage against our sample sites over real HTTP on 127.0.0.1, then prepare."""

from __future__ import annotations

import json
import re

import pytest
from conftest import SITES

from crawlers.sample_sites import GENERATORS


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.parametrize("name", SITES)
def test_crawl_matches_the_ground_truth(crawled_workspace, name):
    truth = GENERATORS[name](seed=0)
    items = _read_jsonl(crawled_workspace / f"data/raw/{name}.jsonl")
    got = {it["id"] for it in items}
    valid = {f"{name}/{i}" for i in truth.valid}
    assert len(got & valid) / len(valid) >= 0.99
    assert got <= valid, sorted(got - valid)[:5]  # nothing from disallowed paths, nothing invented
    assert not got & {f"{name}/{i}" for i in truth.disallowed}
    assert [it["id"] for it in items] == sorted(got)
    for it in items:  # the crawled content is the generated content, decoded right
        expected = truth.items.get(it["id"].split("/", 1)[1])
        if expected and expected["kind"] != "doc":
            assert (it["question"], it["options"], it["answer"]) == \
                (expected["question"], expected["options"], expected["answer"])
        elif expected:
            assert (it["title"], it["text"]) == (expected["title"], expected["text"])

    metrics = json.loads((crawled_workspace / f"metrics/crawl/{name}.json").read_text())
    assert metrics["items"] == len(items) and metrics["finish_reason"] == "finished"
    assert metrics["robots_denied"] == len(truth.disallowed) == 1
    assert {**metrics["broken"], **metrics["dropped"]} == truth.planted
    assert metrics["images_skipped"] == truth.images


def test_bank_items_carry_chapter_and_chinese_text(crawled_workspace):
    items = {it["id"]: it for it in _read_jsonl(crawled_workspace / "data/raw/bank_gbk.jsonl")}
    zh = [it for it in items.values() if it["question"].startswith("元素“")]
    assert zh and all(it["chapter"].startswith("第") and it["kind"] == "mcq" for it in zh)
    assert all(it["encoding"] == "gb18030" for it in items.values())  # w3lib's name for GBK


def test_document_sections_keep_numbers_titles_and_normative_wording(crawled_workspace):
    items = {it["id"]: it for it in _read_jsonl(crawled_workspace / "data/raw/standards.jsonl")}
    section = items["standards/ds-101#3.1.1"]
    assert (section["section"], section["title"], section["chapter"]) == \
        ("3.1.1", "Lithium", "DS 101 Storage of laboratory chemicals")
    assert "shall be stored" in section["text"] and "should be kept" in section["text"]
    assert " may be kept" in section["text"]
    zh = items["standards/gbz-104#3.1.1"]
    assert all(word in zh["text"] for word in ("应", "宜", "可"))
    assert len(items) >= 100


def test_prepare_counts_each_reject_by_reason(crawled_workspace):
    metrics = json.loads((crawled_workspace / "metrics/prepare.json").read_text())
    # the empty answer and the key outside the options were dropped (and counted) by the crawl
    assert metrics["rejected"] == {"empty_section": 4, "short_question": 1}  # duplicates: dedup's work
    assert metrics["input"] == metrics["kept"] + sum(metrics["rejected"].values())
    clean = _read_jsonl(crawled_workspace / "data/clean/clean.jsonl")
    assert {r["kind"] for r in clean} == {"mcq", "qa", "doc"}
    zh = next(r for r in clean if r["id"] == "bank_gbk/t-0004")
    assert zh["question"] == "原子序数为43的元素是（ ）。"  # full-width punctuation kept in Chinese
    rejects = _read_jsonl(crawled_workspace / "data/clean/rejects.jsonl")
    assert all(r["where"].startswith("http://127.0.0.1:") for r in rejects)


def test_prepare_names_a_malformed_line_and_keeps_the_rest(tmp_path, crawled_workspace):
    from pipeline.config.prepare import PrepareConfig
    from pipeline.data.clean import prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = (crawled_workspace / "data/raw/elements_qa.jsonl").read_text().splitlines()[:5]
    (raw / "site.jsonl").write_text("\n".join(lines[:2] + ['{"id": "x", "question": '] + lines[2:]) + "\n")
    cfg = PrepareConfig(min_question_chars=8, max_text_chars=4000)
    metrics = prepare(cfg, ["site"], raw_dir=raw, out_dir=tmp_path / "clean")
    assert metrics["rejected"] == {"malformed_json": 1} and metrics["kept"] == 5
    reject = _read_jsonl(tmp_path / "clean/rejects.jsonl")[0]
    assert reject["where"] == f"{raw / 'site.jsonl'}:3"


def test_normalise_nfkc_and_whitespace():
    from pipeline.data.text import normalise, restore_cjk_punctuation

    assert normalise("  Ｆｅ\u3000is\t iron？ \r\n\r\n\r\nnext ") == "Fe is iron?\n\nnext"
    text = "硫（S）的元素符号是S，原子序数是多少？"
    assert normalise(text) == "硫(S)的元素符号是S,原子序数是多少?"
    assert restore_cjk_punctuation(normalise(text)) == text


def test_sample_sites_are_reproducible_and_plant_near_duplicates():
    for name, generate in GENERATORS.items():
        a, b = generate(seed=0), generate(seed=0)
        assert a.pages == b.pages and a.valid == b.valid, name
    bank = GENERATORS["bank_gbk"](seed=0)
    share = len(bank.near_duplicates) / len(bank.valid)
    assert 0.10 <= share <= 0.20
    source = GENERATORS["elements_qa"](seed=0)

    def bigrams(q: dict) -> set[str]:
        words = re.findall(r"\w+", " ".join([q["question"], *q["options"].values(), q["answer"]]).lower())
        return {" ".join(words[i:i + 2]) for i in range(len(words) - 1)}

    for copy_id, original in bank.near_duplicates:  # near, never exact
        a, b = bigrams(bank.items[copy_id]), bigrams(source.items[original.split("/", 1)[1]])
        assert 0.8 <= len(a & b) / len(a | b) < 1
    total_questions = sum(len(GENERATORS[n](seed=0).valid) for n in ("elements_qa", "bank_gbk"))
    assert total_questions >= 600
