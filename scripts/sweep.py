"""A grid of experiments (make sweep): queue one DVC experiment per point of the grid, run the queue,
wait for it, then show what differs between the runs. Guide: docs/sweeps.md.

    python scripts/sweep.py 'lr=1e-5,2e-4' 'train.epochs=1,2'     # 4 experiments
    python scripts/sweep.py --jobs 2 'lr=1e-5,2e-4'                 # two at a time (two GPUs, say)
    python scripts/sweep.py --show                                  # the experiments side by side (make exps)

Each argument is one `-S` of `dvc exp run --queue`: comma-separated values make the grid (Hydra's
sweep syntax; quote them for the shell); experiments queued before run too. Ctrl-C stops the queue's
worker and kills the running experiment; the experiments still queued stay queued (`dvc queue start`
resumes them, `dvc queue remove --queued` drops them).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

# `make exps`: what differs between the experiments, without timestamps and the hashes of the stages' inputs
EXPS_SHOW = ["dvc", "exp", "show", "--only-changed",
             "--drop", r"^(Created|State|Executor)$|^(data|models|reports|metrics|pipeline)/[^:]*$"]


def _dvc(*args: str, capture: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], text=True, capture_output=capture)


def _queue_status() -> list[tuple[str, str]]:
    """(task, status) of every task `dvc queue status` lists (its first and last columns)."""
    out = _dvc("queue", "status", capture=True).stdout
    return [(cells[0], cells[-1]) for cells in map(str.split, out.splitlines())
            if len(cells) >= 3 and re.fullmatch(r"[0-9a-f]{7,}", cells[0])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", metavar="KEY=V1,V2", help="one -S override each; commas make the grid")
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at once (default 1)")
    parser.add_argument("--show", action="store_true", help="only show the experiments side by side (make exps)")
    args = parser.parse_args(argv)
    if args.show:
        return _dvc(*EXPS_SHOW[1:]).returncode
    if not args.sets:
        parser.error("expected at least one KEY=V1,V2")
    for item in args.sets:
        if "=" not in item:
            parser.error(f"{item!r}: expected key=value[,value...]")

    before = {task for task, _ in _queue_status()}
    queued = _dvc("exp", "run", "--queue", *[x for item in args.sets for x in ("-S", item)])
    if queued.returncode != 0:
        return queued.returncode
    ids = {task for task, _ in _queue_status()} - before
    print(f"sweep: {len(ids)} experiment(s) queued; running the queue {args.jobs} at a time", flush=True)
    try:
        # --run-all starts the queue's workers (as `dvc queue start` does) and follows each experiment's
        # log to its end. It waits without polling the workers: `dvc queue status` in a loop races
        # with a worker over the queue's files and can kill it (kombu's filesystem transport).
        _dvc("exp", "run", "--run-all", "--jobs", str(args.jobs))
    except KeyboardInterrupt:
        print("\nsweep: interrupted; killing the running experiment and stopping the queue's workers", file=sys.stderr)
        # stop first (no worker takes another experiment), then kill what runs: the queued ones stay queued
        _dvc("queue", "stop", capture=True)
        running = [task for task, status in _queue_status() if status == "Running"]  # --run-all ran the whole queue
        if running:
            _dvc("queue", "kill", *running)
        return 130
    failed = [(task, status) for task, status in _queue_status() if task in ids and status != "Success"]
    for task, status in failed:
        print(f"sweep: experiment {task}: {status}; its log: dvc queue logs {task}", file=sys.stderr)
    print(" ".join(EXPS_SHOW[:4]) + " (timestamps and the hashes of stage inputs left out):", flush=True)
    _dvc(*EXPS_SHOW[1:])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
