"""One end-to-end run of the real pipeline with real `dvc` in a temporary git repository:
`dvc repro` builds everything on the tiny profile (with one imported dataset beside the
crawls), a second `dvc repro` runs nothing,
`make push` to a local remote and `make pull` into a fresh clone bring every output over,
an edit to library code reruns the stages that import it and no other, a re-crawl with a
fresh HTTP cache reruns the crawls and prepare only,
`dvc exp run -S lr=1e-5` reruns train and the stages below it only, a judge setting reruns
the judge and the report only, a new dedup threshold reruns dedup, not crawl or prepare,
and leaves the stages below it out of date, and a dataset's setting puts its import out of date
and no crawl. Beside it, the teacher's requests exported as an OpenAI batch file, run by vLLM's
run_batch and imported, come back with the engine backend's answers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SITES, git_dvc_env

from crawlers.sample_sites import GENERATORS

pytestmark = pytest.mark.e2e


EVAL_STAGES = ["evaluate", "judge", "report"]
DATASET = "messages_example"
EXPORT_STAGES = ["merge", "convert", "quantize", "verify_export"]


def _env() -> dict:
    env = git_dvc_env()
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("PYTHONPATH", None)  # the stages must run from the repository itself
    # vLLM's engine in the stage's own process, not in an engine-core and a worker process: this test
    # checks what DVC reruns, and it starts an engine about ten times (synth, evaluate and judge in the
    # first run, evaluate and judge in each of the three lr experiments); on 2 cores spawning the two
    # processes is ~35 s of each start. vLLM's default (the product's) runs in the stage tests.
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
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
    # the tiny profile as the copy's default: `make params` and every `dvc exp run -S` compose it
    config = dest / "conf/config.yaml"
    text = config.read_text()
    assert "\n  - profile: cpu\n" in text
    text = text.replace("\n  - profile: cpu\n", "\n  - profile: tiny\n")
    # and one imported dataset beside the crawls (conversations with a tool call)
    text = text.replace("\n  - prepare: default\n", f"\n  - dataset@datasets.{DATASET}: {DATASET}\n  - prepare: default\n")
    config.write_text(text)
    return dest


def _check_synth(repo: Path) -> None:
    """The tiny teacher on vLLM produced all three task kinds, with provenance, and every
    search row's tool response holds passages of the local index."""
    import sqlite3

    metrics = json.loads((repo / "metrics/synth.json").read_text())
    assert metrics["teacher"]["backend"] == "vllm" and metrics["requests"]["sent"] > 0
    rows = [json.loads(line) for line in (repo / "data/sft/train.jsonl").read_text().splitlines()]
    tasks = {r["task"] for r in rows}
    assert tasks - {"conversation"} == {"plain", "think", "search", "qgen", "text"}
    # knowledge rows: each train question with its answer, each train section (the random teacher's
    # statements are all rejected, by reason)
    forms = {r["fact"]["form"] for r in rows if r["task"] == "text"}
    assert {"qa", "section"} <= forms and metrics["verify"]["text"]
    for row in rows:
        if row["task"] not in ("plain", "conversation") and not (row["task"] == "text" and row["provenance"] is None):
            assert len(row["provenance"]["template_sha256"]) == 64 and row["provenance"]["teacher"] == "tiny"
        if row["task"] == "conversation":  # an imported one: lineage back to its file and line
            assert row["source_ids"][0].startswith(f"{DATASET}/") and row["urls"][0].startswith("userdata/examples/")
        else:
            assert row["source_ids"] and row["urls"][0].startswith("http://127.0.0.1:")
    imported = [r for split in ("train", "val", "test")
                for r in map(json.loads, (repo / f"data/sft/{split}.jsonl").read_text().splitlines()) if r["task"] == "conversation"]
    assert len(imported) == json.loads((repo / f"metrics/import/{DATASET}.json").read_text())["imported"] == 3
    think = next(r for r in rows if r["task"] == "think")["messages"][-1]["content"]
    assert think.startswith("<think>\n") and "\n</think>\n" in think
    index = sqlite3.connect(repo / "data/search/index.sqlite")
    indexed = {i for (i,) in index.execute("SELECT id FROM passages")}
    calls = [r for r in rows if r["task"] == "search" and r["search"]["needs_search"]]
    no_calls = [r for r in rows if r["task"] == "search" and not r["search"]["needs_search"]]
    assert calls and no_calls
    for row in calls:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "assistant"]
        assert set(row["search"]["passages"]) <= indexed
        for n, pid in enumerate(row["search"]["passages"], start=1):
            url = index.execute("SELECT url FROM passages WHERE id = ?", (pid,)).fetchone()[0]
            assert f"[{n}] " in row["messages"][3]["content"] and f"({url})" in row["messages"][3]["content"]
    assert all("tool_calls" not in m for r in no_calls for m in r["messages"])
    from datasets import load_dataset  # the format users load it with

    loaded = load_dataset("json", data_files={"train": str(repo / "data/sft/train.jsonl")}, cache_dir=str(repo.parent / "hf-cache"))
    assert loaded["train"].num_rows == len(rows) and "tools" in loaded["train"].column_names


