"""The raw item of the crawl stage (DESIGN.md, data contracts)."""

import scrapy


class RawItem(scrapy.Item):
    id = scrapy.Field()
    site = scrapy.Field()
    url = scrapy.Field()
    fetched_at = scrapy.Field()
    kind = scrapy.Field()  # mcq | qa | doc
    title = scrapy.Field()
    question = scrapy.Field()
    options = scrapy.Field()  # {"A": "...", ...}; empty for qa and doc
    answer = scrapy.Field()
    explanation = scrapy.Field()
    text = scrapy.Field()
    lang = scrapy.Field()
    encoding = scrapy.Field()
