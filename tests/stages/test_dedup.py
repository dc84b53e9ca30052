"""The dedup stage: signatures equal to datasketch's, the planted near-duplicates found on the
sample data, leak-free splits, decontamination, and the same clusters with the LSH index in a
real redis-server as in memory."""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, compose_params, free_port

from crawlers.sample_sites import GENERATORS
from pipeline.config import ConfigError
from pipeline.config.params import load_params
from pipeline.dedup import minhash


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _cfg(tmp_path: Path, *overrides: str):
    return load_params(compose_params(tmp_path, *overrides)).dedup


def test_signatures_equal_datasketch_minhash_updated_per_shingle():
    from datasketch import MinHash

    rng = np.random.default_rng(0)
    sets = [np.unique(rng.integers(0, 2**32, size=int(n), dtype=np.uint32)) for n in rng.integers(1, 400, 40)]
    sets.insert(7, np.empty(0, dtype=np.uint32))
    sigs = minhash.signatures_of_sets(sets, num_perm=64, seed=3)
    for s, sig in zip(sets, sigs, strict=True):
        reference = MinHash(num_perm=64, seed=3, hashfunc=int)  # datasketch's default scheme, affine32
        for shingle in s:
            reference.update(int(shingle))
        np.testing.assert_array_equal(sig, reference.hashvalues)


def test_signatures_do_not_depend_on_the_number_of_workers():
    rng = random.Random(1)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choices(words, k=40)) for _ in range(4200)]  # enough for two workers
    shingling = minhash.Shingling()
    one = minhash.sketches(texts, shingling, 32, 1, workers=1)
    two = minhash.sketches(texts, shingling, 32, 1, workers=2)
    np.testing.assert_array_equal(one.signatures, two.signatures)
    assert one.exact_keys == two.exact_keys


def test_shingles_char_for_cjk_word_otherwise_and_exact_jaccard():
    sh = minhash.Shingling()
    assert minhash.shingle_mode("铝属于哪一类元素？", sh) == "char"
    assert minhash.shingle_mode("Q: What is the atomic number of Helium?", sh) == "word"
    assert minhash.shingle_mode("元素“氢”的化学符号是（ ）。 A. H B. He", sh) == "char"
    a = minhash.shingle_set("one two three four five six", sh)
    b = minhash.shingle_set("one two three four five seven", sh)
    assert a.size == 4 and minhash.jaccard(a, b) == pytest.approx(3 / 5)
    assert minhash.jaccard(a, a) == 1.0
    # punctuation and case do not make a new shingle
    assert np.array_equal(a, minhash.shingle_set("One, two; THREE four five six.", sh))
    # distinct templated Chinese questions (one character apart, first) stay apart at 0.8 ...
    zh_a = minhash.shingle_set("铝属于哪一类元素？\nA. 后过渡金属\nB. 碱金属\nC. 卤素\nD. 过渡金属\nAnswer: A", sh)
    zh_b = minhash.shingle_set("镓属于哪一类元素？\nA. 后过渡金属\nB. 碱金属\nC. 卤素\nD. 过渡金属\nAnswer: A", sh)
    assert minhash.jaccard(zh_a, zh_b) < 0.8
    # ... while a longer Chinese text with one character changed is a near-duplicate
    doc = "实验室化学品应按危险类别分区储存，易燃液体应存放在防火柜内，氧化剂与还原剂不得混放，并应定期检查。"
    edit = doc.replace("定期", "按期")
    assert minhash.jaccard(minhash.shingle_set(doc, sh), minhash.shingle_set(edit, sh)) >= 0.8


def test_union_find_groups_transitively():
    uf = minhash.UnionFind(6)
    for a, b in [(4, 2), (2, 0), (5, 3)]:
        uf.union(a, b)
    assert list(uf.groups()) == [[0, 2, 4], [3, 5]]


