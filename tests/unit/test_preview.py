"""The preview's printout (pipeline.crawl.preview.render), on results made by hand: no crawl."""

from pipeline.crawl.preview import render


def _page(url, links=(), items=()):
    return {"url": url, "status": 200, "extracted": {}, "items": list(items), "dropped": [], "links": list(links)}


def test_contents_pages_with_no_item_point_at_a_page_they_link_to():
    result = [_page("file:///doc/index.html", ["file:///doc/index.html", "file:///doc/faq.html"]),
              _page("file:///doc/faq.html", ["file:///doc/index.html", "file:///doc/lang.html"])]
    out = render("mydocs", None, result).splitlines()
    assert out[-2].startswith("preview mydocs: 2 pages, 0 items kept, 0 dropped")
    assert out[-1].endswith("python -m pipeline.crawl mydocs --preview file:///doc/lang.html")  # not one shown


def test_no_hint_when_an_item_was_kept_or_nothing_links_on():
    item = {"id": "mydocs/a", "kind": "doc", "title": "A"}
    kept = render("mydocs", None, [_page("file:///doc/a.html", ["file:///doc/b.html"], [item])])
    assert kept.splitlines()[-1].startswith("preview mydocs: 1 pages, 1 items kept")
    alone = render("mydocs", None, [_page("file:///doc/a.html")])
    assert alone.splitlines()[-1].startswith("preview mydocs: 1 pages, 0 items kept")
