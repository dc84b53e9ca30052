"""The report stage on hand-written metrics: the headline tables (each rate with its count and
interval, the paired difference and its verdict in words), base-vs-tuned rows with signed deltas,
"n/a" for nulls, the judge shown only when it passed its controls, worst examples in order, model
output escaped; and the HTML as headless Chromium renders it."""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_stage

from pipeline import paths
from pipeline.evaluation import stats
from pipeline.report import blocks, markdown, page

HOSTILE = "<think>hmm</think></table><script>alert(1)</script> | ```"


def rate(k: int, n: int) -> dict:
    return stats.rate(k, n)


def model_metrics(loss, validity, exam, elements, mean_chars, mc_hits: int, think_hits: int) -> dict:
    chapters = {"Chapter 1": {"accuracy": exam, "questions": 4}, "Chapter 2": {"accuracy": None, "questions": 4}}
    exam_shape = {"questions": 4, "accuracy": exam, "no_choice": 1, "by_chapter": chapters,
                  "ci95": stats.wilson(round(4 * exam), 4)}
    mc = {"acc": mc_hits / 20, "acc_norm": 0.5, "n": 20, "ci95": stats.wilson(mc_hits, 20),
          "acc_norm_ci95": stats.wilson(10, 20), "skipped_too_long": 0, "shots": 0}
    return {"loss": loss, "perplexity": None if loss is None else 2.0 ** loss, "stop_rate": 0.5,
            "mc": {"general_mc": {"plain": {"0shot": mc}}},
            "stop": rate(8, 16), "think": {**rate(think_hits, 16), "mean_chars": mean_chars,
                      "by_set": {"questions": {**rate(think_hits, 16), "mean_chars": mean_chars}}},
            "stop_by_set": {"questions": rate(8, 16)},
            "free_form": {"questions": {"n": 16, "exact": 0.0, "exact_ci95": stats.wilson(0, 16),
                                        "contains": 0.125, "contains_ci95": stats.wilson(2, 16), "f1": 0.2}},
            "search_answer": {"accuracy": 0.5, "k": 3, "n": 6, "ci95": stats.wilson(3, 6), "f1": 0.4,
                              "rounds": {"mean": 1.0, "histogram": {"1": 6}}},
            "tools": {"call_attempts": 3, "valid_attempts": round(3 * (validity or 0)), "validity": validity,
                      "validity_ci95": stats.wilson(round(3 * (validity or 0)), 3) if validity is not None else None,
                      "decision_accuracy": 0.5, "decision_accuracy_ci95": stats.wilson(6, 12), "n": 12,
                      "argument_match": None, "query_similarity": 0.2,
                      "confusion": {"call/call": 1, "call/no_call": 5, "no_call/call": 2, "no_call/no_call": 4}},
            "exam": exam_shape, "exam_sets": {"elements_exam": {**exam_shape, "accuracy": elements,
                                            "ci95": None if elements is None else stats.wilson(round(4 * elements), 4)}}}


# tuned right on 16 items base got wrong, and 2 the other way round: significant; think 4 -> 12 of 16
COMPARISON = {"mc.general_mc.plain.0shot.acc": stats.paired([False] * 16 + [True] * 2 + [False] * 2,
                                                             [True] * 16 + [False] * 2 + [False] * 2),
              "think.questions": stats.paired([True] * 4 + [False] * 12, [True] * 12 + [False] * 4),
              "stop.questions": stats.paired([True] * 8 + [False] * 8, [False] * 8 + [True] * 8)}


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
         "informative": True,
         "controls": {"accuracy": 45 / 48, "k": 45, "n": 48, "ci95": stats.wilson(45, 48), "position_consistency": 1.0,
                      "pairs": 16, "position_consistency_ci95": stats.wilson(16, 16), "min_control": 0.8,
                      "informative": True},
         "single": {"base": {"mean": 4.2, "rated": 14, "unparsed": 2, "correct": rate(3, 14), "correct_unparsed": 2},
                    "tuned": {"mean": None, "rated": 0, "unparsed": 16, "correct": rate(0, 0), "correct_unparsed": 16}},
         "comparison": {"correct": None},
         "pairwise": {"pairs": 16, "tuned_wins": 5, "base_wins": 4, "ties": 3, "inconsistent": 2, "unparsed": 2,
                      "tuned_win_rate": None}}


