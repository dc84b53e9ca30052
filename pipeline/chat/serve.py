"""Serve the tuned model over an OpenAI-compatible API, on serve.host:serve.port.

    python -m pipeline.chat.serve              # make serve: vLLM, the base model plus the adapter as a LoRA module
    python -m pipeline.chat.serve --merged     # vLLM on models/merged (e.g. a DoRA adapter)
    python -m pipeline.chat.serve --gguf       # make serve-gguf: llama.cpp's server on the GGUF serve.gguf names
    python -m pipeline.chat.serve --which      # print that GGUF and its Ollama Modelfile
    ... --port 8001 --dry-run                  # another port; print the command instead of running it

vLLM runs with the offline engine's choices (pipeline.generation.engines): chunked prefill, the split over GPUs.
Docs: docs/serving.md; on several GPUs: docs/gpus.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from pipeline.config import Device, Sections, sections_or_exit
from pipeline.config.chat import ChatConfig
from pipeline.config.export import ExportConfig
from pipeline.config.serve import ServeConfig
from pipeline.export.gguf import gguf_name
from pipeline.generation.engines import plan_parallel, vllm_platform, vllm_server_flags
from pipeline.models.loading import adapter_trains_tokens, vllm_lora_rank
from pipeline.paths import ADAPTER_DIR, BASE_DIR, EXPORT_METRICS, FULL_DIR, MERGED_DIR, QUANT_DIR
from pipeline.runtime.device import gpu_count
from pipeline.runtime.device import require as require_device


def _need(path: Path, stage: str) -> Path:
    if not path.exists():
        raise SystemExit(f"error: {path} not found; build it with `dvc repro {stage}` or fetch it with `make pull`")
    return path


def lora_rank(adapter_dir: Path) -> int:
    """The smallest rank vLLM accepts that holds the adapter's (its adapter_config.json `r`)."""
    config = json.loads(_need(adapter_dir / "adapter_config.json", "train").read_text())
    if config.get("use_dora"):
        raise SystemExit(f"error: {adapter_dir} is a DoRA adapter, which vLLM cannot load as a LoRA module; "
                         "serve the merged model instead: make serve MERGED=1 (after `dvc repro merge`)")
    try:
        return vllm_lora_rank(int(config["r"]))
    except ValueError as exc:
        raise SystemExit(f"error: {adapter_dir}: {exc}") from None


def vllm_command(params: Sections, host: str, port: int, merged: bool = False,
                 base_dir: Path = BASE_DIR, adapter_dir: Path = ADAPTER_DIR, merged_dir: Path = MERGED_DIR, *,
                 platform: str, gpus: int = 1, gpu_bytes: int | None = None) -> list[str]:
    """vLLM's server on `platform` ('cpu' or 'cuda', pipeline.generation.engines.vllm_platform) and `gpus`
    GPUs of `gpu_bytes` each (asked of torch when None): chunked prefill and the split over GPUs
    as the offline engine decides them (pipeline.generation.engines)."""
    cfg = params.serve
    if not merged and adapter_trains_tokens(_need(adapter_dir, "train")):
        print(f"serve: {adapter_dir} trains token embeddings (train.lora.train_new_tokens), which vLLM cannot "
              f"apply as a LoRA module: serving the merged model {merged_dir} as {cfg.adapter_name!r}",
              file=sys.stderr, flush=True)
        merged = True
    model_dir = _need(merged_dir, "merge") if merged else _need(base_dir, "base_model")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir), "--served-model-name", cfg.adapter_name if merged else cfg.base_name,
           "--host", host, "--port", str(port), "--dtype", cfg.dtype,
           "--gpu-memory-utilization", str(cfg.gpu_memory_utilization), "--seed", str(params.seed)]
    parallel = plan_parallel(model_dir, dtype=cfg.dtype, gpu_memory_utilization=cfg.gpu_memory_utilization,
                             gpus=gpus if platform == "cuda" else 1, gpu_bytes=gpu_bytes)
    cmd += vllm_server_flags(platform, parallel)
    if cfg.max_model_len:
        cmd += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    if not merged:
        cmd += ["--enable-lora", "--max-loras", "1", "--max-lora-rank", str(lora_rank(adapter_dir)),
                "--lora-modules", f"{cfg.adapter_name}={adapter_dir}"]
    if cfg.tool_parser:
        cmd += ["--enable-auto-tool-choice", "--tool-call-parser", cfg.tool_parser]
    return cmd


