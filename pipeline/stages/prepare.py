"""Stage prepare: raw crawl items and imported records -> clean records, every reject counted by reason.

The later stages compare one normal form: normalised text fields and `text`, the canonical string of a record. The
fetch date stays in data/raw (VOLATILE_FIELDS), so a re-crawl of unchanged pages gives the same data/clean and reruns
nothing after this stage. Duplicates, exact or near, and the train/val/test split are the dedup stage's work.

    python -m pipeline.stages.prepare        # reads params.yaml (dvc repro prepare)

Guide: docs/stages/dedup.md
"""

from __future__ import annotations

import json

from pipeline.config import sections_or_exit
from pipeline.config.crawl import SiteConfig
from pipeline.config.datasets import DatasetConfig
from pipeline.config.prepare import PrepareConfig
from pipeline.data.clean import prepare
from pipeline.paths import PREPARE_METRICS


def main() -> None:
    params = sections_or_exit(sites=dict[str, SiteConfig], datasets=dict[str, DatasetConfig], prepare=PrepareConfig)
    metrics = prepare(params.prepare, list(params.sites), datasets=list(params.datasets))
    PREPARE_METRICS.parent.mkdir(parents=True, exist_ok=True)
    PREPARE_METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"prepare: kept {metrics['kept']} of {metrics['input']}, rejected {metrics['rejected']}")


if __name__ == "__main__":
    main()
