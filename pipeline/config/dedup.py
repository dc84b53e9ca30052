"""The `dedup` section: near-duplicate removal and the leak-free train/val/test split."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import ConfigError
from pipeline.config.redis import RedisConfig


@dataclass
class SplitsConfig:
    """Shares of the near-duplicate clusters that go to each split (they sum to 1)."""

    train: float
    val: float
    test: float

    def __post_init__(self) -> None:
        shares = {"train": self.train, "val": self.val, "test": self.test}
        for name, share in shares.items():
            if not 0.0 <= share <= 1.0:
                raise ConfigError(f"{name}: expected a share between 0 and 1, got {share}")
        if abs(sum(shares.values()) - 1.0) > 1e-9:
            raise ConfigError(f"train + val + test: expected 1, got {sum(shares.values()):g}")


@dataclass
class DedupConfig:
    shingle: Literal["auto", "char", "word"]
    """`auto` (character n-grams for CJK text, word n-grams otherwise), `char` or `word`."""
    char_ngram: int
    word_ngram: int
    num_perm: int
    """MinHash permutations."""
    threshold: float
    """Jaccard similarity at or above which two records are near-duplicates."""
    bands: int | None
    """LSH bands and rows per band; null: chosen by minimising the weighted false positive and
    false negative areas around the threshold (datasketch's optimiser)."""
    rows: int | None
    false_negative_weight: float
    """Weight of a missed pair against a false candidate in that optimisation (0..1). Candidates
    are verified, so a false one costs a Jaccard computation and a missed one a leak."""
    verify: bool
    """Keep only candidate pairs whose exact Jaccard on shingle sets reaches the threshold."""
    seed: int
    """MinHash permutation seed."""
    workers: int
    """Processes computing signatures; 0: all cores."""
    splits: SplitsConfig
    decontaminate_against: list[str]
    """Eval sets from elsewhere (CSV in C-Eval or MMLU layout, or JSONL), under evalsets/:
    training records that are near-duplicates of any of their items are dropped."""
    lsh_storage: Literal["memory", "redis"]
    """`memory`, or `redis` to keep the LSH index in Redis (corpora beyond one machine's memory)."""
    redis: RedisConfig
    report_clusters: int
    """How many sample clusters reports/dedup_clusters.md shows."""
    prefer: list[Literal["crawl", "import"]] = field(default_factory=lambda: ["crawl", "import"])
    """Which source's record a cluster keeps first: crawled pages (`crawl`) or imported datasets
    (`import`); the rule below (explanation, length, id) decides within a source."""
    min_train_rows: int = 50
    """The stage fails (before any model work) when the train split holds fewer records: see
    conf/dedup/default.yaml for why 50."""

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold: expected a Jaccard similarity in (0, 1], got {self.threshold}")
        if not 0.0 <= self.false_negative_weight <= 1.0:
            raise ConfigError(f"false_negative_weight: expected 0..1, got {self.false_negative_weight}")
        if min(self.char_ngram, self.word_ngram) < 1 or self.num_perm < 2:
            raise ConfigError("char_ngram and word_ngram must be >= 1, num_perm >= 2")
        if (self.bands is None) != (self.rows is None):
            raise ConfigError("bands, rows: give both or neither")
        if self.bands is not None and (self.bands < 2 or self.rows < 1 or self.bands * self.rows > self.num_perm):
            raise ConfigError(f"bands x rows: expected bands >= 2 and bands x rows <= num_perm "
                              f"({self.num_perm}), got {self.bands} x {self.rows}")
        if sorted(self.prefer) != ["crawl", "import"]:
            raise ConfigError(f"prefer: expected crawl and import, each once, in the order to prefer; got {self.prefer}")
        if self.min_train_rows < 0:
            raise ConfigError(f"min_train_rows: expected 0 or more, got {self.min_train_rows}")
        for i, path in enumerate(self.decontaminate_against):
            if Path(path).is_absolute() or Path(path).parts[:1] != ("evalsets",):
                raise ConfigError(f"decontaminate_against[{i}]: {path!r} is not under evalsets/; the dedup "
                                  "stage depends on that folder, so DVC would not see this file change")


def decontamination_files(eval_cfg, dedup: DedupConfig) -> list[str]:
    """The eval sets dedup keeps out of training: every exam set evaluate scores (the eval
    section's exam_files()), then dedup.decontaminate_against's further ones."""
    return list(dict.fromkeys([*eval_cfg.exam_files(), *dedup.decontaminate_against]))
