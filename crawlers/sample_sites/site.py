"""What a sample-site generator returns, and the helpers the generators share."""

from __future__ import annotations

from dataclasses import dataclass, field



@dataclass
class SampleSite:
    """A generated site and its ground truth, for the crawl stage and the tests."""

    name: str
    pages: dict = field(default_factory=dict)
    """{path: bytes | Page | AbsoluteLinks | endpoint} (crawlers.sample_sites.serve)"""
    valid: list[str] = field(default_factory=list)
    """Site-local ids of the items a correct crawl yields (before prepare's content rules)."""
    planted: dict[str, int] = field(default_factory=dict)
    """Broken pages and items planted on purpose: reason -> how many the crawl counts."""
    disallowed: list[str] = field(default_factory=list)
    """Ids only reachable under a path robots.txt disallows."""
    near_duplicates: list[tuple[str, str]] = field(default_factory=list)
    """Planted near-duplicate pairs: (item id on this site, "site/item id" elsewhere)."""
    items: dict[str, dict] = field(default_factory=dict)
    """Content of the question items by id (kind, question, options, answer, explanation)."""
    images: int = 0
    """Illustrations in questions, which the crawl skips and counts."""


def paginate(prefix: str, blocks: list[str], per_page: int):
    """Yield (path, page number, page count, blocks, next page's file name or None)."""
    chunks = [blocks[i:i + per_page] for i in range(0, len(blocks), per_page)]
    for n, chunk in enumerate(chunks, start=1):
        nxt = f"page-{n + 1}.html" if n < len(chunks) else None
        yield f"{prefix}/page-{n}.html", n, len(chunks), chunk, nxt
