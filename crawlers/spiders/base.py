"""What every Distillery spider shares: start URLs from the site config, link following and
pagination, XPath-or-CSS selectors, and broken pages counted by reason instead of crashing."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
from urllib.parse import urljoin

import scrapy
from scrapy.exceptions import IgnoreRequest
from scrapy.spidermiddlewares.httperror import HttpError

XPATH = "xpath:"


def select(node, selector: str):
    """Apply a configured selector: XPath when prefixed with `xpath:`, CSS otherwise."""
    if selector.startswith(XPATH):
        return node.xpath(selector[len(XPATH):])
    return node.css(selector)


def text_of(selection) -> str:
    return " ".join(t.strip() for t in selection.getall() if t.strip())


def fetch_time(response) -> str:
    """When the page was fetched: the server's Date header, which a replay from the HTTP cache
    keeps, so a re-crawl of unchanged pages writes byte-identical items (and DVC reruns
    nothing below it). Without the header, now."""
    date = response.headers.get(b"Date")
    when = None
    if date:
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(date.decode("latin-1"))
    when = when or dt.datetime.now(dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


class SiteSpider(scrapy.Spider):
    """Base class: subclasses implement `items(response)`."""

    def __init__(self, site_name: str, site: dict, base_url: str | None = None, **kwargs):
        """`site` is params.yaml's sites.<site_name>; `base_url` prefixes relative start URLs."""
        super().__init__(**kwargs)
        self.site_name = site_name
        self.site = site
        self.allowed_domains = list(site["allowed_domains"])
        self.start_urls = [urljoin(base_url, u) if base_url else u for u in site["start_urls"]]

    def count(self, key: str, n: int = 1) -> None:
        self.crawler.stats.inc_value(f"distillery/{key}", n)

    async def start(self):
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse, errback=self.on_error)

    def parse(self, response):
        if not isinstance(response, scrapy.http.TextResponse):
            self.count("broken/not_html")
            return
        body = response.body.lower()
        truncated = b"<html" in body[:1024] and b"</html>" not in body  # cut off in transfer
        if truncated:
            self.count("broken/truncated_html")
        fetched_at = fetch_time(response)
        page_items = list(self.items(response))
        if truncated and page_items:
            page_items.pop()  # the last item on a cut page is the one that was cut
        for item in page_items:
            item.setdefault("chapter", "")
            item.setdefault("section", "")
            item.update(site=self.site_name, url=response.url, fetched_at=fetched_at,
                        lang=self.site["lang"], encoding=response.encoding)
            yield item
        for key in ("follow", "next_page"):
            if self.site[key]:
                for href in select(response, self.site[key]).getall():
                    yield response.follow(href, callback=self.parse, errback=self.on_error)

    def items(self, response):
        raise NotImplementedError

    def on_error(self, failure):
        """Count a failed request under its reason; the crawl goes on."""
        if failure.check(HttpError):
            reason = f"http_{failure.value.response.status}"
        elif failure.check(IgnoreRequest) and "redirect" in str(failure.value).lower():
            reason = "redirect_loop"
        elif failure.check(IgnoreRequest):
            return  # robots.txt and offsite: Scrapy counts those itself
        else:
            reason = failure.type.__name__
        self.count(f"broken/{reason}")
        self.logger.warning("%s: %s", failure.request.url, reason)