def write_workspace(ws: Path, judge: dict | None = JUDGE) -> Path:
    eval_metrics = {"backend": "vllm", "test_examples": 55, "test_tokens": 894,
                    "base": model_metrics(7.11, None, 0.25, 0.5, 0.0, 4, 4),
                    "tuned": model_metrics(5.9, 2 / 3, 0.75, None, 120.0, 18, 12), "comparison": COMPARISON}
    files = {
        paths.EVAL_METRICS: json.dumps(eval_metrics),
        paths.TRAIN_METRICS: json.dumps({"method": "lora", "steps": 300, "train_loss": 6.3, "eval_loss": 6.1}),
        paths.TRAIN_CURVE: "step\tloss\n" + "".join(f"{s}\t{8 - s / 100:.4f}\n" for s in range(5, 305, 5)),
        paths.EVAL_CURVE: "step\tloss\n" + "".join(f"{s}\t{7.5 - s / 120:.4f}\n" for s in range(50, 350, 50)),
        paths.PREDICTIONS: "".join(json.dumps(p) + "\n" for p in PREDICTIONS),
    }
    if judge:
        files[paths.JUDGE_METRICS] = json.dumps(judge)
        files[paths.JUDGMENTS] = "".join(json.dumps(j) + "\n" for j in JUDGMENTS)
    for path, text in files.items():
        (ws / path).parent.mkdir(parents=True, exist_ok=True)
        (ws / path).write_text(text, encoding="utf-8")
    return ws


@pytest.fixture
def rendered(tmp_path) -> Path:
    """A workspace after `python -m pipeline.stages.report`, run as DVC runs it."""
    run_stage("pipeline.stages.report", write_workspace(tmp_path))
    return tmp_path


def test_markdown_has_deltas_and_na(rendered):
    md = (rendered / paths.REPORT_MD).read_text(encoding="utf-8")
    # rates with their counts and Wilson intervals, the difference in points with its interval
    for row in ["| held-out loss | 7.1100 | 5.9000 | -1.2100 |",
                "| stop rate (every prompt) | 50.0% (8/16) [28.0, 72.0] | 50.0% (8/16) [28.0, 72.0] | +0.0 [",
                "| think rate (test questions) | 25.0% (4/16) [10.2, 49.5] | 75.0% (12/16) [",
                "| tool-call validity (of the calls made) | n/a | 66.7% (2/3) [20.8, 93.9] | n/a |",
                "| argument match (first call vs the reference) | n/a | n/a | n/a |",
                "| exam accuracy (generation) | 25.0% (1/4) [4.6, 69.9] | 75.0% (3/4) [30.1, 95.4] "
                "| +50.0 [-13.5, +78.9] unpaired |",
                "| mean think chars | 0.0 | 120.0 | +120.0 |",
                "| exam accuracy (generation): elements_exam | 50.0% (2/4) [15.0, 85.0] | n/a | n/a |",
                "| judge: share graded correct | 21.4% (3/14) [7.6, 47.6] | n/a | n/a |",
                "| judge mean rating (1-10) | 4.20 | n/a | n/a |",
                "| Chapter 1 | 4 | 25.0% (1/4) [4.6, 69.9] | 75.0% (3/4) [30.1, 95.4] "
                "| +50.0 [-13.5, +78.9] unpaired |",
                "| Chapter 2 | 4 | n/a | n/a | n/a |",
                "| label call | 1 | 5 |", "| label no_call | 2 | 4 |",
                "| tuned wins | 5 |", "| tuned win rate | n/a |"]:
        assert row in md, row
    assert "did not run" not in md
    # a rate without its count is flagged, not shown as if it had one
    table = blocks.metric_table({"base": {"tools": {"argument_match": 0.5}}, "tuned": {}}, None)
    row = next(r for r in table.rows if r[0].startswith("argument match"))
    assert row[1:] == ["50.0% (count not recorded)", "n/a", "n/a"]
    counted = {"argument_match": 0.5, "argument_compared": 4, "argument_matched": 2,
               "argument_match_ci95": stats.wilson(2, 4)}
    table = blocks.metric_table({"base": {"tools": counted}, "tuned": {}}, None)
    row = next(r for r in table.rows if r[0].startswith("argument match"))
    assert row[1:] == ["50.0% (2/4) [15.0, 85.0]", "n/a", "n/a"]
    curve_rows = re.findall(r"^\| (\d+) \|", md.split("## Training loss")[1], re.MULTILINE)
    assert 6 <= len(curve_rows) <= 30 and curve_rows[-1] == "300"  # 60 train points thinned, the last kept


