"""What the tuned model is known to know, said before a chat starts: the knowledge figures of the
last evaluation (metrics/eval.json), tuned vs base on the test facts, with the control (facts no
training text stated) beside them, so a user reads an answer knowing how far to trust it."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.evaluation.stats import rate_cell
from pipeline.paths import EVAL_METRICS

PARTS = [(None, "all test facts"), ("stated", "stated in training"), ("not_stated", "control, not stated"),
         ("reverse", "asked back")]


def _part(model: dict, part: str | None) -> dict | None:
    k = model.get("knowledge") or {}
    if part is None:
        return k
    return (k.get("by_group") or {}).get(part) or (k.get("by_direction") or {}).get(part)


def knowledge_lines(path: Path = EVAL_METRICS) -> list[str]:
    """One line per part (all, stated, control, reverse): cloze accuracy base -> tuned and the
    paired difference; nothing when there is no evaluation with knowledge figures."""
    if not path.exists():
        return []
    metrics = json.loads(path.read_text(encoding="utf-8"))
    base, tuned, comparison = metrics.get("base") or {}, metrics.get("tuned") or {}, metrics.get("comparison") or {}
    lines = []
    for part, words in PARTS:
        b, t = _part(base, part), _part(tuned, part)
        if not b or not t or not (b.get("cloze") or {}).get("n"):
            continue
        cells = [rate_cell(x["cloze"]["rate"], x["cloze"]["n"], x["cloze"]["ci95"], x["cloze"]["k"]) for x in (b, t)]
        c = comparison.get("knowledge.cloze" + (f".{part}" if part else ""))
        diff = (f"; {100 * c['delta']:+.1f} points [{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}], "
                f"p = {c['p_value']:.2g}") if c else ""
        lines.append(f"  {words}: base {cells[0]} -> tuned {cells[1]}{diff}")
    if lines:
        lines.insert(0, f"knowledge of the test facts ({path}, cloze accuracy by log-likelihood):")
    return lines
