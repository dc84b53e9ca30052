"""The `datasets` section: local or Hub datasets imported beside the crawl."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config import ConfigError


USERDATA = "userdata"
"""The folder of the files datasets import: the import stages depend on it, so DVC sees them change."""


@dataclass
class ColumnsConfig:
    """Which column or key of a row holds each field; "" when the data has none. The table format
    maps question and answer (or messages); the other formats read their own keys and use only
    `id` and `split` from here."""

    id: str = ""
    """A stable id per row; "" ids rows by a hash of their content."""
    question: str = ""
    answer: str = ""
    """For multiple choice: an option key (A), a 0-based index, or the option's text."""
    options: str = ""
    """A column holding an object {"A": "Fe", ...}, a list of texts, or a JSON string of either;
    or several columns, comma-separated, one option each keyed by its column's name ("A,B,C,D",
    C-Eval's layout)."""
    explanation: str = ""
    kind: str = ""
    """mcq or qa; "" means mcq when options were found, else qa."""
    split: str = ""
    """train, val or test: the row keeps that split (and so does its near-duplicate cluster)."""
    messages: str = ""
    """A column of OpenAI chat messages (table format): its rows are conversations."""


@dataclass
class DatasetConfig:
    """Data a user already has, imported beside the crawls (stage import@<name>)."""

    format: Literal["alpaca", "sharegpt", "messages", "table"]
    """`alpaca` (instruction, input, output; history makes it a conversation), `sharegpt`
    (conversations of from/value turns, with system and tools), `messages` (OpenAI chat JSONL,
    with tools and tool calls) or `table` (JSON, JSONL, CSV or Parquet, or a hub dataset, read with
    `columns`)."""
    path: str | None = None
    """A file under userdata/ (JSON, JSONL, CSV, Parquet)."""
    hub: str | None = None
    """A Hugging Face dataset id instead of a file (needs the network; pin `revision`)."""
    revision: str | None = None
    hub_split: str = "train"
    """Which split of the hub dataset to read (the rows' own train/val/test come from `columns.split`)."""
    lang: str = "en"
    """The rows' language (en, zh, ...), as a site's `lang`."""
    columns: ColumnsConfig = field(default_factory=lambda: ColumnsConfig())
    max_rows: int = 0
    """Read at most this many rows; 0: all."""
    search_label: bool | None = None
    """Whether its questions need the document search (as a site's `search_label`); null: the
    teacher decides."""

    def __post_init__(self) -> None:
        if (self.path is None) == (self.hub is None):
            raise ConfigError("path, hub: give one of them (a file under userdata/ or a hub dataset id)")
        if self.path is not None and (Path(self.path).is_absolute() or Path(self.path).parts[:1] != (USERDATA,)):
            raise ConfigError(f"path: {self.path!r} is not under {USERDATA}/; the import stage depends on that "
                              "folder, so DVC would not see this file change")
        if self.format == "table" and not self.columns.messages and not (self.columns.question and self.columns.answer):
            raise ConfigError("columns: the table format needs question and answer (or messages) mapped")
        if self.max_rows < 0:
            raise ConfigError(f"max_rows: expected 0 or more, got {self.max_rows}")
