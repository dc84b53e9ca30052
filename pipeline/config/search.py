"""The `search` section: the local search tool the teacher, evaluation and the agent call."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SearchConfig:
    top_k: int
    """Passages a search returns."""
    snippet_chars: int
    """Characters of each passage put in the tool response."""
