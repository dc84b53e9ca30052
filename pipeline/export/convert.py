"""models/merged as a GGUF file, made by llama.cpp's own converter (the pinned package), with an
Ollama Modelfile. The stage is pipeline/stages/convert.py."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from pipeline.config import Sections
from pipeline.export.gguf import (
    CONVERTER,
    converter_command,
    converter_version,
    gguf_name,
    max_context,
    write_modelfile,
)


def convert(merged_dir: Path, out_dir: Path, params: Sections) -> Path:
    cfg = params.export
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    out = out_dir / gguf_name(cfg.name, cfg.outtype)
    partial = out.with_suffix(".gguf.partial")
    cmd = [*converter_command(), str(merged_dir), "--outtype", cfg.outtype, "--outfile", str(partial)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"error: {CONVERTER} {converter_version()} failed on {merged_dir} "
                         f"(exit {proc.returncode}):\n{tail}")
    partial.rename(out)
    from transformers import AutoTokenizer

    write_modelfile(out, params.chat.system_prompt, cfg, max_context(merged_dir), AutoTokenizer.from_pretrained(merged_dir))
    print(f"convert: {merged_dir} -> {out} ({CONVERTER} {converter_version()}, {cfg.outtype}, "
          f"{out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)")
    return out