def test_the_headline_figures_have_counts_intervals_and_verdicts(rendered):
    md = (rendered / paths.REPORT_MD).read_text(encoding="utf-8")
    headline = md.split("## Did tuning help?")[1].split("## Judge")[0]
    assert md.index("## Did tuning help?") < md.index("## Every figure")  # the page leads with them
    # 4/20 and 18/20: Wilson [8.1, 41.6] and [69.9, 97.2]; 16 discordant pairs for tuned, 2 for base
    assert ("| general_mc, plain, 0shot, letters (acc) | 20.0% (4/20) [8.1, 41.6] | 90.0% (18/20) [69.9, 97.2] "
            "| +70.0 [") in headline
    row = next(line for line in headline.splitlines() if line.startswith("| general_mc, plain, 0shot, letters"))
    assert row.endswith("| 0.00131 | tuned better |")  # McNemar exact: 2 * P(X <= 2 | 18, 1/2)
    assert "| general_mc, plain, 0shot, texts (acc_norm) | 50.0% (10/20) [29.9, 70.1] |" in headline
    assert "| think rate: questions | 25.0% (4/16) [10.2, 49.5] | 75.0% (12/16) [" in headline
    assert "| ends its turn: questions | 50.0% (8/16) [28.0, 72.0] | 50.0% (8/16) [28.0, 72.0] | +0.0 [" in headline
    assert "| tool-call validity (of the calls made; unpaired) | n/a | 66.7% (2/3) [" in headline
    assert "Significantly better after tuning (p < 0.05): general_mc, plain, 0shot, letters (acc) (+70.0 points" in headline
    assert "think rate: questions (+50.0 points, p = 0.0078)" in headline
    assert "Significantly worse" not in headline and "No significant difference on the other 1 figures" in headline


def test_a_difference_between_two_models_at_chance_is_flagged_not_read():
    """Both models' intervals hold what a blind guess scores (four options: 25%): the difference,
    significant as counted, is listed as at chance, not as worse; the same counts without a known
    chance rate (metrics written before it) are read as before; a model above chance is read."""
    base = [True] * 10 + [True] * 4 + [False] * 2 + [False] * 24    # 14/40 = 35% [22.1, 50.5]
    tuned = [False] * 10 + [True] * 4 + [True] * 2 + [False] * 24   # 6/40 = 15% [7.1, 29.1]
    paired = stats.paired(base, tuned)
    assert paired["significant"] and paired["delta"] < 0

    def entry(flags, chance):
        return {"value": sum(flags) / len(flags), "n": len(flags), "ci": stats.wilson(sum(flags), len(flags)),
                "chance": chance}

    rows = [("general, cloze, 0shot, texts (acc_norm)", entry(base, 0.25), entry(tuned, 0.25), "a"),
            ("general, plain, 0shot, letters (acc)", entry(base, None), entry(tuned, None), "b"),
            ("general, chat, 0shot, letters (acc)", entry(tuned, 0.25), entry([True] * 30 + [False] * 10, 0.25), "c")]
    comparisons = {"a": paired, "b": paired, "c": stats.paired(tuned, [True] * 30 + [False] * 10)}
    table = blocks.comparison_table("t", rows, comparisons)
    assert [r[-1] for r in table.rows] == ["both at chance", "tuned worse", "tuned better"]
    said = " ".join(blocks.significance_sentences(rows, comparisons))
    assert "Significantly worse after tuning (p < 0.05): general, plain, 0shot, letters (acc) (-20.0 points" in said
    assert "Significantly better after tuning (p < 0.05): general, chat, 0shot, letters (acc)" in said
    assert "At chance for both models, so not read as a difference (1: " in said
    assert said.endswith("general, cloze, 0shot, texts (acc_norm) (-20.0 points, p = 0.039).")


def test_search_decisions_a_model_matches_by_never_searching_are_flagged():
    """30 of 32 prompts labelled no call: a model that never searches scores 93.8%, so the
    decision figure's chance is the commoner label's share and two such models are at chance;
    with the labels balanced, one that searches exactly where it should is read."""
    def metrics(calls: int, no_calls: int, searched: int = 0) -> dict:
        n, right = calls + no_calls, searched + no_calls
        tools = {"decision_accuracy": right / n, "n": n, "decision_accuracy_ci95": stats.wilson(right, n),
                 "confusion": {"call/call": searched, "call/no_call": calls - searched, "no_call/call": 0,
                               "no_call/no_call": no_calls}}
        return {"base": {"tools": tools}, "tuned": {"tools": tools}}

    def decision(eval_metrics):
        return next(r for r in blocks.behaviour_rows(eval_metrics) if r[0].startswith("search decision accuracy"))

    _, base, tuned, _ = decision(metrics(2, 30))
    assert base["chance"] == tuned["chance"] == 30 / 32 and blocks.at_chance(base, tuned)
    _, base, tuned, _ = decision(metrics(16, 16, searched=16))
    assert base["chance"] == 0.5 and not blocks.at_chance(base, tuned)
    _, base, tuned, _ = decision({"base": {"tools": {**metrics(2, 30)["base"]["tools"], "confusion": None}}})
    assert base["chance"] is None and tuned is None


