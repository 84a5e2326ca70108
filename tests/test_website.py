"""Tests of the crawler's tools: ``nodes.urls``, the static server ``nodes.site`` and the generated site ``website``."""

from __future__ import annotations

import dataclasses
import http.client
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import pytest

from nodes.site import Server, serve
from nodes.text import parse_html, tokenize
from nodes.urls import normalize_url, same_site
from website import EXTERNAL_HOST, SiteFacts, generate_site

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "topologies" / "site"


# --- urls -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("HTTP://Valley.TEST/Birds/Heron.html", "http://valley.test/Birds/Heron.html"),
        ("http://User:Pass@VALLEY.test/", "http://User:Pass@valley.test/"),
        ("http://valley.test/heron.html#nest", "http://valley.test/heron.html"),
        ("http://valley.test/heron.html#", "http://valley.test/heron.html"),
        ("http://valley.test:80/a", "http://valley.test/a"),
        ("https://valley.test:443/a", "https://valley.test/a"),
        ("http://valley.test:443/a", "http://valley.test:443/a"),
        ("https://valley.test:80/a", "https://valley.test:80/a"),
        ("http://valley.test:8080/a", "http://valley.test:8080/a"),
        ("http://valley.test:/a", "http://valley.test/a"),
        ("http://valley.test:0080/a", "http://valley.test/a"),
        ("http://[::1]:80/a", "http://[::1]/a"),
        ("http://[::1]:8080/a", "http://[::1]:8080/a"),
        ("http://valley.test", "http://valley.test/"),
        ("http://valley.test?q=1", "http://valley.test/?q=1"),
        ("http://valley.test/a/./b/../c.html", "http://valley.test/a/c.html"),
        ("http://valley.test/a/b/..", "http://valley.test/a/"),
        ("http://valley.test/a/b/.", "http://valley.test/a/b/"),
        ("http://valley.test/../../a", "http://valley.test/a"),
        ("http://valley.test/a//b/../c", "http://valley.test/a//c"),
        ("http://valley.test/a/index.html", "http://valley.test/a/"),
        ("http://valley.test/index.html", "http://valley.test/"),
        ("http://valley.test/a/./index.html#top", "http://valley.test/a/"),
        ("http://valley.test/a/index.html/..", "http://valley.test/a/"),
        ("http://valley.test/a/index.html?p=2", "http://valley.test/a/?p=2"),
        ("http://valley.test/a/index.htm", "http://valley.test/a/index.htm"),
        ("http://valley.test/a/INDEX.HTML", "http://valley.test/a/INDEX.HTML"),
        ("http://valley.test/a/myindex.html", "http://valley.test/a/myindex.html"),
        ("http://valley.test/s?b=2&a=1", "http://valley.test/s?b=2&a=1"),
        ("http://valley.test/s?q=a+b&q=%20", "http://valley.test/s?q=a+b&q=%20"),
        ("http://valley.test/s?", "http://valley.test/s"),
        ("http://valley.test/%7ewren/%c3%a9?q=%2f", "http://valley.test/%7Ewren/%C3%A9?q=%2F"),
        ("http://valley.test/~wren/%7E", "http://valley.test/~wren/%7E"),
        ("http://valley.test/a%2fb/../c", "http://valley.test/c"),
        ("http://valley.test/%zz", "http://valley.test/%zz"),
        ("mailto:Recorder@Valley.test", "mailto:Recorder@Valley.test"),
        ("MAILTO:recorder@valley.test", "mailto:recorder@valley.test"),
    ],
)
def test_normalize_url_follows_the_rules_of_the_module_docstring(url, normalized):
    assert normalize_url(url) == normalized


def test_normalize_url_is_idempotent():
    url = "HTTP://Valley.test:80/a/./b/../index.html?q=%7e#x"

    assert normalize_url(normalize_url(url)) == normalize_url(url) == "http://valley.test/a/?q=%7E"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://valley.test:port/", "Port could not be cast to integer value as 'port'"),
        ("http://valley.test:70000/", "Port out of range 0-65535"),
        ("http://[oops/", "Invalid IPv6 URL"),
    ],
)
def test_normalize_url_raises_value_error_for_a_malformed_url(url, message):
    with pytest.raises(ValueError, match=message):
        normalize_url(url)


