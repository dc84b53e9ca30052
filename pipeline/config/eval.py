"""The `eval` section: what evaluate asks the base and tuned models, and how it scores them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.config import ConfigError


@dataclass
class McConfig:
    """Multiple-choice accuracy by log-likelihood (pipeline.evaluation.likelihood), lm-evaluation-harness style."""

    shots: int
    """k of the k-shot runs (each set is also scored zero-shot): the first k multiple-choice
    records of the train split."""
    framings: list[Literal["plain", "chat", "cloze"]]
    """`plain`: "Question: ... A. ... Answer:" (lm-evaluation-harness's MMLU prompt); `chat`: the
    question in the chat template, the answer scored where the assistant's answer starts; `cloze`:
    "Question: ... Answer:", the options not listed, each option's text scored as the answer
    (OLMES's cloze form: where a model under ~1B shows what it knows, as letters leave it at chance)."""
    max_listed_items: int = 0
    """Items of each set scored in the framings that list the options (plain, chat): the first N
    of the set (0: all). Cloze scores every item: its prompts are short, the listed ones cost
    several times more."""

    def __post_init__(self) -> None:
        if self.max_listed_items < 0:
            raise ConfigError(f"max_listed_items: expected 0 (all) or more, got {self.max_listed_items}")
        if self.shots < 1:
            raise ConfigError(f"shots: expected 1 or more (zero-shot always runs), got {self.shots}")
        if not self.framings or len(set(self.framings)) != len(self.framings):
            raise ConfigError("framings: expected one or more of 'plain', 'chat', 'cloze', each once, "
                              f"got {self.framings}")


@dataclass
class EvalConfig:
    backend: Literal["vllm", "transformers"]
    """`vllm` (base and base + adapter in one engine, the adapter as a LoRARequest) or
    `transformers` (generate; the adapter merged onto the base). DoRA adapters, which vLLM
    cannot load, use transformers."""
    batch_size: int
    """Held-out loss: conversations per forward pass."""
    max_questions: int
    """Test questions generated for (think rate, exam accuracy, judge); 0: all."""
    max_tool_prompts: int
    """Test search conversations generated for (tool-call metrics); 0: all."""
    max_exam_prompts: int
    """Questions of each exam set answered in words (the first of each file; 0: all): think
    rate, end of turn and generation accuracy there. Log-likelihood scores every item anyway."""
    max_new_tokens: int
    temperature: float
    """0: greedy (the default: base and tuned compared on equal terms)."""
    top_p: float
    dtype: str
    max_model_len: int
    """Prompt plus max_new_tokens; longer prompts are counted as skipped, not cut."""
    gpu_memory_utilization: float
    enforce_eager: bool
    exam_sets: list[str]
    """The domain's exam sets (conf/domain/): C-Eval / MMLU style files (CSV or JSONL) under
    evalsets/, scored like the crawled exam; dedup keeps their questions out of training."""
    general_sets: list[str]
    """Exam sets every domain is scored on after its own (general knowledge: does tuning make the
    model forget?); decontaminated against like exam_sets."""
    max_tool_rounds: int
    """Search prompts: the model's search calls executed on the index and their results sent
    back, at most this many times, before its final answer is scored."""
    mc: McConfig
    enable_thinking: bool | None = None
    """Qwen3's thinking switch for the generated answers (chat.template: native): true or false;
    null: the template's default (thinking on)."""

    def exam_files(self) -> list[str]:
        """Every exam set evaluate scores, in order: the domain's, then the general ones."""
        return list(dict.fromkeys([*self.exam_sets, *self.general_sets]))

    def __post_init__(self) -> None:
        for i, path in enumerate(self.exam_files()):
            if Path(path).is_absolute() or Path(path).parts[:1] != ("evalsets",):
                raise ConfigError(f"exam_sets[{i}]: {path!r} is not under evalsets/; evaluate and dedup "
                                  "depend on that folder, so DVC would not see this file change")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("temperature: must be >= 0, and top_p in (0, 1]")
        if self.max_tool_rounds < 0:
            raise ConfigError(f"max_tool_rounds: expected 0 or more, got {self.max_tool_rounds}")