def test_sample_data_planted_near_duplicates_found_and_splits_leak_free(crawled_workspace):
    ws = crawled_workspace
    kept = _read_jsonl(ws / "data/dedup/split.jsonl")
    removed = _read_jsonl(ws / "data/dedup/removed.jsonl")
    metrics = json.loads((ws / "metrics/dedup.json").read_text())
    clean = _read_jsonl(ws / "data/clean/clean.jsonl")
    assert metrics["input"] == len(clean) == len(kept) + len(removed)
    assert {r["split"] for r in kept} == {"train", "val", "test"}

    # recall against the generator's list: each planted copy shares a cluster with its original
    cluster = {r["id"]: r["cluster_id"] for r in kept + removed}
    planted = GENERATORS["bank_gbk"](seed=0).near_duplicates
    found = [cluster[f"bank_gbk/{copy}"] == cluster[original] for copy, original in planted]
    assert len(planted) == 54 and all(found)
    assert metrics["near_duplicates"] >= len(planted) and metrics["exact_duplicates"] == 1

    # no val/test record has a near-duplicate in train, by exact Jaccard over all pairs
    cfg = _cfg(ws / "cfg")
    sh = dataclasses.replace(minhash.Shingling(), char_ngram=cfg.char_ngram, word_ngram=cfg.word_ngram)
    sets = {r["id"]: minhash.shingle_set(r["text"], sh) for r in kept}
    train = [r["id"] for r in kept if r["split"] == "train"]
    held_out = [r["id"] for r in kept if r["split"] != "train"]
    worst = max(minhash.jaccard(sets[t], sets[h]) for t in train for h in held_out)
    assert worst < cfg.threshold

    # the eval set's leaked questions never reach train; its own new questions touch nothing
    decontaminated = [r for r in removed if r["reason"] == "decontaminated"]
    assert len(decontaminated) == metrics["decontaminated"] > 0
    assert all(r["duplicate_of"].startswith("evalsets/elements_exam.csv:") for r in decontaminated)
    exam = (ROOT / "evalsets/elements_exam.csv").read_text().splitlines()
    leaked_lines = {f"evalsets/elements_exam.csv:{n}" for n, line in enumerate(exam, 1) if line.startswith("leak-")}
    assert {r["duplicate_of"] for r in decontaminated} <= leaked_lines
    report = (ws / "reports/dedup_clusters.md").read_text()
    assert "decontaminated (not trained on)" in report and "near duplicate" in report


def test_representative_rule_and_split_per_cluster(tmp_path):
    from pipeline.dedup.split import dedup

    cfg = _cfg(tmp_path, "dedup.decontaminate_against=[]", "eval.exam_sets=[]")
    base = "Which element has atomic number 26? A. Iron B. Cobalt C. Nickel D. Copper Answer: A"
    records = [
        {"id": "a/1", "text": "Q: " + base, "explanation": "Iron is Fe."},
        {"id": "b/1", "text": base, "explanation": ""},
        {"id": "c/1", "text": base, "explanation": "Iron has atomic number 26."},
        {"id": "d/1", "text": "Which gas makes up most of the air? A. Oxygen B. Nitrogen Answer: B", "explanation": ""},
    ]
    kept, removed, metrics, _ = dedup(records, [], cfg)
    assert [r["id"] for r in kept] == ["c/1", "d/1"]  # explanation first, then shortest text
    assert kept[0]["duplicates"] == ["a/1", "b/1"] and kept[0]["cluster_id"] == "c/1"
    assert {r["id"]: r["reason"] for r in removed} == {"a/1": "near_duplicate", "b/1": "exact_duplicate"}
    assert metrics["exact_duplicates"] == 1 and metrics["near_duplicates"] == 1
    assert metrics["near_duplicate_clusters"] == 1


