"""Stage import@<name>: a dataset the user already has -> data/imported/<name>.jsonl.

Alpaca, ShareGPT, OpenAI messages and tables become records that the later stages read like crawled ones: a single
question and answer is cleaned, deduplicated, split and given to the teacher; a longer conversation is trained on as
it is. A malformed row is counted by reason, never fatal.

    python -m pipeline.stages.import_data NAME      # reads params.yaml (dvc repro import@NAME)

Guide: docs/your-data.md
"""

from __future__ import annotations

import json
import os
import sys

from pipeline.config import sections_or_exit
from pipeline.config.datasets import DatasetConfig
from pipeline.data.imports import import_dataset
from pipeline.paths import IMPORT_METRICS_DIR, IMPORTED_DIR


def main() -> None:
    params = sections_or_exit(datasets=dict[str, DatasetConfig])
    if len(sys.argv) != 2 or sys.argv[1] not in params.datasets:
        listed = ", ".join(params.datasets) or "none configured (datasets: in params.yaml)"
        sys.exit(f"usage: python -m pipeline.stages.import_data NAME, with NAME one of: {listed}")
    name = sys.argv[1]
    records, metrics = import_dataset(name, params.datasets[name])
    IMPORTED_DIR.mkdir(parents=True, exist_ok=True)
    out = IMPORTED_DIR / f"{name}.jsonl"
    tmp = out.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, out)
    IMPORT_METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (IMPORT_METRICS_DIR / f"{name}.json").write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    print(f"import {name}: {metrics['imported']} of {metrics['rows']} rows ({metrics['kinds']}), "
          f"rejected {metrics['rejected']} -> {out}")


if __name__ == "__main__":
    main()
