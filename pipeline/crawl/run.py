"""A site's crawl: its Scrapy spider run once, or as several workers on a Redis scheduler, resumed
from its job state after a stop; the items written to data/raw/<site>.jsonl with ids made unique,
and the crawl's figures. The stage is pipeline/stages/crawl.py."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config.crawl import CrawlConfig, SiteConfig
from pipeline.crawl.scrapy_setup import extractor_selector, sample_for, scrapy_settings, serve_sample, spider_class
from pipeline.paths import CRAWL_STATE_DIR, HTTP_CACHE_DIR, RAW_DIR

CLEAN_STOP = "stopped-cleanly"


def _prepare_state(state: Path) -> bool:
    """Keep a cleanly stopped crawl's state for resuming; drop a killed one's. True if resuming."""
    if (state / CLEAN_STOP).exists():
        (state / CLEAN_STOP).unlink()
        return True
    shutil.rmtree(state, ignore_errors=True)
    return False


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
          state_dir: Path = CRAWL_STATE_DIR, crawl_cfg: CrawlConfig | None = None) -> dict:
    """Crawl one site; returns its metrics. Writes <raw_dir>/<name>.jsonl."""
    # the stage's DVC output, there even when empty: a site of file:// pages caches nothing
    (cache_dir / name).mkdir(parents=True, exist_ok=True)
    if site.scheduler == "redis":
        return crawl_distributed(name, site, crawl_cfg or CrawlConfig(), raw_dir, cache_dir, state_dir)
    from scrapy import signals
    from scrapy.crawler import CrawlerProcess

    state = state_dir / name
    resuming = _prepare_state(state)
    cache = cache_dir / name
    sample = sample_for(site, cache)
    items_file = state / "items.jsonl"
    with ExitStack() as stack:
        base_url = serve_sample(stack, site, sample)
        settings = scrapy_settings(site, cache)
        settings.update({
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
    _write_raw(raw_dir, name, items)
    if stats.get("finish_reason") == "finished":
        shutil.rmtree(state, ignore_errors=True)
    else:
        (state / CLEAN_STOP).touch()
    return _metrics(name, stats, stats.get("finish_reason"), resuming, items, collisions)


def _write_raw(raw_dir: Path, name: str, items: dict[str, dict]) -> None:
    raw_dir.mkdir(parents=True, exist_ok=True)
    out = raw_dir / f"{name}.jsonl"
    tmp = out.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for item_id in sorted(items):
            f.write(json.dumps(items[item_id], ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, out)


def _metrics(name: str, stats: dict, finish_reason: str | None, resumed: bool, items: dict, collisions: int) -> dict:
    def prefixed(prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sorted(stats.items()) if k.startswith(prefix)}

    return {
        "site": name,
        "finish_reason": finish_reason,
        "resumed": resumed,
        "pages": stats.get("response_received_count", 0),
        "pages_fetched": stats.get("httpcache/miss", 0),
        "pages_from_cache": stats.get("httpcache/hit", 0),
        "items": len(items),
        "id_collisions": collisions,
        "ids_repeated_on_page": stats.get("distillery/id_repeated_on_page", 0),
        "sitemap_urls_skipped": stats.get("distillery/sitemap_urls_skipped", 0),
        "links_outside_folder": stats.get("distillery/links_outside_folder", 0),
        "dropped": prefixed("distillery/dropped/"),
        "broken": prefixed("distillery/broken/"),
        "images_skipped": stats.get("distillery/images_skipped", 0),
        # per extractor (layouts[i], sections, api.items): items it gave, pages where it gave none
        "extracted": prefixed("distillery/extracted/"),
        "matched_nothing": prefixed("distillery/matched_nothing/"),
        "first_page_without": prefixed("distillery/first_page_without/"),
        "robots_denied": stats.get("robotstxt/forbidden", 0),
        "http_status": prefixed("downloader/response_status_count/"),
    }


def too_few_items(name: str, site: SiteConfig, metrics: dict) -> str | None:
    """Why the crawl stage fails, or None: a site that kept fewer than min_items items (a layout
    or selector that matched nothing should not flow on into training as a thin dataset)."""
    if metrics["items"] >= site.min_items:
        return None
    lines = [f"crawl {name}: kept {metrics['items']} items from {metrics['pages']} pages, fewer than "
             f"sites.{name}.min_items = {site.min_items}"]
    extracted, first = metrics.get("extracted", {}), metrics.get("first_page_without", {})
    for extractor in sorted(set(extracted) | set(first)):
        where = f"; it matched nothing on {metrics['matched_nothing'].get(extractor, 0)} pages, e.g. {first[extractor]}" \
            if extractor in first else ""
        lines.append(f"  {extractor} ({extractor_selector(site, extractor)}): {extracted.get(extractor, 0)} items{where}")
    if not extracted:
        lines.append("  no page reached an extractor: see broken, robots_denied and http_status in "
                     f"metrics/crawl/{name}.json")
    if metrics["dropped"]:
        lines.append(f"  dropped by validation: {metrics['dropped']}")
    lines.append(f"  try the selectors on a page: python -m pipeline.crawl {name} --preview URL")
    return "\n".join(lines)


def _crawl_state(name: str, cfg: CrawlConfig):
    """This site's crawl in Redis; a server that does not answer ends the process with one line."""
    import redis

    from crawlers.distributed import CrawlState, redis_client

    client = redis_client(cfg.redis.host, cfg.redis.port, cfg.redis.db)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        sys.exit(f"error: sites.{name}.scheduler is redis but {cfg.redis.host}:{cfg.redis.port} "
                 f"(crawl.redis) does not answer: {exc}")
    return CrawlState(client, f"{cfg.redis.basename}:{name}")


