"""Stage crawl: run the site's Scrapy spider and write data/raw/<site>.jsonl.

When the site is one of our samples, the stage generates it and serves it on 127.0.0.1
for the length of the crawl. Items are written sorted by id (a crawl's order depends on
the network), and the crawl's counters go to metrics/crawl.json.

    python -m pipeline.crawl          # reads params.yaml (dvc repro crawl)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from pipeline.config import SiteConfig, load_or_exit

RAW_DIR = Path("data/raw")
METRICS = Path("metrics/crawl.json")


def crawl(site: SiteConfig, out_dir: Path = RAW_DIR) -> dict:
    """Crawl `site`; returns the crawl's metrics. Writes <out_dir>/<site.name>.jsonl."""
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess
    from scrapy.utils.project import get_project_settings

    from crawlers.sample_sites import GENERATORS
    from crawlers.sample_sites.serve import serve
    from crawlers.spiders.qa import QASpider

    items: list[dict] = []
    with contextlib.ExitStack() as stack:
        base_url = None
        if site.sample is not None:
            pages, _ = GENERATORS[site.sample.generator](seed=site.sample.seed, per_page=site.sample.per_page)
            base_url, _ = stack.enter_context(serve(pages))
        settings = get_project_settings()
        settings.setmodule("crawlers.settings", priority="project")
        process = CrawlerProcess(settings)
        crawler = process.create_crawler(QASpider)

        def collect(item, **_):
            items.append(dict(item))

        crawler.signals.connect(collect, signal=signals.item_scraped)  # held weakly: keep `collect` alive
        process.crawl(crawler, site=dataclasses.asdict(site), base_url=base_url)
        process.start()
        stats = crawler.stats.get_stats()

    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{site.name}.jsonl"
    items.sort(key=lambda it: it["id"])
    with out.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n")

    http_errors = {k.rsplit("/", 1)[-1]: v for k, v in stats.items()
                   if k.startswith("downloader/response_status_count/") and not k.endswith("/200")}
    dropped = {k.rsplit("/", 1)[-1]: v for k, v in stats.items() if k.startswith("distillery/dropped/")}
    return {
        "site": site.name,
        "pages_fetched": stats.get("response_received_count", 0),
        "items": len(items),
        "dropped": dropped,
        "robots_denied": stats.get("robotstxt/forbidden", 0),
        "http_errors": http_errors,
    }


def main() -> None:
    params = load_or_exit()
    metrics = crawl(params.site)
    METRICS.parent.mkdir(parents=True, exist_ok=True)
    METRICS.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"crawl: {metrics['items']} items from {metrics['pages_fetched']} pages -> {RAW_DIR}/{params.site.name}.jsonl")


if __name__ == "__main__":
    main()
