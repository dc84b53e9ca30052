"""Stage crawl@<site>: run the site's spider and write data/raw/<site>.jsonl.

- Sample sites are generated and served on 127.0.0.1 (their configured port) for the crawl.
- Every response is kept in Scrapy's HTTP cache, data/httpcache/<site> (a persisted DVC
  output): a re-crawl replays finished pages instead of fetching them again, and
  `sites.<site>.offline: true` replays the whole crawl without the network.
- Resuming: the crawl keeps its state in data/crawl_state/<site> (Scrapy's JOBDIR and every
  accepted item, appended as found). A crawl stopped cleanly (Ctrl-C, SIGTERM) resumes from
  that queue. A killed one (SIGKILL, power loss) leaves a queue Scrapy cannot trust, so the
  next run starts over from the start URLs, and the HTTP cache serves every page fetched
  before: no finished page is fetched twice either way.
- The output is written whole at the end (sorted by id, replacing the previous file), with
  the crawl's counters in metrics/crawl/<site>.json.

    python -m pipeline.crawl elements_qa      # reads params.yaml (dvc repro crawl@elements_qa)
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
import shutil
import sys
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config import SiteConfig, load_or_exit
from pipeline.paths import CRAWL_METRICS_DIR, CRAWL_STATE_DIR, HTTP_CACHE_DIR, RAW_DIR
CLEAN_STOP = "stopped-cleanly"


SPIDERS = {"qa": "crawlers.spiders.qa:QASpider", "bank": "crawlers.spiders.bank:BankSpider",
           "doc": "crawlers.spiders.doc:DocSpider", "json": "crawlers.spiders.api:ApiSpider"}


def spider_class(kind: str):
    module, name = SPIDERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def _prepare_state(state: Path) -> bool:
    """Keep a cleanly stopped crawl's state for resuming; drop a killed one's. True if resuming."""
    if (state / CLEAN_STOP).exists():
        (state / CLEAN_STOP).unlink()
        return True
    shutil.rmtree(state, ignore_errors=True)
    return False


def _match_cache_to_sample(cache: Path, pages: dict) -> None:
    """A sample site is regenerated each crawl; when its content changed (a new seed, a new
    generator), the cached responses describe another site and are dropped."""
    digest = hashlib.sha256()
    for path in sorted(pages):
        digest.update(f"{path}\0{pages[path]!r}\0".encode())
    stamp = cache / "SAMPLE_SITE_SHA256"
    if stamp.exists() and stamp.read_text() == digest.hexdigest():
        return
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir(parents=True)
    stamp.write_text(digest.hexdigest())


def _read_items(path: Path) -> list[dict]:
    """Every item the crawl appended, in order (a resumed crawl appends a page's items again)."""
    items: list[dict] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line being written when the process stopped
    return items


def unique_ids(items: list[dict]) -> tuple[dict[str, dict], int]:
    """Items by id, and how many ids stood for different items.

    A selector's id (an anchor) is unique on its page, not on the site: two FAQ pages may both
    have `#what-is-x`. When one id comes with different content from different URLs, each item's
    id gets its page's URL path (`<id>@/faq/a.html`), so the result does not depend on crawl order;
    ids that collide with nothing stay as they are. The same item seen again is not a collision:
    from the same URL (a resumed crawl) the last copy is kept, and from another URL with the same
    content (an API page that repeats an item, a page reached by two URLs) the smallest URL's."""
    by_id: dict[str, dict[str, dict]] = {}
    for item in items:
        by_id.setdefault(item["id"], {})[item["url"]] = item
    out: dict[str, dict] = {}
    collisions = 0
    for item_id, by_url in by_id.items():
        distinct: dict[str, dict] = {}
        for url in sorted(by_url):
            item = by_url[url]
            content = json.dumps({k: v for k, v in item.items() if k not in ("url", "fetched_at")}, sort_keys=True)
            distinct.setdefault(content, item)
        if len(distinct) == 1:
            out[item_id] = next(iter(distinct.values()))
            continue
        collisions += 1
        for item in distinct.values():
            parts = urlsplit(item["url"])
            new_id = f"{item_id}@{parts.path}" + (f"?{parts.query}" if parts.query else "")
            out[new_id] = dict(item, id=new_id)
    return out, collisions


def crawl(name: str, site: SiteConfig, raw_dir: Path = RAW_DIR, cache_dir: Path = HTTP_CACHE_DIR,
          state_dir: Path = CRAWL_STATE_DIR) -> dict:
    """Crawl one site; returns its metrics. Writes <raw_dir>/<name>.jsonl."""
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess
    from scrapy.utils.project import get_project_settings

    from crawlers.sample_sites import GENERATORS
    from crawlers.sample_sites.serve import serve

    state = state_dir / name
    resuming = _prepare_state(state)
    cache = cache_dir / name
    sample = GENERATORS[site.sample.generator](seed=site.sample.seed) if site.sample is not None else None
    if sample is not None and not site.offline:
        _match_cache_to_sample(cache, sample.pages)
    items_file = state / "items.jsonl"
    with ExitStack() as stack:
        base_url = None
        if sample is not None:
            if site.offline:
                base_url = f"http://127.0.0.1:{site.sample.port}"
            else:
                base_url, _ = stack.enter_context(serve(sample.pages, port=site.sample.port))
        settings = get_project_settings()
        settings.setmodule("crawlers.settings", priority="project")
        settings.update({
            "HTTPCACHE_DIR": str(cache.resolve()),
            "HTTPCACHE_IGNORE_MISSING": site.offline,
            "JOBDIR": str(state.resolve() / "job"),
            "DISTILLERY_ITEMS_FILE": str(items_file.resolve()),
        }, priority="cmdline")
        process = CrawlerProcess(settings)
        crawler = process.create_crawler(spider_class(site.spider))
        progress = {"pages": 0}

        def on_response(response, **_):
            progress["pages"] += 1
            if progress["pages"] % 10 == 0:
                print(f"crawl {name}: {progress['pages']} pages", flush=True)

        crawler.signals.connect(on_response, signal=signals.response_received)  # held weakly: keep it alive
        process.crawl(crawler, site_name=name, site=dataclasses.asdict(site), base_url=base_url)
        process.start()
        stats = crawler.stats.get_stats()

    items, collisions = unique_ids(_read_items(items_file))
    raw_dir.mkdir(parents=True, exist_ok=True)
    out = raw_dir / f"{name}.jsonl"
    tmp = out.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for item_id in sorted(items):
            f.write(json.dumps(items[item_id], ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, out)

    if stats.get("finish_reason") == "finished":
        shutil.rmtree(state, ignore_errors=True)
    else:
        (state / CLEAN_STOP).touch()

    def prefixed(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sorted(stats.items()) if k.startswith(prefix)}

    return {
        "site": name,
        "finish_reason": stats.get("finish_reason"),
        "resumed": resuming,
        "pages": stats.get("response_received_count", 0),
        "pages_fetched": stats.get("httpcache/miss", 0),
        "pages_from_cache": stats.get("httpcache/hit", 0),
        "items": len(items),
        "id_collisions": collisions,
        "ids_repeated_on_page": stats.get("distillery/id_repeated_on_page", 0),
        "sitemap_urls_skipped": stats.get("distillery/sitemap_urls_skipped", 0),
        "dropped": prefixed("distillery/dropped/"),
        "broken": prefixed("distillery/broken/"),
        "images_skipped": stats.get("distillery/images_skipped", 0),
        "robots_denied": stats.get("robotstxt/forbidden", 0),
        "http_status": prefixed("downloader/response_status_count/"),
    }


def main() -> None:
    params = load_or_exit()
    if len(sys.argv) != 2 or sys.argv[1] not in params.sites:
        sys.exit(f"usage: python -m pipeline.crawl SITE, with SITE one of: {', '.join(params.sites)}")
    name = sys.argv[1]
    metrics = crawl(name, params.sites[name])
    CRAWL_METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (CRAWL_METRICS_DIR / f"{name}.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"crawl {name}: {metrics['items']} items from {metrics['pages']} pages "
          f"({metrics['pages_fetched']} fetched, {metrics['pages_from_cache']} from cache) -> {RAW_DIR}/{name}.jsonl")
    if metrics["finish_reason"] != "finished":
        sys.exit(f"crawl {name}: stopped ({metrics['finish_reason']}); run it again to resume")


if __name__ == "__main__":
    main()
