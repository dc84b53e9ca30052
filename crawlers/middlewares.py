"""Downloader middlewares: repair pages whose charset header disagrees with their bytes, and
robots.txt obeyed by every request that waited for it. A spider middleware for previews."""

from __future__ import annotations

import scrapy
from scrapy.downloadermiddlewares import robotstxt
from scrapy.http import HtmlResponse
from scrapy.utils.httpobj import urlparse_cached
from w3lib.encoding import html_body_declared_encoding

FALLBACKS = ("utf-8", "gb18030")


def _decodes(body: bytes, encoding: str) -> bool:
    try:
        body.decode(encoding)
    except (LookupError, UnicodeDecodeError):
        return False
    return True


class CharsetRepairMiddleware:
    """A page served as `charset=utf-8` whose bytes are GBK decodes to mojibake. When the
    header's charset cannot decode the body, use the charset the page declares in <meta>,
    else the first of utf-8 / gb18030 that decodes it; count it as broken/wrong_charset."""

    def __init__(self, stats):
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler.stats)

    def process_response(self, request, response, spider=None):
        if not isinstance(response, HtmlResponse):
            return response
        header = response.headers.get(b"Content-Type", b"").decode("latin-1").lower()
        if "charset=" not in header:
            return response
        declared = header.split("charset=", 1)[1].split(";")[0].strip()
        if _decodes(response.body, declared):
            return response
        candidates = [html_body_declared_encoding(response.body), *FALLBACKS]
        for encoding in filter(None, candidates):
            if _decodes(response.body, encoding):
                self.stats.inc_value("distillery/broken/wrong_charset")
                return response.replace(encoding=encoding)
        return response


class RobotsTxtMiddleware(robotstxt.RobotsTxtMiddleware):
    """Scrapy's, with the parsed robots.txt given to every request that waited for it. Scrapy 2.19
    awaits the one Deferred once per waiting request, and with the asyncio reactor each await hands
    the next one None, which means "allow all": of several start URLs on one host, all but the
    first two skipped robots.txt (the json_bank sample's drafts endpoint was crawled). Once the
    Deferred has fired, the parser is in `_parsers`, so a None can be looked up again there."""

    async def robot_parser(self, request):
        parser = await super().robot_parser(request)
        return parser if parser is not None else self._parsers.get(urlparse_cached(request).netloc)


class PreviewLinksMiddleware:
    """For `python -m pipeline.crawl <site> --preview`: records the links each page would follow
    (spider.preview_links) and lets only `spider.preview_budget` new pages through, so a preview
    fetches a few pages and never the site."""

    def __init__(self, crawler=None):
        self.crawler = crawler
        self.seen: set[str] = set()

    @classmethod
    def from_crawler(cls, crawler):
        return cls(crawler)

    def passes(self, response, out, spider) -> bool:
        if not isinstance(out, scrapy.Request):
            return True
        spider.preview_links.setdefault(response.url, []).append(out.url)
        if out.url in self.seen or spider.preview_budget <= 0:
            return False
        self.seen.add(out.url)
        spider.preview_budget -= 1
        return True

    def process_spider_output(self, response, result, spider=None):
        spider = spider or self.crawler.spider
        yield from (out for out in result if self.passes(response, out, spider))

    async def process_spider_output_async(self, response, result, spider=None):
        spider = spider or self.crawler.spider
        async for out in result:
            if self.passes(response, out, spider):
                yield out
