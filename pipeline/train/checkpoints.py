"""Checkpoints of a training run in models/checkpoints: which one a rerun resumes from (the run's
fingerprint: configuration, processes, base model and data), and the clean-up once a run finishes."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

from pipeline.config.train import TrainConfig
from pipeline.paths import BASE_DIR, CHECKPOINT_DIR, SFT_DIR
from pipeline.runtime.digest import tree_sha256

RUN_FILE = "run.json"


def run_fingerprint(cfg: TrainConfig, nproc: int, base_dir: Path = BASE_DIR, sft_dir: Path = SFT_DIR) -> str:
    """What a checkpoint must match to be resumed: the train config, the process count, and
    the content of the base model and the SFT rows."""
    parts = {"train": dataclasses.asdict(cfg), "processes": nproc, "base": tree_sha256(base_dir),
             "sft": {s: tree_sha256(sft_dir / f"{s}.jsonl") for s in ("train", "val")}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def checkpoint_to_resume(fingerprint: str, resume: bool, ckpt_dir: Path = CHECKPOINT_DIR) -> str | None:
    """The last complete checkpoint of an interrupted run with this fingerprint, or None after
    clearing `ckpt_dir` for a fresh run (a finished run, another configuration or data, resume off).

    A checkpoint is complete once its trainer_state.json exists (the Trainer writes it last);
    one cut short by the kill is deleted.
    """
    run_file = ckpt_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    if previous.get("status") == "running":
        found = sorted(ckpt_dir.glob("checkpoint-*"), key=lambda d: int(d.name.rsplit("-", 1)[1]))
        complete = _complete(found)
        if complete and resume and previous.get("fingerprint") == fingerprint:
            for partial in found:
                if partial not in complete:
                    print(f"train: removing {partial}, cut short by the interruption", flush=True)
                    shutil.rmtree(partial)
            print(f"train: resuming the interrupted run from {complete[-1]}", flush=True)
            return str(complete[-1])
        if complete:
            why = "train.resume is false" if not resume else "its configuration, base model or data differ"
            print(f"train: not resuming {complete[-1]}: {why}; starting over", flush=True)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True)
    run_file.write_text(json.dumps({"fingerprint": fingerprint, "status": "running"}) + "\n")
    return None


def shared_checkpoint(fingerprint: str, resume: bool, ckpt_dir: Path = CHECKPOINT_DIR) -> str | None:
    """What a node other than node 0 resumes from: the checkpoint node 0 resumes from, when this
    node sees models/checkpoints too (a shared filesystem), read without changing anything;
    None otherwise (a fresh run, or no shared folder: then set train.resume false)."""
    run_file = ckpt_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.exists() else {}
    if not resume or previous.get("status") != "running" or previous.get("fingerprint") != fingerprint:
        return None
    complete = _complete(sorted(ckpt_dir.glob("checkpoint-*"), key=lambda d: int(d.name.rsplit("-", 1)[1])))
    return str(complete[-1]) if complete else None


def _complete(checkpoints: list[Path]) -> list[Path]:
    """The checkpoints the Trainer finished writing (trainer_state.json is its last file)."""
    return [d for d in checkpoints if (d / "trainer_state.json").exists()]


def finish_checkpoints(ckpt_dir: Path = CHECKPOINT_DIR) -> None:
    """A finished run needs no checkpoints: only the run file stays, saying it finished (the
    Trainer's model card goes too)."""
    run_file = ckpt_dir / RUN_FILE
    for child in ckpt_dir.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        elif child != run_file:
            child.unlink()
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()), "status": "finished"}) + "\n")
