"""llama.cpp's quantizer (llama-cpp-python's llama_model_quantize) on the full-precision GGUF, one
file and Modelfile per type. The stage is pipeline/stages/quantize.py."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from pipeline.config import Sections
from pipeline.export.gguf import gguf_name, max_context, quantize_file, write_modelfile
from pipeline.paths import FULL_DIR


def full_gguf(params: Sections, full_dir: Path = FULL_DIR) -> Path:
    path = full_dir / gguf_name(params.export.name, params.export.outtype)
    if not path.exists():
        raise SystemExit(f"error: {path} not found; run `dvc repro convert` first")
    return path


def quantize(full_dir: Path, out_dir: Path, merged_dir: Path, params: Sections) -> list[Path]:
    cfg = params.export
    src = full_gguf(params, full_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)  # the Modelfile's stop tokens
    outs = []
    for quant in cfg.quant:
        dst = out_dir / gguf_name(cfg.name, quant)
        start = time.perf_counter()
        quantize_file(src, dst, quant, os.cpu_count() or 1)
        write_modelfile(dst, params.chat.system_prompt, cfg, max_context(merged_dir), tokenizer)
        print(f"quantize: {src.name} -> {dst} ({quant}, {dst.stat().st_size / 2**20:.1f} MiB, "
              f"{time.perf_counter() - start:.1f} s)")
        outs.append(dst)
    if not outs:
        print("quantize: export.quant is empty; nothing to do")
    return outs
