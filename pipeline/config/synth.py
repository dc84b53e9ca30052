"""The `synth` section: which rows the teacher writes, from which prompts, and how they are verified."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError


@dataclass
class SamplingConfig:
    n: int
    temperature: float
    top_p: float
    max_tokens: int


@dataclass
class SynthTaskConfig:
    enabled: bool
    template: str
    """Prompt template file (conf/synth/prompts/...); its sha256 goes into every row's provenance."""
    sampling: SamplingConfig
    templates_by_lang: dict[str, str] = field(default_factory=dict)
    """Language (a record's `lang`) -> template file used instead of `template` for that
    language's records: a few-shot prompt whose examples are in the question's language keeps
    a weak teacher writing in it."""
    hint: Literal["none", "answer"] = "answer"
    """think and search_answer: `answer` shows the teacher the gold answer ($gold); `none` does
    not (rejection sampling: only candidates that reach the gold on their own are kept). Either
    way every candidate's final answer is checked against the gold."""
    max_question_chars: int = 160
    """qgen: the longest question kept (longer ones are rejected as long_question)."""
    max_answer_chars: int = 240
    """qgen: the longest answer kept (longer ones are rejected as long_answer)."""
    max_reason_chars: int = 160
    """search: the longest reasoning before a call the decision's JSON may hold (its schema's maxLength)."""
    think_before_call: bool = True
    """search: the call turn opens with the teacher's reasoning for the search (a think block);
    false: the call alone (for a teacher whose reasons are noise, as the tiny profile's random one)."""
    max_sources: int | None = None
    """qgen: document sections per split the teacher writes questions from; facts: questions per
    split the teacher states as facts; null: synth.max_sources (the cap the questions share); 0:
    all. Only qgen and facts have their own cap: think and search take the same questions."""

    def __post_init__(self) -> None:
        if self.sampling.n < 1:
            raise ConfigError(f"sampling.n: expected at least 1 candidate, got {self.sampling.n}")
        if self.max_sources is not None and self.max_sources < 0:
            raise ConfigError(f"max_sources: expected 0 (all) or more, got {self.max_sources}")


@dataclass
class VerifyConfig:
    min_f1: float = 0.5
    """A free-form final answer is verified when it equals the gold once normalised, or its
    token F1 against the gold is at least this."""
    pair_checks: bool = True
    """Reject the qgen pairs that teach nothing (a question that asks nothing, an answer that is a
    question, repeats the question, copies the prompt's examples or is not in the section, markup or a
    special token, loops: tasks.pair_reject).
    Off only for a teacher whose words mean nothing (the tiny profile's random one)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.min_f1 <= 1.0:
            raise ConfigError(f"min_f1: expected a share in (0, 1], got {self.min_f1}")


@dataclass
class OpenBookConfig:
    k: int = 0
    """Passages the local search returns for the source question that go into the teacher's
    think prompt ($passages), never from the source's own dedup cluster; 0: closed book."""
    snippet_chars: int = 200


@dataclass
class SynthConfig:
    seed: int
    chunk_size: int
    """Requests sent per chunk; the cache is committed after each, so a crash loses one chunk."""
    max_sources: int
    """Questions and sections per split the teacher gets (plain rows use all); 0: all."""
    qgen_pairs: int
    """Question-answer pairs asked for per document section."""
    fewshot_dir: str
    """The folder of few-shot templates whose worked examples a profile's few-shot prompts name
    (`${synth.fewshot_dir}/think.txt`): the domain's examples (a domain sets it; default:
    conf/synth/prompts/fewshot/neutral, examples that name no subject)."""
    think: SynthTaskConfig
    search: SynthTaskConfig
    qgen: SynthTaskConfig
    search_answer: SynthTaskConfig
    """The reasoning after the search tool's response and the answer written from it (the last
    turn of a search row)."""
    facts: SynthTaskConfig
    """Knowledge rows (pipeline.generation.facts): text rows that state each train question's fact
    both ways (sampling.n rewrites by the teacher, each part verified), the question and its answer
    as one text, and the train split's document sections; the test questions asked back (the
    reverse-direction evaluation items, never trained)."""
    mix: dict[Literal["plain", "think", "search", "qgen", "conversation", "text"], float]
    """Share of each task's valid rows that go into the training set (plain, think, search, qgen,
    `conversation`: imported conversations, as they are, `text`: the knowledge rows); a task not
    named: all of them."""
    verify: VerifyConfig = field(default_factory=lambda: VerifyConfig())
    open_book: OpenBookConfig = field(default_factory=lambda: OpenBookConfig())
    min_train_rows: int = 50
    """Fewer valid train rows than this stop the run after synth (its rows and rejects written),
    before a fine-tune on a handful of examples; 0: no floor."""

    def __post_init__(self) -> None:
        if self.min_train_rows < 0:
            raise ConfigError(f"min_train_rows: expected 0 or more, got {self.min_train_rows}")
        if self.max_sources < 0:
            raise ConfigError(f"max_sources: expected 0 (all) or more, got {self.max_sources}")
        for task in ("think", "search", "search_answer"):
            if getattr(self, task).max_sources is not None:
                raise ConfigError(f"{task}.max_sources: only qgen and facts have their own cap (think and search "
                                  "take the questions synth.max_sources leaves)")
        for name, share in self.mix.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"mix.{name}: expected a share between 0 and 1, got {share}")
