"""Stage summary: the figures an experiment is compared by, in one small metrics file
(metrics/summary.json), so `dvc exp show` leads with them. Guide: docs/sweeps.md.

    python -m pipeline.stages.summary      # dvc repro summary
"""

from __future__ import annotations

import json

from pipeline.paths import EVAL_METRICS, EXPORT_METRICS, SUMMARY_METRICS, TRAIN_METRICS
from pipeline.report.blocks import read_json
from pipeline.report.summary import summarize


def main() -> None:
    eval_metrics = read_json(EVAL_METRICS)
    if eval_metrics is None:
        raise SystemExit(f"error: {EVAL_METRICS} is missing; run `dvc repro evaluate` first")
    summary = summarize(eval_metrics, read_json(TRAIN_METRICS), read_json(EXPORT_METRICS))
    SUMMARY_METRICS.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_METRICS.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"summary: {SUMMARY_METRICS}")


if __name__ == "__main__":
    main()
