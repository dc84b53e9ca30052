"""The sweep's summary (metrics/summary.json): the figures it takes from each stage's metrics, every
rate with its count and interval, few enough leaves for `dvc exp show`, and nulls where a run has no
figure."""

from __future__ import annotations

from pipeline.report.summary import summarize


def _leaves(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


EVAL = {
    "base": {"loss": 2.5, "knowledge": {"cloze": {"rate": 0.4, "k": 40, "n": 100, "ci95": [0.3, 0.5]}}},
    "tuned": {
        "loss": 1.25,
        "knowledge": {"cloze": {"rate": 0.55, "k": 55, "n": 100, "ci95": [0.45, 0.64]}},
        "think": {"rate": 0.9, "n": 50, "ci95": [0.79, 0.96], "by_set": {"questions": {"rate": 0.9, "n": 50}}},
        "tools": {"decision_accuracy": 0.75, "decision_accuracy_ci95": [0.55, 0.88], "n": 20,
                  "validity": 0.5, "validity_ci95": [0.1, 0.9], "call_attempts": 4, "valid_attempts": 2},
    },
    "comparison": {"knowledge.cloze": {"delta": 0.15, "ci95": [0.05, 0.25], "p_value": 0.004, "n": 100},
                   "think.questions": {"delta": 0.9, "ci95": [0.8, 0.95], "p_value": 1e-9, "n": 50},
                   "mc.general.cloze.0shot.acc_norm": {"delta": -0.01, "ci95": [-0.03, 0.01], "p_value": 0.5, "n": 600},
                   "mc.domain_exam.cloze.0shot.acc_norm": {"delta": 0.2, "ci95": [0.1, 0.3], "p_value": 0.01, "n": 40}},
    "general_sets": ["general"],
}
TRAIN = {"train_runtime_s": 120.5, "tokens_per_s": 410.0, "steps": 30}
EXPORT = {"passed": True, "served": {"type": "q8_0", "file": "models/gguf/quant/distillery-q8_0.gguf", "passed": True}}


def test_the_summary_takes_each_figure_from_its_stage():
    leaves = _leaves(summarize(EVAL, TRAIN, EXPORT))
    assert leaves == {
        "loss.base": 2.5, "loss.tuned": 1.25,
        "knowledge_cloze.tuned": 0.55, "knowledge_cloze.tuned_low": 0.45, "knowledge_cloze.tuned_high": 0.64,
        "knowledge_cloze.n": 100, "knowledge_cloze.delta": 0.15, "knowledge_cloze.delta_low": 0.05,
        "knowledge_cloze.delta_high": 0.25, "knowledge_cloze.p": 0.004,
        # the general set's, not the domain's exam
        "general_cloze.delta": -0.01, "general_cloze.delta_low": -0.03, "general_cloze.delta_high": 0.01,
        "general_cloze.n": 600,
        "think.rate": 0.9, "think.n": 50, "think.low": 0.79, "think.high": 0.96,
        "search_decisions.rate": 0.75, "search_decisions.n": 20, "search_decisions.low": 0.55,
        "search_decisions.high": 0.88,
        "tool_calls_valid.rate": 0.5, "tool_calls_valid.n": 4, "tool_calls_valid.low": 0.1,
        "tool_calls_valid.high": 0.9,
        "gguf.served": "q8_0", "gguf.passed": True,
        "training.seconds": 120.5, "training.tokens_per_s": 410.0,
    }
    assert len(leaves) <= 30  # one column each in `dvc exp show`


def test_a_run_without_a_figure_gives_nulls_not_a_crash():
    """Export not run yet, no knowledge items (a documents-only domain without short answers), no
    tool prompts: the same keys, null values."""
    leaves = _leaves(summarize({"base": {"loss": 3.0}, "tuned": {"loss": 2.0}}, None, None))
    assert set(leaves) == set(_leaves(summarize(EVAL, TRAIN, EXPORT)))
    assert leaves["loss.tuned"] == 2.0
    assert all(v is None for k, v in leaves.items() if not k.startswith("loss."))
