"""Tests of ``nodes.http``: ``Fetch`` against a real ``ThreadingHTTPServer`` on 127.0.0.1.

It serves the bundled site, plus a few routes that misbehave on purpose.
"""

from __future__ import annotations

import contextlib
import functools
import pickle
import re
import shutil
import socket
import ssl
import subprocess
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
from flowgraph.testing import run_and_collect
from nodes.http import MAX_REDIRECTS, Fetch, FetchError, HTTPStatusError
from nodes.text import AnalyzePage

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


def test_fetch_then_analyze_page_summarises_a_page_of_the_site(site, make_fetch):
    row = AnalyzePage(top_n=1).process(make_fetch().process(site.url("moved")))

    assert row["url"] == site.url("moved")
    assert row["title"] == "Grey Heron | Vale of Brenn field guide"
    assert row["top_words"] == [["heron", 4]]
    assert row["links"][:2] == [site.url("rivers/brenn.html"), site.url("rivers/tarn.html")]
