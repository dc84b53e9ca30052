"""The raw item of the crawl stage (DESIGN.md, data contracts)."""

import scrapy


class RawItem(scrapy.Item):
    id = scrapy.Field()  # "<site>/<id on the site>", stable across crawls
    site = scrapy.Field()
    url = scrapy.Field()
    fetched_at = scrapy.Field()
    kind = scrapy.Field()  # mcq | qa | doc
    title = scrapy.Field()  # page title; for doc, the section title
    chapter = scrapy.Field()  # bank chapter; for doc, the document title
    section = scrapy.Field()  # doc section number ("4.1.2")
    question = scrapy.Field()
    options = scrapy.Field()  # {"A": "...", ...}; empty for qa and doc
    answer = scrapy.Field()
    explanation = scrapy.Field()
    text = scrapy.Field()  # doc section body
    lang = scrapy.Field()
    encoding = scrapy.Field()  # the page's encoding as served (utf-8, gbk, ...); items are UTF-8
