"""Shared fixtures: the real configuration, composed and shrunk; a tiny tokenizer; helpers
to run stages as subprocesses (Scrapy's reactor starts once per process)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def stage_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env["PATH"]
    return env


def git_dvc_env() -> dict:
    """The environment for `git` and `dvc` commands in a temporary repository: this venv's
    executables first, no analytics, a committer identity."""
    env = dict(os.environ)
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    return env


def run_stage(module: str, cwd: Path, check: bool = True, args: list[str] = ()) -> subprocess.CompletedProcess:
    """Run `python -m <module> [args]` in `cwd` as DVC would; on failure show its output."""
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=stage_env(),
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        pytest.fail(f"{module} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def run_stages(modules: list[str], cwd: Path) -> None:
    """Run several stages one after another in one `python` process (each as `python -m` would:
    its `__main__`), which spares each one's own start-up (torch, transformers) in fixtures."""
    code = "import runpy, sys\nfor m in sys.argv[1:]:\n    runpy.run_module(m, run_name='__main__', alter_sys=True)"
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=cwd, env=stage_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"{modules} exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")


def openai_reply(handler, model: str, text: str | list[str]) -> None:
    """Answer an http.server request like an OpenAI-compatible chat completions endpoint (for
    tests that script a teacher's or a judge's replies); a list of texts is n choices."""
    import json

    texts = [text] if isinstance(text, str) else text
    body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                       "choices": [{"index": i, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": t}}
                                   for i, t in enumerate(texts)]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def compose_params(dest: Path, *overrides: str) -> Path:
    """Compose the real conf/ into `dest`/params.yaml, with Hydra overrides; the tiny profile
    unless an override names another (the default profile, cpu, is for users' runs). The choice a
    developer's own `make params` left in conf/selection/ is left out (~selection)."""
    from pipeline.config.compose import compose

    dest.mkdir(parents=True, exist_ok=True)
    out = dest / "params.yaml"
    if not any(o.startswith("profile=") for o in overrides):
        overrides = ("profile=tiny", *overrides)
    compose(["~selection", *overrides], out=out, conf_dir=ROOT / "conf")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server (Debian's package) on a free loopback port, stopped afterwards; skipped
    without it on a laptop, failed under CI=true."""
    exe = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not installed; .ci/run installs Debian's redis-server package")
        pytest.skip("redis-server not installed (apt-get install redis-server, or make setup-dev)")
    import redis

    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)
    yield port, client
    client.close()
    proc.terminate()
    proc.wait(timeout=20)


SITES = ("elements_qa", "bank_gbk", "standards")


@pytest.fixture(scope="session")
def crawled_workspace(tmp_path_factory) -> Path:
    """A workspace where every sample site was crawled (on free ports), then prepare and
    dedup have run (with the eval sets of evalsets/)."""
    ws = tmp_path_factory.mktemp("ws")
    compose_params(ws, *(f"sites.{name}.sample.port=0" for name in SITES))
    shutil.copytree(ROOT / "evalsets", ws / "evalsets")
    for name in SITES:
        run_stage("pipeline.crawl", ws, args=[name])
    run_stage("pipeline.stages.prepare", ws)
    run_stage("pipeline.stages.dedup", ws)
    return ws


@pytest.fixture(scope="session")
def tiny_tokenizer(crawled_workspace, tmp_path_factory):
    """The tiny profile's tokenizer, trained on the crawled corpus by base_model's own code."""
    from transformers import LlamaTokenizer

    from pipeline.models.base import configure_tokenizer, corpus_lines, train_sentencepiece

    out = tmp_path_factory.mktemp("tok")
    lines = corpus_lines(crawled_workspace / "data/dedup/split.jsonl", "You are a careful domain expert.")
    train_sentencepiece(lines, 1200, out)
    return configure_tokenizer(LlamaTokenizer.from_pretrained(out, add_bos_token=False))


def need_qwen3_tokenizer(name: str = "qwen3") -> Path:
    """A pinned real tokenizer (Qwen3's by default) from the cache `make setup-dev` fills; skipped
    without it on a laptop, failed under CI=true (like redis-server)."""
    from pipeline.models.tokenizers import MissingTokenizer, check

    try:
        return check(name)
    except MissingTokenizer as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{exc} (.ci/run runs make setup-dev, which fetches it)")
        pytest.skip(str(exc))


def random_adapter(ws: Path, r: int = 8) -> None:
    """models/adapter: LoRA weights random and non-zero on models/base, with its tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(ws / "models/base", dtype=torch.float32)
    lora = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(ws / "models/adapter")
    AutoTokenizer.from_pretrained(ws / "models/base").save_pretrained(ws / "models/adapter")


@pytest.fixture(scope="session")
def qwen_exported(crawled_workspace, tmp_path_factory) -> Path:
    """The qwen-tiny profile's models/base (Qwen3's real tokenizer and native template, a tiny
    random Qwen3 body), a random adapter, then merge, convert and verify_export: the BPE path to
    GGUF (test_qwen checks it), and the search index (test_serve serves it to the agent)."""
    from pipeline.config.params import load_params
    from pipeline.models.base import build

    need_qwen3_tokenizer()
    ws = tmp_path_factory.mktemp("qwen")
    # the f32 GGUF only (quantizing is the tiny model's test); a small vLLM KV cache for make serve.
    # On a CPU the fraction is of the NUMA node's memory and must also hold the server process
    # (about 0.9 GiB): 0.05 of a VM whose node 0 has 17.6 GiB left no room ("requested memory
    # for kv (-0.01/0.88 GiB)"); 0.1 is 1.8 GiB there, 2.4 GiB on a 24 GiB node.
    compose_params(ws, "profile=qwen-tiny", "export.quant=[]", "export.verify.prompts=2", "export.verify.speed_tokens=16",
                   "serve.gpu_memory_utilization=0.1",
                   "serve.max_model_len=1024", "serve.max_tokens=64")
    params = load_params(ws / "params.yaml")
    (ws / "data/dedup").mkdir(parents=True)
    shutil.copy(crawled_workspace / "data/dedup/split.jsonl", ws / "data/dedup/split.jsonl")  # verify's prompts
    build(params.model, params.seed, params.chat.system_prompt, ws / "models/base", template=params.chat.template)
    random_adapter(ws)
    run_stages(["pipeline.stages.merge", "pipeline.stages.convert", "pipeline.stages.verify_export", "pipeline.stages.search_index"], ws)
    return ws


@pytest.fixture(scope="session")
def exported(crawled_workspace, tmp_path_factory) -> Path:
    """models/base (tiny), an adapter with random non-zero LoRA weights, then every export stage
    (test_export checks them; test_serve serves them)."""
    from pipeline.config.params import load_params
    from pipeline.models.base import build

    ws = tmp_path_factory.mktemp("export")
    compose_params(ws)
    params = load_params(ws / "params.yaml")
    (ws / "data/dedup").mkdir(parents=True)
    shutil.copy(crawled_workspace / "data/dedup/split.jsonl", ws / "data/dedup/split.jsonl")
    build(params.model, params.seed, params.chat.system_prompt, ws / "models/base", ws / "data/dedup/split.jsonl")
    random_adapter(ws)

    run_stage("pipeline.stages.merge", ws)
    run_stage("pipeline.stages.convert", ws)
    run_stage("pipeline.stages.quantize", ws)
    run_stage("pipeline.stages.verify_export", ws)
    return ws
