"""Stage report: one page that says whether tuning helped, and where it did not.

It writes reports/eval.md and a self-contained reports/eval.html from what evaluate, judge and train wrote: the answer
first, with its uncertainty; the judge only if it passed its controls; then every other figure, and the worst tuned
answers, since averages hide what a reader spots in five examples.

    python -m pipeline.stages.report [--worst N]      # dvc repro report

Guide: docs/stages/evaluate.md
"""

from __future__ import annotations

import argparse

from pipeline.paths import (
    EVAL_CURVE,
    EVAL_METRICS,
    JUDGE_METRICS,
    JUDGMENTS,
    PREDICTIONS,
    REPORT_HTML,
    REPORT_MD,
    TRAIN_CURVE,
    TRAIN_METRICS,
)
from pipeline.report.blocks import (
    build_blocks,
    judge_informative,
    read_curve,
    read_json,
    read_jsonl,
    worst_examples,
)
from pipeline.report.markdown import render_markdown
from pipeline.report.page import render_html


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write reports/eval.md and reports/eval.html.")
    parser.add_argument("--worst", type=int, default=5, help="how many worst tuned predictions to show")
    args = parser.parse_args(argv)
    eval_metrics = read_json(EVAL_METRICS)
    if eval_metrics is None:
        raise SystemExit(f"error: {EVAL_METRICS} is missing; run `dvc repro evaluate` first")
    judge = read_json(JUDGE_METRICS)
    curves = {"train": read_curve(TRAIN_CURVE), "eval": read_curve(EVAL_CURVE)}
    judgments = read_jsonl(JUDGMENTS) if judge_informative(judge) else []  # no ranking by an uninformative judge
    worst = worst_examples(read_jsonl(PREDICTIONS), judgments, args.worst)
    blocks = build_blocks(eval_metrics, judge, read_json(TRAIN_METRICS), curves, worst)
    REPORT_MD.parent.mkdir(parents=True, exist_ok=True)
    REPORT_MD.write_text(render_markdown(blocks), encoding="utf-8")
    REPORT_HTML.write_text(render_html(blocks), encoding="utf-8")
    print(f"report: {REPORT_MD} and {REPORT_HTML} ({len(worst)} worst examples, judge "
          f"{'missing' if judge is None else 'present'})")


if __name__ == "__main__":
    main()
