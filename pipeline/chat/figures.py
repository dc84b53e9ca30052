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


def _difference(c: dict | None) -> str:
    if not c:
        return ""
    low, high = c["ci95"]
    return f"; {100 * c['delta']:+.1f} points [{100 * low:+.1f}, {100 * high:+.1f}], p = {c['p_value']:.2g}"


def knowledge_lines(path: Path = EVAL_METRICS) -> list[str]:
    """One line per part (all, stated, control, reverse), then one per general set (what was kept
    outside the domain): cloze accuracy base -> tuned and the paired difference; nothing when
    there is no evaluation with knowledge figures."""
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
        diff = _difference(comparison.get("knowledge.cloze" + (f".{part}" if part else "")))
        lines.append(f"  {words}: base {cells[0]} -> tuned {cells[1]}{diff}")
    for name in metrics.get("general_sets") or []:
        b, t = ((m.get("mc") or {}).get(name, {}).get("cloze", {}).get("0shot") or {} for m in (base, tuned))
        if not b.get("n") or not t.get("n"):
            continue
        cells = [rate_cell(x["acc_norm"], x["n"], x["acc_norm_ci95"]) for x in (b, t)]
        diff = _difference(comparison.get(f"mc.{name}.cloze.0shot.acc_norm"))
        lines.append(f"  outside the domain ({name}): base {cells[0]} -> tuned {cells[1]}{diff}")
    if lines:
        lines.insert(0, f"knowledge of the test facts ({path}, cloze accuracy by log-likelihood):")
    return lines
