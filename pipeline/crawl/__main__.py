"""`python -m pipeline.crawl`: the crawl stage (pipeline/stages/crawl.py), run as `python -m` would run it."""

import runpy

if __name__ == "__main__":
    runpy.run_module("pipeline.stages.crawl", run_name="__main__", alter_sys=True)
