"""Stage judge: a judge model grades the evaluate stage's answers to the test questions.

The judge is checked on control items with known verdicts in every run, and what it says is reported only when it
passes them: a judge that cannot grade (a small or random model) reads as uninformative, never as a ranking.

    python -m pipeline.stages.judge          # reads params.yaml (dvc repro judge)

Guide: docs/stages/evaluate.md
"""

from __future__ import annotations

import json
import sys

from pipeline.config import Device, sections_or_exit
from pipeline.config.judge import JudgeConfig
from pipeline.data.jsonl import read_jsonl
from pipeline.evaluation.judge import items_to_judge, judge
from pipeline.generation.request_cache import RequestCache
from pipeline.paths import JUDGE_CACHE, JUDGE_METRICS, JUDGMENTS, PREDICTIONS
from pipeline.runtime.device import require as require_device
from pipeline.runtime.hub import offline_when_cached


def main() -> None:
    params = sections_or_exit(seed=int, device=Device, judge=JudgeConfig)
    device = None
    if params.judge.backend != "openai":  # a judge on a server needs no GPU here
        device = require_device(params.device, "judge")
        offline_when_cached([params.judge.model])
    if not PREDICTIONS.exists():
        sys.exit(f"error: no {PREDICTIONS} (run evaluate first: dvc repro evaluate)")
    predictions = read_jsonl(PREDICTIONS)
    items = items_to_judge(predictions, params.judge.max_items)
    cache = RequestCache(JUDGE_CACHE)
    try:
        judgments, metrics = judge(items, params.judge, cache, device)
    finally:
        cache.close()
    JUDGMENTS.parent.mkdir(parents=True, exist_ok=True)
    with JUDGMENTS.open("w", encoding="utf-8") as f:
        for row in judgments:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    JUDGE_METRICS.parent.mkdir(parents=True, exist_ok=True)
    JUDGE_METRICS.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    s, p, r, c = metrics["single"], metrics["pairwise"], metrics["requests"], metrics["controls"]
    print(f"judge: {len(items)} questions, {r['requests']} requests ({r['cached']} cached, {r['sent']} sent, "
          f"{r['errors']} failed); controls: accuracy {c['accuracy']} ({c['k']}/{c['n']}), position consistency "
          f"{c['position_consistency']} ({c['pairs']} pairs): the judge is "
          f"{'informative' if c['informative'] else 'NOT informative (its grades are not a result)'}; "
          f"correct base {s['base']['correct']['rate']} tuned {s['tuned']['correct']['rate']}; mean rating base "
          f"{s['base']['mean']} tuned {s['tuned']['mean']} (unparsed {s['base']['unparsed']} + {s['tuned']['unparsed']}); "
          f"pairwise tuned {p['tuned_wins']} base {p['base_wins']} ties {p['ties']} (inconsistent {p['inconsistent']}), "
          f"unparsed {p['unparsed']}")


if __name__ == "__main__":
    main()
