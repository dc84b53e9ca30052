"""How a site's Scrapy run is set up, for the crawl stage and its preview: the spider class, the
project settings with the site's HTTP cache, and the sample site generated and served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import importlib
import shutil
from contextlib import ExitStack
from pathlib import Path

from pipeline.config.crawl import SiteConfig

SPIDERS = {"qa": "crawlers.spiders.qa:QASpider", "bank": "crawlers.spiders.bank:BankSpider",
           "doc": "crawlers.spiders.doc:DocSpider", "json": "crawlers.spiders.api:ApiSpider"}


def spider_class(kind: str):
    module, name = SPIDERS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def match_cache_to_sample(cache: Path, pages: dict) -> None:
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


def scrapy_settings(site: SiteConfig, cache: Path):
    from scrapy.utils.project import get_project_settings

    settings = get_project_settings()
    settings.setmodule("crawlers.settings", priority="project")
    settings.update({"HTTPCACHE_DIR": str(cache.resolve()), "HTTPCACHE_IGNORE_MISSING": site.offline},
                    priority="cmdline")
    return settings


def sample_for(site: SiteConfig, cache: Path):
    from crawlers.sample_sites import GENERATORS

    sample = GENERATORS[site.sample.generator](seed=site.sample.seed) if site.sample is not None else None
    if sample is not None and not site.offline:
        match_cache_to_sample(cache, sample.pages)
    return sample


def serve_sample(stack: ExitStack, site: SiteConfig, sample) -> str | None:
    from crawlers.sample_sites.serve import serve

    if sample is None:
        return None
    if site.offline:
        return f"http://127.0.0.1:{site.sample.port}"
    base_url, _ = stack.enter_context(serve(sample.pages, port=site.sample.port))
    return base_url


def extractor_selector(site: SiteConfig, extractor: str) -> str:
    """The configured selector behind an extractor's name, for messages."""
    if extractor.startswith("layouts["):
        return f"item {site.layouts[int(extractor[8:-1])].item!r}"
    if extractor == "sections" and site.sections:
        return f"content {site.sections.content!r}, headings {site.sections.headings!r}"
    if extractor == "api.items" and site.api:
        return f"items {site.api.items!r}"
    return ""
