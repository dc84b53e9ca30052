"""Stage crawl@<site>: run the site's spider and write data/raw/<site>.jsonl.

Around the spider it does what a DVC stage needs: it serves a sample site for the crawl, keeps the HTTP cache and the
crawl's state so that a rerun replays or resumes instead of fetching again, starts the workers of a Redis crawl and
merges what they found, and writes the output whole at the end, with its counters in metrics/crawl/<site>.json.

    python -m pipeline.crawl elements_qa           # reads params.yaml (dvc repro crawl@elements_qa)
    python -m pipeline.crawl elements_qa --worker  # join a redis crawl from another machine
    python -m pipeline.crawl elements_qa --preview [URL ...]  # what the YAML extracts (pipeline.crawl.preview)

Guide: docs/stages/crawl.md (several workers: docs/scaling.md)
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
