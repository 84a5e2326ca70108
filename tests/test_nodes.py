"""Tests of the node library in ``nodes/`` and of the bundled site in ``topologies/site``.

``Fetch`` is tested against a real ``ThreadingHTTPServer`` on 127.0.0.1
serving the bundled site, plus a few routes that misbehave on purpose.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import re
import shutil
import socket
import sqlite3
import ssl
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import nodes.http
from flowgraph import Topology
from flowgraph.testing import replica_context, run_and_collect
from helpers import drive_sink
from nodes.http import MAX_REDIRECTS, Fetch, FetchError, HTTPStatusError
from nodes.sqlite import SQLiteStore, count_rows
from nodes.text import ENGLISH_STOPWORDS, AnalyzePage, parse_html, tokenize, top_words, word_counts

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "topologies" / "site"


# --- a local web server ---------------------------------------------------------------


class _SiteServer(ThreadingHTTPServer):
    """Serves ``SITE`` and remembers every request as (path, client port)."""

    # Join the handler threads in server_close(), so none outlives its test.
    daemon_threads = False

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_SiteHandler, directory=str(SITE)))
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self.requests: list[tuple[str, int]] = []
        self.hits: Counter[str] = Counter()
        self.release_hang = threading.Event()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}/"

    def url(self, path: str) -> str:
        return self.base_url + path

    def client_ports(self) -> set[int]:
        return {port for _path, port in self.requests}


class _SiteHandler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # else each reply on a reused connection waits for a delayed ACK
    timeout = 10  # an idle client cannot hold up server_close() for longer
    server: _SiteServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.client_address[1]))
        self.server.hits[self.path] += 1
        route = getattr(self, "route_" + self.path.strip("/").replace("-", "_"), None)
        if route is None:
            super().do_GET()
        else:
            route()

    def reply(self, status: int, body: bytes, content_type: str = "text/html", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def route_flaky(self) -> None:
        """Fails twice with 500, then succeeds."""
        if self.server.hits[self.path] <= 2:
            self.send_error(500)
        else:
            self.reply(200, b"<title>Back</title><p>Recovered at last")

    def route_broken(self) -> None:
        self.send_error(500)

    def route_moved(self) -> None:
        self.reply(301, b"", Location="/birds/heron.html")

    def route_loop(self) -> None:
        self.reply(302, b"", Location="/loop")

    def route_drop(self) -> None:
        """Answers as if keeping the connection alive, then closes it."""
        self.reply(200, b"<p>dropped after this")
        self.close_connection = True

    def route_hang(self) -> None:
        """Never answers; returns when the test ends."""
        self.server.release_hang.wait(timeout=10)
        self.close_connection = True

    def route_unsized(self) -> None:
        """A body without Content-Length: it ends when the connection closes."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"<p>" + b"long " * 100)
        self.close_connection = True

    def route_latin1(self) -> None:
        self.reply(200, "<p>café crème</p>".encode("latin-1"), "text/html; charset=ISO-8859-1")

    def route_bad_utf8(self) -> None:
        self.reply(200, b"<p>caf\xe9</p>")


@contextlib.contextmanager
def _serving(server: _SiteServer) -> Iterator[_SiteServer]:
    # shutdown() returns once serve_forever() next wakes up: keep that short.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="site-server")
    thread.start()
    try:
        yield server
    finally:
        server.release_hang.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def site() -> Iterator[_SiteServer]:
    with _serving(_SiteServer()) as server:
        yield server


@pytest.fixture
def tls_site(tmp_path: Path) -> Iterator[tuple[_SiteServer, Path]]:
    """The site over https, with a new self-signed certificate for 127.0.0.1 (returned as a file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    certificate, key = tmp_path / "certificate.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=60,
    )
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(certificate, key)
    with _serving(_SiteServer(tls)) as server:
        yield server, certificate


@pytest.fixture
def make_fetch(site: _SiteServer) -> Iterator[Callable[..., Fetch]]:
    """Makes ``Fetch`` nodes without backoff delays and tears them down before the server stops."""
    made: list[Fetch] = []

    def make(**config: Any) -> Fetch:
        fetch = Fetch(**{"backoff_s": 0.0, **config})
        made.append(fetch)
        return fetch

    try:
        yield make
    finally:
        for fetch in made:
            fetch.teardown()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL whose port is bound but not listening, so every connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/index.html"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The backoff delays ``nodes.http`` asks for, without waiting."""
    delays: list[float] = []
    monkeypatch.setattr(nodes.http, "time", types.SimpleNamespace(sleep=delays.append, monotonic=time.monotonic))
    return delays


