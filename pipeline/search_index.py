"""Stage search_index: the local search index (pipeline/search.py) over the deduplicated corpus,
data/search/index.sqlite: every document section, and the train split's questions with their
answers (never a val or test answer).

    python -m pipeline.search_index       # dvc repro search_index
"""

from __future__ import annotations

import json
import sys

from pipeline.config import sections_or_exit
from pipeline.config.search import SearchConfig
from pipeline.paths import INDEX, SPLIT
from pipeline.search import build_index


def main() -> None:
    sections_or_exit(search=SearchConfig)  # its section must be valid before any work, as in every stage
    if not SPLIT.exists():
        sys.exit(f"error: no {SPLIT} (run dedup first: dvc repro dedup)")
    with SPLIT.open(encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    n = build_index(records, INDEX)
    print(f"search_index: indexed {n} passages -> {INDEX}")


if __name__ == "__main__":
    main()