def served_choice(metrics_path: Path = EXPORT_METRICS) -> str:
    """The GGUF type verify_export chose (serve.gguf `best`): metrics/export.json's `served`."""
    try:
        served = json.loads(metrics_path.read_text(encoding="utf-8")).get("served") or {}
    except FileNotFoundError:
        raise SystemExit(f"error: serve.gguf is best, and there is no {metrics_path} to say which GGUF passed; "
                         "run `dvc repro verify_export` (or make pull), or set serve.gguf to a type") from None
    if not served.get("type") or not served.get("passed"):
        raise SystemExit(f"error: {metrics_path}: no GGUF passed verify_export "
                         f"({served.get('why') or 'see its failures'}); set serve.gguf to a type to serve one anyway")
    return served["type"]


def gguf_file(params: Sections) -> Path:
    kind = params.serve.gguf if params.serve.gguf != "best" else served_choice()
    folder = FULL_DIR if kind == params.export.outtype else QUANT_DIR
    path = folder / gguf_name(params.export.name, kind)
    if not path.exists():
        listed = sorted(p.name for d in (FULL_DIR, QUANT_DIR) if d.exists() for p in d.glob("*.gguf"))
        have = f" (exported: {', '.join(listed)})" if listed else ""
        raise SystemExit(f"error: {path} not found{have}; set serve.gguf to an exported type, "
                         "or export it: dvc repro quantize (or make pull)")
    return path


def gguf_command(params: Sections, host: str, port: int) -> list[str]:
    cfg = params.serve
    # llama-cpp-python's server; the GGUF's own chat template (written by convert) formats chats.
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file(params)),
            "--model_alias", cfg.adapter_name, "--host", host, "--port", str(port),
            "--n_ctx", str(cfg.n_ctx), "--seed", str(params.seed)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve the tuned model over an OpenAI-compatible API.")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--gguf", action="store_true", help="llama.cpp's server on the exported GGUF (serve.gguf)")
    which.add_argument("--merged", action="store_true", help="vLLM on models/merged instead of base + adapter")
    which.add_argument("--which", action="store_true",
                       help="print the GGUF make serve-gguf serves and its Ollama Modelfile, then exit")
    parser.add_argument("--host", help="listen address (default: serve.host)")
    parser.add_argument("--port", type=int, help="port (default: serve.port)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, do not start it")
    args = parser.parse_args(argv)
    params = sections_or_exit(seed=int, device=Device, chat=ChatConfig, export=ExportConfig, serve=ServeConfig)
    host, port = args.host or params.serve.host, args.port if args.port is not None else params.serve.port
    if args.which:
        path = gguf_file(params)
        print(f"{path}\n{path.with_suffix('.Modelfile')}")
        return
    if args.gguf:
        cmd = gguf_command(params, host, port)
    else:
        device = require_device(params.device, "serve")  # llama.cpp's server (--gguf) runs on the CPU
        cmd = vllm_command(params, host, port, merged=args.merged, platform=vllm_platform(device),
                           gpus=gpu_count(device))
    print("serve: " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return
    env = dict(os.environ)
    if args.gguf:  # uvicorn under llama-cpp-python's server lets HOST and PORT override the flags
        env.update(HOST=host, PORT=str(port))
    key = env.get(params.serve.api_key_env)
    if key:
        env["VLLM_API_KEY"] = key  # what vLLM's server reads
        env["API_KEY"] = key       # what llama-cpp-python's server reads (its settings are env-configurable)
    os.execvpe(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