def run_worker(name: str, site: SiteConfig, cfg: CrawlConfig, worker: str | None = None, seed: bool = False,
               cache_dir: Path = HTTP_CACHE_DIR, state_dir: Path = CRAWL_STATE_DIR) -> str:
    """One worker of a redis crawl, in this process: fetch from the shared frontier until it is done.
    Its items, ledger and stats go to <state_dir>/<name>/worker-<id>.*, its responses to the HTTP
    cache. The site's concurrency (crawlers/settings.py) is divided by crawl.workers, and its
    DOWNLOAD_DELAY multiplied: the workers together ask no more of the site than one process would.
    Returns the finish reason."""
    from scrapy.crawler import CrawlerProcess

    from crawlers.distributed import TRACKED, new_worker_id

    state = _crawl_state(name, cfg)
    if not state.exists():
        sys.exit(f"error: no crawl of {name} to join in redis {cfg.redis.host}:{cfg.redis.port}; "
                 f"start it with `dvc repro crawl@{name}` (python -m pipeline.crawl {name})")
    worker = worker or new_worker_id()
    files = (state_dir / name).resolve() / f"worker-{worker}"
    settings = scrapy_settings(site, cache_dir / name)
    share = cfg.workers
    settings.update({
        "SCHEDULER": "crawlers.distributed.RedisScheduler",
        "SCHEDULER_QUEUE_CLASS": "scrapy_redis.queue.PriorityQueue",
        "DUPEFILTER_CLASS": "scrapy_redis.dupefilter.RFPDupeFilter",
        "SCHEDULER_QUEUE_KEY": f"{state.p}:requests",
        "SCHEDULER_DUPEFILTER_KEY": f"{state.p}:dupefilter",
        "SCHEDULER_PERSIST": True,
        "REDIS_HOST": cfg.redis.host,
        "REDIS_PORT": cfg.redis.port,
        "REDIS_DB": cfg.redis.db,
        "REDIS_PARAMS": {"password": os.environ.get("REDIS_PASSWORD")},
        "STATS_CLASS": "crawlers.distributed.LedgerStats",
        "DISTILLERY_REDIS_PREFIX": state.p,
        "DISTILLERY_WORKER_ID": worker,
        "DISTILLERY_SEED": seed,
        "DISTILLERY_ITEMS_FILE": f"{files}.items.jsonl",
        "DISTILLERY_LEDGER_FILE": f"{files}.ledger.jsonl",
        "CONCURRENT_REQUESTS": max(1, settings.getint("CONCURRENT_REQUESTS") // share),
        "CONCURRENT_REQUESTS_PER_DOMAIN": max(1, settings.getint("CONCURRENT_REQUESTS_PER_DOMAIN") // share),
        "AUTOTHROTTLE_TARGET_CONCURRENCY": max(1.0, settings.getfloat("AUTOTHROTTLE_TARGET_CONCURRENCY") / share),
        "DOWNLOAD_DELAY": settings.getfloat("DOWNLOAD_DELAY") * share,
        "DOWNLOADER_MIDDLEWARES": {**settings.getdict("DOWNLOADER_MIDDLEWARES"),
                                   "crawlers.distributed.AttributeDownloadMiddleware": 0},
        "SPIDER_MIDDLEWARES": {**settings.getdict("SPIDER_MIDDLEWARES"),
                               "crawlers.distributed.AttributeSpiderMiddleware": 0},
    }, priority="cmdline")
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(spider_class(site.spider))
    process.crawl(crawler, site_name=name, site=dataclasses.asdict(site), base_url=state.base_url())
    process.start()
    stats = crawler.stats
    reason = stats.get_value("finish_reason") or "unknown"
    counts = {k: v for k, v in stats.get_stats().items()
              if isinstance(v, (int, float)) and not k.startswith(TRACKED)}
    counts.update(stats.by_request.get(None, {}))  # tracked counts that belong to no request
    tmp = Path(f"{files}.stats.json.tmp")
    tmp.write_text(json.dumps({"worker": worker, "finish_reason": reason, "counts": counts}, indent=1, sort_keys=True))
    os.replace(tmp, f"{files}.stats.json")
    state.r.hset(f"{state.p}:finished", worker, reason)
    return reason


def _merge_workers(state: Path) -> tuple[list[dict], dict]:
    """Every worker's items (in start order) and the crawl's stats: each request's counters once
    (the ledger, by request), plus what each worker counted outside any request."""
    items: list[dict] = []
    for path in sorted(state.glob("worker-*.items.jsonl")):
        items += _read_items(path)
    by_request: dict[str, dict] = {}
    for path in sorted(state.glob("worker-*.ledger.jsonl")):
        for line in _read_items(path):
            by_request[line["request"]] = line["counts"]
    stats: Counter = Counter()
    for counts in by_request.values():
        stats.update(counts)
    for path in sorted(state.glob("worker-*.stats.json")):
        stats.update(json.loads(path.read_text())["counts"])
    return items, dict(stats)


def crawl_distributed(name: str, site: SiteConfig, cfg: CrawlConfig, raw_dir: Path = RAW_DIR,
                      cache_dir: Path = HTTP_CACHE_DIR, state_dir: Path = CRAWL_STATE_DIR) -> dict:
    """Seed the site's frontier in Redis (or resume it), run cfg.workers local workers, merge.

    A worker process that dies (SIGKILL, OOM, power) leaves its in-flight requests in Redis: the
    others stop once only those are left (`worker_lost`), this run reports the crawl incomplete, and
    the next run puts them back in the queue first. Items and counters are merged from the workers'
    files each run (data/raw is rewritten even when incomplete, as a stopped one-process crawl does)."""
    from crawlers.distributed import new_worker_id

    state = _crawl_state(name, cfg)
    st = state_dir / name
    resuming = state.exists()
    if resuming:
        lost = state.recover()
        if lost:
            print(f"crawl {name}: {len(lost)} lost worker(s); their in-flight requests are queued again", flush=True)
    else:
        shutil.rmtree(st, ignore_errors=True)
    st.mkdir(parents=True, exist_ok=True)
    cache = cache_dir / name
    sample = sample_for(site, cache)
    with ExitStack() as stack:
        base_url = serve_sample(stack, site, sample)
        state.create(base_url)
        ids = [new_worker_id() + f"-{i}" for i in range(cfg.workers)]
        procs = {wid: subprocess.Popen([sys.executable, "-m", "pipeline.crawl", name, "--worker", "--seed", "--id", wid])
                 for wid in ids}
        codes: dict[str, int] = {}
        while len(codes) < len(procs):
            for wid, proc in procs.items():
                if wid not in codes and proc.poll() is not None:
                    codes[wid] = proc.returncode
                    if proc.returncode != 0:
                        state.mark_dead(wid)  # the others need not wait for its heartbeat to expire
            time.sleep(0.1)

    queued, live, dead = state.progress()
    finished = state.finished()
    waiting = []
    if queued or live or dead:
        waiting.append(f"{queued} queued and {live + dead} in flight")
    running = [w for w in state.workers() if w not in finished]
    if running:
        waiting.append(f"worker(s) {', '.join(running)} did not finish")
    missing = [w for w in state.workers() if finished.get(w) != "lost" and not (st / f"worker-{w}.stats.json").exists()]
    if missing:
        waiting.append(f"no files of worker(s) {', '.join(missing)} in {st}: copy them here (docs/scaling.md)")
    items, stats = _merge_workers(st)
    items, collisions = unique_ids(items)
    _write_raw(raw_dir, name, items)
    reasons = sorted({r for w, r in finished.items() if w in codes}) or ["none"]
    finish_reason = "finished" if not waiting else ("incomplete: " + "; ".join(waiting) + f" (workers: {', '.join(reasons)})")
    metrics = _metrics(name, stats, finish_reason, resuming, items, collisions)
    metrics["workers"] = len(state.workers())
    if not waiting:
        state.delete()
        shutil.rmtree(st, ignore_errors=True)
    return metrics
