"""Datasets beside the crawls (stage import@<name>): one small file per format, written here with
planted malformed rows, counted by reason with their line numbers; an OpenAI conversation with a
tool call goes through prepare, dedup and synth to data/sft with an exact label mask; an imported
duplicate of a crawled question is removed by dedup, the crawled one kept."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml
from conftest import ROOT, compose_params
from test_chat import _labelled_spans

from pipeline.config import build
from pipeline.config.datasets import DatasetConfig
from pipeline.config.params import load_params
from pipeline.data.imports import import_dataset

ALPACA = """[
  {"instruction": "Which element has the symbol Na?", "input": "", "output": "Sodium."},
  {"instruction": "Name the element.", "input": "Atomic number 6", "output": ""},
  "not a row",
  {"instruction": ["a", "list"], "output": "x"},
  {"instruction": "What is the symbol of iron?", "output": "Fe", "history": [["Main metal of steel?", "Iron."]]},
  {"instruction": "cut off here", "output": "
"""
SHAREGPT = [
    {"conversations": [{"from": "human", "value": "Is mercury liquid?"}, {"from": "gpt", "value": "Yes, above -39 °C."}]},
    {"conversations": [{"from": "robot", "value": "beep"}, {"from": "gpt", "value": "?"}]},
    {"conversations": [{"from": "human", "value": "Tell me about gold."}]},
    {"conversations": [{"from": "human", "value": "Is mercury liquid?"}, {"from": "gpt", "value": "Yes, above -39 °C."}]},
]
SEARCH = {"type": "function", "function": {"name": "search", "description": "Search the documents.",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}
CALL = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"query": "cylinder clearance"}'}}
TRAJECTORY = {
    "split": "train",
    "messages": [
        {"role": "system", "content": "You are a careful domain expert."},
        {"role": "user", "content": "What clearance does a gas cylinder store need?"},
        {"role": "assistant", "content": "<think>\nThe figure is in the standard.\n</think>", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "c1", "content": "[1] A cylinder store shall keep 3 m from ignition sources."},
        {"role": "assistant", "content": "<think>\nPassage [1] says 3 m.\n</think>\nAt least 3 m [1]."},
    ],
    "tools": [SEARCH],
}
GOLDEN = [
    '<think>\nThe figure is in the standard.\n</think>\n<tool_call>\n{"name": "search", "arguments": '
    '{"query": "cylinder clearance"}}\n</tool_call><|im_end|>',
    "<think>\nPassage [1] says 3 m.\n</think>\nAt least 3 m [1].<|im_end|>",
]
MESSAGES = [
    json.dumps(TRAJECTORY),
    '{"messages": [{"role": "user", "content": "broken',
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "",
                "tool_calls": [{"type": "function", "function": {"name": "search", "arguments": "{not json"}}]},
                {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}], "tools": [SEARCH]}),
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "content": "r"},
                             {"role": "assistant", "content": "a"}]}),
    json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [CALL]},
                             {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]}),
]
TABLE = """id,question,A,B,C,D,answer,split
t1,Which of these is a noble gas?,Nitrogen,Argon,Chlorine,Sulfur,B,
t2,Which metal is liquid at room temperature?,Tin,Lead,Mercury,Zinc,Gold,
t3,,Tin,Lead,Mercury,Zinc,A,
t4,What is the symbol of potassium?,P,Po,K,Pt,K,holdout
t1,A second row with the first row's id?,a,b,c,d,A,
t5,Which element is most abundant in the crust?,Oxygen,Silicon,Iron,Aluminium,0,test
"""


def _dataset(**cfg) -> DatasetConfig:
    return build(DatasetConfig, cfg, "datasets.x")


def test_each_format_imports_with_malformed_rows_counted_by_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata/a.json").write_text(ALPACA)
    (tmp_path / "userdata/s.json").write_text(json.dumps(SHAREGPT, indent=1))
    (tmp_path / "userdata/m.jsonl").write_text("\n".join(MESSAGES) + "\n")
    (tmp_path / "userdata/t.csv").write_text(TABLE)

    records, m = import_dataset("alp", _dataset(format="alpaca", path="userdata/a.json"))
    assert (m["rows"], m["imported"], m["kinds"]) == (6, 2, {"conversation": 1, "qa": 1})
    assert m["reject_lines"] == {"bad_instruction": ["5"], "malformed_json": ["7"], "missing_output": ["3"],
                                 "not_an_object": ["4"]}
    assert m["rejected"] == {"bad_instruction": 1, "malformed_json": 1, "missing_output": 1, "not_an_object": 1}
    qa = next(r for r in records if r["kind"] == "qa")
    assert (qa["question"], qa["answer"], qa["site"], qa["origin"], qa["url"]) == (
        "Which element has the symbol Na?", "Sodium.", "alp", "import", "userdata/a.json:2")
    history = next(r for r in records if r["kind"] == "conversation")["messages"]
    assert [t["role"] for t in history] == ["user", "assistant", "user", "assistant"] and history[-1]["content"] == "Fe"

    records, m = import_dataset("sg", _dataset(format="sharegpt", path="userdata/s.json"))
    assert (m["imported"], m["rejected"]) == (1, {"bad_role": 1, "duplicate_row": 1, "ends_without_answer": 1})
    line = {r: int(v[0]) for r, v in m["reject_lines"].items()}
    assert line["bad_role"] < line["ends_without_answer"] < line["duplicate_row"]  # the file's own line numbers
    assert records[0]["messages"] == [{"role": "user", "content": "Is mercury liquid?"},
                                      {"role": "assistant", "content": "Yes, above -39 °C."}]

    records, m = import_dataset("msg", _dataset(format="messages", path="userdata/m.jsonl"))
    assert m["reject_lines"] == {"bad_tool_arguments": ["3"], "malformed_json": ["2"], "orphan_tool_response": ["4"],
                                 "undeclared_tool": ["5"]}
    (call,) = records[0]["messages"][2]["tool_calls"]
    assert call == {"type": "function", "function": {"name": "search", "arguments": {"query": "cylinder clearance"}}}
    assert records[0]["tools"] == [SEARCH] and "split" not in records[0]  # no split column mapped

    records, m = import_dataset("tbl", _dataset(format="table", path="userdata/t.csv", columns={
        "id": "id", "question": "question", "options": "A,B,C,D", "answer": "answer", "split": "split"}))
    assert m["reject_lines"] == {"answer_not_in_options": ["3"], "bad_split": ["5"], "duplicate_id": ["6"],
                                 "empty_question": ["4"]}
    assert [(r["id"], r["kind"], r["answer"], r.get("split")) for r in records] == [
        ("tbl/t1", "mcq", "B", None), ("tbl/t5", "mcq", "A", "test")]
    assert records[0]["options"] == {"A": "Nitrogen", "B": "Argon", "C": "Chlorine", "D": "Sulfur"}


def test_an_openai_conversation_with_a_tool_call_reaches_sft_with_an_exact_mask(tiny_tokenizer, tmp_path, monkeypatch):
    """import -> prepare -> dedup -> synth's rows: the conversation as it was, in the split its
    row names, every assistant turn (and its end-of-turn token) labelled and nothing else."""
    from pipeline.data.clean import prepare
    from pipeline.data.records import encode_rows, load_sft
    from pipeline.dedup.split import dedup
    from pipeline.generation.request_cache import RequestCache
    from pipeline.generation.synthesize import synthesize, write_outputs
    from pipeline.tools.search import SearchIndex, build_index

    monkeypatch.chdir(tmp_path)
    shutil.copytree(ROOT / "conf/synth/prompts", tmp_path / "conf/synth/prompts")
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata/m.jsonl").write_text(json.dumps(TRAJECTORY) + "\n")
    params = load_params(compose_params(tmp_path, "+dataset@datasets.msg=messages_example", "datasets.msg.path=userdata/m.jsonl",
                                        "+datasets.msg.columns.split=split", "synth.think.enabled=false",
                                        "synth.search.enabled=false", "synth.qgen.enabled=false",
                                        "teacher.prefills_think=false"))
    records, _ = import_dataset("msg", params.datasets["msg"])
    (tmp_path / "data/imported").mkdir(parents=True)
    (tmp_path / "data/imported/msg.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    metrics = prepare(params.prepare, [], datasets=["msg"])
    assert (metrics["kept"], metrics["kinds"], metrics["kept_imported"]) == (1, {"conversation": 1}, 1)
    clean = [json.loads(line) for line in (tmp_path / "data/clean/clean.jsonl").read_text().splitlines()]
    split, _, dedup_metrics, _ = dedup(clean, [], params.dedup)
    assert split[0]["split"] == "train" and dedup_metrics["imported"]["split_from_data"] == 1
    build_index(split, tmp_path / "index.sqlite")
    index, cache = SearchIndex(tmp_path / "index.sqlite"), RequestCache(tmp_path / "cache.sqlite")
    try:
        rows, synth_metrics = synthesize(params, split, index, cache)
    finally:
        index.close()
        cache.close()
    write_outputs(rows, synth_metrics, params, tmp_path / "sft")
    assert synth_metrics["train_rows"] == {"conversation": 1} and synth_metrics["requests"]["requests"] == 0
    (row,) = load_sft("train", tmp_path / "sft")
    assert row["source_ids"] == [records[0]["id"]] and row["urls"] == ["userdata/m.jsonl:1"]
    (example,), counts = encode_rows(tiny_tokenizer, [row], max_len=2048)
    assert set(counts) == {"tokens/conversation"} and _labelled_spans(tiny_tokenizer, example["labels"]) == GOLDEN
    text = tiny_tokenizer.decode(example["input_ids"], skip_special_tokens=False)
    assert "[1] A cylinder store shall keep 3 m" in text and '"name": "search"' in text  # tool response, tools declared


@pytest.mark.parametrize("prefer", [["crawl", "import"], ["import", "crawl"]])
def test_an_imported_duplicate_of_a_crawled_question_is_removed_by_dedup(crawled_workspace, tmp_path, monkeypatch, prefer):
    """The crawled record is kept by default (dedup.prefer: crawl first), the imported one is
    removed with the reason and the record it duplicates; the preference can be turned round."""
    from pipeline.data.clean import prepare
    from pipeline.dedup.split import dedup

    crawled = next(json.loads(line) for line in (crawled_workspace / "data/clean/clean.jsonl").read_text().splitlines()
                   if json.loads(line)["kind"] == "qa" and not json.loads(line)["explanation"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "userdata").mkdir()
    with (tmp_path / "userdata/own.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["q", "a", "s"], [crawled["question"], crawled["answer"], "test"]])
    path = compose_params(tmp_path, f"+dedup.prefer=[{','.join(prefer)}]")
    data = yaml.safe_load(path.read_text())
    data["datasets"] = {"own": {"format": "table", "path": "userdata/own.csv",
                                "columns": {"question": "q", "answer": "a", "split": "s"}}}
    path.write_text(yaml.safe_dump(data))
    params = load_params(path)
    records, _ = import_dataset("own", params.datasets["own"])
    (tmp_path / "data/imported").mkdir(parents=True)
    (tmp_path / "data/imported/own.jsonl").write_text(json.dumps(records[0]) + "\n")
    prepare(params.prepare, list(params.sites), raw_dir=crawled_workspace / "data/raw", datasets=["own"])
    clean = [json.loads(line) for line in (tmp_path / "data/clean/clean.jsonl").read_text().splitlines()]
    kept, removed, metrics, _ = dedup(clean, [], params.dedup)
    winner, loser = (crawled["id"], records[0]["id"]) if prefer[0] == "crawl" else (records[0]["id"], crawled["id"])
    gone = next(r for r in removed if r["id"] == loser)
    assert (gone["reason"], gone["duplicate_of"]) == ("exact_duplicate", winner)
    survivor = next(r for r in kept if r["id"] == winner)
    assert survivor["split"] == "test"  # the imported row's named split holds its whole cluster
    assert metrics["imported"] == {"input": 1, "kept": int(prefer[0] == "import"), "split_from_data": 1, "prefer": prefer}


@pytest.mark.parametrize("datasets, message", [
    ({"own": {"format": "alpaca", "path": "/home/me/data.json"}},
     r"datasets\.own\.path: '/home/me/data\.json' is not under userdata/"),
    ({"own": {"format": "alpaca"}}, r"datasets\.own\.path, hub: give one of them"),
    ({"own": {"format": "table", "path": "userdata/t.csv", "columns": {"question": "q"}}},
     r"datasets\.own\.columns: the table format needs question and answer \(or messages\) mapped"),
    ({"own": {"format": "csv", "path": "userdata/t.csv"}}, r"datasets\.own\.format: expected one of 'alpaca'"),
    ({"elements_qa": {"format": "alpaca", "path": "userdata/a.json"}}, r"datasets: elements_qa is a site's name too"),
])
def test_dataset_settings_are_checked_before_any_work(tmp_path, datasets, message):
    from pipeline.config import ConfigError

    path = compose_params(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["datasets"] = datasets
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        load_params(path)
