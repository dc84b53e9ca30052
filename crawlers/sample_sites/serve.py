"""Serve a generated sample site on 127.0.0.1, from memory, with an access log.

A site is {path: bytes | Page | AbsoluteLinks | endpoint}. A Page sets the status and headers too, which
is how the sample sites serve their broken pages (a 500, a redirect loop, a wrong charset header). An
endpoint answers from the request's path and query: `respond(request_path) -> Page` (RedirectLoop, the
JSON bank's API). A request is looked up by its path with the query, then without it.

    python -m crawlers.sample_sites.serve elements_qa 8000     # browse it; Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Page:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RedirectLoop:
    """Redirects `path?n=k` to `path?n=k+1`, for ever."""

    path: str

    def respond(self, request_path: str) -> Page:
        n = int(request_path.rsplit("n=", 1)[-1]) if "n=" in request_path else 0
        return Page(b"", 302, {"Location": f"{self.path}?n={n + 1}"})


@dataclass(frozen=True)
class AbsoluteLinks:
    """A page whose links must be absolute (sitemaps): each `{origin}` in its body becomes the
    server's http://127.0.0.1:<port>, which is known only once the site is served. `gzip`: the
    result is sent gzip-compressed, as a sitemap.xml.gz file is."""

    page: Page
    gzip: bool = False

    def on(self, origin: str) -> Page:
        body = self.page.body.replace(b"{origin}", origin.encode())
        return dataclasses.replace(self.page, body=gzip.compress(body, mtime=0) if self.gzip else body)


def html_page(body: bytes, charset: str = "utf-8") -> Page:
    return Page(body, 200, {"Content-Type": f"text/html; charset={charset}"})


class _SiteHandler(BaseHTTPRequestHandler):
    site: dict = {}
    access_log: list = []
    delay_s: float = 0.0

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.access_log.append(self.path)
        if self.delay_s:
            time.sleep(self.delay_s)
        page = self.site.get(self.path) or self.site.get(self.path.split("?", 1)[0])
        if page is None:
            self.send_error(404, "not found")
            return
        if isinstance(page, bytes):
            ctype = "text/plain" if self.path.endswith(".txt") else "text/html; charset=utf-8"
            page = Page(page, 200, {"Content-Type": ctype})
        if isinstance(page, AbsoluteLinks):
            page = page.on("http://{}:{}".format(*self.server.server_address[:2]))
        elif not isinstance(page, Page):
            page = page.respond(self.path)
        self.send_response(page.status)
        for key, value in page.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(page.body)))
        self.end_headers()
        self.wfile.write(page.body)

    def log_message(self, format, *args) -> None:  # the access_log list is the log
        pass


@contextlib.contextmanager
def serve(site: dict, port: int = 0, delay_s: float = 0.0):
    """Yield (base_url, access_log) while a server thread serves `site` on 127.0.0.1:`port`,
    answering each request after `delay_s` seconds (a slow site)."""
    handler = type("Handler", (_SiteHandler,), {"site": site, "access_log": [], "delay_s": delay_s})
    try:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as exc:
        raise OSError(f"cannot serve the sample site on 127.0.0.1:{port}: {exc} "
                      "(another crawl running? set sites.<name>.sample.port)") from exc
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.access_log
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main() -> None:
    from crawlers.sample_sites import GENERATORS

    name = sys.argv[1] if len(sys.argv) > 1 else "elements_qa"
    site = GENERATORS[name](seed=0).pages
    with serve(site, port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000) as (base, _):
        print(f"serving {name} at {base}/ (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
