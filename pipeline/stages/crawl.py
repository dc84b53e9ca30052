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
- `sites.<site>.scheduler: redis`: the frontier lives in Redis (crawl.redis; crawlers/distributed.py)
  and the stage starts crawl.workers worker processes on it, each with its share of the site's
  concurrency and its own files in data/crawl_state/<site>/ (worker-<id>.items.jsonl, .ledger.jsonl:
  its requests' counters, .stats.json: written when it exits). More machines join with `--worker`.
  The crawl is complete when the queue is empty, nothing is in flight and every worker that took
  part exited and left its files here; then the items and counters of all workers are merged (as a
  one-process crawl's: unique_ids, counters summed once per request) and the crawl's Redis keys are
  deleted. Otherwise the stage exits non-zero and keeps the state: a rerun puts a lost worker's
  in-flight requests back in the queue and goes on.

    python -m pipeline.crawl elements_qa           # reads params.yaml (dvc repro crawl@elements_qa)
    python -m pipeline.crawl elements_qa --worker  # join a redis crawl from another machine
    python -m pipeline.crawl elements_qa --preview [URL ...]  # what the YAML extracts (pipeline.crawl.preview)
"""

from __future__ import annotations

import json
import sys

from pipeline.config import sections_or_exit
from pipeline.config.crawl import CrawlConfig, SiteConfig
from pipeline.crawl.run import crawl, run_worker, too_few_items
from pipeline.paths import CRAWL_METRICS_DIR, RAW_DIR


def main() -> None:
    params = sections_or_exit(sites=dict[str, SiteConfig], crawl=CrawlConfig)
    args = sys.argv[1:]
    if not args or args[0] not in params.sites or args[1:2] not in ([], ["--worker"], ["--preview"]):
        sys.exit(f"usage: python -m pipeline.crawl SITE [--worker | --preview [--pages N] [URL ...]], "
                 f"with SITE one of: {', '.join(params.sites)}")
    name = args[0]
    if args[1:2] == ["--preview"]:
        from pipeline.crawl import preview

        preview.main(name, params.sites[name], args[2:])
        return
    if "--worker" in args:  # --seed and --id: a local worker the stage started
        if params.sites[name].scheduler != "redis":
            sys.exit(f"error: --worker joins a crawl on redis; sites.{name}.scheduler is {params.sites[name].scheduler}")
        worker = args[args.index("--id") + 1] if "--id" in args else None
        reason = run_worker(name, params.sites[name], params.crawl, worker=worker, seed="--seed" in args)
        sys.exit(0 if reason == "finished" else f"crawl {name}: worker stopped ({reason})")
    metrics = crawl(name, params.sites[name], crawl_cfg=params.crawl)
    CRAWL_METRICS_DIR.mkdir(parents=True, exist_ok=True)
    (CRAWL_METRICS_DIR / f"{name}.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    print(f"crawl {name}: {metrics['items']} items from {metrics['pages']} pages "
          f"({metrics['pages_fetched']} fetched, {metrics['pages_from_cache']} from cache) -> {RAW_DIR}/{name}.jsonl")
    if metrics["finish_reason"] != "finished":
        sys.exit(f"crawl {name}: stopped ({metrics['finish_reason']}); run it again to resume")
    problem = too_few_items(name, params.sites[name], metrics)
    if problem:
        sys.exit(f"error: {problem}")


if __name__ == "__main__":
    main()
