"""A config-driven question-and-answer spider: conf/site/<name>.yaml says where to start,
which links to follow, how to paginate and where each field of a question sits."""

from __future__ import annotations

import datetime as dt
import hashlib
from urllib.parse import urljoin, urlparse

import scrapy

from crawlers.items import RawItem


def _text(selection) -> str:
    return " ".join(t.strip() for t in selection.getall() if t.strip())


class QASpider(scrapy.Spider):
    name = "qa"

    def __init__(self, site: dict, base_url: str | None = None, **kwargs):
        """`site` is the params.yaml `site` section; `base_url` prefixes relative start URLs."""
        super().__init__(**kwargs)
        self.site = site
        self.allowed_domains = list(site["allowed_domains"])
        self.start_urls = [urljoin(base_url, u) if base_url else u for u in site["start_urls"]]

    async def start(self):
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse)

    def parse(self, response):
        sel = self.site["selectors"]
        title = _text(response.css(sel["title"]))
        fetched_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        for block in response.css(sel["item"]):
            yield self._item(block, response, title, fetched_at)
        for href in response.css(self.site["follow"]).getall():
            yield response.follow(href, callback=self.parse)
        for href in response.css(self.site["next_page"]).getall():
            yield response.follow(href, callback=self.parse)

    def _item(self, block, response, title: str, fetched_at: str) -> RawItem:
        sel = self.site["selectors"]
        options = {}
        for i, opt in enumerate(block.css(sel["options"])):
            key = (opt.css(sel["option_key"]).get() if sel["option_key"] else None) or chr(ord("A") + i)
            options[key.strip()] = _text(opt.css("::text"))
        answer = _text(block.css(sel["answer"]))
        prefix = self.site["answer_prefix"]
        if prefix and answer.startswith(prefix):
            answer = answer[len(prefix):].strip()
        question = _text(block.css(sel["question"]))
        item_id = block.css(sel["id"]).get()
        path = urlparse(response.url).path
        if not item_id:
            item_id = hashlib.sha256(f"{path}\n{question}".encode()).hexdigest()[:16]
        return RawItem(
            id=f"{self.site['name']}/{item_id}",
            site=self.site["name"],
            url=response.url,
            fetched_at=fetched_at,
            kind=block.css(sel["kind"]).get() or ("mcq" if options else "qa"),
            title=title,
            question=question,
            options=options,
            answer=answer,
            explanation=_text(block.css(sel["explanation"])),
            text="",
            lang=self.site["lang"],
            encoding=response.encoding,
        )
