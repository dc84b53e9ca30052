"""The `judge` section: the model that grades answers, and how its grades are checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.config import ConfigError
from pipeline.config.teacher import Backend, TeacherConfig


@dataclass
class JudgeConfig:
    """The judge model (any synthesis backend; requests cached in data/judge_cache) and how it
    grades: single answers 1-10 against the reference, and base vs tuned in both orders."""

    name: str
    backend: Backend
    model: str
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    enforce_eager: bool
    base_url: str | None
    api_key_env: str | None
    concurrency: int
    timeout_s: float
    max_retries: int
    format: Literal["text", "json"]
    """`text`: the verdict as `Rating: [[n]]` / `Verdict: [[A]]` on the judge's last line
    (MT-Bench style); `json`: a JSON object under a schema (structured outputs)."""
    single_template: str
    pairwise_template: str
    max_items: int
    """Test questions judged (the first by id among those both models answered); 0: all."""
    min_control: float
    """The judge is informative (its grades reported as results) only when its control accuracy
    and its position consistency on control pairs both reach this."""
    max_tokens: int
    temperature: float
    seed: int
    chunk_size: int

    def __post_init__(self) -> None:
        self.engine()  # the backend keys (base_url, api_key_env), checked as the teacher's are
        if not 0 <= self.min_control <= 1:
            raise ConfigError(f"min_control: expected a share between 0 and 1, got {self.min_control}")

    def engine(self) -> TeacherConfig:
        return TeacherConfig(name=self.name, backend=self.backend, model=self.model, dtype=self.dtype,
                             max_model_len=self.max_model_len, gpu_memory_utilization=self.gpu_memory_utilization,
                             enforce_eager=self.enforce_eager, emits_tags=False, base_url=self.base_url,
                             api_key_env=self.api_key_env, concurrency=self.concurrency,
                             timeout_s=self.timeout_s, max_retries=self.max_retries)