def _check_batch(repo: Path, tmp_path: Path) -> None:
    """The teacher's requests through OpenAI batch files and vLLM's run_batch (on the tiny model)
    come back with the answers the vllm engine backend gave in `dvc repro`: exported, run,
    imported, nothing left to export, and every answer equal to the engine's. One round: qgen and
    the search answers (later rounds) are off, so that one run_batch engine starts."""
    import sqlite3

    import yaml

    from pipeline.config.params import load_params
    from pipeline.generation.batch import run_batch_command
    from pipeline.generation.engines import vllm_cpu_env

    ws = tmp_path / "batch"
    for sub in ("data/dedup", "data/search", "models/base", "conf/synth/prompts"):
        shutil.copytree(repo / sub, ws / sub)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["synth"].update(max_sources=4)  # a subset of the run's sources: the same requests
    params["synth"]["qgen"]["enabled"] = params["synth"]["search_answer"]["enabled"] = False
    (ws / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    env = vllm_cpu_env({**_env(), "PYTHONPATH": str(ROOT)})

    def synth(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "pipeline.stages.synth", *args], cwd=ws, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc.stdout

    out = synth("--export-batch", "batch")
    assert "exported" in out and (ws / "batch/requests-00000.jsonl").exists()
    cfg = load_params(ws / "params.yaml")
    proc = subprocess.run(run_batch_command(cfg.teacher, cfg.synth.seed, "batch/requests-00000.jsonl", "batch/results-00000.jsonl"),
                          cwd=ws, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = synth("--import-batch", "batch", "--export-batch", "batch")
    assert "nothing to export" in out and not list((ws / "batch").glob("requests-*")), out
    answers = dict(sqlite3.connect(ws / "data/synth_cache/requests.sqlite").execute("SELECT key, outputs FROM responses"))
    engine = dict(sqlite3.connect(repo / "data/synth_cache/requests.sqlite").execute("SELECT key, outputs FROM responses"))
    assert len(answers) >= 8  # 4 sources a split; the closed-book banks' questions send no search request
    assert {k: engine.get(k) for k in answers} == answers


def _check_evaluation(repo: Path) -> None:
    """Every metric computed for base and tuned; predictions, judgments, report and plots written."""
    metrics = json.loads((repo / "metrics/eval.json").read_text())
    sft_test = [json.loads(line) for line in (repo / "data/sft/test.jsonl").read_text().splitlines()]
    # the teacher's questions from the test split's sections are asked beside the crawled ones
    written = {"written"} if any(r["task"] == "qgen" and r["valid"] for r in sft_test) else set()
    sets = {"questions", "tools", "exam:elements_exam", "exam:general_mc"} | written
    assert metrics["backend"] == "vllm" and metrics["tuned"]["loss"] < metrics["base"]["loss"]
    # The tuned model learned its end-of-turn token: most greedy generations stop on their own.
    assert metrics["tuned"]["stop_rate"] > 0.5 >= metrics["base"]["stop_rate"]
    for model in ("base", "tuned"):
        m = metrics[model]
        assert 0 <= m["think"]["rate"] <= 1 and 0 <= m["tools"]["decision_accuracy"] <= 1
        assert sum(m["tools"]["confusion"].values()) == metrics["prompts"]["tools"] > 0
        assert m["exam"]["questions"] > 0 and 0 <= m["exam"]["accuracy"] <= 1 and m["exam"]["by_chapter"]
        assert m["exam_sets"]["elements_exam"]["questions"] > 0
        # knowledge by log-likelihood: every set, framing and shot count, each with n and an interval
        assert set(m["mc"]) == {"questions", "elements_exam", "general_mc"}
        for framings in m["mc"].values():
            for framing in ("cloze", "plain", "chat"):
                for shots in ("0shot", "5shot"):
                    entry = framings[framing][shots]
                    assert entry["n"] > 0 and 0 <= entry["acc"] <= 1 and 0 <= entry["acc_norm"] <= 1
                    assert entry["ci95"][0] <= entry["acc"] <= entry["ci95"][1]
                    assert 0 < entry["chance"] <= 0.5  # 1 / options, averaged: what a blind guess scores
        general = m["mc"]["general_mc"]["cloze"]["0shot"]
        assert general["n"] >= 500 and general["chance"] == 0.25
        assert metrics["prompts"]["exam:general_mc"] == 16  # eval.max_exam_prompts: answered in words
        assert set(m["think"]["by_set"]) == sets
        assert all({"rate", "n", "ci95"} <= set(v) for v in m["think"]["by_set"].values())
        assert all({"exact", "contains", "f1", "n"} <= set(v) for v in m["free_form"].values())
        answer = m["search_answer"]
        assert answer["n"] == metrics["prompts"]["tools"] and {"accuracy", "ci95", "rounds"} <= set(answer)
    # Whether the tiny random model learns to call is left out: trained on the random teacher's rows
    # it answered every search prompt with a bare `</tool_call>`. Calls, their validity and the
    # search loop are scored on a scripted model in tests/stages/test_evaluate.py and tests/unit/test_scoring.py,
    # and on the default profile in metrics/eval.json.
    comparison = metrics["comparison"]
    assert metrics["general_sets"] == ["general_mc"]
    assert {"mc.general_mc.plain.0shot.acc", "mc.general_mc.cloze.0shot.acc_norm", "think.questions", "search_answer",
            "knowledge.cloze", "knowledge.rank_acc1", "knowledge.mrr"} <= set(comparison)
    assert metrics["knowledge"]["items"]["forward"] > 0 and "cloze" in metrics["knowledge"]["power"]
    assert all({"delta", "ci95", "p_value", "significant"} <= set(c) for c in comparison.values())
    rows = [json.loads(line) for line in (repo / "reports/eval/predictions.jsonl").read_text().splitlines()]
    assert {r["set"] for r in rows} == sets
    assert all(r["source_url"] for r in rows)  # lineage: back to the page or the eval-set line
    # a parsed call went on to a search and another turn (tests/stages/test_evaluate.py scripts the model);
    # the random tiny model's calls are rarely JSON, and those end the turn, as in the chat client
    for r in (r for r in rows if r["set"] == "tools"):
        called = bool(r["parsed"]["tool_calls"])
        assert (r["rounds"] >= 1 or r["end"] == "context_full") if called else r["rounds"] == 0
        assert len(r["tool_responses"]) >= r["rounds"] and len(r["turns"]) == r["rounds"] + 1
    judged = json.loads((repo / "metrics/judge.json").read_text())
    # 16 questions: 2 grades, 2 pairwise orders, 3 control grades, 2 control orders each
    assert judged["items"] == 16 and judged["requests"]["sent"] == 16 * 9
    controls = judged["controls"]
    assert controls["n"] == 48 and controls["pairs"] == 16 and isinstance(judged["informative"], bool)
    # the random tiny judge cannot tell the reference from a wrong answer
    assert judged["informative"] is False
    assert judged["single"]["tuned"]["rated"] + judged["single"]["tuned"]["unparsed"] == 16
    assert "base-vs-tuned" in (repo / "reports/eval.html").read_text()
    assert "| held-out loss |" in (repo / "reports/eval.md").read_text()
    plots = json.loads(_run(repo, "dvc", "plots", "show", "--json"))
    assert {"loss", "tool decisions (base)", "tool decisions (tuned)"} <= set(plots["data"])


def _check_export(repo: Path, quants: list[str]) -> None:
    """The trained model's full-precision and q8_0 GGUFs passed every llama.cpp check
    (pipeline/export/verify.py), and the served one is the smallest that passed. The random tiny
    model's q4_k_m may lose some of its format (near-ties flip at 4 bits): reported, not fatal."""
    report = json.loads((repo / "metrics/export.json").read_text())
    assert report["passed"] and set(report["gguf"]) == {"f32", *quants}
    assert report["gguf"]["f32"]["passed"] and report["gguf"]["q8_0"]["passed"]
    passing = [k for k, r in report["gguf"].items() if r["passed"]]
    served = report["served"]
    assert served["passed"] and served["type"] == min(passing, key=lambda k: report["gguf"][k]["size_mib"])
    assert all(": format: " in f and not f.startswith(f"distillery-{served['type']}.") for f in report["failures"])
    full = report["gguf"]["f32"]
    assert full["loads"] and full["template_and_eos"] and full["stops_at_end_of_turn"]
    assert full["tokenizer"]["identical"] == full["tokenizer"]["strings"] >= 12
    assert full["top1_agreement_with_ties"] == 1.0 and full["generation_agreement"] == 1.0
    assert full["generation"]["stopped"] > 0  # the tuned model ends its turns in llama.cpp too
    assert sorted(p.name for p in (repo / "models/gguf/quant").iterdir()) == sorted(
        f"distillery-{q}.{ext}" for q in quants for ext in ("gguf", "Modelfile"))


def _files(root: Path) -> dict[str, str]:
    """sha256 of every file under data/ and models/, but a training run's checkpoints and a
    crawl's resumable state (scratch, in .gitignore, not DVC outputs)."""
    import hashlib

    out = {}
    for top in ("data", "models"):
        for path in sorted((root / top).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not rel.startswith(("models/checkpoints/", "data/crawl_state/")):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _check_remote(repo: Path, tmp_path: Path) -> None:
    """make remote + make push here; a fresh clone + make pull gets data/, models/ and the
    metrics with equal checksums, runs no stage, and `dvc status` is clean there."""
    remote = tmp_path / "remote"
    _run(repo, "make", "remote", f"REMOTE={remote}")
    assert f"url = {remote}" in (repo / ".dvc/config.local").read_text()
    _run(repo, "make", "push")
    clone = tmp_path / "clone"
    _run(tmp_path, "git", "clone", "-q", str(repo), str(clone))
    pulled = _run(clone, "make", "pull", f"REMOTE={remote}")
    assert _stages_run(pulled) == [] and "fetched" in pulled
    assert json.loads(_run(clone, "dvc", "status", "--json")) == {}
    here, there = _files(repo), _files(clone)
    assert {"models/adapter/adapter_model.safetensors", "data/sft/train.jsonl", "models/gguf/quant/distillery-q8_0.gguf",
            "data/synth_cache/requests.sqlite", "data/search/index.sqlite"} <= set(there)
    assert there == here
    for name in ("eval", "export", "train"):  # metrics come with git
        assert (clone / f"metrics/{name}.json").read_bytes() == (repo / f"metrics/{name}.json").read_bytes()
    assert any((clone / ".dvc/cache/runs").rglob("*"))  # the run-cache came along
    shutil.rmtree(clone)


def _check_library_edit(repo: Path) -> None:
    """A change to library code reruns the stages that import it, found by what `dvc repro`
    runs: pipeline/generation/teacher.py is imported by synth and judge, by no stage above synth. Synth
    reruns from its request cache with the same rows, so nothing between it and the judge runs;
    the judge reruns from its cache (its metrics count the cached requests, so the report too)."""
    teacher = repo / "pipeline/generation/teacher.py"
    text = teacher.read_text()
    assert "def request_seed(" in text
    teacher.write_text(text.replace("def request_seed(seed: int, task: str, source: str) -> int:\n",
                                    "def request_seed(seed: int, task: str, source: str) -> int:\n"
                                    "    # edited by the end-to-end test\n", 1))
    sft = {p.name: p.read_bytes() for p in (repo / "data/sft").iterdir()}
    out = _run(repo, "dvc", "repro")
    assert _stages_run(out) == ["synth", "judge", "report"]
    assert {p.name: p.read_bytes() for p in (repo / "data/sft").iterdir()} == sft
    assert json.loads((repo / "metrics/synth.json").read_text())["requests"]["sent"] == 0
    _run(repo, "git", "commit", "-q", "-am", "library edit")


def _check_recrawl(repo: Path) -> None:
    """A re-crawl of the unchanged sample pages with a fresh HTTP cache (so a new fetch date in
    data/raw) reruns the crawls and prepare, and nothing after prepare: the date stays in data/raw."""
    import hashlib

    def digest(folder: str) -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted((repo / folder).glob("*.jsonl")))).hexdigest()

    raw, clean = digest("data/raw"), digest("data/clean")
    for name in SITES:
        shutil.rmtree(repo / "data/httpcache" / name)
    out = _run(repo, "dvc", "repro")
    stages = _stages_run(out)
    assert set(stages) == {"crawl@elements_qa", "crawl@bank_gbk", "crawl@standards", "prepare"}
    assert stages[-1] == "prepare" and "Stage 'dedup' didn't change" in out
    assert digest("data/raw") != raw and digest("data/clean") == clean
    crawled = json.loads((repo / "metrics/crawl/standards.json").read_text())
    assert crawled["pages_fetched"] > 0 and crawled["pages_from_cache"] == 0
    _run(repo, "git", "commit", "-q", "-am", "re-crawl")


def test_repro_noop_and_experiment(tmp_path):
    repo = _project_copy(tmp_path / "repo")
    _run(repo, "git", "init", "-q", "-b", "main")
    _run(repo, sys.executable, "-m", "pipeline.config.compose")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "project")

    first = _run(repo, "dvc", "repro")
    stages = _stages_run(first)
    assert set(stages[:4]) == {"crawl@elements_qa", "crawl@bank_gbk", "crawl@standards", f"import@{DATASET}"}
    assert stages[4:6] == ["prepare", "dedup"]
    assert stages[6:8] in (["base_model", "search_index"], ["search_index", "base_model"])
    assert stages[8:10] == ["synth", "train"]
    assert set(stages[10:]) == {*EVAL_STAGES, *EXPORT_STAGES, "summary"} and len(stages) == 10 + 8
    for group in (EVAL_STAGES, EXPORT_STAGES):  # each in its own order, the two groups in any
        assert [s for s in stages if s in group] == group
    assert stages[-1] == "summary"  # it reads evaluate's, train's and verify_export's metrics
    for name in SITES:  # dvc repro crawled every sample site in full
        ids = {json.loads(line)["id"] for line in (repo / f"data/raw/{name}.jsonl").read_text().splitlines()}
        assert ids == {f"{name}/{i}" for i in GENERATORS[name](seed=0).valid}
    assert (repo / "models/adapter/adapter_model.safetensors").exists()
    assert (repo / "models/adapter/tokenizer.json").exists()
    assert (repo / "reports/train/plots/metrics/train/loss.tsv").exists()
    assert (repo / "reports/train/plots/metrics/eval/loss.tsv").exists()
    _check_synth(repo)
    _check_batch(repo, tmp_path)
    _check_evaluation(repo)
    _check_export(repo, ["q8_0", "q4_k_m"])
    trained = json.loads((repo / "metrics/train.json").read_text())
    assert trained["packing"] and trained["tokens_per_s"] > 0 and trained["peak_rss_mib"] > 0
    assert json.loads((repo / "models/checkpoints/run.json").read_text())["status"] == "finished"
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-q", "-m", "first run")

    second = _run(repo, "dvc", "repro")
    assert _stages_run(second) == []
    assert "didn't change" in second or "up to date" in second

    _check_remote(repo, tmp_path)
    _check_library_edit(repo)
    _check_recrawl(repo)

    # Another quantization reruns quantize and verify_export only: no merge, no conversion.
    exp = _run(repo, "dvc", "exp", "run", "-S", "export.quant=[q8_0]")
    assert _stages_run(exp) == ["quantize", "verify_export", "summary"]
    _check_export(repo, ["q8_0"])
    # Back to the committed run (the experiment's results stay in `dvc exp show`): each
    # experiment below changes one thing against it.
    _run(repo, "git", "reset", "--hard", "-q")
    _run(repo, "dvc", "checkout", "-q")
    assert json.loads(_run(repo, "dvc", "status", "--json")) == {}

    # Judge settings rerun the judge (from its cache: 8 of the 16 questions) and the report only.
    exp = _run(repo, "dvc", "exp", "run", "-S", "judge.max_items=8")
    assert _stages_run(exp) == ["judge", "report"]  # the judge is not in the summary
    judged = json.loads((repo / "metrics/judge.json").read_text())
    assert judged["items"] == 8 and judged["requests"]["sent"] == 0
    # The product card's form: a top-level lr that train.lr follows.
    exp = _run(repo, "dvc", "exp", "run", "-S", "lr=1e-5")
    assert _stages_run(exp)[0] == "train" and set(_stages_run(exp)[1:]) == {*EVAL_STAGES, *EXPORT_STAGES, "summary"}
    assert "Stage 'base_model' didn't change" in exp
    # A new dedup threshold reruns dedup, never crawl or prepare, and dvc then lists the stages
    # that read dedup's output as changed (the first repro above ran everything below them).
    before_dedup = json.loads((repo / "metrics/dedup.json").read_text())["near_duplicates"]
    exp = _run(repo, "dvc", "exp", "run", "-S", "dedup.threshold=0.6", "dedup")
    assert _stages_run(exp) == ["dedup"] and "Stage 'prepare' didn't change" in exp
    status = json.loads(_run(repo, "dvc", "status", "--json"))
    assert {"base_model", "search_index", "synth", "evaluate"} <= set(status)
    assert not {"prepare", "dedup"} & set(status)
    # A dataset's setting, composed into params.yaml as -S does: dvc lists that import (and prepare,
    # which reads the datasets section) as changed, and nothing upstream of it: no crawl.
    _run(repo, sys.executable, "-m", "pipeline.config.compose", f"datasets.{DATASET}.max_rows=2")
    status = json.loads(_run(repo, "dvc", "status", "--json"))
    assert f"import@{DATASET}" in status and not [s for s in status if s.startswith("crawl@")]
    assert not [s for s in status if s.startswith("import@") and s != f"import@{DATASET}"]

    removed_06 = json.loads((repo / "metrics/dedup.json").read_text())["near_duplicates"]
    assert removed_06 > before_dedup >= 54  # a lower threshold finds more near-duplicates

    shown = json.loads(_run(repo, "dvc", "exp", "show", "--json"))
    baseline = next(row for row in shown if row["rev"] != "workspace")
    runs = [baseline["data"]] + [e["revs"][0]["data"] for e in baseline["experiments"] or []]
    lrs = sorted(r["params"]["params.yaml"]["data"]["train"]["lr"] for r in runs)
    assert lrs == [pytest.approx(1e-5)] + [pytest.approx(3e-3)] * 4
    for run in runs:  # the summary is the one metrics file: `dvc exp show` leads with it
        assert set(run["metrics"]) == {"metrics/summary.json"}
        summary = run["metrics"]["metrics/summary.json"]["data"]
        assert summary["loss"]["tuned"] > 0 and summary["gguf"]["passed"] is True
        assert 0 <= summary["think"]["rate"] <= 1 and summary["think"]["n"] > 0
        assert summary["knowledge_cloze"]["n"] > 0 and summary["training"]["tokens_per_s"] > 0

    _check_sweep(repo, tmp_path)


