"""Scrapy settings shared by every Distillery spider: polite by default."""

BOT_NAME = "distillery"
SPIDER_MODULES = ["crawlers.spiders"]
NEWSPIDER_MODULE = "crawlers.spiders"

# Identify the crawler honestly; put your contact address here before crawling real sites.
USER_AGENT = "DistilleryBot/0.1 (dataset research crawler; contact: set USER_AGENT in crawlers/settings.py)"
ROBOTSTXT_OBEY = True
CONCURRENT_REQUESTS = 8
CONCURRENT_REQUESTS_PER_DOMAIN = 4
AUTOTHROTTLE_ENABLED = True
AUTOTHROTTLE_START_DELAY = 0.0
AUTOTHROTTLE_MAX_DELAY = 10.0
AUTOTHROTTLE_TARGET_CONCURRENCY = 4.0
RETRY_ENABLED = True
RETRY_TIMES = 2
REDIRECT_MAX_TIMES = 5
DOWNLOAD_TIMEOUT = 30
DOWNLOADER_MIDDLEWARES = {
    "scrapy.downloadermiddlewares.robotstxt.RobotsTxtMiddleware": None,
    "crawlers.middlewares.RobotsTxtMiddleware": 100,  # Scrapy's, fixed for requests that wait for robots.txt
    "crawlers.middlewares.CharsetRepairMiddleware": 950,
}
ITEM_PIPELINES = {
    "crawlers.pipelines.ValidateItemPipeline": 100,
    "crawlers.pipelines.PersistItemsPipeline": 900,
}
# Every response is kept on disk (the crawl stage points HTTPCACHE_DIR at data/httpcache/<site>),
# so a re-crawl replays finished pages instead of fetching them again; errors are not cached.
HTTPCACHE_ENABLED = True
HTTPCACHE_EXPIRATION_SECS = 0
HTTPCACHE_IGNORE_HTTP_CODES = [500, 502, 503, 504, 408, 429]
LOG_LEVEL = "INFO"
LOGSTATS_INTERVAL = 10.0
FEED_EXPORT_ENCODING = "utf-8"