# --- Fetch ------------------------------------------------------------------------


def test_fetch_outputs_status_content_type_and_decoded_body_of_a_page(site, make_fetch):
    page = make_fetch().process(site.url("birds/heron.html"))

    assert page["url"] == page["final_url"] == site.url("birds/heron.html")
    assert page["status"] == 200
    assert page["content_type"] == "text/html"
    assert "<h1>Grey Heron</h1>" in page["body"]
    assert page["error"] is None
    assert page["elapsed_s"] > 0
    assert list(page) == ["url", "final_url", "status", "content_type", "body", "elapsed_s", "error"]


def test_fetch_keeps_the_other_keys_of_a_dict_item(site, make_fetch):
    page = make_fetch().process({"url": site.url("index.html"), "depth": 2, "status": "stale"})

    assert page["depth"] == 2
    assert page["status"] == 200


def test_fetch_outputs_a_missing_page_as_an_item_with_status_404(site, make_fetch):
    page = make_fetch().process(site.url("trees/elm.html"))

    assert page["status"] == 404
    assert page["error"] == "HTTPStatusError: 404 File not found"
    assert page["body"] == ""


def test_fetch_does_not_retry_a_4xx_status(site, make_fetch):
    make_fetch(retries=3).process(site.url("birds/raven.html"))

    assert site.hits["/birds/raven.html"] == 1


def test_fetch_retries_a_5xx_status_until_it_succeeds(site, make_fetch):
    page = make_fetch(retries=2).process(site.url("flaky"))

    assert (page["status"], page["error"]) == (200, None)
    assert "Recovered at last" in page["body"]
    assert site.hits["/flaky"] == 3


def test_fetch_outputs_the_last_5xx_status_as_an_error_when_retries_run_out(site, make_fetch):
    page = make_fetch(retries=1).process(site.url("broken"))

    assert page["status"] == 500
    assert page["error"] == "HTTPStatusError: 500 Internal Server Error"
    assert site.hits["/broken"] == 2


def test_fetch_waits_with_exponential_backoff_between_retries(site, sleeps):
    fetch = Fetch(retries=3, backoff_s=0.2)
    try:
        fetch.process(site.url("broken"))
    finally:
        fetch.teardown()

    assert sleeps == pytest.approx([0.2, 0.4, 0.8])


def test_fetch_retries_a_refused_connection_then_outputs_an_error_item(refused_url, sleeps):
    page = Fetch(retries=2, backoff_s=0.5).process(refused_url)

    assert page["status"] is None
    assert page["error"].startswith("ConnectionRefusedError: ")
    assert page["body"] == ""
    assert sleeps == pytest.approx([0.5, 1.0])


def test_fetch_outputs_a_timeout_as_an_error_item(site, make_fetch):
    page = make_fetch(timeout_s=0.2, retries=0).process(site.url("hang"))

    assert (page["status"], page["error"]) == (None, "TimeoutError: timed out")


def test_fetch_gets_https_urls_from_a_server_with_a_trusted_certificate(tls_site, monkeypatch):
    server, certificate = tls_site
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # read by ssl.create_default_context()
    fetch = Fetch()
    try:
        page = fetch.process(server.url("birds/heron.html"))
    finally:
        fetch.teardown()

    assert (page["status"], page["error"]) == (200, None)
    assert "<h1>Grey Heron</h1>" in page["body"]


def test_fetch_refuses_an_untrusted_certificate_without_retrying(tls_site, sleeps):
    server, _certificate = tls_site

    page = Fetch(retries=2).process(server.url("index.html"))

    assert page["status"] is None
    assert page["error"].startswith("SSLCertVerificationError: ")
    assert "self-signed certificate" in page["error"]
    assert sleeps == []


def test_fetch_follows_a_redirect_and_reports_the_final_url(site, make_fetch):
    page = make_fetch().process(site.url("moved"))

    assert page["url"] == site.url("moved")
    assert page["final_url"] == site.url("birds/heron.html")
    assert page["status"] == 200
    assert "Grey Heron" in page["body"]


def test_fetch_follows_the_directory_redirect_of_a_real_server(site, make_fetch):
    page = make_fetch().process(site.url("birds"))

    assert page["final_url"] == site.url("birds/")
    assert "<h1>Birds of the valley</h1>" in page["body"]


