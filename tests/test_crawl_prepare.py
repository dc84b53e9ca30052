"""crawl against our sample site over real HTTP on 127.0.0.1, then prepare with counted rejects."""

from __future__ import annotations

import json

from crawlers.sample_sites import generate_elements_qa
from crawlers.sample_sites.serve import serve


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_crawl_finds_every_question_and_obeys_robots(crawled_workspace):
    _, valid = generate_elements_qa(seed=0, per_page=10)
    items = _read_jsonl(crawled_workspace / "data/raw/sample_qa.jsonl")
    ids = {it["id"] for it in items}
    assert {f"sample_qa/{q}" for q in valid} <= ids
    assert len(valid) >= 200
    assert "sample_qa/q-private" not in ids  # /private/ is disallowed by robots.txt
    assert {it["kind"] for it in items} == {"mcq", "qa"}
    assert [it["id"] for it in items] == sorted(ids)
    mcq = next(it for it in items if it["kind"] == "mcq")
    assert sorted(mcq["options"]) == ["A", "B", "C", "D"] and mcq["answer"] in "ABCD"
    assert mcq["url"].startswith("http://127.0.0.1:") and mcq["explanation"]
    metrics = json.loads((crawled_workspace / "metrics/crawl.json").read_text())
    assert metrics["items"] == len(items)
    assert metrics["robots_denied"] == 1
    # index + every page of both chapters + robots.txt
    assert metrics["pages_fetched"] >= 1 + len(valid) // 10


def test_prepare_counts_each_reject_by_reason(crawled_workspace):
    _, valid = generate_elements_qa(seed=0, per_page=10)
    metrics = json.loads((crawled_workspace / "metrics/prepare.json").read_text())
    assert metrics["rejected"] == {"answer_not_in_options": 1, "empty_answer": 1,
                                   "exact_duplicate": 1, "short_question": 1}
    assert metrics["kept"] == len(valid)
    assert metrics["input"] == metrics["kept"] + sum(metrics["rejected"].values())
    clean = _read_jsonl(crawled_workspace / "data/clean/clean.jsonl")
    assert {r["split"] for r in clean} == {"train", "val", "test"}
    assert all(r["text"].startswith(r["question"]) for r in clean)
    rejects = _read_jsonl(crawled_workspace / "data/clean/rejects.jsonl")
    assert all(r["where"].startswith("http://127.0.0.1:") for r in rejects)


def test_prepare_names_a_malformed_line_and_keeps_the_rest(tmp_path, crawled_workspace):
    from pipeline.config import PrepareConfig
    from pipeline.prepare import prepare

    raw = tmp_path / "raw"
    raw.mkdir()
    lines = (crawled_workspace / "data/raw/sample_qa.jsonl").read_text().splitlines()[:5]
    (raw / "site.jsonl").write_text("\n".join(lines[:2] + ['{"id": "x", "question": '] + lines[2:]) + "\n")
    cfg = PrepareConfig(min_question_chars=8, max_text_chars=4000, val_fraction=0.1, test_fraction=0.1)
    metrics = prepare(cfg, raw_dir=raw, out_dir=tmp_path / "clean")
    assert metrics["rejected"] == {"malformed_json": 1} and metrics["kept"] == 5
    reject = _read_jsonl(tmp_path / "clean/rejects.jsonl")[0]
    assert reject["where"] == f"{raw / 'site.jsonl'}:3"


def test_normalise_nfkc_and_whitespace():
    from pipeline.prepare import normalise

    assert normalise("  Ｆｅ\u3000is\t iron？ \r\n\r\n\r\nnext ") == "Fe is iron?\n\nnext"


def test_sample_site_is_reproducible_and_served():
    import urllib.request

    site_a, valid_a = generate_elements_qa(seed=0, per_page=10)
    site_b, valid_b = generate_elements_qa(seed=0, per_page=10)
    assert site_a == site_b and valid_a == valid_b
    with serve(site_a) as (base, log):
        body = urllib.request.urlopen(f"{base}/robots.txt").read()
    assert b"Disallow: /private/" in body and log == ["/robots.txt"]
