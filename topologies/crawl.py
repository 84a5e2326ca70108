"""Crawl a web site: fetch → analyze → store, into SQLite.

    flowgraph run topologies/crawl.py
    flowgraph run topologies/crawl.py --set db=valley.db
    flowgraph run topologies/crawl.py --set url=http://127.0.0.1:8000/ --set db=other.db

By default it crawls the small site bundled in ``topologies/site/``, which
this file serves from the launcher's process, so it runs offline (also over
``--hosts``: replicas there reach the launcher at the address their ssh
connection came from). The pages to fetch are the URLs listed in the site's
``sitemap.txt`` (or only ``url`` itself if it has none). Four replicas fetch
(keep-alive connections, retries, errors kept as rows), two analyze (title,
word count, top words, links; by URL), one stores every page as a row of
table ``pages`` in ``./crawl.db`` (``--set db=FILE``) and prints where.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

from flowgraph import Topology, by_key, context
from nodes.http import Fetch
from nodes.sqlite import SQLiteStore, count_rows
from nodes.text import AnalyzePage

SITE = Path(__file__).resolve().parent / "site"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so each fetch replica reuses its connection
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_site(directory: Path) -> int:
    """Serve ``directory`` on every interface from a daemon thread; returns the port."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
    threading.Thread(target=server.serve_forever, name="crawl-site", daemon=True).start()
    return server.server_address[1]


BUNDLED_SITE_PORT = serve_site(SITE)


def bundled_site_url() -> str:
    """The bundled site as this replica reaches it: on a remote host, the launcher is where ssh came from."""
    launcher = os.environ.get("SSH_CONNECTION", "127.0.0.1").split()[0]
    return f"http://{launcher}:{BUNDLED_SITE_PORT}/"

topo = Topology("crawl")


@topo.source
def seeds():
    """The URLs of the site's sitemap.txt, or the site URL alone."""
    base = context().params.get("url") or bundled_site_url()
    try:
        with urllib.request.urlopen(urljoin(base, "sitemap.txt"), timeout=10) as response:
            paths = response.read().decode().split()
    except urllib.error.HTTPError:
        paths = [""]
    for path in paths:
        yield urljoin(base, path)


fetch = topo.node(Fetch(timeout_s=10), inputs=seeds, parallelism=4, name="fetch")
analyze = topo.node(AnalyzePage(top_n=5), inputs={fetch: by_key("url")}, parallelism=2, name="analyze")


class StorePages(SQLiteStore):
    """Pages into table ``pages`` of ``--set db=FILE`` (default ./crawl.db), anew each run; says where."""

    def setup(self) -> None:
        self.path = context().params.get("db", "crawl.db")
        super().setup()

    def finish(self) -> None:
        super().finish()
        print(f"stored {count_rows(str(self.path), self.table)} pages in table {self.table!r} of {self.path}")


topo.sink(StorePages(None, "pages", replace=True), inputs=analyze, name="store")
