"""The document spider: splits a standard or regulation page into sections by its heading
hierarchy (section number, title, body). Body text is kept as written, so normative wording
(shall / should / may; 应 / 宜 / 可) survives for later stages."""

from __future__ import annotations

import re

from crawlers.items import RawItem
from crawlers.spiders.base import SiteSpider, select, text_of


class DocSpider(SiteSpider):
    name = "doc"

    def items(self, response):
        cfg = self.site["sections"]
        headings = [h.strip().lower() for h in cfg["headings"].split(",")]
        number = re.compile(cfg["number_pattern"])
        doc_title = text_of(select(response, self.site["title"]))
        slug = response.url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".html")
        sections = 0
        contents = select(response, cfg["content"])
        # nested containers (Sphinx's <section> in <section>): each is split on its own, and its
        # text is not part of the section around it
        nested = {c.root for c in contents}
        for content in contents:
            current, body = None, []
            for child in content.xpath("./*"):
                if child.root in nested:
                    continue
                tag = child.root.tag.lower() if isinstance(child.root.tag, str) else ""
                if tag in headings:
                    if current:
                        sections += 1
                        yield self.section(slug, doc_title, current, body)
                    heading = text_of(child.xpath(".//text()"))
                    match = number.match(heading)
                    current = (match.group(1), match.group(2).strip()) if match else ("", heading)
                    body = []
                elif current:
                    paragraph = text_of(child.xpath(".//text()"))
                    if paragraph:
                        body.append(paragraph)
            if current:
                sections += 1
                yield self.section(slug, doc_title, current, body)
        self.extracted("sections", sections, response.url)

    def section(self, slug: str, doc_title: str, heading: tuple[str, str], body: list[str]) -> RawItem:
        number, title = heading
        return RawItem(id=f"{self.site_name}/{slug}#{number or title}", kind="doc", title=title, chapter=doc_title,
                       section=number, question="", options={}, answer="", explanation="",
                       text="\n".join(body))
