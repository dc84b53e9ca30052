"""The question-bank spider: paginated multiple-choice banks as exam sites build them, with
questions in HTML tables, chapters, options written "A．Fe", illustrations (skipped and
counted) and legacy encodings (GBK/GB18030; a wrong charset header is repaired by
crawlers.middlewares.CharsetRepairMiddleware before the page gets here)."""

from __future__ import annotations

from crawlers.spiders.base import select, text_of
from crawlers.spiders.qa import QASpider


class BankSpider(QASpider):
    name = "bank"

    def items(self, response):
        chapter = text_of(select(response, self.site["chapter"])) if self.site["chapter"] else ""
        for item in super().items(response):
            item["chapter"] = chapter
            yield item

    def question_text(self, block, layout) -> str:
        stem = select(block, layout["question"])
        images = len(block.css("img"))
        if images:
            self.count("images_skipped", images)
        return text_of(stem)