def _metric_leaves(tree, prefix: str = "") -> list[str]:
    if isinstance(tree, dict):
        return [leaf for key, value in tree.items() for leaf in _metric_leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def _check_sweep(repo: Path, tmp_path: Path) -> None:
    """A two-point grid through `make sweep` (dvc exp run --queue, dvc queue start): each experiment
    runs train and the stages below it, nothing above; `dvc exp show` has few metric columns and,
    with --only-changed, few columns in all, lr and the summary among them; `dvc plots diff` draws
    both loss curves on one page; `dvc exp push` and `dvc exp pull` share the experiments through a
    git remote and the DVC remote."""
    _run(repo, "git", "reset", "--hard", "-q")
    # the dataset setting composed above is the kept choice (conf/selection/current.yaml, not committed
    # here): plain `make params` drops it, so the sweep's experiments differ from the commit in lr alone
    _run(repo, sys.executable, "-m", "pipeline.config.compose")
    assert _run(repo, "git", "status", "--porcelain", "--untracked-files=no") == ""
    _run(repo, "dvc", "checkout", "-q")
    _run(repo, "dvc", "exp", "remove", "-A")  # the experiments above are checked; a user's sweep starts here
    try:
        out = _run(repo, "make", "sweep", "SET=lr=1e-4,2e-4")
    finally:  # a failure above leaves no queue worker or experiment running
        subprocess.run(["dvc", "queue", "stop", "--kill"], cwd=repo, env=_env(), capture_output=True)
    tasks = re.findall(r"^([0-9a-f]{7,})\s+(\S+)\s+.*Success\s*$", _run(repo, "dvc", "queue", "status"), re.M)
    assert len(tasks) == 2, out
    for task, _name in tasks:
        log = _run(repo, "dvc", "queue", "logs", task)
        ran = _stages_run(log)
        assert ran[0] == "train" and set(ran[1:]) == {*EVAL_STAGES, *EXPORT_STAGES, "summary"}, log[-3000:]
        assert "Stage 'synth' didn't change" in log and "Stage 'base_model' didn't change" in log
    shown = json.loads(_run(repo, "dvc", "exp", "show", "--json"))
    baseline = next(row for row in shown if row["rev"] != "workspace")
    runs = {e["revs"][0]["name"]: e["revs"][0]["data"] for e in baseline["experiments"] or []}
    by_lr = {r["params"]["params.yaml"]["data"]["lr"]: r for r in runs.values()}
    assert {1e-4, 2e-4} <= set(by_lr), sorted(by_lr)
    for lr in (1e-4, 2e-4):
        leaves = _metric_leaves(by_lr[lr]["metrics"])
        assert len(leaves) <= 30 and any(leaf.endswith("loss.tuned") for leaf in leaves), leaves
    header = _run(repo, "dvc", "exp", "show", "--csv", "--only-changed").splitlines()[0].split(",")
    # the summary's changed figures (general_cloze and knowledge_cloze among them), lr, and DVC's
    # name, hash and output columns: 32 when the summary grew to 30 leaves
    assert len(header) <= 34 and "lr" in header and "loss.tuned" in header, header
    names = [name for name, r in runs.items() if r["params"]["params.yaml"]["data"]["lr"] in (1e-4, 2e-4)]
    assert len(names) == 2, runs.keys()
    # both loss curves on one page
    _run(repo, "dvc", "plots", "diff", *names, "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots/index.html").read_text()
    assert "Train and eval loss" in page and all(name in page for name in names)
    # shared like data: the git ref to a git remote, the outputs to the DVC remote (make remote, above)
    origin = tmp_path / "origin.git"
    _run(tmp_path, "git", "init", "-q", "--bare", str(origin))
    _run(repo, "git", "remote", "add", "origin", str(origin))
    _run(repo, "git", "push", "-q", "origin", "main")
    _run(repo, "dvc", "exp", "push", "origin", names[0])
    clone = tmp_path / "exp-clone"
    _run(tmp_path, "git", "clone", "-q", "-b", "main", str(origin), str(clone))
    _run(clone, "make", "remote", f"REMOTE={tmp_path / 'remote'}")
    _run(clone, "dvc", "exp", "pull", "origin", names[0])
    pulled = json.loads(_run(clone, "dvc", "exp", "show", "--json"))
    there = {e["revs"][0]["name"]: e["revs"][0]["data"] for row in pulled if row["rev"] != "workspace"
             for e in row["experiments"] or []}
    assert there[names[0]]["metrics"] == runs[names[0]]["metrics"]
    _run(clone, "dvc", "exp", "apply", names[0])
    _run(repo, "dvc", "exp", "apply", names[0])
    adapter = "models/adapter/adapter_model.safetensors"
    assert (clone / adapter).read_bytes() == (repo / adapter).read_bytes()
