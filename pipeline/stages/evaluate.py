"""Stage evaluate: base vs tuned on the held-out test split and on external exam sets.

It answers whether tuning helped: knowledge scored by log-likelihood (so the base model gets a real figure), behaviour
and answers by generation with the same prompts for both, every rate with its count and a 95% interval, and tuned vs
base compared on the same items.

    python -m pipeline.stages.evaluate       # reads params.yaml (dvc repro evaluate)

Guide: docs/stages/evaluate.md
"""

from __future__ import annotations

from pipeline.config import Device, sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.eval import EvalConfig
from pipeline.config.search import SearchConfig
from pipeline.config.train import TrainConfig
from pipeline.evaluation import stats
from pipeline.evaluation.harness import evaluate, write_outputs
from pipeline.runtime.device import require as require_device


def main() -> None:
    params = sections_or_exit(seed=int, device=Device, chat=ChatConfig, search=SearchConfig, train=TrainConfig, eval=EvalConfig)
    metrics, rows, mc_rows, know_rows = evaluate(params, require_device(params.device, "evaluate"))
    write_outputs(metrics, rows, mc_rows, know_rows)
    b, t = metrics["base"], metrics["tuned"]

    mc_line = "; ".join(
        f"{name} {stats.pct(b['mc'][name]['plain']['0shot']['acc'])} -> {stats.pct(t['mc'][name]['plain']['0shot']['acc'])}"
        for name in sorted(b["mc"]) if "plain" in b["mc"][name])
    print(f"evaluate ({metrics['backend']}): held-out loss base {b['loss']:.4f} -> tuned {t['loss']:.4f}; "
          f"multiple choice (log-likelihood, plain, 0-shot): {mc_line or 'n/a'}; "
          f"think {stats.pct(b['think']['rate'])} -> {stats.pct(t['think']['rate'])}; tool-call validity "
          f"{stats.pct(b['tools']['validity'])} -> {stats.pct(t['tools']['validity'])}; search decisions "
          f"{stats.pct(b['tools']['decision_accuracy'])} -> {stats.pct(t['tools']['decision_accuracy'])}; search answers "
          f"{stats.pct(b['search_answer']['accuracy'])} -> {stats.pct(t['search_answer']['accuracy'])}; "
          f"skipped (too long) {metrics['skipped_too_long']}")
    for name, comparison in sorted(metrics["comparison"].items()):
        if comparison["significant"]:
            print("  " + stats.describe(name, comparison))


if __name__ == "__main__":
    main()
