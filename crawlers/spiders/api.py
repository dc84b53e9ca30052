"""The json spider: it crawls a question bank behind a JSON API, as conf/site/<name>.yaml's `api` describes it.

JMESPath says where the items and their fields are; the API pages by page number, offset, cursor, or not at all.
What APIs give (options as objects or lists, answers as keys, indexes or texts, numbers, paragraphs) is normalised
to the raw item contract. The next page's URL is built from the current one, never taken from the server, so a
re-crawl asks for the same URLs and the HTTP cache replays it. Docs: docs/your-domain.md ("JSON APIs").
"""

from __future__ import annotations

import hashlib
import json
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import jmespath
import scrapy

from crawlers.items import RawItem
from crawlers.spiders.base import SiteSpider

KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def with_query(url: str, params: dict) -> str:
    """`url` with these query parameters set (replaced when present), the others kept."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in params]
    query += [(k, str(v)) for k, v in params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))


def as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(t for t in map(as_text, value) if t)
    return str(value).strip()


def as_options(value) -> dict[str, str]:
    if isinstance(value, dict):
        return {as_text(k): as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return {key: as_text(v) for key, v in zip(KEYS, value)}
    return {}


def answer_key(value, options: dict[str, str]) -> str:
    if not options:
        return as_text(value)
    if isinstance(value, int) and not isinstance(value, bool):
        keys = list(options)
        return keys[value] if 0 <= value < len(keys) else str(value)
    text = as_text(value)
    if text in options:
        return text
    by_text = [key for key, option in options.items() if option == text]
    return by_text[0] if len(by_text) == 1 else text


class ApiSpider(SiteSpider):
    name = "json"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        api = self.site["api"]
        self.items_path = jmespath.compile(api["items"])
        self.fields = {name: jmespath.compile(path) for name, path in api["fields"].items() if path}
        self.pagination = api["pagination"]
        self.seen_ids: set[str] = set()
        self.next_cursor = jmespath.compile(self.pagination["cursor"]) if self.pagination["style"] == "cursor" else None
        size_param = self.pagination["size_param"]
        if size_param:  # the first request asks for the page size too (unless the URL does already)
            self.start_urls = [url if size_param in dict(parse_qsl(urlsplit(url).query))
                               else with_query(url, {size_param: self.pagination["size"]})
                               for url in self.start_urls]

    def parse(self, response):
        if not isinstance(response, scrapy.http.TextResponse):
            self.count("broken/not_json")
            return
        if b"charset=" not in response.headers.get(b"Content-Type", b"").lower():
            # JSON is UTF-8 unless the server says otherwise (RFC 8259); Scrapy would guess cp1252
            # for a body that happens to be ASCII
            response = response.replace(encoding="utf-8")
        try:
            data = json.loads(response.text)
        except ValueError:  # cut off in transfer, or an error page
            self.count("broken/bad_json")
            return
        records = self.items_path.search(data)
        if not isinstance(records, list):
            self.count("broken/no_item_list")  # `api.items` finds no list in this response
            self.extracted("api.items", 0, response.url)
            return
        self.extracted("api.items", len(records), response.url)
        items = [self.item(record, response.url) for record in records]
        new_ids = {item["id"] for item in items} - self.seen_ids
        self.seen_ids |= new_ids
        yield from self.stamped(response, items)
        if items and not new_ids:  # an API that ignores the page parameter would be paged for ever
            self.count("broken/pagination_stalled")
            return
        url = self.next_page_url(response.url, data, len(records))
        if url:
            yield scrapy.Request(url, callback=self.parse, errback=self.on_error)

    def field(self, record, name: str):
        return self.fields[name].search(record) if name in self.fields else None

    def item(self, record, url: str) -> RawItem:
        options = as_options(self.field(record, "options"))
        question = as_text(self.field(record, "question"))
        item_id = as_text(self.field(record, "id"))
        if not item_id:
            item_id = hashlib.sha256(f"{urlsplit(url).path}\n{question}".encode()).hexdigest()[:16]
        return RawItem(
            id=f"{self.site_name}/{item_id}", kind=as_text(self.field(record, "kind")) or ("mcq" if options else "qa"),
            title="", question=question, options=options, answer=answer_key(self.field(record, "answer"), options),
            explanation=as_text(self.field(record, "explanation")), text="",
        )

    def next_page_url(self, url: str, data, n_items: int) -> str | None:
        """The next page after `url`, or None at the end: a page with no items (page and offset
        styles), or no next cursor (cursor style)."""
        p = self.pagination
        query = dict(parse_qsl(urlsplit(url).query))
        if p["style"] == "page" and n_items:
            return with_query(url, {p["param"]: int(query.get(p["param"], p["start"])) + 1})
        if p["style"] == "offset" and n_items:  # by what this page gave: a server may cap the size asked for
            return with_query(url, {p["param"]: int(query.get(p["param"], 0)) + n_items})
        if self.next_cursor:
            cursor = as_text(self.next_cursor.search(data))
            return with_query(url, {p["param"]: cursor}) if cursor else None
        return None
