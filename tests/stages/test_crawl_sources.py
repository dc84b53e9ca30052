"""Sources other than linked HTML pages, served by the crawl stage on 127.0.0.1: a question bank's
JSON API (each pagination style, then replayed from the HTTP cache with the server gone), and a
site whose pages only its sitemaps list."""

from __future__ import annotations

import ast
import json
from urllib.parse import urlsplit

import pytest
import yaml

from conftest import compose_params, free_port, run_stage
from crawlers.sample_sites import GENERATORS

# style -> (endpoint, pagination, API requests a complete crawl makes: 26 questions, the last request
# of the page and offset styles an empty page)
JSON_STYLES = {
    "page": ("/api/page/questions", {"style": "page", "param": "page", "size_param": "per_page", "size": 8}, 5),
    "offset": ("/api/offset/questions", {"style": "offset", "param": "offset", "size_param": "limit", "size": 10}, 4),
    "cursor": ("/api/cursor/questions", {"style": "cursor", "param": "cursor", "cursor": "meta.next_cursor"}, 3),
}


def _edit_site(params_path, name: str, **keys) -> None:
    params = yaml.safe_load(params_path.read_text())
    params["sites"][name].update(keys)
    params_path.write_text(yaml.safe_dump(params, allow_unicode=True))


def _read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _assert_ground_truth(items: list[dict], metrics: dict, name: str) -> None:
    truth = GENERATORS[name](seed=0)
    assert [it["id"] for it in items] == sorted(f"{name}/{i}" for i in truth.valid)
    for it in items:
        expected = truth.items[it["id"].split("/", 1)[1]]
        assert {k: it[k] for k in expected} == expected
        assert it["encoding"] == "utf-8" and it["url"].startswith("http://127.0.0.1:")
    assert metrics["finish_reason"] == "finished" and metrics["items"] == len(items)
    assert {**metrics["broken"], **metrics["dropped"]} == truth.planted
    assert metrics["robots_denied"] == len(truth.disallowed)


@pytest.mark.parametrize("style", JSON_STYLES)
def test_json_api_is_crawled_whole_in_each_pagination_style_then_replayed_offline(tmp_path, style):
    endpoint, pagination, requests = JSON_STYLES[style]
    # a fixed port: the offline replay asks for the same URLs, which key the HTTP cache
    params = compose_params(tmp_path, "+site@sites.json_bank=json_bank", f"sites.json_bank.sample.port={free_port()}")
    # the broken and the robots-disallowed endpoints stay, the bank is asked for in this style
    _edit_site(params, "json_bank", start_urls=[endpoint, "/api/v0/questions", "/api/drafts/questions"])
    api = yaml.safe_load(params.read_text())["sites"]["json_bank"]["api"]
    _edit_site(params, "json_bank", api={**api, "pagination": pagination})
    run_stage("pipeline.crawl", tmp_path, args=["json_bank"])
    online = (tmp_path / "data/raw/json_bank.jsonl").read_text()
    metrics = json.loads((tmp_path / "metrics/crawl/json_bank.json").read_text())
    _assert_ground_truth(_read_jsonl(tmp_path / "data/raw/json_bank.jsonl"), metrics, "json_bank")
    assert metrics["pages"] == requests + 2  # + the cut-off endpoint and robots.txt

    # offline: the crawl stage serves nothing; every response comes from the HTTP cache
    _edit_site(params, "json_bank", offline=True)
    run_stage("pipeline.crawl", tmp_path, args=["json_bank"])
    assert (tmp_path / "data/raw/json_bank.jsonl").read_text() == online
    replay = json.loads((tmp_path / "metrics/crawl/json_bank.json").read_text())
    assert replay["pages_fetched"] == 0 and replay["pages_from_cache"] == metrics["pages"]


def test_a_site_reached_only_through_its_sitemaps_is_crawled_whole(tmp_path):
    compose_params(tmp_path, "+site@sites.sitemap_qa=sitemap_qa", "sites.sitemap_qa.sample.port=0")
    run_stage("pipeline.crawl", tmp_path, args=["sitemap_qa"])
    metrics = json.loads((tmp_path / "metrics/crawl/sitemap_qa.json").read_text())
    _assert_ground_truth(_read_jsonl(tmp_path / "data/raw/sitemap_qa.jsonl"), metrics, "sitemap_qa")
    assert metrics["sitemap_urls_skipped"] == 1  # /about.html, listed but not a question page

    fetched = {urlsplit(ast.literal_eval(meta.read_text())["url"]).path
               for meta in (tmp_path / "data/httpcache/sitemap_qa").rglob("meta")}
    pages = set(GENERATORS["sitemap_qa"](seed=0).pages)
    # robots.txt -> the index -> both sitemaps -> every page they list, but the one sitemap_rules leave out
    assert fetched == (pages - {"/about.html"}) | {"/questions/retired.html"}


def test_an_api_that_ignores_the_page_parameter_is_not_paged_for_ever(tmp_path):
    """Page 2 repeats page 1's questions (the parameter ignored): the spider stops there and
    counts it, instead of asking for page 3, 4, ... for ever."""
    import dataclasses

    from scrapy.http import Request, TextResponse
    from scrapy.utils.test import get_crawler

    from crawlers.spiders.api import ApiSpider
    from pipeline.config.params import load_params

    site = load_params(compose_params(tmp_path, "+site@sites.json_bank=json_bank")).sites["json_bank"]
    crawler = get_crawler(ApiSpider)
    spider = ApiSpider.from_crawler(crawler, site_name="json_bank", site=dataclasses.asdict(site), base_url="http://h")
    crawler.stats.open_spider()
    body = json.dumps({"data": {"questions": [{"uid": "q1", "stem": {"text": "Which gas is inert?"},
                                               "choices": ["Argon", "Oxygen"], "correct": 0}]}}).encode()

    def page(n: int) -> list:
        url = f"http://h/api/page/questions?per_page=8&page={n}"
        response = TextResponse(url, body=body, encoding="utf-8", request=Request(url))
        return list(spider.parse(response))

    first = page(1)
    assert [type(x).__name__ for x in first] == ["RawItem", "Request"] and first[0]["answer"] == "A"
    assert first[1].url.endswith("page=2")
    assert [type(x).__name__ for x in page(2)] == ["RawItem"]  # the same question: no page 3
    assert crawler.stats.get_value("distillery/broken/pagination_stalled") == 1
