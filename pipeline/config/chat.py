"""The `chat` section: the system prompt and the conversation template train and evaluate share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class ChatConfig:
    system_prompt: str
    """System message put before every conversation in train and evaluate."""
    think_from_explanation: bool = False
    """A crawled question's explanation becomes the reasoning of its plain row, in a think block
    before the answer (else it follows the answer): every question row then teaches the
    think-then-answer format, not only the ones the teacher wrote a trace for."""
    template: Literal["distillery", "native"] = "distillery"
    """`distillery`: our ChatML template with <think>, <tool_call> and tool turns, put on every
    model (the tiny and cpu profiles: Gemma's own has no tools or think). `native`: the model's
    own template, kept as it ships (the Qwen family: qwen-tiny and the gpu profile); a native
    template without a tool-call format is refused for search rows, naming this key."""
