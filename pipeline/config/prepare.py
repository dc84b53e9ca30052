"""The `prepare` section: cleaning the crawled and imported records."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PrepareConfig:
    min_question_chars: int
    max_text_chars: int
