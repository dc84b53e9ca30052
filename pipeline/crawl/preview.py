"""What a site's YAML extracts, before a crawl: the items, drops and links of a few pages, written nowhere.

    python -m pipeline.crawl <site> --preview [URL ...]       # make preview SITE=<site> [URLS='...']

With URLs given it fetches those alone and follows no link. The items are the ones the full crawl writes from
those pages. Docs: docs/stages/crawl.md.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from urllib.parse import urljoin

from pipeline.config.crawl import SiteConfig
from pipeline.crawl.scrapy_setup import extractor_selector, sample_for, scrapy_settings, serve_sample, spider_class
from pipeline.paths import HTTP_CACHE_DIR

SHOWN = 70  # characters of a question or answer per line


def _short(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= SHOWN else text[:SHOWN - 1] + "…"


def preview(name: str, site: SiteConfig, urls: list[str] = (), pages: int = 5) -> list[dict]:
    """Preview `site`; returns one dict per fetched page: url, status, extracted, items, dropped,
    links (what is printed)."""
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess

    cache = HTTP_CACHE_DIR / name  # never touched: the cache is off and the sample's check is skipped
    found: dict[str, dict] = {}
    order: list[str] = []
    with ExitStack() as stack:
        sample = sample_for(dataclasses.replace(site, offline=True), cache) if site.sample else None
        base_url = serve_sample(stack, dataclasses.replace(site, offline=False), sample)
        cfg = dataclasses.asdict(site)
        if urls:
            cfg.update(start_urls=[urljoin(base_url, u) if base_url else u for u in urls], sitemap_urls=[])
        settings = scrapy_settings(site, cache)
        settings.update({
            "HTTPCACHE_ENABLED": False,
            "ITEM_PIPELINES": {"crawlers.pipelines.ValidateItemPipeline": 100},
            "SPIDER_MIDDLEWARES": {"crawlers.middlewares.PreviewLinksMiddleware": 1000},
            "LOG_LEVEL": "WARNING",
        }, priority="cmdline")
        process = CrawlerProcess(settings)
        crawler = process.create_crawler(spider_class(site.spider))
        start = len(cfg["start_urls"]) if not cfg["sitemap_urls"] else 0
        budget = 0 if urls else max(pages - start, 0)

        def page(url: str) -> dict:
            if url not in found:
                order.append(url)
                found[url] = {"url": url, "status": None, "items": [], "dropped": [], "links": []}
            return found[url]

        def on_response(response, request, **_):
            if not response.url.endswith("/robots.txt"):
                page(response.url)["status"] = response.status

        def on_item(item, response, **_):
            page(response.url)["items"].append(dict(item))

        def on_dropped(item, response, exception, **_):
            page(response.url)["dropped"].append((item.get("id"), str(exception).rsplit(": ", 1)[-1]))

        for handler, signal in ((on_response, signals.response_received), (on_item, signals.item_scraped),
                                (on_dropped, signals.item_dropped)):
            crawler.signals.connect(handler, signal=signal)  # held weakly: the names above keep them
        process.crawl(crawler, site_name=name, site=cfg, base_url=base_url,
                      preview={}, preview_links={}, preview_budget=budget)
        process.start()
        spider = crawler.spider
    for url, entry in found.items():
        entry["extracted"] = spider.preview.get(url, {})
        entry["links"] = list(dict.fromkeys(spider.preview_links.get(url, [])))
    return [found[u] for u in order]


def render(name: str, site: SiteConfig, result: list[dict]) -> str:
    lines = []
    for i, entry in enumerate(result, 1):
        lines.append(f"page {i}/{len(result)}: {entry['url']} (HTTP {entry['status']})")
        if entry["extracted"].pop("truncated", False):
            lines.append("  no </html>: taken as cut off in transfer, its last item dropped (broken/truncated_html); "
                         f"if the site leaves out end tags, set sites.{name}.html_end_check: false")
        for extractor, n in sorted(entry["extracted"].items()):
            lines.append(f"  {extractor} ({extractor_selector(site, extractor)}): matched {n}")
        for item in entry["items"]:
            what = item.get("question") or item.get("title") or ""
            answer = f" -> {_short(item.get('answer'))}" if item.get("answer") else ""
            lines.append(f"  item {item['id']} [{item.get('kind')}] {_short(what)}{answer}")
        for item_id, reason in entry["dropped"]:
            lines.append(f"  dropped {item_id}: {reason}")
        links = entry["links"]
        if links:
            shown = ", ".join(links[:3]) + (f", ... ({len(links) - 3} more)" if len(links) > 3 else "")
            lines.append(f"  links to follow ({len(links)}): {shown}")
    kept = sum(len(e["items"]) for e in result)
    dropped = sum(len(e["dropped"]) for e in result)
    lines.append(f"preview {name}: {len(result)} pages, {kept} items kept, {dropped} dropped "
                 "(nothing written; a page robots.txt forbids is not fetched)")
    if not kept and not dropped:
        seen = {e["url"] for e in result}
        nxt = next((link for e in result for link in e["links"] if link not in seen), None)
        if nxt:  # start pages that are contents pages: their sections are one link away
            lines.append("no item on these pages: if they only list links (a contents page), preview a page "
                         f"they link to: python -m pipeline.crawl {name} --preview {nxt}")
    return "\n".join(lines)


def main(name: str, site: SiteConfig, args: list[str]) -> None:
    pages = 5
    if "--pages" in args:
        at = args.index("--pages")
        value = args[at + 1] if at + 1 < len(args) else ""
        if not value.isdigit() or int(value) < 1:
            raise SystemExit(f"error: --pages wants a number of pages (1 or more), got {value or 'nothing'!r}")
        pages = int(value)
        args = args[:at] + args[at + 2:]
    result = preview(name, site, args, pages=pages)
    print(render(name, site, result))