def test_fetch_gives_up_after_five_redirects(site, make_fetch):
    page = make_fetch().process(site.url("loop"))

    assert page["status"] == 302
    assert page["error"] == f"TooManyRedirects: more than 5 redirects; the last one pointed to '{site.url('loop')}'"
    assert site.hits["/loop"] == MAX_REDIRECTS + 1


def test_fetch_reuses_one_keep_alive_connection_for_one_host(site, make_fetch):
    fetch = make_fetch()
    for path in ["index.html", "birds/index.html", "trees/oak.html", "moved"]:
        assert fetch.process(site.url(path))["error"] is None

    assert len(site.requests) == 5
    assert len(site.client_ports()) == 1


def test_fetch_reopens_a_keep_alive_connection_the_server_closed_without_using_a_retry(site, make_fetch):
    fetch = make_fetch(retries=0)

    first = fetch.process(site.url("drop"))
    second = fetch.process(site.url("index.html"))

    assert (first["status"], second["status"], second["error"]) == (200, 200, None)
    assert len(site.client_ports()) == 2


def test_fetch_decodes_the_body_with_the_charset_of_the_response(site, make_fetch):
    assert make_fetch().process(site.url("latin1"))["body"] == "<p>café crème</p>"


def test_fetch_decodes_a_body_without_charset_as_utf8_replacing_bad_bytes(site, make_fetch):
    assert make_fetch().process(site.url("bad-utf8"))["body"] == "<p>caf\ufffd</p>"


def test_fetch_outputs_a_body_over_max_bytes_as_an_error_item(site, make_fetch):
    page = make_fetch(max_bytes=100).process(site.url("index.html"))

    assert page["status"] == 200
    assert page["error"] == "BodyTooLarge: body is over max_bytes=100"
    assert page["body"] == ""


def test_fetch_outputs_a_body_over_max_bytes_without_content_length_as_an_error_item(site, make_fetch):
    page = make_fetch(max_bytes=100).process(site.url("unsized"))

    assert page["error"] == "BodyTooLarge: body is over max_bytes=100"


def test_fetch_opens_a_new_connection_after_leaving_a_body_unread(site, make_fetch):
    fetch = make_fetch(max_bytes=500)
    fetch.process(site.url("index.html"))

    page = fetch.process(site.url("bad-utf8"))

    assert (page["status"], page["error"]) == (200, None)
    assert len(site.client_ports()) == 2


def test_fetch_outputs_a_non_http_url_as_an_error_item():
    page = Fetch().process("ftp://valley.test/birds.txt")

    assert page["error"] == (
        "ValueError: unsupported URL 'ftp://valley.test/birds.txt'; Fetch takes http:// and https:// URLs"
    )


def test_fetch_with_raise_errors_raises_fetch_error_naming_the_url(site, make_fetch):
    url = site.url("trees/elm.html")
    expected = (
        f"could not fetch '{url}': HTTPStatusError: 404 File not found "
        "(with Fetch(raise_errors=False) failures become items with 'error' set)"
    )

    with pytest.raises(FetchError, match=re.escape(expected)) as raised:
        make_fetch(raise_errors=True).process(url)

    assert raised.value.status == 404
    assert isinstance(raised.value.__cause__, HTTPStatusError)


def test_fetch_with_raise_errors_raises_on_a_refused_connection(refused_url):
    with pytest.raises(FetchError, match=re.escape(f"could not fetch '{refused_url}': ConnectionRefusedError")):
        Fetch(retries=0, raise_errors=True).process(refused_url)


def test_fetch_rejects_an_item_without_a_url():
    expected = "Fetch takes a URL string or a dict with a 'url' string, not dict: {'href': 'x'}"
    with pytest.raises(TypeError, match=re.escape(expected)):
        Fetch().process({"href": "x"})


def test_fetch_rejects_a_negative_retries_count():
    with pytest.raises(ValueError, match=re.escape("Fetch needs an integer retries >= 0, got -1")):
        Fetch(retries=-1)


def test_fetch_pickles_with_its_configuration(site, make_fetch):
    fetch = make_fetch(timeout_s=3.0, user_agent="valley-bot")

    copy = pickle.loads(pickle.dumps(fetch))

    assert (copy.timeout_s, copy.user_agent) == (3.0, "valley-bot")
    assert copy.process(site.url("index.html"))["status"] == 200
    copy.teardown()


# --- Fetch politeness (min_interval_s) ------------------------------------------------


