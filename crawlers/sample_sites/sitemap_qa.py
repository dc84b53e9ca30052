"""Sample site `sitemap_qa`: question pages that no page links to, reachable only through the
site's sitemaps, as on sites whose pages are found by search.

robots.txt names a sitemap index; the index names two sitemaps, one of them gzip-compressed
(sitemap.xml.gz); together they list every question page, an about page the site's sitemap_rules
leave out, and a retired page that answers 404. Question pages are <div> blocks like elements_qa's.
"""

from __future__ import annotations

import random

from crawlers.sample_sites.elements_qa import mcq, page, qa, question_html
from crawlers.sample_sites.facts import ELEMENTS
from crawlers.sample_sites.serve import AbsoluteLinks, Page
from crawlers.sample_sites.site import SampleSite

PAGES = 8
PER_PAGE = 2
XML = {"Content-Type": "application/xml"}


def _urlset(paths: list[str]) -> bytes:
    urls = "".join(f"<url><loc>{{origin}}{p}</loc><lastmod>2024-01-01</lastmod></url>" for p in paths)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>\n').encode()


def generate(seed: int) -> SampleSite:
    rng = random.Random(seed)
    site = SampleSite(name="sitemap_qa")
    names = [e[2] for e in ELEMENTS]
    paths = []
    elements = rng.sample(ELEMENTS, PAGES * PER_PAGE)
    for n in range(PAGES):
        blocks = []
        for j, (z, _, name, _, cat, period) in enumerate(elements[n * PER_PAGE:(n + 1) * PER_PAGE]):
            qid = f"s-{n * PER_PAGE + j + 1:04d}"
            fact = f"{name} is element {z}, a {cat} in period {period}."
            q = (mcq(rng, f"Which element comes right after {names[z - 2]}?", name, names, fact) if z > 1 and j == 0
                 else qa(f"What is the atomic number of the element {name}?", str(z), fact))
            blocks.append(question_html(qid, q))
            site.valid.append(qid)
            site.items[qid] = q
        path = f"/questions/{elements[n * PER_PAGE][2].lower()}.html"
        site.pages[path] = page(f"Questions, sheet {n + 1}", "\n".join(blocks))
        paths.append(path)

    site.pages["/about.html"] = page("About this site", "<p>Questions about the elements, one sheet a page.</p>")
    site.planted["http_404"] = 1  # /questions/retired.html, still listed
    half = PAGES // 2
    site.pages["/sitemaps/questions-1.xml"] = AbsoluteLinks(Page(_urlset(paths[:half] + ["/about.html"]), 200, XML))
    site.pages["/sitemaps/questions-2.xml.gz"] = AbsoluteLinks(
        Page(_urlset(paths[half:] + ["/questions/retired.html"]), 200, {"Content-Type": "application/gzip"}), gzip=True)
    index = "".join(f"<sitemap><loc>{{origin}}/sitemaps/{name}</loc></sitemap>"
                    for name in ("questions-1.xml", "questions-2.xml.gz"))
    site.pages["/sitemap_index.xml"] = AbsoluteLinks(Page((
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{index}</sitemapindex>\n').encode(), 200, XML))
    robots = b"User-agent: *\nDisallow:\nSitemap: {origin}/sitemap_index.xml\n"
    site.pages["/robots.txt"] = AbsoluteLinks(Page(robots, 200, {"Content-Type": "text/plain"}))
    return site
