"""What every Distillery spider shares: start URLs or sitemaps from the site config, link following
and pagination, XPath-or-CSS selectors, and broken pages counted by reason instead of crashing."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import os
import re
import urllib.request
import struct
from urllib.parse import urljoin, urlsplit

import lxml.etree
import scrapy
from scrapy.exceptions import IgnoreRequest
from scrapy.spidermiddlewares.httperror import HttpError
from scrapy.utils.gz import gunzip, gzip_magic_number
from scrapy.utils.sitemap import Sitemap, sitemap_urls_from_robots

from crawlers.distributed import attribute

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
    nothing below it); a file:// page's modification time. Otherwise, now."""
    date = response.headers.get(b"Date")
    when = None
    if response.url.startswith("file://"):  # a folder of pages: the file's own time, as stable
        with contextlib.suppress(OSError):
            path = urllib.request.url2pathname(urlsplit(response.url).path)
            when = dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.timezone.utc)
    if date:
        with contextlib.suppress(TypeError, ValueError):
            when = email.utils.parsedate_to_datetime(date.decode("latin-1"))
    when = when or dt.datetime.now(dt.timezone.utc)
    return when.astimezone(dt.timezone.utc).isoformat(timespec="seconds")


class SiteSpider(scrapy.Spider):
    """Base class: subclasses implement `items(response)`, or `parse` for pages that are not
    HTML (the json spider)."""

    def __init__(self, site_name: str, site: dict, base_url: str | None = None, **kwargs):
        """`site` is params.yaml's sites.<site_name>; `base_url` prefixes relative start and
        sitemap URLs."""
        super().__init__(**kwargs)
        self.site_name = site_name
        self.site = site
        self.allowed_domains = list(site["allowed_domains"])
        self.start_urls = [urljoin(base_url, u) if base_url else u for u in site["start_urls"]]
        self.sitemap_urls = [urljoin(base_url, u) if base_url else u for u in site["sitemap_urls"]]
        self.sitemap_rules = [re.compile(rule) for rule in site["sitemap_rules"]]
        # a folder of pages (every start URL file://): links are followed only inside the folder
        # the start URLs are in, never out to the web or elsewhere on the disk
        starts = self.start_urls + self.sitemap_urls
        self.folder = (os.path.commonpath([os.path.dirname(urlsplit(u).path) for u in starts])
                       if starts and all(urlsplit(u).scheme == "file" for u in starts) else None)

    def follows(self, url: str) -> bool:
        """Is a link followed? Not when it leaves a folder site's folder (counted)."""
        if self.folder is None:
            return True
        parts = urlsplit(url)
        inside = parts.scheme == "file" and os.path.normpath(parts.path).startswith(self.folder.rstrip("/") + "/")
        if not inside:
            self.count("links_outside_folder")
        return inside

    def count(self, key: str, n: int = 1) -> None:
        self.crawler.stats.inc_value(f"distillery/{key}", n)

    def extracted(self, extractor: str, n: int, url: str) -> None:
        """What one extractor (a layout, the section splitter, the API's item list) gave on one
        page: counted per extractor, with the first page where it gave nothing, so that a crawl
        that keeps too few items can name the selector and a page to try it on."""
        self.count(f"extracted/{extractor}", n)
        if getattr(self, "preview", None) is not None:  # python -m pipeline.crawl <site> --preview
            self.preview.setdefault(url, {})[extractor] = n
        if n == 0:
            self.count(f"matched_nothing/{extractor}")
            key = f"distillery/first_page_without/{extractor}"
            if self.crawler.stats.get_value(key) is None:
                self.crawler.stats.set_value(key, url)

    async def start(self):
        if self.sitemap_urls:
            for url in self.sitemap_urls:
                yield scrapy.Request(url, callback=self.parse_sitemap, errback=self.on_error)
            return
        for url in self.start_urls:
            yield scrapy.Request(url, callback=self.parse, errback=self.on_error)

    def parse_sitemap(self, response):
        """Robots.txt's Sitemap: lines, a sitemap index or a sitemap (plain or .xml.gz): the
        sitemaps they name are read in turn, and the pages a sitemap lists that sitemap_rules
        match are parsed like start pages (Scrapy's SitemapSpider reads them the same way, but
        its requests have no errback, and a listed page that fails must be counted)."""
        if urlsplit(response.url).path == "/robots.txt":
            for url in sitemap_urls_from_robots(response.body, base_url=response.url):
                yield scrapy.Request(url, callback=self.parse_sitemap, errback=self.on_error)
            return
        try:
            body = response.body
            if gzip_magic_number(response):  # a .xml.gz file (a gzip Content-Encoding is undone already)
                body = gunzip(body, max_size=self.settings.getint("DOWNLOAD_MAXSIZE"))
            sitemap = Sitemap(body)
        except (OSError, EOFError, struct.error, ValueError, lxml.etree.XMLSyntaxError, StopIteration):
            self.count("broken/bad_sitemap")  # a corrupt or oversized .gz, or not XML at all
            return
        if sitemap.type not in ("sitemapindex", "urlset"):
            self.count("broken/bad_sitemap")
            return
        for entry in sitemap:
            url = urljoin(response.url, entry["loc"])
            if sitemap.type == "sitemapindex":
                yield scrapy.Request(url, callback=self.parse_sitemap, errback=self.on_error)
            elif not self.sitemap_rules or any(rule.search(url) for rule in self.sitemap_rules):
                yield scrapy.Request(url, callback=self.parse, errback=self.on_error)
            else:
                self.count("sitemap_urls_skipped")

    def parse(self, response):
        if not isinstance(response, scrapy.http.TextResponse):
            self.count("broken/not_html")
            return
        body = response.body.lower()
        truncated = b"<html" in body[:1024] and b"</html>" not in body  # cut off in transfer
        truncated = truncated and self.site.get("html_end_check", True)
        if truncated:
            self.count("broken/truncated_html")
            if getattr(self, "preview", None) is not None:
                self.preview.setdefault(response.url, {})["truncated"] = True
        page_items = list(self.items(response))
        if truncated and page_items:
            page_items.pop()  # the last item on a cut page is the one that was cut
        yield from self.stamped(response, page_items)
        for key in ("follow", "next_page"):
            if self.site[key]:
                for href in select(response, self.site[key]).getall():
                    if self.follows(response.urljoin(href)):
                        yield response.follow(href, callback=self.parse, errback=self.on_error)

    def stamped(self, response, page_items: list):
        """A page's items with what every item carries: where and when it was fetched, the
        site's language, the page's encoding, and an id unique on the page."""
        fetched_at = fetch_time(response)
        seen: dict[str, int] = {}
        for item in page_items:
            seen[item["id"]] = seen.get(item["id"], 0) + 1
            if seen[item["id"]] > 1:  # the id again on the same page: numbered in document order
                self.count("id_repeated_on_page")
                item["id"] = f"{item['id']}~{seen[item['id']]}"
            item.setdefault("chapter", "")
            item.setdefault("section", "")
            item.update(site=self.site_name, url=response.url, fetched_at=fetched_at,
                        lang=self.site["lang"], encoding=response.encoding)
            yield item

    def items(self, response):
        raise NotImplementedError

    def on_error(self, failure):
        """Count a failed request under its reason; the crawl goes on."""
        attribute(failure.request)  # a crawl on redis counts it for that request (crawlers.distributed)
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
