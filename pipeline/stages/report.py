"""Stage report: one page that says whether tuning helped, and where it did not.

- First the answer, with its uncertainty: knowledge (multiple-choice accuracy by
  log-likelihood, per set, framing and shots) and behaviour (think, end of turn, search
  decisions and answers, free-form answers), base and tuned each as a rate with its count and
  Wilson 95% interval, the paired difference with its 95% interval and p-value, and in words
  which differences are significant (p < 0.05, each test on its own: no correction for the
  number of tests, so about one in twenty true non-differences reads as significant).
- The judge only if it passed its controls (metrics/judge.json `informative`); otherwise the
  page says it is uninformative and shows no ranking by it (no ratings, no pairwise verdicts,
  no worst-by-rating order).
- Then every other number evaluate and judge wrote (metrics/eval.json, metrics/judge.json),
  with the signed delta tuned - base; exam accuracy by chapter; the tool-decision confusion
  matrices. A null (no data) reads "n/a", never a crash.
- The worst tuned predictions (lowest judge rating first where the judge is informative, then
  wrong answers) with question, reference and output: averages hide what a reader spots in five
  examples.
- The training loss curves dvclive wrote (reports/train/plots/metrics/{train,eval}/loss.tsv).

Writes reports/eval.md and reports/eval.html. The HTML is one self-contained file (inline CSS
and SVG, no script, nothing fetched), and every string from data is escaped: model outputs
carry `<think>`, `<tool_call>` and, sooner or later, `</table>`.

    python -m pipeline.stages.report [--worst N]      # dvc repro report
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
