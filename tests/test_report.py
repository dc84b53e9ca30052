"""The report stage on hand-written metrics: base-vs-tuned rows with signed deltas, "n/a" for
nulls, worst examples in order, model output escaped; and the HTML as headless Chromium renders it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import run_stage
from pipeline import report

HOSTILE = "<think>hmm</think></table><script>alert(1)</script> | ```"


def model_metrics(loss, validity, exam, elements, mean_chars) -> dict:
    chapters = {"Chapter 1": {"accuracy": exam, "questions": 2}, "Chapter 2": {"accuracy": None, "questions": 2}}
    exam_shape = {"questions": 4, "accuracy": exam, "no_choice": 1, "by_chapter": chapters}
    return {"loss": loss, "perplexity": None if loss is None else 2.0 ** loss, "stop_rate": 0.5,
            "think": {"rate": 0.25, "mean_chars": mean_chars},
            "tools": {"call_attempts": 3, "validity": validity, "decision_accuracy": 0.5, "argument_match": None,
                      "query_similarity": 0.2, "confusion": {"call/call": 1, "call/no_call": 5, "no_call/call": 2,
                                                             "no_call/no_call": 4}},
            "exam": exam_shape, "exam_sets": {"elements_exam": {**exam_shape, "accuracy": elements}}}


def prediction(pid: str, model: str, correct, output: str = "an answer") -> dict:
    return {"id": pid, "set": "questions", "model": model, "source_id": "s", "question": f"question {pid}?",
            "reference": f"reference {pid}", "output": output,
            "parsed": {"think": None, "tool_calls": [], "invalid_tool_calls": [], "answer": output},
            "stopped": True, "new_tokens": 7,
            "scores": {"think_ok": False, "correct": correct, "choice": None, "decision": None, "label": None}}


def single(pid: str, model: str, rating) -> dict:
    return {"id": pid, "kind": "single", "model": model, "rating": rating, "judgment": f"judged {pid}"}


PREDICTIONS = [
    prediction("q/ok", "tuned", True), prediction("q/rated3", "tuned", True), prediction("q/wrong", "tuned", False),
    prediction("q/hostile", "tuned", None, HOSTILE), prediction("q/unscored", "tuned", None),
    prediction("q/hostile", "base", False),
]
JUDGMENTS = [
    single("q/rated3", "tuned", 3), single("q/hostile", "tuned", 1), single("q/ok", "tuned", 9),
    single("q/unscored", "tuned", None), single("q/wrong", "base", 1),
    {"id": "q/ok", "kind": "pairwise", "order": "base_first", "verdict": "tuned", "judgment": "B is better"},
]
JUDGE = {"judge": {"name": "tiny", "model": "models/base", "backend": "vllm"},
         "requests": {"requests": 64, "cached": 0, "sent": 64, "errors": 0},
         "single": {"base": {"mean": 4.2, "rated": 14, "unparsed": 2},
                    "tuned": {"mean": None, "rated": 0, "unparsed": 16}},
         "pairwise": {"pairs": 16, "tuned_wins": 5, "base_wins": 4, "ties": 3, "inconsistent": 2, "unparsed": 2,
                      "tuned_win_rate": None}}


def write_workspace(ws: Path, judge: bool = True) -> Path:
    eval_metrics = {"backend": "vllm", "test_examples": 55, "test_tokens": 894,
                    "base": model_metrics(7.11, None, 0.25, 0.5, 0.0),
                    "tuned": model_metrics(5.9, 0.5, 0.75, None, 120.0)}
    files = {
        report.EVAL_METRICS: json.dumps(eval_metrics),
        report.TRAIN_METRICS: json.dumps({"method": "lora", "steps": 300, "train_loss": 6.3, "eval_loss": 6.1}),
        report.TRAIN_CURVE: "step\tloss\n" + "".join(f"{s}\t{8 - s / 100:.4f}\n" for s in range(5, 305, 5)),
        report.EVAL_CURVE: "step\tloss\n" + "".join(f"{s}\t{7.5 - s / 120:.4f}\n" for s in range(50, 350, 50)),
        report.PREDICTIONS: "".join(json.dumps(p) + "\n" for p in PREDICTIONS),
    }
    if judge:
        files[report.JUDGE_METRICS] = json.dumps(JUDGE)
        files[report.JUDGMENTS] = "".join(json.dumps(j) + "\n" for j in JUDGMENTS)
    for path, text in files.items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text, encoding="utf-8")
    return ws


@pytest.fixture
def rendered(tmp_path) -> Path:
    """A workspace after `python -m pipeline.report`, run as DVC runs it."""
    run_stage("pipeline.report", write_workspace(tmp_path))
    return tmp_path


def test_markdown_has_deltas_and_na(rendered):
    md = (rendered / report.REPORT_MD).read_text(encoding="utf-8")
    for row in ["| held-out loss | 7.1100 | 5.9000 | -1.2100 |",
                "| tool-call validity | n/a | 0.500 | n/a |",
                "| argument match | n/a | n/a | n/a |",
                "| exam accuracy | 0.250 | 0.750 | +0.500 |",
                "| mean think chars | 0.0 | 120.0 | +120.0 |",
                "| exam accuracy: elements_exam | 0.500 | n/a | n/a |",
                "| judge mean rating (1-10) | 4.20 | n/a | n/a |",
                "| Chapter 1 | 2 | 0.250 | 0.750 | +0.500 |",
                "| Chapter 2 | 2 | n/a | n/a | n/a |",
                "| label call | 1 | 5 |", "| label no_call | 2 | 4 |",
                "| tuned wins | 5 |", "| tuned win rate | n/a |"]:
        assert row in md, row
    assert "did not run" not in md
    curve_rows = re.findall(r"^\| (\d+) \|", md.split("## Training loss")[1], re.MULTILINE)
    assert 6 <= len(curve_rows) <= 30 and curve_rows[-1] == "300"  # 60 train points thinned, the last kept


def test_worst_examples_order_and_escaping(rendered):
    md = (rendered / report.REPORT_MD).read_text(encoding="utf-8")
    titles = re.findall(r"^### \d+\. (\S+)", md, re.MULTILINE)
    assert titles == ["q/hostile", "q/rated3", "q/ok", "q/wrong"]  # ratings 1, 3, 9, then the unrated wrong one
    assert "````\n" + HOSTILE + "\n````" in md  # the fence outgrows the output's own backticks
    page = (rendered / report.REPORT_HTML).read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;/table&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<table") == page.count("</table>")
    assert '<meta charset="utf-8">' in page and "<svg" in page and not re.search(r"(src|href)=", page)


def test_worst_examples_limit_and_base_ignored():
    worst = report.worst_examples(PREDICTIONS, JUDGMENTS, 2)
    assert [(p["id"], p["rating"]) for p in worst] == [("q/hostile", 1), ("q/rated3", 3)]
    assert [p["id"] for p in report.worst_examples(PREDICTIONS, [], 5)] == ["q/wrong"]


def test_without_judge_or_curves(tmp_path, monkeypatch):
    ws = write_workspace(tmp_path, judge=False)
    (ws / report.EVAL_CURVE).unlink()
    (ws / report.TRAIN_CURVE).write_text("", encoding="utf-8")
    curves = {"train": report.read_curve(ws / report.TRAIN_CURVE), "eval": report.read_curve(ws / report.EVAL_CURVE)}
    assert curves == {"train": [], "eval": []} and report.read_json(ws / report.JUDGE_METRICS) is None
    blocks = report.build_blocks(report.read_json(ws / report.EVAL_METRICS), None, None, curves,
                                 report.worst_examples(PREDICTIONS, [], 5))
    md, page = report.render_markdown(blocks), report.render_html(blocks)
    assert "The judge did not run" in md and "| judge mean rating (1-10) | n/a | n/a | n/a |" in md
    assert "No training curves found." in md and "<svg" not in page

    monkeypatch.chdir(ws)
    report.main(["--worst", "0"])
    md = report.REPORT_MD.read_text(encoding="utf-8")
    assert "The judge did not run" in md and "No rated or wrong tuned predictions." in md


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        message = "chromium is not installed: run `make setup-dev`"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def test_html_in_headless_chromium(rendered):
    binary, page = chromium(), rendered / report.REPORT_HTML
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={rendered / 'chrome-profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    table = re.search(r'<table id="base-vs-tuned">(.*?)</table>', dom, re.DOTALL)
    assert table, dom[:2000]
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.DOTALL)
    assert len(rows) == 1 + len(report.METRIC_ROWS) + 2  # header, metrics, elements_exam, judge
    assert "<td>held-out loss</td><td>7.1100</td><td>5.9000</td><td>-1.2100</td>" in table.group(1)
    assert "<script" not in dom  # the model's script stayed text

    shot = rendered / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.exists() and shot.stat().st_size > 10_000
