"""Eval sets from elsewhere (evalsets/): C-Eval and MMLU style CSV, or JSONL, read as clean records.

Each item carries the canonical `text` that prepare would have built and `where` (file:line), so the dedup stage can
compare it with crawled records and name it in its report. The formats: docs/your-domain.md.
"""

from __future__ import annotations

import csv
import json
import string
from pathlib import Path

from pipeline.data.text import canonical_text, normalise


class EvalSetError(ValueError):
    """An eval-set file that cannot be read; the message names the file and line."""


def _item(path: Path, lineno: int, fields: dict) -> dict:
    where = f"{path}:{lineno}"
    options = fields.get("options")
    if options is None:
        options = {k: fields[k] for k in string.ascii_uppercase if fields.get(k) not in (None, "")}
    if not isinstance(options, dict):
        raise EvalSetError(f"{where}: options must be a mapping of letters to texts")
    question = normalise(str(fields.get("question") or ""))
    rec = {
        "id": f"{path.stem}/{fields.get('id') or lineno}",
        "where": where,
        "kind": "mcq" if options else "qa",
        "question": question,
        "options": {normalise(str(k)): normalise(str(v)) for k, v in options.items()},
        "answer": normalise(str(fields.get("answer") or "")),
        "explanation": normalise(str(fields.get("explanation") or "")),
    }
    if not question:
        text = normalise(str(fields.get("text") or ""))
        if not text:
            raise EvalSetError(f"{where}: no question (or text) in this item")
        return {**rec, "kind": "doc", "text": text}
    return {**rec, "text": canonical_text(rec)}


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return []
    header = [c.strip() for c in rows[0]]
    lowered = [h.lower() for h in header]
    items = []
    if "question" in lowered:
        names = [h if len(h) == 1 and h.isupper() else h.lower() for h in header]
        for lineno, row in enumerate(rows[1:], start=2):
            if not any(c.strip() for c in row):
                continue
            if len(row) != len(names):
                raise EvalSetError(f"{path}:{lineno}: {len(row)} columns, the header has {len(names)}")
            items.append(_item(path, lineno, dict(zip(names, row, strict=True))))
        return items
    for lineno, row in enumerate(rows, start=1):  # MMLU: question, options..., answer
        if not any(c.strip() for c in row):
            continue
        if len(row) < 4:
            raise EvalSetError(f"{path}:{lineno}: expected question, at least two options and the "
                               f"answer (MMLU layout) or a header row with 'question' (C-Eval layout)")
        options = dict(zip(string.ascii_uppercase, row[1:-1], strict=False))
        items.append(_item(path, lineno, {"question": row[0], "options": options, "answer": row[-1]}))
    return items


def _read_jsonl(path: Path) -> list[dict]:
    items = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalSetError(f"{path}:{lineno}: not JSON: {exc}") from None
            if not isinstance(obj, dict):
                raise EvalSetError(f"{path}:{lineno}: expected a JSON object")
            items.append(_item(path, lineno, obj))
    return items


def load_eval_set(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise EvalSetError(f"{path}: no such eval set")
    if path.suffix.lower() == ".csv":
        return _read_csv(path)
    if path.suffix.lower() in (".jsonl", ".json"):
        return _read_jsonl(path)
    raise EvalSetError(f"{path}: unknown eval-set format (expected .csv or .jsonl)")