class _FakeClock:
    """A monotonic clock that moves only when Fetch sleeps on it or the test moves it."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now_s

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


@pytest.fixture
def clock() -> _FakeClock:
    return _FakeClock()


@pytest.fixture
def make_polite_fetch(make_fetch, clock) -> Callable[..., Fetch]:
    """Makes ``Fetch`` nodes that measure and wait on ``clock`` instead of real time."""

    def make(**config: Any) -> Fetch:
        fetch = make_fetch(**config)
        fetch._clock = clock.monotonic
        fetch._sleep = clock.sleep
        return fetch

    return make


def test_fetch_with_min_interval_waits_the_interval_between_requests_to_one_host(site, make_polite_fetch, clock):
    fetch = make_polite_fetch(min_interval_s=1.5)

    for path in ["index.html", "birds/index.html", "trees/oak.html"]:
        assert fetch.process(site.url(path))["error"] is None

    assert clock.sleeps == [1.5, 1.5]


def test_fetch_with_min_interval_waits_only_for_the_rest_of_the_interval(site, make_polite_fetch, clock):
    fetch = make_polite_fetch(min_interval_s=1.0)

    fetch.process(site.url("index.html"))
    clock.now_s += 0.25
    fetch.process(site.url("birds/index.html"))
    clock.now_s += 3.0
    fetch.process(site.url("trees/oak.html"))

    assert clock.sleeps == pytest.approx([0.75])


def test_fetch_with_min_interval_does_not_wait_between_different_hosts_or_ports(site, make_polite_fetch, clock):
    fetch = make_polite_fetch(min_interval_s=1.0)
    with _serving(_SiteServer()) as other:
        try:
            first = fetch.process(site.url("index.html"))
            second = fetch.process(other.url("index.html"))
        finally:
            fetch.teardown()  # before the server stops: it waits for open connections to close

    assert (first["error"], second["error"]) == (None, None)
    assert clock.sleeps == []


def test_fetch_with_min_interval_spaces_out_redirect_hops_too(site, make_polite_fetch, clock):
    page = make_polite_fetch(min_interval_s=1.0).process(site.url("moved"))

    assert page["final_url"] == site.url("birds/heron.html")
    assert clock.sleeps == [1.0]


def test_fetch_with_min_interval_counts_the_retry_backoff_towards_the_interval(site, make_polite_fetch, clock):
    page = make_polite_fetch(min_interval_s=1.0, retries=2, backoff_s=0.25).process(site.url("flaky"))

    assert page["status"] == 200
    # backoff 0.25, then the rest of the interval; backoff 0.5, then the rest again.
    assert clock.sleeps == pytest.approx([0.25, 0.75, 0.5, 0.5])


def test_fetch_without_min_interval_never_waits(site, make_polite_fetch, clock):
    fetch = make_polite_fetch()

    for path in ["index.html", "index.html", "moved"]:
        fetch.process(site.url(path))

    assert fetch.min_interval_s == 0.0
    assert clock.sleeps == []


def test_fetch_rejects_a_negative_min_interval():
    with pytest.raises(ValueError, match=re.escape("Fetch needs min_interval_s >= 0, got -0.5")):
        Fetch(min_interval_s=-0.5)


def test_fetch_with_min_interval_really_spaces_out_requests(site, make_fetch):
    fetch = make_fetch(min_interval_s=0.1)
    started = time.monotonic()

    for path in ["index.html", "birds/index.html", "trees/oak.html", "index.html"]:
        assert fetch.process(site.url(path))["error"] is None

    assert 0.3 <= time.monotonic() - started < 5.0


def test_fetch_with_min_interval_in_a_run_fetches_every_url(site, mode):
    urls = [site.url(path) for path in ["index.html", "birds/index.html", "trees/oak.html", "moved"]]
    topo = Topology("polite")

    @topo.source
    def seeds():
        yield from urls

    fetch = topo.node(Fetch(min_interval_s=0.05), inputs=seeds, parallelism=2, name="fetch")

    @topo.sink(inputs=fetch)
    def pages(page):
        pass

    got = run_and_collect(topo, mode=mode)["pages"]

    assert sorted((page["url"], page["status"]) for page in got) == sorted((url, 200) for url in urls)


# --- text -------------------------------------------------------------------------


def test_parse_html_collapses_whitespace_in_the_title():
    assert parse_html("<title>\n  Grey \t heron\n</title>")["title"] == "Grey heron"


def test_parse_html_gives_an_empty_title_when_there_is_none():
    assert parse_html("<p>No title here</p>")["title"] == ""


def test_parse_html_text_leaves_out_the_title_scripts_and_styles():
    html = (
        "<html><head><title>Heron</title><style>p { color: red }</style></head>"
        "<body><script>var heron = 1;</script><p>Visible words</p></body></html>"
    )

    assert parse_html(html)["text"] == "Visible words"


def test_parse_html_text_has_one_line_per_block_and_keeps_inline_words_whole():
    html = "<h1>Dipper</h1><p>Bobs   on <b>st</b>ones.</p><ul><li>one</li><li>two</li></ul>"

    assert parse_html(html)["text"] == "Dipper\nBobs on stones.\none\ntwo"


def test_parse_html_decodes_character_references():
    assert parse_html("<p>Caf&eacute; &amp; &#x2014; more</p>")["text"] == "Café & \u2014 more"


def test_parse_html_makes_links_absolute_against_base_url():
    html = '<a href="heron.html">h</a><a href="../trees/oak.html">o</a><a href="/index.html">i</a>'

    links = parse_html(html, base_url="http://valley.test/birds/index.html")["links"]

    assert links == [
        "http://valley.test/birds/heron.html",
        "http://valley.test/trees/oak.html",
        "http://valley.test/index.html",
    ]


def test_parse_html_strips_fragments_and_keeps_each_link_once_in_order():
    html = '<a href="b.html#x">1</a><a href="a.html">2</a><a href="b.html">3</a><a href="#top">4</a>'

    links = parse_html(html, base_url="http://valley.test/page.html")["links"]

    assert links == ["http://valley.test/b.html", "http://valley.test/a.html", "http://valley.test/page.html"]


def test_parse_html_keeps_only_http_and_https_links():
    html = (
        '<a href="mailto:recorder@valley.test">m</a><a href="javascript:void(0)">j</a>'
        '<a href="ftp://valley.test/f">f</a><a href="https://example.org/">e</a><a>no href</a>'
    )

    assert parse_html(html, base_url="http://valley.test/")["links"] == ["https://example.org/"]


def test_parse_html_resolves_links_against_the_base_element():
    html = '<base href="http://mirror.test/guide/"><a href="birds/heron.html">h</a>'

    assert parse_html(html, base_url="http://valley.test/")["links"] == ["http://mirror.test/guide/birds/heron.html"]


def test_parse_html_without_base_url_keeps_only_absolute_links():
    html = '<a href="heron.html">h</a><a href="http://valley.test/oak.html">o</a>'

    assert parse_html(html)["links"] == ["http://valley.test/oak.html"]


def test_parse_html_skips_malformed_links():
    html = '<a href="http://[broken/">b</a><a href="ok.html">o</a>'

    assert parse_html(html, base_url="http://valley.test/")["links"] == ["http://valley.test/ok.html"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("The Heron FISHES", ["the", "heron", "fishes"]),
        ("don't o'clock rock'n'roll", ["don't", "o'clock", "rock'n'roll"]),
        ("Don\u2019t", ["don't"]),
        ("'quoted' herons' nests", ["quoted", "herons", "nests"]),
        ("snake_case e-mail 3.14", ["snake", "case", "e", "mail", "3", "14"]),
        ("Ça va, Straße, ΣΟΦΙΑ", ["ça", "va", "straße", "σοφια"]),
        ("cafe\u0301", ["caf\u00e9"]),
        ("   ...!?  ", []),
    ],
    ids=["lowercase", "inner-apostrophes", "typographic-apostrophe", "outer-apostrophes",
         "underscore-hyphen-dot", "unicode-letters", "combining-accent", "no-words"],
)
def test_tokenize_splits_into_lowercase_words(text, words):
    assert tokenize(text) == words


def test_word_counts_counts_each_word():
    assert word_counts("Heron, heron; dipper") == Counter({"heron": 2, "dipper": 1})


def test_top_words_leaves_out_stopwords_and_orders_ties_by_first_appearance():
    text = "The wren and the dipper. The dipper and the wren. A heron."

    assert top_words(text, n=3) == [("wren", 2), ("dipper", 2), ("heron", 1)]


def test_top_words_with_no_stopwords_counts_every_word():
    assert top_words("the the heron", n=1, stopwords=()) == [("the", 2)]


def test_english_stopwords_are_lowercase_tokens():
    assert all(tokenize(word) == [word] for word in ENGLISH_STOPWORDS)


def test_analyze_page_summarises_a_fetched_page():
    page = {
        "url": "http://valley.test/moved",
        "final_url": "http://valley.test/birds/heron.html",
        "status": 200,
        "error": None,
        "body": '<title>Heron</title><p>Herons fish. Herons wait.</p><a href="dipper.html">d</a>',
    }

    assert AnalyzePage(top_n=2).process(page) == {
        "url": "http://valley.test/moved",
        "status": 200,
        "error": None,
        "title": "Heron",
        "words": 5,
        "top_words": [["herons", 2], ["fish", 1]],
        "links": ["http://valley.test/birds/dipper.html"],
    }


def test_analyze_page_keeps_the_error_of_a_failed_fetch():
    page = {"url": "http://valley.test/elm.html", "status": 404, "error": "HTTPStatusError: 404 Not Found", "body": ""}

    assert AnalyzePage().process(page) == {
        "url": "http://valley.test/elm.html",
        "status": 404,
        "error": "HTTPStatusError: 404 Not Found",
        "title": "",
        "words": 0,
        "top_words": [],
        "links": [],
    }


def test_fetch_then_analyze_page_summarises_a_page_of_the_site(site, make_fetch):
    row = AnalyzePage(top_n=1).process(make_fetch().process(site.url("moved")))

    assert row["url"] == site.url("moved")
    assert row["title"] == "Grey Heron | Vale of Brenn field guide"
    assert row["top_words"] == [["heron", 4]]
    assert row["links"][:2] == [site.url("rivers/brenn.html"), site.url("rivers/tarn.html")]


# --- SQLiteStore ------------------------------------------------------------------


def _column_types(path: Path, table: str) -> dict[str, str]:
    with sqlite3.connect(path) as connection:
        return {row[1]: row[2] for row in connection.execute(f'PRAGMA table_info("{table}")')}


def _select(path: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()




@pytest.fixture
def run_params() -> Iterator[Callable[..., None]]:
    """Sets the context of a running replica with the given run parameters."""
    with contextlib.ExitStack() as stack:
        yield lambda **params: stack.enter_context(replica_context("store", params=params))


def test_sqlite_store_creates_the_table_from_the_first_row_with_inferred_types(tmp_path):
    path = tmp_path / "pages.db"
    row = {"url": "u", "status": 200, "score": 0.5, "raw": b"\x00", "ok": True, "tags": ["a"], "meta": {}, "note": None}

    drive_sink(SQLiteStore(path, "pages"), [row])

    assert _column_types(path, "pages") == {
        "url": "TEXT", "status": "INTEGER", "score": "REAL", "raw": "BLOB",
        "ok": "INTEGER", "tags": "TEXT", "meta": "TEXT", "note": "",
    }
    assert _select(path, "SELECT url, status, score, raw, ok, note FROM pages") == [("u", 200, 0.5, b"\x00", 1, None)]


def test_sqlite_store_keeps_integers_in_a_column_whose_first_value_was_none(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages"), [{"status": None}, {"status": 200}])

    assert _select(path, "SELECT typeof(status) FROM pages") == [("null",), ("integer",)]


def test_sqlite_store_creates_the_table_from_a_given_schema(tmp_path):
    path = tmp_path / "pages.db"
    schema = {"url": "TEXT PRIMARY KEY", "words": "INTEGER NOT NULL", "title": "TEXT"}

    drive_sink(SQLiteStore(path, "pages", schema=schema), [{"words": 3, "url": "u"}])

    assert _column_types(path, "pages") == {"url": "TEXT", "words": "INTEGER", "title": "TEXT"}
    assert _select(path, "SELECT url, words, title FROM pages") == [("u", 3, None)]


def test_sqlite_store_commits_every_batch_rows_rows_and_the_rest_in_finish(tmp_path):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages", batch_rows=2)
    store.setup()
    try:
        store.process({"n": 1})
        assert _select(path, "SELECT name FROM sqlite_master") == [("pages",)]
        assert count_rows(path, "pages") == 0
        store.process({"n": 2})
        store.process({"n": 3})
        assert count_rows(path, "pages") == 2
        store.finish()
        assert count_rows(path, "pages") == 3
    finally:
        store.teardown()


def test_sqlite_store_stores_lists_and_dicts_as_json(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages"), [{"top_words": [["heron", 3]], "meta": {"é": 1}}])

    assert _select(path, "SELECT top_words, meta FROM pages") == [('[["heron", 3]]', '{"é": 1}')]


def test_sqlite_store_rejects_a_key_that_is_not_a_column(tmp_path):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages")
    store.setup()
    try:
        store.process({"url": "u", "status": 200})
        expected = (
            f"table 'pages' in {path} has no column 'colour' (columns: url, status); "
            "add it to schema=, pick the keys to store with columns=, or drop it upstream"
        )
        with pytest.raises(ValueError, match=re.escape(expected)):
            store.process({"url": "u", "colour": "grey"})
    finally:
        store.teardown()


def test_sqlite_store_stores_a_missing_key_as_null(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages"), [{"url": "a", "title": "A"}, {"url": "b"}])

    assert _select(path, "SELECT url, title FROM pages") == [("a", "A"), ("b", None)]


def test_sqlite_store_with_columns_stores_only_those_keys(tmp_path):
    path = tmp_path / "pages.db"

    drive_sink(SQLiteStore(path, "pages", columns=["url", "words"]), [{"words": 4, "body": "<p>..", "url": "u"}])

    assert _select(path, "SELECT * FROM pages") == [("u", 4)]


def test_sqlite_store_rejects_columns_missing_from_the_schema():
    expected = (
        "SQLiteStore columns ['title'] of table 'pages' are not in schema (schema: url); "
        "add them to schema= or drop them from columns="
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        SQLiteStore("x.db", "pages", schema={"url": "TEXT"}, columns=["url", "title"])


_WRITER_SCRIPT = """
import sys
from nodes.sqlite import SQLiteStore

