"""Downloader middleware: repair pages whose charset header disagrees with their bytes."""

from __future__ import annotations

from scrapy.http import HtmlResponse
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
