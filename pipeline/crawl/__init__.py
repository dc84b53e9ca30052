"""Crawling: the Scrapy run of a site (run), its settings and spiders (scrapy_setup) and the
preview of what a site YAML extracts (preview). `python -m pipeline.crawl SITE [--preview]` runs
the crawl stage (pipeline/stages/crawl.py)."""
