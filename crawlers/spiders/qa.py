"""The generic config-driven Q&A spider: conf/site/<name>.yaml says where to start, which links
to follow, how to paginate and, per layout, where each field of a question sits. A new site
needs a YAML file and no code."""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlparse

from crawlers.items import RawItem
from crawlers.spiders.base import SiteSpider, select, text_of

OPTION_TEXT = re.compile(r"^\s*([A-Ha-h])\s*[.．、:：)）]\s*(.*)$", re.S)


class QASpider(SiteSpider):
    name = "qa"

    def items(self, response):
        title = text_of(select(response, self.site["title"]))
        for i, layout in enumerate(self.site["layouts"]):
            blocks = select(response, layout["item"])
            self.extracted(f"layouts[{i}]", len(blocks), response.url)
            for block in blocks:
                yield self.item(block, layout, response, title)

    def question_text(self, block, layout) -> str:
        return text_of(select(block, layout["question"]))

    def options(self, block, layout) -> dict[str, str]:
        options = {}
        if not layout["options"]:
            return options
        for i, opt in enumerate(select(block, layout["options"])):
            text = text_of(opt.css("::text"))
            key = select(opt, layout["option_key"]).get() if layout["option_key"] else None
            if not key:
                match = OPTION_TEXT.match(text)
                key, text = (match.group(1).upper(), match.group(2).strip()) if match else (chr(ord("A") + i), text)
            options[key.strip()] = text
        return options

    def item(self, block, layout, response, title: str) -> RawItem:
        options = self.options(block, layout)
        answer = text_of(select(block, layout["answer"]))
        prefix = self.site["answer_prefix"]
        if prefix and answer.startswith(prefix):
            answer = answer[len(prefix):].strip()
        question = self.question_text(block, layout)
        if self.site["question_prefix"]:
            question = re.sub("^(?:" + self.site["question_prefix"] + ")", "", question).strip()
        item_id = select(block, layout["id"]).get() if layout["id"] else None
        if not item_id:
            path = urlparse(response.url).path
            item_id = hashlib.sha256(f"{path}\n{question}".encode()).hexdigest()[:16]
        kind = (select(block, layout["kind"]).get() if layout["kind"] else None) or ("mcq" if options else "qa")
        return RawItem(
            id=f"{self.site_name}/{item_id}", kind=kind, title=title, question=question, options=options,
            answer=answer,
            explanation=text_of(select(block, layout["explanation"])) if layout["explanation"] else "",
            text="",
        )
