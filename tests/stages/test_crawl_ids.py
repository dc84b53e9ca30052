"""Item ids unique per site whatever the selector returns: two FAQ pages that both ask "What is
X?" under the same anchor keep both items (each id made unique by its page's URL path), an anchor
repeated on one page is numbered in document order, ids that collide with nothing stay as they
are, the same page under two URLs gives its items once, and the crawl metrics count the
collisions."""

from __future__ import annotations

import json

import yaml

from conftest import compose_params, run_stage
from crawlers.sample_sites.serve import html_page, serve


def _faq(title: str, entries: list[tuple[str, str, str]]) -> bytes:
    body = "".join(f'<h3 id="{anchor}">{q}</h3><p>{a}</p>' for anchor, q, a in entries)
    return f"<html><head><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>".encode()


PAGES = {
    "/robots.txt": b"User-agent: *\nAllow: /\n",
    # the pumps page is linked twice, under two URLs: the same items, which are not collisions
    "/faq/index.html": html_page(b'<html><body><a class="chapter" href="pumps.html">Pumps</a>'
                                 b'<a class="chapter" href="valves.html">Valves</a>'
                                 b'<a class="chapter" href="pumps.html?from=index">Pumps again</a></body></html>'),
    "/faq/pumps.html": html_page(_faq("Pumps", [
        ("what-is-it", "What is a centrifugal pump?", "A pump that moves fluid by a spinning impeller."),
        ("pump-seal", "What does a mechanical seal on a pump do?", "It stops fluid leaking along the shaft.")])),
    "/faq/valves.html": html_page(_faq("Valves", [
        ("what-is-it", "What is a gate valve?", "A valve that opens by lifting a flat gate out of the flow."),
        ("valve-leak", "Why does a valve stem leak?", "Its packing has worn or loosened."),
        ("valve-leak", "How is a leaking valve stem fixed?", "Tighten the packing nut or replace the packing.")])),
}


def test_pages_that_repeat_anchor_ids_lose_no_item(tmp_path):
    with serve(PAGES) as (base, _):
        path = compose_params(tmp_path)
        params = yaml.safe_load(path.read_text())
        params["sites"]["elements_qa"].update(sample=None, start_urls=[f"{base}/faq/index.html"])
        path.write_text(yaml.safe_dump(params, allow_unicode=True))
        run_stage("pipeline.crawl", tmp_path, args=["elements_qa"])
    items = {it["id"]: it for it in map(json.loads, (tmp_path / "data/raw/elements_qa.jsonl").read_text().splitlines())}
    assert {i: it["question"] for i, it in items.items()} == {
        "elements_qa/what-is-it@/faq/pumps.html": "What is a centrifugal pump?",
        "elements_qa/what-is-it@/faq/valves.html": "What is a gate valve?",
        "elements_qa/pump-seal": "What does a mechanical seal on a pump do?",
        "elements_qa/valve-leak": "Why does a valve stem leak?",
        "elements_qa/valve-leak~2": "How is a leaking valve stem fixed?",
    }
    assert items["elements_qa/pump-seal"]["url"].endswith("/faq/pumps.html")  # of two URLs, the smallest
    metrics = json.loads((tmp_path / "metrics/crawl/elements_qa.json").read_text())
    assert (metrics["pages"], metrics["items"], metrics["id_collisions"], metrics["ids_repeated_on_page"]) == (5, 5, 1, 1)