def test_eval_sets_csv_ceval_mmlu_and_jsonl(tmp_path):
    from pipeline.data.evalsets import EvalSetError, load_eval_set

    ceval = tmp_path / "ceval.csv"
    ceval.write_text("id,question,A,B,C,D,answer,explanation\n7,铁的元素符号是？,Fe,Cu,Zn,Ag,A,铁是Fe。\n", encoding="utf-8")
    item = load_eval_set(ceval)[0]
    assert item["id"] == "ceval/7" and item["where"] == f"{ceval}:2"
    assert item["options"] == {"A": "Fe", "B": "Cu", "C": "Zn", "D": "Ag"} and item["answer"] == "A"
    assert item["text"] == "铁的元素符号是?\nA. Fe\nB. Cu\nC. Zn\nD. Ag\nAnswer: A"
    mmlu = tmp_path / "mmlu.csv"
    mmlu.write_text("What is Fe?,iron,copper,zinc,silver,A\n")
    assert load_eval_set(mmlu)[0]["options"]["D"] == "silver"
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text('{"question": "What is Fe?", "options": {"A": "iron", "B": "tin"}, "answer": "A"}\n{"text": "A passage."}\n')
    assert [i["kind"] for i in load_eval_set(jsonl)] == ["mcq", "doc"]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,A,B,answer\n1,What is Fe?,iron,tin,A\n2,What is Cu?,copper\n")
    with pytest.raises(EvalSetError, match=r"bad.csv:3: 3 columns, the header has 5"):
        load_eval_set(bad)


def test_dedup_config_errors_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"dedup.splits.train \+ val \+ test: expected 1, got 1.1"):
        _cfg(tmp_path / "a", "dedup.splits.val=0.2")
    with pytest.raises(ConfigError, match=r"dedup.decontaminate_against\[0\]: '/tmp/x.csv' is not under evalsets/"):
        _cfg(tmp_path / "b", "dedup.decontaminate_against=[/tmp/x.csv]")
    with pytest.raises(ConfigError, match=r"dedup.bands, rows: give both or neither"):
        _cfg(tmp_path / "c", "dedup.bands=8")


def test_redis_backed_index_gives_the_same_clusters_as_memory(redis_server, crawled_workspace, tmp_path):
    from pipeline.dedup.minhash import near_duplicate_clusters

    port, client = redis_server
    client.set(b"distillery-dedup_stale", b"left by a crashed run")
    client.set(b"someone-else", b"kept")
    texts = [r["text"] for r in _read_jsonl(crawled_workspace / "data/clean/clean.jsonl")]
    memory = near_duplicate_clusters(texts, _cfg(tmp_path / "m"))
    in_redis = near_duplicate_clusters(texts, _cfg(tmp_path / "r", "dedup.lsh_storage=redis", f"dedup.redis.port={port}"))
    assert memory.groups == in_redis.groups and len(memory.groups) >= 54
    assert (memory.candidate_pairs, memory.verified_pairs) == (in_redis.candidate_pairs, in_redis.verified_pairs)
    assert client.keys(b"distillery-dedup*") == []  # the index is cleared before and after the run
    assert client.get(b"someone-else") == b"kept"


def test_redis_not_answering_is_one_clear_line_and_keeps_earlier_outputs(crawled_workspace, tmp_path):
    from conftest import run_stage

    ws = tmp_path / "ws"
    compose_params(ws, "dedup.lsh_storage=redis", f"dedup.redis.port={free_port()}")
    shutil.copytree(crawled_workspace / "data/clean", ws / "data/clean")
    shutil.copytree(crawled_workspace / "evalsets", ws / "evalsets")
    (ws / "data/dedup").mkdir(parents=True)
    (ws / "data/dedup/split.jsonl").write_text("earlier\n")
    proc = run_stage("pipeline.stages.dedup", ws, check=False)
    assert proc.returncode != 0
    assert "error: dedup.lsh_storage is redis but 127.0.0.1:" in proc.stderr and "Traceback" not in proc.stderr
    assert (ws / "data/dedup/split.jsonl").read_text() == "earlier\n"
