"""JSON Lines, read one way everywhere: the files stages hand each other (data/dedup/split.jsonl,
data/sft/*.jsonl, reports/eval/predictions.jsonl, ...)."""

from __future__ import annotations

import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSONL file, in order; blank lines are skipped. Lines are split at "\\n"
    only (str.splitlines would also split inside a record at U+2028 and the like, which JSON
    written with ensure_ascii=False may hold). A line that is not JSON is a ValueError naming
    the file and the line."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not a JSON line ({exc.msg})") from None
    return records
