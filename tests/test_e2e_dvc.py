"""One end-to-end run of the real pipeline with real `dvc` in a temporary git repository:
`dvc repro` builds everything on the tiny profile, a second `dvc repro` runs nothing,
`dvc exp run -S lr=1e-5` reruns train and evaluate only, and a new dedup threshold reruns
dedup and the stages below it, not crawl or prepare."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from crawlers.sample_sites import GENERATORS

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def _env() -> dict:
    env = dict(os.environ)
    env.update(PATH=f"{BIN}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    env.pop("PYTHONPATH", None)  # the stages must run from the repository itself
    return env


def _run(repo: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{out[-6000:]}")
    return out


def _stages_run(out: str) -> list[str]:
    return re.findall(r"Running stage '([\w@-]+)'", out)


def _project_copy(dest: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file() and not name.startswith(("data/", "models/", "metrics/", "reports/")):
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for stale in ("params.yaml", "dvc.lock"):
        (dest / stale).unlink(missing_ok=True)
    return dest


def test_repro_noop_and_experiment(tmp_path):
    repo = _project_copy(tmp_path / "repo")
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, sys.executable, "-m", "pipeline.params")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "project")

    first = _run(repo, "dvc", "repro")
    stages = _stages_run(first)
    assert set(stages[:3]) == {"crawl@elements_qa", "crawl@bank_gbk", "crawl@standards"}
    assert stages[3:] == ["prepare", "dedup", "base_model", "train", "evaluate"]
    for name, generate in GENERATORS.items():  # dvc repro crawled every sample site in full
        ids = {json.loads(line)["id"] for line in (repo / f"data/raw/{name}.jsonl").read_text().splitlines()}
        assert ids == {f"{name}/{i}" for i in generate(seed=0).valid}
    assert (repo / "models/adapter/adapter_model.safetensors").exists()
    assert (repo / "models/adapter/tokenizer.json").exists()
    assert (repo / "reports/train/plots/metrics/train/loss.tsv").exists()
    assert (repo / "reports/train/plots/metrics/eval/loss.tsv").exists()
    assert (repo / "reports/eval/generations.md").exists()
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    assert metrics["tuned"]["loss"] < metrics["base"]["loss"]
    generations = (repo / "reports/eval/generations.jsonl").read_text().splitlines()
    assert len(generations) == 2 * 10
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "first run")

    second = _run(repo, "dvc", "repro")
    assert _stages_run(second) == []
    assert "didn't change" in second or "up to date" in second

    # The product card's form: a top-level lr that train.lr follows.
    exp = _run(repo, "dvc", "exp", "run", "-S", "lr=1e-5")
    assert _stages_run(exp) == ["train", "evaluate"]
    assert "Stage 'base_model' didn't change" in exp
    # A new dedup threshold reruns dedup and what reads its output, never crawl or prepare.
    exp = _run(repo, "dvc", "exp", "run", "-S", "dedup.threshold=0.6", "-S", "train.lr=2e-5")
    assert _stages_run(exp) == ["dedup", "base_model", "train", "evaluate"]
    assert "Stage 'prepare' didn't change" in exp

    shown = json.loads(_run(repo, "dvc", "exp", "show", "--json"))
    baseline = next(row for row in shown if row["rev"] != "workspace")
    runs = [baseline["data"]] + [e["revs"][0]["data"] for e in baseline["experiments"] or []]
    lrs = sorted(r["params"]["params.yaml"]["data"]["train"]["lr"] for r in runs)
    assert lrs == [pytest.approx(1e-5), pytest.approx(2e-5), pytest.approx(3e-3)]
    for run in runs:
        assert run["metrics"]["metrics/eval.json"]["data"]["tuned"]["loss"] > 0
    # a lower threshold finds more near-duplicates, and exp show has the dedup figures of each run
    removed = {r["params"]["params.yaml"]["data"]["dedup"]["threshold"]:
               r["metrics"]["metrics/dedup.json"]["data"]["near_duplicates"] for r in runs}
    assert removed[0.6] > removed[0.8] >= 54
