"""Item pipelines: structural validation only. Content rules (empty answers, lengths,
duplicates) belong to the prepare stage, which counts every reject by reason."""

from scrapy.exceptions import DropItem

KINDS = {"mcq", "qa", "doc"}


class ValidateItemPipeline:
    def __init__(self, stats):
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.stats)

    def process_item(self, item):
        reason = None
        if item.get("kind") not in KINDS:
            reason = "bad_kind"
        elif not item.get("id"):
            reason = "no_id"
        if reason:
            self.stats.inc_value(f"distillery/dropped/{reason}")
            raise DropItem(f"{item.get('url')}: {reason}")
        return item
