"""Stage dedup: exact and near-duplicate removal, leak-free splits, decontamination.

Duplicates weigh some questions more than others and, across splits, leak held-out answers into training: so one record
is kept per cluster of near-duplicates, the splits are drawn per cluster, and a cluster that holds an item of an exam
set sends nothing to train.

    python -m pipeline.stages.dedup        # reads params.yaml (dvc repro dedup)

Guide: docs/stages/dedup.md
"""

from __future__ import annotations

import json
import sys

from pipeline.config import sections_or_exit
from pipeline.config.dedup import DedupConfig, decontamination_files
from pipeline.config.eval import EvalConfig
from pipeline.data.jsonl import read_jsonl
from pipeline.dedup.split import dedup, load_external, render_report, too_few_train_rows, write_jsonl
from pipeline.paths import CLEAN, DEDUP_DIR, DEDUP_METRICS, DEDUP_REPORT


def main() -> None:
    params = sections_or_exit(domain=str, dedup=DedupConfig, eval=EvalConfig)
    cfg = params.dedup
    if not CLEAN.exists():
        sys.exit(f"error: no {CLEAN} (run prepare first: dvc repro prepare)")
    records = read_jsonl(CLEAN)
    kept, removed, metrics, report = dedup(records, load_external(decontamination_files(params.eval, params.dedup)), cfg)
    write_jsonl(DEDUP_DIR / "split.jsonl", kept)
    write_jsonl(DEDUP_DIR / "removed.jsonl", removed)
    DEDUP_METRICS.parent.mkdir(parents=True, exist_ok=True)
    DEDUP_METRICS.write_text(json.dumps({k: v for k, v in metrics.items() if k != "seconds"}, indent=2) + "\n")
    DEDUP_REPORT.parent.mkdir(parents=True, exist_ok=True)
    DEDUP_REPORT.write_text(render_report(metrics, report, cfg), encoding="utf-8")
    print(f"dedup: kept {metrics['kept']} of {metrics['input']} ({metrics['exact_duplicates']} exact, "
          f"{metrics['near_duplicates']} near-duplicates, {metrics['decontaminated']} decontaminated) "
          f"in {metrics['seconds']} s; splits {metrics['splits']}")
    problem = too_few_train_rows(metrics, cfg, params.domain)
    if problem:
        sys.exit(f"error: {problem}")


if __name__ == "__main__":
    main()
