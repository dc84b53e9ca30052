"""The `sites` and `crawl` sections: what each site is and how its spider reads it; distributed crawls."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError
from pipeline.config.redis import RedisConfig


@dataclass
class SampleSiteConfig:
    generator: str
    """Which of our sample-site generators builds the pages (crawlers/sample_sites)."""
    seed: int
    """Seed of the generator: same seed, same site."""
    port: int
    """Port on 127.0.0.1. Fixed, so that URLs (and the HTTP cache's keys) stay the same across
    crawls; 0 picks a free port (no offline replay then)."""


@dataclass
class LayoutConfig:
    """Where a question and its fields sit on a page. Values are CSS selectors (parsel syntax),
    or XPath when prefixed with `xpath:`; relative to the item element; "" when absent."""

    item: str
    """One element per question (a <div>, a <table>, or a heading whose answer follows it)."""
    id: str
    """The item's stable id on the site; when it yields nothing, a hash of URL and question is used."""
    kind: str
    """Gives mcq / qa; "" means mcq when options were found, else qa."""
    question: str
    options: str
    """One element per option; its text is the option."""
    option_key: str
    """Within an option element: its key (A, B, ...). "" takes the key from the option's text
    ("A．Fe", "B. Ir") or else numbers A, B, ... in order."""
    answer: str
    explanation: str


@dataclass
class SectionsConfig:
    """How the document spider splits a page into sections by its headings."""

    content: str
    """The element holding the document (its direct children are headings and body); where it
    matches nested elements (Sphinx's <section>s), each is split on its own."""
    headings: str
    """Tag names of the section headings, outermost first (h2,h3,h4)."""
    number_pattern: str
    """Regular expression splitting a heading into number and title (two groups)."""


@dataclass
class ApiFieldsConfig:
    """Where each field of a question sits in one item of a JSON response: JMESPath expressions
    (jmespath.org), relative to the item; "" when the API has no such field."""

    id: str
    """The item's stable id in the API."""
    question: str
    answer: str
    """The answer: an option key for multiple choice, the text otherwise."""
    options: str = ""
    """An object {"A": "Fe", ...}, or a list of option texts (keyed A, B, ... in order)."""
    explanation: str = ""
    kind: str = ""
    """Gives mcq / qa; "" means mcq when options were found, else qa."""


@dataclass
class PaginationConfig:
    """How the json spider asks for the next page of an API's results."""

    style: Literal["none", "page", "offset", "cursor"]
    """`page` (a page number), `offset` (items to skip), `cursor` (a token the previous response
    gave) or `none` (one response holds everything)."""
    param: str = ""
    """The query parameter that carries the page number, the offset or the cursor."""
    size_param: str = ""
    """The query parameter for the page size; "" leaves the server's default."""
    size: int = 0
    """Items per page asked for with size_param (0 with size_param "": the server's default). The
    offset style steps by the items each page gave, so a server that caps the size still gives
    every item."""
    start: int = 1
    """The page number a start URL without the parameter stands for (page style); the next page
    is start + 1."""
    cursor: str = ""
    """JMESPath to the next cursor in a response (cursor style); null or "" there ends the crawl."""

    def __post_init__(self) -> None:
        if self.style != "none" and not self.param:
            raise ConfigError(f"param: the {self.style} pagination style needs the query parameter's name")
        if self.style == "cursor" and not self.cursor:
            raise ConfigError("cursor: the cursor pagination style needs the JMESPath of the next cursor")
        if self.size_param and self.size < 1:
            raise ConfigError(f"size: a positive page size is needed with size_param ({self.size_param})")


@dataclass
class ApiConfig:
    """A question bank behind a JSON API (the json spider)."""

    items: str
    """JMESPath to the list of items in a response ("data.items", "results")."""
    fields: ApiFieldsConfig
    pagination: PaginationConfig

    def __post_init__(self) -> None:
        import jmespath

        paths = {"items": self.items, "pagination.cursor": self.pagination.cursor,
                 **{f"fields.{k}": v for k, v in dataclasses.asdict(self.fields).items()}}
        for key, path in paths.items():
            try:
                if path:
                    jmespath.compile(path)
            except jmespath.exceptions.ParseError as exc:
                raise ConfigError(f"{key}: {path!r} is not a JMESPath expression: {exc}") from None


@dataclass
class SiteConfig:
    spider: Literal["qa", "bank", "doc", "json"]
    """`qa` (config-driven Q&A pages), `bank` (paginated multiple-choice banks: tables, chapters,
    legacy encodings), `doc` (standards and regulations split into sections) or `json` (a
    question bank's JSON API: `api`)."""
    sample: SampleSiteConfig | None
    """When set, the crawl stage generates this sample site and serves it on 127.0.0.1."""
    start_urls: list[str]
    """Absolute URLs, or paths on the served sample site."""
    allowed_domains: list[str]
    lang: str
    follow: str
    """Selector for links to follow (chapters, documents); "" follows nothing."""
    next_page: str
    """Selector for the pagination link; "" when the site has none."""
    title: str
    """Selector for the page title."""
    chapter: str
    """Selector for the chapter heading of a page; "" when the site has none."""
    layouts: list[LayoutConfig]
    """Question layouts tried on every page (qa and bank spiders)."""
    answer_prefix: str
    """Text stripped from the start of an answer ("Answer:")."""
    sections: SectionsConfig | None
    """Section splitting (doc spider)."""
    offline: bool
    """Replay from the HTTP cache (data/httpcache/<site>) without touching the network."""
    api: ApiConfig | None = None
    """The JSON API's items, fields and pagination (json spider)."""
    sitemap_urls: list[str] = field(default_factory=list)
    """Start from these sitemaps (sitemap.xml, a sitemap index, or robots.txt's Sitemap: lines)
    instead of start_urls; absolute, or paths on the served sample site."""
    sitemap_rules: list[str] = field(default_factory=list)
    """Regular expressions: a URL from the sitemaps is crawled when one of them matches it
    (re.search); [] crawls every URL listed."""
    scheduler: Literal["memory", "redis"] = "memory"
    """`memory`: one Scrapy process, its queue on disk (data/crawl_state/<site>/job). `redis`: the
    frontier lives in Redis (crawl.redis) and crawl.workers processes share it; more machines join
    with `python -m pipeline.crawl <site> --worker` (crawlers/distributed.py)."""
    search_label: bool | None = None
    """Whether this site's questions need the document search: false for a closed-book question
    bank (settled facts), true where answers live in the documents; null: the teacher decides.
    The data's own label, set by the domain (conf/domain/), used for the site's search rows in
    place of the teacher's decision (which is still recorded and counted in metrics/synth.json)."""
    min_items: int = 1
    """The crawl stage fails when it keeps fewer items than this from the site (a layout or
    selector that matches nothing should not flow on into training as a thin dataset)."""
    question_prefix: str = ""
    """A regular expression: its match at the start of a question is removed (a FAQ's numbering,
    "(12) How do I ...": `'\\(\\d+\\)\\s*'`); "" keeps the question as the page writes it."""
    html_end_check: bool = True
    """A page that opens <html> and has no </html> is taken as cut off in transfer: its last item
    is dropped and counted (broken/truncated_html). False for sites that leave out the optional end
    tags (SQLite's documentation does): `--preview` flags such pages."""

    def __post_init__(self) -> None:
        if self.min_items < 0:
            raise ConfigError(f"min_items: expected 0 or more, got {self.min_items}")
        if self.spider == "doc" and self.sections is None:
            raise ConfigError("sections: required for the doc spider")
        if self.spider == "json" and self.api is None:
            raise ConfigError("api: required for the json spider")
        if self.spider in ("qa", "bank") and not self.layouts:
            raise ConfigError(f"layouts: the {self.spider} spider needs at least one layout")
        for i, rule in enumerate(self.sitemap_rules):
            try:
                re.compile(rule)
            except re.error as exc:
                raise ConfigError(f"sitemap_rules[{i}]: {rule!r} is not a regular expression: {exc}") from None
        try:
            re.compile(self.question_prefix)
        except re.error as exc:
            raise ConfigError(f"question_prefix: {self.question_prefix!r} is not a regular expression: {exc}") from None


@dataclass
class CrawlConfig:
    """Crawls of sites whose `scheduler` is redis (the others run in one process)."""

    workers: int = 2
    """Local worker processes the stage starts; the site's concurrency (crawlers/settings.py) is
    shared out among them."""
    redis: RedisConfig = field(default_factory=lambda: RedisConfig("127.0.0.1", 6379, 0, "distillery-crawl"))

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers: expected at least 1 worker process, got {self.workers}")


def search_labels(*sources: dict) -> dict[str, bool]:
    """Site or dataset name -> its search label, for those that set one (`sites`, `datasets`)."""
    return {name: src.search_label for group in sources for name, src in group.items() if src.search_label is not None}
