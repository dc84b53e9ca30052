"""Stage search_index: the local search index (pipeline/tools/search.py) behind the `search` tool.

synth writes its search rows' tool responses from data/search/index.sqlite, evaluate and the chat client run the
model's searches on it; it holds the document sections and the train split's questions with their answers, never a
val or test answer.

    python -m pipeline.stages.search_index       # dvc repro search_index

Guide: docs/stages/synth.md
"""

from __future__ import annotations

import sys

from pipeline.config import sections_or_exit
from pipeline.config.search import SearchConfig
from pipeline.data.jsonl import read_jsonl
from pipeline.paths import INDEX, SPLIT
from pipeline.tools.search import build_index


def main() -> None:
    sections_or_exit(search=SearchConfig)  # its section must be valid before any work, as in every stage
    if not SPLIT.exists():
        sys.exit(f"error: no {SPLIT} (run dedup first: dvc repro dedup)")
    records = read_jsonl(SPLIT)
    n = build_index(records, INDEX)
    print(f"search_index: indexed {n} passages -> {INDEX}")


if __name__ == "__main__":
    main()
