"""Crawl a web site by following its links: frontier → fetch → analyze → links, back to the frontier; into SQLite.

    flowgraph run topologies/crawl.py
    flowgraph run topologies/crawl.py --set db=valley.db --set max_pages=20
    flowgraph run topologies/crawl.py --set url=http://127.0.0.1:8000/docs/ --set max_depth=3

By default it crawls the small site bundled in ``topologies/site/``, which
this file serves from the launcher's process (``nodes.site``), so it runs
offline (also over ``--hosts``: replicas there reach the launcher at the
address their ssh connection came from). ``--set url=URL`` starts anywhere.

From the start page it follows the links of every page it fetched
(``feedback("links")``: a loop; the run ends by itself once no page is
left to fetch), to pages on the same host and port as the start URL only.
URLs are normalised before they are compared (``nodes.urls.normalize_url``:
fragments dropped, scheme and host lowercased, default ports and a final
``index.html`` dropped, ``.`` and ``..`` resolved), and a page that
redirected counts under its final URL too, so each page is fetched once.
robots.txt is honoured (``nodes.http.Fetch``): a disallowed URL is not
fetched, and not stored. ``--set max_pages=N`` stops after N pages (the
first N found, breadth first by discovery), ``--set max_depth=N`` at N
links from the start page (0: the start page only).

Two replicas fetch, each with 16 requests in flight (``concurrency=``,
asyncio and aiohttp) and at most 16 to one host; two analyze (title, word
count, top words, links; CPU-bound, so processes); one stores every page,
also the missing ones with their status, as a row of table ``pages`` in
``./crawl.db`` (``--set db=FILE``) and prints where. ``crawl_topology()``
builds it with other numbers (``bin/bench`` compares concurrency 1 and 32).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

from flowgraph import Topology, by_key, context, feedback
from nodes.http import Fetch
from nodes.site import serve
from nodes.sqlite import SQLiteStore, count_rows
from nodes.text import AnalyzePage
from nodes.urls import normalize_url, same_site

SITE = Path(__file__).resolve().parent / "site"
_BUNDLED_SITE = serve(SITE, host="0.0.0.0")
BUNDLED_SITE_PORT = _BUNDLED_SITE.port
"""The bundled site, served on every interface from the launcher's process (node code gets only the port)."""


def bundled_site_url() -> str:
    """The bundled site as this replica reaches it: on a remote host, the launcher is where ssh came from."""
    launcher = os.environ.get("SSH_CONNECTION", "127.0.0.1").split()[0]
    return f"http://{launcher}:{BUNDLED_SITE_PORT}/"


def start_url() -> str:
    return normalize_url(context().params.get("url") or bundled_site_url())


def _limit(name: str) -> int | None:
    value = context().params.get(name)
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"--set {name}={value!r}: expected a whole number >= 0")
    return int(value)


class Frontier:
    """The URLs to fetch: each page of the start URL's site once, within ``max_pages`` and ``max_depth``.

    Takes ``{"url", "depth"}``: the start URL from ``seeds``, links from
    ``links``; ``{"url", "seen": True}`` marks the final URL of a redirect
    as fetched, ``{"url", "disallowed": True}`` says robots.txt refused a
    URL (it does not count as a page). Emits ``{"url", "depth"}`` for each
    new page; beyond ``max_pages`` new URLs wait, in the order found, for
    the place of a refused one.
    """

    def setup(self) -> None:
        self.site = start_url()
        self.seen: set[str] = set()
        self.pages = 0
        """URLs sent to fetch, less those robots.txt refused."""
        self.waiting: deque[dict[str, Any]] = deque()
        self.max_pages = _limit("max_pages")
        self.max_depth = _limit("max_depth")

    def process(self, item: dict[str, Any]) -> dict[str, Any] | None:
        if item.get("seen"):
            self.seen.add(normalize_url(item["url"]))
            return None
        if item.get("disallowed"):
            self.pages -= 1
            return self._admitted(self.waiting.popleft()) if self.waiting else None
        url = normalize_url(item["url"])
        if url in self.seen or not same_site(url, self.site):
            return None
        if self.max_depth is not None and item["depth"] > self.max_depth:
            return None
        self.seen.add(url)
        page = {"url": url, "depth": item["depth"]}
        if self.max_pages is not None and self.pages >= self.max_pages:
            self.waiting.append(page)
            return None
        return self._admitted(page)

    def _admitted(self, page: dict[str, Any]) -> dict[str, Any]:
        self.pages += 1
        return page


def crawl_topology(fetchers: int = 2, concurrency: int = 16, analyzers: int = 2) -> Topology:
    """The crawl, with ``fetchers`` fetch replicas of ``concurrency`` requests in flight each."""
    topo = Topology("crawl")

    @topo.source
    def seeds():
        """The start URL, at depth 0."""
        yield {"url": start_url(), "depth": 0}

    frontier = topo.node(Frontier, inputs={seeds: by_key("url"), feedback("links"): by_key("url")},
                         name="frontier")
    fetch = topo.node(Fetch(timeout_s=10, per_host=concurrency), inputs=frontier, parallelism=fetchers,
                      concurrency=concurrency, name="fetch")
    analyze = topo.node(Analyze(top_n=5), inputs={fetch: by_key("url")}, parallelism=analyzers, name="analyze")

    @topo.node(inputs=analyze)
    def links(row):
        """The page's links one level deeper, and its final URL when it redirected (seen: not fetched again);
        or that robots.txt refused it."""
        if (row["error"] or "").startswith("RobotsDisallowed"):
            yield {"url": row["url"], "disallowed": True}
            return
        if row["final_url"] != row["url"]:
            yield {"url": row["final_url"], "seen": True}
        for link in row["links"]:
            yield {"url": link, "depth": row["depth"] + 1}

    topo.sink(StorePages(None, "pages", replace=True), inputs=analyze, name="store")
    return topo


class Analyze(AnalyzePage):
    """``AnalyzePage``, keeping what the loop needs: the page's depth and its final URL."""

    def process(self, page: dict[str, Any]) -> dict[str, Any]:
        row = super().process(page)
        return {**row, "depth": page["depth"], "final_url": normalize_url(page.get("final_url") or page["url"])}


class StorePages(SQLiteStore):
    """Pages into table ``pages`` of ``--set db=FILE`` (default ./crawl.db), anew each run; says where.

    A URL robots.txt disallows was not fetched: it is counted, not stored.
    """

    def setup(self) -> None:
        self.path = context().params.get("db", "crawl.db")
        self.disallowed = 0
        super().setup()

    def process(self, row: dict[str, Any]) -> None:
        if (row["error"] or "").startswith("RobotsDisallowed"):
            self.disallowed += 1
            return
        super().process(row)

    def finish(self) -> None:
        super().finish()
        print(f"stored {count_rows(str(self.path), self.table)} pages in table {self.table!r} of {self.path}"
              f" ({self.disallowed} URLs left out: robots.txt disallows them)")


topo = crawl_topology()