def test_an_uninformative_judge_ranks_nothing(tmp_path):
    bad = {**JUDGE, "informative": False,
           "controls": {**JUDGE["controls"], "accuracy": 16 / 48, "k": 16, "ci95": stats.wilson(16, 48),
                        "position_consistency": 0.0, "position_consistency_ci95": stats.wilson(0, 16),
                        "informative": False}}
    ws = write_workspace(tmp_path, judge=bad)
    run_stage("pipeline.stages.report", ws)
    md = (ws / paths.REPORT_MD).read_text(encoding="utf-8")
    assert "The judge is uninformative: on its control items it graded 33.3% (16/48) [" in md
    assert "0.0% (0/16)" in md and "nothing on this page is ranked by them" in md
    assert "judge mean rating" not in md and "tuned win rate" not in md and "graded correct" not in md
    # worst examples: only the wrong answer; no order by the judge's ratings
    assert re.findall(r"^### \d+\. (\S+)", md, re.MULTILINE) == ["q/wrong"]


def test_worst_examples_order_and_escaping(rendered):
    md = (rendered / paths.REPORT_MD).read_text(encoding="utf-8")
    titles = re.findall(r"^### \d+\. (\S+)", md, re.MULTILINE)
    assert titles == ["q/hostile", "q/rated3", "q/ok", "q/wrong"]  # ratings 1, 3, 9, then the unrated wrong one
    assert "````\n" + HOSTILE + "\n````" in md  # the fence outgrows the output's own backticks
    page = (rendered / paths.REPORT_HTML).read_text(encoding="utf-8")
    assert "<script" not in page and "&lt;/table&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<table") == page.count("</table>")
    assert '<meta charset="utf-8">' in page and "<svg" in page and not re.search(r"(src|href)=", page)


def test_worst_examples_limit_and_base_ignored():
    worst = blocks.worst_examples(PREDICTIONS, JUDGMENTS, 2)
    assert [(p["id"], p["rating"]) for p in worst] == [("q/hostile", 1), ("q/rated3", 3)]
    assert [p["id"] for p in blocks.worst_examples(PREDICTIONS, [], 5)] == ["q/wrong"]


def test_without_judge_or_curves(tmp_path, monkeypatch):
    ws = write_workspace(tmp_path, judge=None)
    (ws / paths.EVAL_CURVE).unlink()
    (ws / paths.TRAIN_CURVE).write_text("", encoding="utf-8")
    curves = {"train": blocks.read_curve(ws / paths.TRAIN_CURVE), "eval": blocks.read_curve(ws / paths.EVAL_CURVE)}
    assert curves == {"train": [], "eval": []} and blocks.read_json(ws / paths.JUDGE_METRICS) is None
    built = blocks.build_blocks(blocks.read_json(ws / paths.EVAL_METRICS), None, None, curves,
                                blocks.worst_examples(PREDICTIONS, [], 5))
    md, html = markdown.render_markdown(built), page.render_html(built)
    assert "The judge did not run" in md and "judge mean rating" not in md
    assert "No training curves found." in md and "<svg" not in html

    monkeypatch.chdir(ws)
    monkeypatch.setattr(sys, "argv", ["pipeline.stages.report", "--worst", "0"])
    runpy.run_module("pipeline.stages.report", run_name="__main__", alter_sys=True)
    md = paths.REPORT_MD.read_text(encoding="utf-8")
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
    binary, page = chromium(), rendered / paths.REPORT_HTML
    flags = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={rendered / 'chrome-profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    table = re.search(r'<table id="base-vs-tuned">(.*?)</table>', dom, re.DOTALL)
    assert table, dom[:2000]
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.DOTALL)
    # header, figures, elements_exam, judge (2)
    assert len(rows) == 1 + len(blocks.VALUE_ROWS) + len(blocks.RATE_ROWS) + 3
    assert "<td>held-out loss</td><td>7.1100</td><td>5.9000</td><td>-1.2100</td>" in table.group(1)
    assert "<script" not in dom  # the model's script stayed text

    shot = rendered / "report.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.exists() and shot.stat().st_size > 10_000
