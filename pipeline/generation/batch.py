"""The teacher's requests as OpenAI batch files, for engines that answer a file of requests at a time.

    python -m pipeline.stages.synth --export-batch batch/             # batch/requests-00000.jsonl, ...
    python -m vllm.entrypoints.openai.run_batch -i batch/requests-00000.jsonl -o batch/results-00000.jsonl ...
    python -m pipeline.stages.synth --import-batch batch/ --export-batch batch/   # answers in, next round out
    ...                                                           # until nothing is left to export
    dvc repro synth                                               # every answer from the cache

Exports read and imports fill the request cache only; nothing here writes data/sft or the metrics.
Docs: docs/stages/synth.md.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

from pipeline.config import Sections
from pipeline.config.teacher import TeacherConfig
from pipeline.generation import synthesize
from pipeline.generation.engines import Parallel, chat_body, vllm_platform, vllm_server_flags
from pipeline.generation.request_cache import Request, RequestCache
from pipeline.generation.teacher import model_identity
from pipeline.paths import SYNTH_CACHE

ENDPOINT = "/v1/chat/completions"
SHARD_LINES = 50_000
REQUESTS = "requests-"  # shard names: requests-00000.jsonl; results are any other *.jsonl


def run_batch_command(cfg: TeacherConfig, seed: int, inp: str, out: str) -> list[str]:
    """vLLM's run_batch with the settings the vllm backend gives its engine (seed, dtype, context,
    compact JSON, chunked prefill off on a CPU, no sampling defaults from the model's generation
    config), so that its answers are the ones the stage would have got."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.run_batch", "-i", inp, "-o", out, "--model", cfg.model,
           "--seed", str(seed), "--dtype", cfg.dtype, "--max-model-len", str(cfg.max_model_len),
           "--gpu-memory-utilization", str(cfg.gpu_memory_utilization),
           *vllm_server_flags(vllm_platform(), Parallel(1, 1)),
           "--generation-config", "vllm",
           "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
    return cmd + (["--enforce-eager"] if cfg.enforce_eager else [])


def _refuse_completion(cfg: TeacherConfig) -> None:
    if cfg.prompt_format == "completion":
        raise SystemExit(f"error: teacher.prompt_format is completion (teacher {cfg.name}): OpenAI batch files hold "
                         "chat requests only (vLLM's run_batch serves /v1/chat/completions, not /v1/completions). "
                         "Use a chat teacher (teacher.prompt_format: chat) or run the stage with its backend: dvc repro synth")


def collect(params: Sections) -> dict[str, tuple[str, Request]]:
    """The requests missing from the cache whose prompts are known now: key -> (what, request)."""
    pending: dict[str, tuple[str, Request]] = {}
    synthesize.synthesize_inputs(params, pending=pending)
    odd = [k for k, (_, r) in pending.items() if r.completion or r.prompt_ids is not None]
    if odd:
        raise SystemExit(f"error: {len(odd)} requests are completion prompts, which OpenAI batch files cannot hold")
    return pending


def export(params: Sections, out_dir: Path, shard_size: int = SHARD_LINES) -> int:
    """Write the pending requests as shards in out_dir (replacing earlier shards); returns how many."""
    _refuse_completion(params.teacher)
    if shard_size < 1:
        raise SystemExit(f"error: --shard-size: expected a positive number of lines, got {shard_size}")
    pending = collect(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{REQUESTS}*.jsonl"):
        old.unlink()
    items = list(pending.items())
    shards = []
    for n, start in enumerate(range(0, len(items), shard_size)):
        path = out_dir / f"{REQUESTS}{n:05d}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for key, (_, req) in items[start:start + shard_size]:
                line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": chat_body(req, params.teacher.model)}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        shards.append(path.name)
    by_what = dict(collections.Counter(what for what, _ in pending.values()))
    (out_dir / "manifest.json").write_text(json.dumps(
        {"teacher": params.teacher.name, "model": params.teacher.model, "endpoint": ENDPOINT, "requests": len(items),
         "by_request": by_what, "shards": shards}, indent=2, ensure_ascii=False) + "\n")
    if not items:
        print(f"synth: nothing to export: every teacher request the data needs is in {SYNTH_CACHE}; "
              "now run: dvc repro synth")
        return 0
    parts = ", ".join(f"{what} {n}" for what, n in by_what.items())
    print(f"synth: exported {len(items)} requests ({parts}) in {len(shards)} shard(s) to {out_dir}/")
    example = run_batch_command(params.teacher, params.synth.seed, str(out_dir / shards[0]),
                                str(out_dir / shards[0].replace(REQUESTS, "results-")))
    print("  run each shard, e.g. with vLLM: python " + " ".join(a if " " not in a else f"'{a}'" for a in example[1:]))
    print(f"  then: python -m pipeline.stages.synth --import-batch {out_dir}/ --export-batch {out_dir}/  "
          "(later requests depend on these answers: repeat until nothing is exported)")
    return len(items)


def _result_files(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.glob("*.jsonl") if not p.name.startswith(REQUESTS))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"error: --import-batch: {path} does not exist")
    if not files:
        raise SystemExit(f"error: --import-batch: no result files (*.jsonl other than {REQUESTS}*) in {', '.join(map(str, paths))}")
    return files


def read_results(paths: list[Path]) -> tuple[dict[str, list[str]], collections.Counter, list[str]]:
    """custom_id -> the n outputs (by choice index); problems by reason; where each was (file:line)."""
    answers: dict[str, list[str]] = {}
    problems: collections.Counter = collections.Counter()
    where: list[str] = []

    def problem(reason: str, path: Path, n: int, detail: str = "") -> None:
        problems[reason] += 1
        where.append(f"{path}:{n}: {reason}" + (f" ({detail})" if detail else ""))

    for path in _result_files(paths):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                key = item["custom_id"]
                error, response = item.get("error"), item.get("response") or {}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                problem("malformed_line", path, n)
                continue
            status = response.get("status_code")
            if error or status != 200:
                detail = (error.get("message") or error.get("code")) if isinstance(error, dict) else error
                problem("failed", path, n, str(detail or f"status {status}")[:200])
                continue
            try:
                choices = sorted(response["body"]["choices"], key=lambda c: c["index"])
                outputs = [c["message"].get("content") or "" for c in choices]
            except (KeyError, TypeError, AttributeError):
                problem("malformed_line", path, n, "no choices")
                continue
            if key in answers:
                problem("duplicate", path, n, key[:12])
                continue
            answers[key] = outputs
    return answers, problems, where


def import_results(params: Sections, paths: list[Path]) -> dict:
    """Store the answers to pending requests in the cache, each once; returns the counts."""
    _refuse_completion(params.teacher)
    answers, problems, where = read_results(paths)
    pending = collect(params)
    model = model_identity(params.teacher.model)
    cache = RequestCache(SYNTH_CACHE)
    try:
        held = set(cache.get_many([k for k in answers if k not in pending]))
        store = []
        for key, outputs in answers.items():
            if key in pending:
                req = pending[key][1]
                if len(outputs) != req.n:
                    problems["wrong_choice_count"] += 1
                    where.append(f"{key[:12]}: {len(outputs)} choices, the request asked for n={req.n}")
                    continue
                store.append((key, req, outputs))
            else:
                problems["already_cached" if key in held else "not_pending"] += 1
        cache.put_many(model, store)
    finally:
        cache.close()
    return {"read": len(answers) + sum(problems[r] for r in ("malformed_line", "failed", "duplicate")),
            "stored": len(store), "pending_before": len(pending), "skipped": dict(sorted(problems.items())),
            "where": where}
