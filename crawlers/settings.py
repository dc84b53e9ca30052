"""Scrapy settings shared by every Distillery spider: polite by default."""

BOT_NAME = "distillery"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

# Identify the crawler honestly; put your contact address here before crawling real sites.
USER_AGENT = "DistilleryBot/0.1 (dataset research crawler)"
ROBOTSTXT_OBEY = True
CONCURRENT_REQUESTS_PER_DOMAIN = 4
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 0.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 4.0
RETRY_ENABLED = True
RETRY_TIMES = 2
DOWNLOAD_TIMEOUT = 30
ITEM_PIPELINES = {"crawlers.pipelines.ValidateItemPipeline": 100}
LOG_LEVEL = "INFO"
FEED_EXPORT_ENCODING = "utf-8"
