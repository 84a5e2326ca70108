"""The crawler (``topologies/crawl.py``) follows links through its loop, against real generated sites.

Each site (``website.generate_site``) is a seeded link graph with cycles,
one page under several URLs, broken links, links to another host and a
robots.txt that forbids a directory; ``nodes.site`` serves it on 127.0.0.1
and counts every request, so the tests see what was fetched, and how often.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from flowgraph import RunFailed, RunReport, run
from flowgraph.cli.loader import load_topology
from helpers import run_cli
from nodes.site import Server, serve
from nodes.urls import normalize_url
from website import SiteFacts, generate_site

CRAWL = Path(__file__).resolve().parents[1] / "topologies" / "crawl.py"


def crawl(server: Server, db: Path, **params: str) -> RunReport:
    """The crawl of ``server``'s site into ``db``, run in this process (its workers are processes)."""
    return run(load_topology(str(CRAWL)), params={"url": server.url, "db": str(db), **params})


def stored(db: Path) -> list[tuple[str, int | None, str | None]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT url, status, error FROM pages").fetchall()


def check_crawl(server: Server, facts: SiteFacts, db: Path) -> None:
    """Every reachable allowed page once with 200, every broken link once with 404, nothing else stored or
    fetched; robots.txt asked for once per fetch replica."""
    rows = stored(db)
    urls = [url for url, _, _ in rows]
    assert len(urls) == len(set(urls)), [url for url, count in Counter(urls).items() if count > 1][:5]
    origin = urlsplit(server.url)
    assert all(urlsplit(url).netloc == origin.netloc for url in urls)
    by_path = {urlsplit(url).path: (status, error) for url, status, error in rows}
    assert {path for path, (status, _) in by_path.items() if status == 200} == facts.allowed
    missing = {path: error for path, (status, error) in by_path.items() if status == 404}
    assert set(missing) == facts.broken
    assert all(error == "HTTPStatusError: 404 Not Found" for error in missing.values())
    assert len(rows) == len(facts.allowed) + len(facts.broken)
    requested = server.paths
    assert requested.pop("/robots.txt") <= 2  # one per fetch replica, at most
    assert set(requested) == facts.allowed | facts.broken
    assert set(requested.values()) == {1}, [path for path, count in requested.items() if count > 1][:5]


def test_the_crawler_fetches_each_allowed_page_of_a_generated_site_once_and_records_the_broken_ones(tmp_path):
    facts = generate_site(tmp_path / "site", 300, seed=5)
    assert facts.broken and facts.disallowed and facts.external
    with serve(tmp_path / "site") as server:
        code, _, stderr = run_cli("run", str(CRAWL), "--set", f"url={server.url}", "--set",
                                  f"db={tmp_path / 'crawl.db'}", cwd=tmp_path, timeout_s=240)
        assert code == 0, stderr
        check_crawl(server, facts, tmp_path / "crawl.db")
    pages = len(facts.allowed) + len(facts.broken)
    assert f"stored {pages} pages in table 'pages'" in stderr
    assert f"({len(facts.disallowed)} URLs left out: robots.txt disallows them)" in stderr


@pytest.mark.slow
def test_the_crawler_crawls_a_site_of_two_thousand_pages_with_cycles_exactly(tmp_path):
    facts = generate_site(tmp_path / "site", 2000, seed=1)
    with serve(tmp_path / "site", delay_s=0.002) as server:
        crawl(server, tmp_path / "crawl.db")
        check_crawl(server, facts, tmp_path / "crawl.db")
        assert server.max_in_flight > 2  # more requests in flight than fetch replicas


def test_max_pages_stops_the_crawl_after_that_many_pages(tmp_path):
    generate_site(tmp_path / "site", 200, seed=7)
    with serve(tmp_path / "site") as server:
        crawl(server, tmp_path / "crawl.db", max_pages="25")
        assert len(stored(tmp_path / "crawl.db")) == 25
        assert sum(count for path, count in server.paths.items() if path != "/robots.txt") == 25


def test_max_depth_zero_fetches_the_start_page_only_and_depth_one_its_links(tmp_path):
    generate_site(tmp_path / "site", 100, seed=9)
    with serve(tmp_path / "site") as server:
        crawl(server, tmp_path / "zero.db", max_depth="0")
        assert [urlsplit(url).path for url, _, _ in stored(tmp_path / "zero.db")] == ["/"]
        crawl(server, tmp_path / "one.db", max_depth="1")
    start = next(url for url, _, _ in stored(tmp_path / "zero.db"))
    with sqlite3.connect(tmp_path / "zero.db") as connection:
        (links,) = connection.execute("SELECT links FROM pages").fetchone()
    linked = {urlsplit(normalize_url(url)).path for url in json.loads(links)
              if urlsplit(url).netloc == urlsplit(start).netloc}
    linked -= {path for path in linked if path.startswith("/private/")}
    assert {urlsplit(url).path for url, _, _ in stored(tmp_path / "one.db")} == {"/"} | linked


def test_a_bad_limit_fails_the_run_naming_it(tmp_path):
    generate_site(tmp_path / "site", 10, seed=1)
    with serve(tmp_path / "site") as server, pytest.raises(RunFailed) as raised:
        crawl(server, tmp_path / "x.db", max_pages="lots")
    assert raised.value.node == "frontier"
    assert "--set max_pages='lots': expected a whole number >= 0" in str(raised.value)
