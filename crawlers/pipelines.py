"""Item pipelines: structural validation (every drop counted by reason, never a crash) and
an append-only copy of every accepted item, so that a stopped crawl keeps what it found.

Content rules (length, duplicates, near-duplicates) belong to prepare and dedup."""

from __future__ import annotations

import json
import os

from scrapy.exceptions import DropItem

KINDS = {"mcq", "qa", "doc"}


def drop_reason(item) -> str | None:
    kind = item.get("kind")
    if kind not in KINDS:
        return "bad_kind"
    if not item.get("id"):
        return "no_id"
    texts = [item.get(k) or "" for k in ("title", "question", "answer", "explanation", "text")]
    texts += list((item.get("options") or {}).values())
    if any("\ufffd" in t for t in texts):
        return "mojibake"  # undecodable bytes survived the charset repair
    if kind == "doc":
        return None if item.get("title") or item.get("text") else "empty_section"
    if not item.get("question"):
        return "empty_question"
    if not item.get("answer"):
        return "empty_answer"
    if kind == "mcq":
        if len(item.get("options") or {}) < 2:
            return "mcq_without_options"
        if item["answer"] not in item["options"]:
            return "answer_not_in_options"
    return None


class ValidateItemPipeline:
    def __init__(self, stats):
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.stats)

    def process_item(self, item):
        reason = drop_reason(item)
        if reason:
            self.stats.inc_value(f"distillery/dropped/{reason}")
            raise DropItem(f"{item.get('url')}: {item.get('id')}: {reason}")
        return item


class PersistItemsPipeline:
    """Append each accepted item to DISTILLERY_ITEMS_FILE, flushed line by line."""

    def __init__(self, path: str | None):
        self.path = path
        self.file = None

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.settings.get("DISTILLERY_ITEMS_FILE"))

    def open_spider(self, spider=None):
        if self.path:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole crawl)

    def close_spider(self, spider=None):
        if self.file:
            self.file.close()

    def process_item(self, item):
        if self.file:
            self.file.write(json.dumps(dict(item), ensure_ascii=False, sort_keys=True) + "\n")
            self.file.flush()
        return item