path, replica = sys.argv[1], int(sys.argv[2])
store = SQLiteStore(path, "pages", batch_rows=7)
print("ready", flush=True)
sys.stdin.readline()
try:
    store.setup()
    for n in range(100):
        store.process({"replica": replica, "n": n})
    store.finish()
finally:
    store.teardown()
"""


def test_stores_in_several_processes_can_create_and_fill_one_file_at_once(tmp_path):
    # Opening a new file from several processes at once is a race; three rounds
    # of four processes lost it often enough before SQLiteStore handled it.
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for round_ in range(3):
        path = tmp_path / f"shared-{round_}.db"
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", _WRITER_SCRIPT, str(path), str(replica)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
            )
            for replica in range(4)
        ]
        outputs = []
        try:
            for writer in writers:
                assert writer.stdout.readline() == "ready\n", writer.communicate(timeout=60)
            for writer in writers:  # all at once now
                writer.stdin.write("go\n")
                writer.stdin.flush()
            outputs = [writer.communicate(timeout=60) for writer in writers]
        finally:
            for writer in writers:
                if writer.poll() is None:
                    writer.kill()
                    writer.communicate()

        assert [writer.returncode for writer in writers] == [0, 0, 0, 0], outputs
        assert _select(path, "SELECT replica, COUNT(*) FROM pages GROUP BY replica") == [
            (0, 100), (1, 100), (2, 100), (3, 100)
        ]
        assert _select(path, "PRAGMA journal_mode") == [("wal",)]


def test_sqlite_store_resolves_a_relative_path_at_setup_and_creates_parent_directories(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = SQLiteStore("out/crawl/pages.db", "pages")

    drive_sink(store, [{"url": "u"}])

    assert store.path == str(tmp_path / "out" / "crawl" / "pages.db")
    assert count_rows(store.path, "pages") == 1


def test_sqlite_store_with_path_none_uses_the_db_run_parameter(tmp_path, monkeypatch, run_params):
    monkeypatch.chdir(tmp_path)
    run_params(db="from-params.db")
    store = SQLiteStore(None, "pages")

    drive_sink(store, [{"url": "u"}])

    assert store.path == str(tmp_path / "from-params.db")
    assert count_rows(store.path, "pages") == 1


def test_sqlite_store_with_path_none_and_no_db_parameter_says_how_to_set_it(run_params):
    run_params()
    expected = (
        "SQLiteStore for table 'pages' was given path=None and the run has no 'db' parameter; "
        "pass a path, or run with --set db=FILE"
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        SQLiteStore(None, "pages").setup()


def test_sqlite_store_teardown_after_a_failed_setup_does_not_raise(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    store = SQLiteStore(tmp_path / "a-file" / "pages.db", "pages")

    with pytest.raises(OSError):
        store.setup()
    store.teardown()


def test_sqlite_store_teardown_keeps_the_rows_finish_wrote(tmp_path):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages")
    store.setup()
    store.process({"url": "u"})
    store.finish()

    store.teardown()

    assert count_rows(path, "pages") == 1


def test_sqlite_store_teardown_without_finish_drops_buffered_rows_with_a_warning(tmp_path, caplog):
    path = tmp_path / "pages.db"
    store = SQLiteStore(path, "pages", batch_rows=10)
    store.setup()
    store.process({"url": "u"})

    with caplog.at_level(logging.WARNING, logger="nodes.sqlite"):
        store.teardown()

    assert count_rows(path, "pages") == 0
    assert f"dropping 1 rows for table 'pages' in {path}" in caplog.text


def test_sqlite_store_rejects_a_row_that_is_not_a_dict(tmp_path):
    store = SQLiteStore(tmp_path / "pages.db", "pages")
    store.setup()
    try:
        expected = "SQLiteStore for table 'pages' takes dict rows, not list: ['u']"
        with pytest.raises(TypeError, match=re.escape(expected)):
            store.process(["u"])
    finally:
        store.teardown()


def test_sqlite_store_pickles_before_setup(tmp_path):
    copy = pickle.loads(pickle.dumps(SQLiteStore(tmp_path / "pages.db", "pages", batch_rows=3)))

    assert (copy.table, copy.batch_rows) == ("pages", 3)


def test_count_rows_of_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no SQLite database at"):
        count_rows(tmp_path / "absent.db", "pages")


# --- the bundled site -------------------------------------------------------------


def _site_pages() -> dict[str, Path]:
    return {path.relative_to(SITE).as_posix(): path for path in sorted(SITE.rglob("*.html"))}


def _parsed_site() -> dict[str, dict[str, Any]]:
    return {
        name: parse_html(path.read_text(encoding="utf-8"), base_url="http://site.test/" + name)
        for name, path in _site_pages().items()
    }


def test_site_has_about_forty_pages_under_400_kb():
    total_bytes = sum(path.stat().st_size for path in SITE.rglob("*") if path.is_file())

    assert 35 <= len(_site_pages()) <= 45
    assert total_bytes < 400_000


def test_site_pages_each_have_a_title_a_heading_and_three_to_eight_links():
    for name, path in _site_pages().items():
        parsed = parse_html(path.read_text(encoding="utf-8"), base_url="http://site.test/" + name)
        assert parsed["title"], name
        assert "<h1>" in path.read_text(encoding="utf-8"), name
        assert 3 <= len(parsed["links"]) <= 8, (name, parsed["links"])


def test_site_pages_hold_150_to_600_words():
    for name, parsed in _parsed_site().items():
        assert 150 <= len(tokenize(parsed["text"])) <= 600, name


def test_site_every_page_is_reachable_from_the_index():
    links = {name: parsed["links"] for name, parsed in _parsed_site().items()}
    seen = {"http://site.test/index.html"}
    todo = ["index.html"]
    while todo:
        for link in links[todo.pop()]:
            name = link.removeprefix("http://site.test/")
            if name in links and link not in seen:
                seen.add(link)
                todo.append(name)

    assert seen == {"http://site.test/" + name for name in links}


def test_site_links_to_a_few_missing_pages_and_once_outside():
    pages = _parsed_site()
    inside = {link.removeprefix("http://site.test/") for p in pages.values() for link in p["links"]}
    outside = [(name, link) for name, p in pages.items() for link in p["links"] if "//site.test/" not in link]
    missing = {name for name in inside if "//" not in name and name not in pages}

    assert 2 <= len(missing) <= 6
    assert outside == [("about.html", "https://example.org/")]


def test_site_sitemap_lists_every_page_and_two_that_do_not_exist():
    listed = (SITE / "sitemap.txt").read_text(encoding="utf-8").split()
    pages = set(_site_pages())

    assert len(listed) == len(set(listed))
    assert pages <= set(listed)
    assert sorted(set(listed) - pages) == ["birds/grey-wagtail.html", "trees/elm.html"]


def test_sqlite_store_with_replace_starts_each_run_from_an_empty_table(tmp_path):
    from flowgraph import Topology
    from flowgraph.testing import run_and_collect
    from nodes.sqlite import SQLiteStore, count_rows

    db = tmp_path / "replace.db"
    for _ in range(2):
        topo = Topology("replace")
        topo.source(lambda: ({"n": n} for n in range(5)), name="rows")
        topo.sink(SQLiteStore(str(db), "rows", replace=True), inputs="rows", name="store")
        run_and_collect(topo, mode="inproc")
    assert count_rows(db, "rows") == 5


def test_sqlite_store_refuses_replace_at_parallelism_above_one(tmp_path):
    from flowgraph import RunFailed, Topology, run
    from nodes.sqlite import SQLiteStore

    topo = Topology("replace")
    topo.source(lambda: iter([{"n": 1}]), name="rows")
    topo.sink(SQLiteStore(str(tmp_path / "x.db"), "rows", replace=True), inputs="rows", name="store", parallelism=2)
    with pytest.raises(RunFailed, match="has replace=True at parallelism 2: each replica would drop the rows"):
        run(topo, inproc=True)
