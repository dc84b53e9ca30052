"""Our own sample sites: generated from a seed, served on 127.0.0.1 for the crawl stage and tests."""

from crawlers.sample_sites.elements_qa import generate as generate_elements_qa

GENERATORS = {"elements_qa": generate_elements_qa}