@pytest.mark.parametrize(
    ("url", "base", "expected"),
    [
        ("http://valley.test/birds/heron.html", "http://valley.test/", True),
        ("http://VALLEY.test:80/", "http://valley.test/", True),
        ("https://valley.test:443/a", "https://valley.test/b", True),
        ("http://user@valley.test/", "http://valley.test/", True),
        ("https://valley.test/", "http://valley.test/", False),
        ("http://valley.test:8080/", "http://valley.test/", False),
        ("http://valley.test:443/", "https://valley.test/", False),
        ("http://www.valley.test/", "http://valley.test/", False),
        (f"http://{EXTERNAL_HOST}/x.html", "http://127.0.0.1:8000/", False),
    ],
)
def test_same_site_compares_scheme_host_and_port(url, base, expected):
    assert same_site(url, base) is expected


# --- site server ------------------------------------------------------------------


def _get(server: Server, path: str, method: str = "GET") -> tuple[int, http.client.HTTPMessage, bytes]:
    """(status, headers, body) of one request, without following redirects."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.headers, response.read()
    finally:
        connection.close()


@pytest.fixture
def site_server():
    with serve(SITE) as server:
        yield server


def test_serve_answers_a_page_with_its_bytes_and_an_html_content_type(site_server):
    status, headers, body = _get(site_server, "/birds/heron.html")

    assert (status, headers["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert body == (SITE / "birds" / "heron.html").read_bytes()
    assert headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("notes.txt", "text/plain; charset=utf-8"), ("style.css", "text/css; charset=utf-8"),
     ("heron.png", "image/png"), ("data.unknown-extension", "application/octet-stream")],
)
def test_serve_gives_the_content_type_of_the_extension(tmp_path, name, content_type):
    (tmp_path / name).write_bytes(b"x")

    with serve(tmp_path) as server:
        assert _get(server, "/" + name)[1]["Content-Type"] == content_type


def test_serve_answers_a_directory_with_its_index_html(site_server):
    status, _headers, body = _get(site_server, "/birds/")

    assert (status, body) == (200, (SITE / "birds" / "index.html").read_bytes())
    assert _get(site_server, "/")[2] == (SITE / "index.html").read_bytes()


def test_serve_redirects_a_directory_without_its_slash_keeping_the_query(site_server):
    status, headers, _body = _get(site_server, "/birds")

    assert (status, headers["Location"]) == (301, "/birds/")
    assert _get(site_server, "/birds?sort=name")[1]["Location"] == "/birds/?sort=name"


@pytest.mark.parametrize(
    "path",
    ["/birds/missing.html", "/missing/", "/../crawl.py", "/%2e%2e/crawl.py", "/birds/..%2f..%2fcrawl.py"],
    ids=["missing-file", "missing-directory", "dot-dot", "encoded-dot-dot", "encoded-slash"],
)
def test_serve_answers_404_for_a_missing_file_or_a_path_out_of_the_directory(site_server, path):
    assert _get(site_server, path)[0] == 404


def test_serve_answers_404_for_a_directory_without_index_html(tmp_path):
    (tmp_path / "empty").mkdir()

    with serve(tmp_path) as server:
        assert _get(server, "/empty/")[0] == 404


def test_serve_answers_head_without_a_body_and_other_methods_with_405(site_server):
    status, headers, body = _get(site_server, "/birds/heron.html", method="HEAD")

    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == str((SITE / "birds" / "heron.html").stat().st_size)
    assert _get(site_server, "/birds/heron.html", method="POST")[0] == 405


def test_serve_keeps_the_connection_alive_between_requests(site_server):
    connection = http.client.HTTPConnection("127.0.0.1", site_server.port, timeout=10)
    sockets = []
    try:
        for path in ["/birds/heron.html", "/birds/wren.html"]:
            connection.request("GET", path)
            connection.getresponse().read()
            sockets.append(connection.sock)  # None once the server has said "Connection: close"
    finally:
        connection.close()

    assert sockets[0] is not None and sockets[1] is sockets[0]


def test_serve_counts_requests_and_the_path_of_each(site_server):
    for path in ["/", "/birds/heron.html", "/birds/heron.html?x=1", "/missing.html", "/birds"]:
        _get(site_server, path)

    assert site_server.requests == 5
    assert site_server.paths == {"/": 1, "/birds/heron.html": 2, "/missing.html": 1, "/birds": 1}
    assert (site_server.in_flight, site_server.max_in_flight) == (0, 1)


def _wait_until(condition: Callable[[], bool], describe: Callable[[], str], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not there after {timeout_s} s: {describe()}")
        time.sleep(0.01)


def test_serve_handles_hundreds_of_requests_at_once_on_as_many_connections(site_server):
    count = 300
    clients = [socket.create_connection(("127.0.0.1", site_server.port), timeout=20) for _ in range(count)]
    try:
        with site_server.hold():
            for client in clients:
                client.sendall(b"GET /birds/wren.html HTTP/1.1\r\nHost: site\r\nConnection: close\r\n\r\n")
            _wait_until(lambda: site_server.in_flight == count, lambda: f"{site_server.in_flight} in flight")
        replies = []
        for client in clients:
            with client.makefile("rb") as reply:
                replies.append(reply.read())
    finally:
        for client in clients:
            client.close()

    assert {reply.split(b"\r\n", 1)[0] for reply in replies} == {b"HTTP/1.1 200 OK"}
    assert site_server.max_in_flight == count
    assert site_server.paths == {"/birds/wren.html": count}


def test_serve_delays_every_response_without_holding_up_the_others():
    delay_s = 0.5
    count = 20
    start = threading.Barrier(count)
    elapsed_s: list[float] = []

    def fetch() -> None:
        start.wait(timeout=20)
        began = time.monotonic()
        with urllib.request.urlopen(server.url + "birds/heron.html", timeout=20) as response:
            response.read()
        elapsed_s.append(time.monotonic() - began)

    with serve(SITE, delay_s=delay_s) as server:
        clients = [threading.Thread(target=fetch) for _ in range(count)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(timeout=30)

    assert len(elapsed_s) == count
    assert min(elapsed_s) >= delay_s
    # A delay that blocked the loop would answer one request at a time. Not timed: how many
    # overlap depends on how fast the threads start, but with 0.5 s each, more than one does.
    assert server.max_in_flight > 1


def test_serve_close_stops_serving_frees_the_port_and_may_be_called_again():
    server = serve(SITE)
    _get(server, "/")

    server.close()
    server.close()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    with serve(SITE, port=server.port) as again:  # the port is free again
        assert again.port == server.port


def test_serve_close_lets_held_requests_go():
    server = serve(SITE)
    answers: list[int] = []
    client = threading.Thread(target=lambda: answers.append(_get(server, "/")[0]))
    with server.hold():
        client.start()
        _wait_until(lambda: server.in_flight == 1, lambda: f"{server.in_flight} in flight")
        server.close()
    client.join(timeout=10)

    assert answers == [200]


def test_serve_url_and_port_name_the_bound_address(site_server):
    assert site_server.url == f"http://127.0.0.1:{site_server.port}/"
    assert site_server.port > 0


def test_serve_rejects_what_is_not_a_directory(tmp_path):
    (tmp_path / "page.html").write_text("<p>x")

    with pytest.raises(NotADirectoryError, match="not a directory"):
        serve(tmp_path / "page.html")
    with pytest.raises(NotADirectoryError, match="not a directory"):
        serve(tmp_path / "missing")


def test_serve_rejects_a_negative_delay():
    with pytest.raises(ValueError, match=r"delay_s must be 0 or more, got -1"):
        serve(SITE, delay_s=-1)


# --- generated site ---------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_generate_site_writes_the_same_site_for_the_same_seed(tmp_path):
    first = generate_site(tmp_path / "a", 120, seed=7)
    again = generate_site(tmp_path / "b", 120, seed=7)
    other = generate_site(tmp_path / "c", 120, seed=8)

    assert first == again
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")
    assert first != other


def test_generate_site_writes_the_pages_and_robots_txt(tmp_path):
    generate_site(tmp_path, 200, seed=1)

    pages = sorted(tmp_path.rglob("*.html"))
    assert len(pages) == 200
    assert (tmp_path / "index.html").exists()
    assert (tmp_path / "robots.txt").read_text() == "User-agent: *\nDisallow: /private/\n"
    assert any(path.name == "index.html" and path.parent != tmp_path for path in pages)
    assert any(len(path.relative_to(tmp_path).parts) == 3 for path in pages)  # section-N/part-N/page-N.html


def test_generate_site_pages_each_have_a_title_and_100_to_400_words(tmp_path):
    generate_site(tmp_path, 200, seed=2)

    for path in tmp_path.rglob("*.html"):
        page = parse_html(path.read_text(encoding="utf-8"))
        assert page["title"], path
        assert 100 <= len(tokenize(page["text"])) <= 400, path


def test_generate_site_facts_cover_every_kind_of_link(tmp_path):
    facts = generate_site(tmp_path, 400, seed=3)

    assert facts.start_url_path == "/"
    assert "/" in facts.allowed and len(facts.allowed) < 400
    assert any(path.endswith("/") and path != "/" for path in facts.allowed)
    assert facts.broken and all(not (tmp_path / path.lstrip("/")).exists() for path in facts.broken)
    assert facts.disallowed and all(path.startswith("/private/") for path in facts.disallowed)
    assert facts.external and all(urlsplit(url).hostname == EXTERNAL_HOST for url in facts.external)
    assert not any(path.startswith("/private/") for path in facts.allowed)


def test_generate_site_has_pages_reachable_only_through_disallowed_ones(tmp_path):
    facts = generate_site(tmp_path, 400, seed=4)
    pages = {urlsplit(normalize_url("http://site/" + path.relative_to(tmp_path).as_posix())).path
             for path in tmp_path.rglob("*.html")}

    behind = pages - facts.allowed - {path for path in pages if path.startswith("/private/")}

    assert behind  # they exist, and no allowed page links to them


def test_generate_site_honours_its_options(tmp_path):
    facts = generate_site(
        tmp_path, 300, seed=5, links_per_page=(2, 4), broken_fraction=0.2, disallowed_prefix="members/only/"
    )

    assert (tmp_path / "robots.txt").read_text() == "User-agent: *\nDisallow: /members/only/\n"
    assert facts.disallowed and all(path.startswith("/members/only/") for path in facts.disallowed)
    assert len(facts.broken) > 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pages": 2}, "pages must be 3 or more"),
        ({"links_per_page": (1, 4)}, "links_per_page must be a range (low, high) with 2 <= low <= high"),
        ({"links_per_page": (5, 4)}, "links_per_page must be a range (low, high) with 2 <= low <= high"),
        ({"words_per_page": (10, 20)}, "each link needs a word"),
        ({"disallowed_prefix": "/private/"}, "disallowed_prefix must be a directory such as 'private/'"),
        ({"disallowed_prefix": "private"}, "disallowed_prefix must be a directory such as 'private/'"),
    ],
)
def test_generate_site_rejects_bad_options(tmp_path, options, message):
    arguments = {"pages": 20, "seed": 0, **options}

    with pytest.raises(ValueError, match=re.escape(message)):
        generate_site(tmp_path, **arguments)


@dataclasses.dataclass
class _Crawl:
    statuses: dict[str, int] = dataclasses.field(default_factory=dict)
    disallowed: set[str] = dataclasses.field(default_factory=set)
    external: set[str] = dataclasses.field(default_factory=set)


def _crawl(base_url: str) -> _Crawl:
    """A breadth-first crawl, one request at a time, that keeps to the site and obeys robots.txt."""
    robots = RobotFileParser(urljoin(base_url, "/robots.txt"))
    robots.read()
    crawl = _Crawl()
    start = normalize_url(base_url)
    queued = {start}
    queue = deque([start])
    while queue:
        url = queue.popleft()
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                status, body, final_url = response.status, response.read().decode("utf-8"), response.url
        except urllib.error.HTTPError as error:
            status, body, final_url = error.code, "", url
        crawl.statuses[urlsplit(url).path] = status
        for link in parse_html(body, base_url=final_url)["links"]:
            link = normalize_url(link)
            if not same_site(link, base_url):
                crawl.external.add(link)
            elif not robots.can_fetch("*", link):
                crawl.disallowed.add(urlsplit(link).path)
            elif link not in queued:
                queued.add(link)
                queue.append(link)
    return crawl


def _assert_crawl_finds_the_facts(root: Path, facts: SiteFacts) -> None:
    with serve(root) as server:
        crawl = _crawl(urljoin(server.url, facts.start_url_path))
        paths = server.paths

    assert {path for path, status in crawl.statuses.items() if status == 200} == facts.allowed
    assert {path for path, status in crawl.statuses.items() if status != 200} == facts.broken
    assert set(crawl.statuses.values()) == {200, 404}
    assert crawl.disallowed == facts.disallowed
    assert crawl.external == facts.external
    assert paths == {"/robots.txt": 1, **dict.fromkeys(facts.allowed | facts.broken, 1)}


def test_a_crawl_of_a_generated_site_finds_exactly_its_facts(tmp_path):
    facts = generate_site(tmp_path, 400, seed=11)

    _assert_crawl_finds_the_facts(tmp_path, facts)

