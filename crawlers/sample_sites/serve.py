"""Serve a generated sample site on 127.0.0.1 (an ephemeral port), from memory.

    python -m crawlers.sample_sites.serve elements_qa      # browse it; Ctrl-C stops
"""

from __future__ import annotations

import contextlib
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _SiteHandler(BaseHTTPRequestHandler):
    site: dict[str, bytes] = {}
    access_log: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0]
        self.access_log.append(path)
        body = self.site.get(path)
        if body is None:
            self.send_error(404, "not found")
            return
        ctype = "text/plain" if path.endswith(".txt") else "text/html; charset=utf-8"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # keep the crawl's own log readable
        pass


@contextlib.contextmanager
def serve(site: dict[str, bytes], port: int = 0):
    """Yield (base_url, access_log) while a server thread serves `site`."""
    handler = type("Handler", (_SiteHandler,), {"site": site, "access_log": []})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
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
    site, _ = GENERATORS[name](seed=0, per_page=10)
    with serve(site, port=int(sys.argv[2]) if len(sys.argv) > 2 else 8000) as (base, _):
        print(f"serving {name} at {base}/qa/index.html (Ctrl-C stops)")
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
