"""Our own sample sites: generated from a seed, served on 127.0.0.1 for the crawl stage and tests.

Each generator returns a SampleSite: its pages and the ground truth (valid item ids, planted
broken pages by reason, robots-disallowed ids, planted near-duplicates).
"""

from crawlers.sample_sites import bank_gbk, elements_qa, json_bank, sitemap_qa, standards

GENERATORS = {
    "elements_qa": elements_qa.generate,
    "bank_gbk": bank_gbk.generate,
    "standards": standards.generate,
    "json_bank": json_bank.generate,
    "sitemap_qa": sitemap_qa.generate,
}
