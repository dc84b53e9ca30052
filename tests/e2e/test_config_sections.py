"""Editing one section's schema reruns only the stages that read that section: in a temporary
copy of the project with every stage recorded in dvc.lock (placeholder data, nothing run),
appending to pipeline/config/<section>.py makes `dvc status` name exactly the stages whose
params.yaml sections include it, and the shared checker (pipeline/config/__init__.py) every stage."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, git_dvc_env

def _run(repo: Path, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=git_dvc_env(), capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """The project's code, dvc.yaml and params.yaml in a git repo, each stage's outputs and data
    deps as placeholders, and dvc.lock written by `dvc commit` (no stage runs)."""
    repo = tmp_path_factory.mktemp("sections")
    for name in ("pipeline", "crawlers", "evalsets", "userdata"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, repo / name)
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        paths = {Path(o.fs_path) for stage in dvc_repo.index.stages for o in [*stage.outs, *stage.deps]}
    for path in sorted(paths):
        if path.exists():
            continue
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}\n" if path.suffix == ".json" else "placeholder\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "placeholder").write_text("placeholder\n")
    _run(repo, "dvc", "commit", "-f", "-q")
    assert json.loads(_run(repo, "dvc", "status", "--json")) == {}
    return repo


def _stale_after_edit(repo: Path, module: str) -> set[str]:
    path = repo / "pipeline" / "config" / module
    before = path.read_text(encoding="utf-8")
    path.write_text(before + "\n# an edit\n", encoding="utf-8")
    try:
        status = json.loads(_run(repo, "dvc", "status", "--json"))
    finally:
        path.write_text(before, encoding="utf-8")
    return {name.split("@")[0] for name in status}


@pytest.mark.parametrize("module, stages", [
    ("train.py", {"train", "evaluate"}),
    ("synth.py", {"synth"}),
    ("judge.py", {"judge"}),
    ("export.py", {"convert", "quantize", "verify_export"}),
    ("dedup.py", {"dedup"}),
    ("model.py", {"base_model", "train"}),
])
def test_a_section_edit_reruns_only_the_stages_that_read_it(recorded, module, stages):
    assert _stale_after_edit(recorded, module) == stages


def test_the_shared_checker_reruns_every_stage_that_reads_params(recorded):
    from dvc.repo import Repo

    with Repo(str(recorded)) as dvc_repo:
        # report and summary read only other stages' files, no params
        reading = {stage.name.split("@")[0] for stage in dvc_repo.index.stages
                   if stage.name not in ("report", "summary")}
    assert _stale_after_edit(recorded, "__init__.py") == reading
