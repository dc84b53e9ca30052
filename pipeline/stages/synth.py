"""Stage synth: the teacher writes think, search, qgen and knowledge rows for the train, val and test splits.

With the crawled questions and the imported conversations they are data/sft, what train learns from and evaluate asks.
Think and search rows are verified traces: of the teacher's candidates for a question, only one that reaches the gold
answer becomes a row. Every request goes through a cache first, so a rerun sends only what is missing.

Guide: docs/stages/synth.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pipeline.config import Sections, sections_or_exit
from pipeline.generation.batch import SHARD_LINES, export, import_results
from pipeline.generation.synthesize import SECTIONS, synthesize_inputs, too_few_train_rows, write_outputs
from pipeline.paths import SYNTH_CACHE, SYNTH_METRICS
from pipeline.runtime.device import require as require_device
from pipeline.runtime.hub import offline_when_cached


def run() -> None:
    """The stage: dvc repro synth."""
    params = sections_or_exit(**SECTIONS)
    if params.teacher.backend != "openai":  # a teacher on a server needs no GPU here
        require_device(params.device, "synth")
        offline_when_cached([params.teacher.model])
    started = time.perf_counter()
    rows, metrics = synthesize_inputs(params)
    write_outputs(rows, metrics, params)
    SYNTH_METRICS.parent.mkdir(parents=True, exist_ok=True)
    SYNTH_METRICS.write_text(json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    req = metrics["requests"]
    for task, by_lang in metrics["verify"].items():
        for lang, v in by_lang.items() if task != "unverifiable" else ():
            print(f"synth: {task} ({lang}): pass@1 {v['pass@1']['k']}/{v['pass@1']['n']}, pass@n "
                  f"{v['pass@n']['k']}/{v['pass@n']['n']}, yield {v['yield']['k']}/{v['yield']['n']}; rejects {v['rejects']}")
    print(f"synth: {req['requests']} requests ({req['cached']} cached, {req['sent']} sent, {req['errors']} failed) "
          f"in {time.perf_counter() - started:.1f} s; train rows {metrics['train_rows']}, "
          f"val rows {metrics['val_rows']}, rejects {metrics['rejects']}")
    stop = too_few_train_rows(metrics, params.synth.min_train_rows)
    if stop:
        sys.exit(f"error: {stop}")



def main() -> None:
    """`python -m pipeline.stages.synth [--export-batch DIR] [--import-batch PATH ...]`: the stage, or
    its requests as batch files."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.stages.synth",
        description="The synth stage (dvc repro synth); with --export-batch/--import-batch, the teacher's "
                    "requests as OpenAI batch files instead (pipeline/generation/batch.py).")
    parser.add_argument("--export-batch", metavar="DIR",
                        help="write the requests missing from the cache as OpenAI batch JSONL shards in DIR")
    parser.add_argument("--import-batch", metavar="PATH", nargs="+",
                        help="read batch result files (or every result *.jsonl in a folder) into the cache")
    parser.add_argument("--shard-size", type=int, default=SHARD_LINES, help=f"lines per exported shard (default {SHARD_LINES})")
    args = parser.parse_args()
    if not (args.export_batch or args.import_batch):
        run()
        return
    batch(args.export_batch, args.import_batch, args.shard_size, sections_or_exit(**SECTIONS))


def batch(export_dir: str | None, import_paths: list[str] | None, shard_size: int, params: Sections) -> None:
    if import_paths:
        counts = import_results(params, [Path(p) for p in import_paths])
        skipped = ", ".join(f"{r} {n}" for r, n in counts["skipped"].items()) or "none"
        print(f"synth: imported {counts['stored']} answers into {SYNTH_CACHE} "
              f"({counts['pending_before']} requests were pending; skipped: {skipped})")
        for line in counts["where"][:20]:
            print(f"  {line}", file=sys.stderr)
        if len(counts["where"]) > 20:
            print(f"  ... and {len(counts['where']) - 20} more", file=sys.stderr)
        if counts["skipped"].get("not_pending"):
            print("  not_pending: answers to requests this params.yaml does not make (another configuration, "
                  "or a round already imported under other settings)", file=sys.stderr)
    if export_dir:
        export(params, Path(export_dir), shard_size)
    elif import_paths:
        print("synth: next: python -m pipeline.stages.synth --export-batch DIR (the requests that depend on these answers), "
              "or dvc repro synth")


if __name__ == "__main__":
    main()
