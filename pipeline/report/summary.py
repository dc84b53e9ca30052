"""The few figures a sweep compares, taken from the stages' own metrics files: what `dvc exp show`
lists for every experiment (metrics/summary.json). Guide: docs/sweeps.md."""

from __future__ import annotations

from pipeline.report.blocks import dig


def _rate(rate: float | None, n: int | None, ci95: list | None) -> dict:
    low, high = ci95 if isinstance(ci95, list) and len(ci95) == 2 else (None, None)
    return {"rate": rate, "n": n, "low": low, "high": high}


def _knowledge(eval_metrics: dict) -> dict:
    """Cloze accuracy on the test questions (both directions): the tuned model's with its interval,
    and the paired difference tuned - base with its interval: the headline of the knowledge block."""
    tuned = dig(eval_metrics, "tuned", "knowledge", "cloze") or {}
    paired = dig(eval_metrics, "comparison", "knowledge.cloze") or {}
    tuned_low, tuned_high = tuned.get("ci95") or (None, None)
    low, high = paired.get("ci95") or (None, None)
    return {"tuned": tuned.get("rate"), "tuned_low": tuned_low, "tuned_high": tuned_high, "n": tuned.get("n"),
            "delta": paired.get("delta"), "delta_low": low, "delta_high": high, "p": paired.get("p_value")}


def _general(eval_metrics: dict) -> dict:
    """Tuned - base on the first general set (eval.general_sets), paired, with its count and
    interval: cloze accuracy (0-shot, per character), what tuning cost outside the domain."""
    names = eval_metrics.get("general_sets") or []
    paired = (dig(eval_metrics, "comparison", f"mc.{names[0]}.cloze.0shot.acc_norm") if names else None) or {}
    low, high = paired.get("ci95") or (None, None)
    return {"delta": paired.get("delta"), "delta_low": low, "delta_high": high, "n": paired.get("n")}


def summarize(eval_metrics: dict, train_metrics: dict | None, export_metrics: dict | None) -> dict:
    """One flat-ish dict of 30 leaves: each becomes a column of `dvc exp show`.
    Rates carry their count and 95% interval; a figure a run does not have is null."""
    tuned = eval_metrics.get("tuned") or {}
    tools = tuned.get("tools") or {}
    served = dig(export_metrics, "served") or {}
    return {
        "loss": {"base": dig(eval_metrics, "base", "loss"), "tuned": tuned.get("loss")},
        "knowledge_cloze": _knowledge(eval_metrics),
        "general_cloze": _general(eval_metrics),
        "think": _rate(dig(tuned, "think", "rate"), dig(tuned, "think", "n"), dig(tuned, "think", "ci95")),
        "search_decisions": _rate(tools.get("decision_accuracy"), tools.get("n"), tools.get("decision_accuracy_ci95")),
        "tool_calls_valid": _rate(tools.get("validity"), tools.get("call_attempts"), tools.get("validity_ci95")),
        "gguf": {"served": served.get("type"), "passed": dig(export_metrics, "passed")},
        "training": {"seconds": dig(train_metrics, "train_runtime_s"),
                  "tokens_per_s": dig(train_metrics, "tokens_per_s")},
    }
