"""Tests of ``nodes.http``: ``Fetch`` against a real ``ThreadingHTTPServer`` on 127.0.0.1.

It serves the bundled site, plus a few routes that misbehave on purpose and a
robots.txt that each test may set. ``Fetch`` is driven as a replica drives
it, on one event loop: ``setup()``, ``process()`` calls (several at once with
``concurrency``), ``teardown()``.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import itertools
import pickle
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from flowgraph import Topology
from flowgraph.testing import run_and_collect
from nodes.http import MAX_REDIRECTS, Fetch, FetchError, HTTPStatusError, RobotsDisallowed
from nodes.site import serve
from nodes.text import AnalyzePage

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "topologies" / "site"

SLOW_ROUTE_S = 0.03
"""How long ``/slow`` takes to answer, so that concurrent requests overlap on the server."""


# --- a local web server ---------------------------------------------------------------


class _SiteServer(ThreadingHTTPServer):
    """Serves ``SITE`` and remembers every request as (path, client port) and when it came."""

    # Join the handler threads in server_close(), so none outlives its test.
    daemon_threads = False
    # 50 concurrent first requests connect at once: none may be refused for a full backlog.
    request_queue_size = 1024

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_SiteHandler, directory=str(SITE)))
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.scheme = "http" if tls is None else "https"
        self.requests: list[tuple[str, int]] = []
        self.started_s: list[float] = []
        self.hits: Counter[str] = Counter()
        self.release_hang = threading.Event()
        self.robots_txt: str | None = None
        """Served as /robots.txt; ``None``: a 404."""
        self.robots_status = 200
        self.lock = threading.Lock()
        self.slow_in_flight = 0
        self.slow_max_in_flight = 0

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
        with self.server.lock:
            self.server.started_s.append(time.monotonic())
            self.server.requests.append((self.path, self.client_address[1]))
            self.server.hits[self.path] += 1
        route = getattr(self, "route_" + self.path.strip("/").replace("-", "_").replace(".", "_"), None)
        if route is None:
            super().do_GET()
        else:
            route()

    def reply(self, status: int, body: bytes, content_type: str = "text/html", **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def route_robots_txt(self) -> None:
        """The server's ``robots_txt``, with keep-alive (``send_error`` would close the connection)."""
        if self.server.robots_txt is None:
            self.reply(404, b"no robots.txt here", "text/plain")
        else:
            self.reply(self.server.robots_status, self.server.robots_txt.encode(), "text/plain")

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

    def route_slow(self) -> None:
        """Answers after ``SLOW_ROUTE_S``, counting the requests it is answering at once."""
        with self.server.lock:
            self.server.slow_in_flight += 1
            self.server.slow_max_in_flight = max(self.server.slow_max_in_flight, self.server.slow_in_flight)
        time.sleep(SLOW_ROUTE_S)
        with self.server.lock:
            self.server.slow_in_flight -= 1
        self.reply(200, b"<p>slow")

    def route_unsized(self) -> None:
        """A body without Content-Length: it ends when the connection closes."""
        self.send_response(200)
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(b"<p>" + b"long " * 100)
        self.close_connection = True

    def route_big(self) -> None:
        """A megabyte, far more than one read from the socket; the client may hang up halfway."""
        self.close_connection = True  # a client that hangs up resets the connection: read no further request
        try:
            self.reply(200, b"<p>" + b"x" * 1_000_000)
        except ConnectionError:
            pass

    def route_gzip(self) -> None:
        body = "<p>héron cendré</p>".encode() * 100
        self.reply(200, gzip.compress(body), "text/html; charset=utf-8", Content_Encoding="gzip")

    def route_gzip_bomb(self) -> None:
        """A hundred kilobytes of zeros, compressed to a few hundred bytes."""
        self.reply(200, gzip.compress(bytes(100_000)), "application/octet-stream", Content_Encoding="gzip")

    def route_latin1(self) -> None:
        self.reply(200, "<p>café crème</p>".encode("latin-1"), "text/html; charset=ISO-8859-1")

    def route_bad_utf8(self) -> None:
        self.reply(200, b"<p>caf\xe9</p>")


def _start(server: _SiteServer) -> threading.Thread:
    # shutdown() returns once serve_forever() next wakes up: keep that short.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="site-server")
    thread.start()
    return thread


def _stop(server: _SiteServer, thread: threading.Thread) -> None:
    server.release_hang.set()
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def site() -> Iterator[_SiteServer]:
    server = _SiteServer()
    thread = _start(server)
    yield server
    _stop(server, thread)


@pytest.fixture
def other_site() -> Iterator[_SiteServer]:
    """A second server, on another port."""
    server = _SiteServer()
    thread = _start(server)
    yield server
    _stop(server, thread)


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
    server = _SiteServer(tls)
    thread = _start(server)
    yield server, certificate
    _stop(server, thread)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A URL whose port is bound but not listening, so every connect is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/index.html"


# --- driving Fetch as a replica does ------------------------------------------------


def fetch_all(fetch: Fetch, items: list[Any], concurrency: int = 1) -> list[dict[str, Any]]:
    """The outputs for ``items``, from ``setup()``, up to ``concurrency`` ``process()`` calls at once, ``teardown()``.

    Items start in order; with ``concurrency=1`` each starts when the one before has ended.
    """

    async def run() -> list[dict[str, Any]]:
        await fetch.setup()
        try:
            pages: list[dict[str, Any]] = [{} for _ in items]
            queue = iter(enumerate(items))

            async def worker() -> None:
                for index, item in queue:
                    pages[index] = await fetch.process(item)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return pages
        finally:
            await fetch.teardown()

    return asyncio.run(run())


def fetch_one(fetch: Fetch, item: Any) -> dict[str, Any]:
    return fetch_all(fetch, [item])[0]


def quick_fetch(**config: Any) -> Fetch:
    """A ``Fetch`` without backoff delays."""
    return Fetch(**{"backoff_s": 0.0, **config})


class _FakeClock:
    """A monotonic clock that moves only when Fetch sleeps on it or the test moves it."""

    def __init__(self) -> None:
        self.now_s = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += seconds


@pytest.fixture
def clock() -> _FakeClock:
    return _FakeClock()


def on_clock(fetch: Fetch, clock: _FakeClock) -> Fetch:
    """``fetch``, measuring and waiting (politeness, backoff) on ``clock`` instead of real time."""
    fetch._clock = clock.monotonic
    fetch._sleep = clock.sleep
    return fetch


# --- Fetch ------------------------------------------------------------------------


def test_fetch_outputs_status_content_type_and_decoded_body_of_a_page(site):
    page = fetch_one(quick_fetch(), site.url("birds/heron.html"))

    assert page["url"] == page["final_url"] == site.url("birds/heron.html")
    assert page["status"] == 200
    assert page["content_type"] == "text/html"
    assert "<h1>Grey Heron</h1>" in page["body"]
    assert page["error"] is None
    assert page["elapsed_s"] > 0
    assert list(page) == ["url", "final_url", "status", "content_type", "body", "elapsed_s", "error"]


def test_fetch_keeps_the_other_keys_of_a_dict_item(site):
    page = fetch_one(quick_fetch(), {"url": site.url("index.html"), "depth": 2, "status": "stale"})

    assert page["depth"] == 2
    assert page["status"] == 200


def test_fetch_outputs_a_missing_page_as_an_item_with_status_404(site):
    page = fetch_one(quick_fetch(), site.url("trees/elm.html"))

    assert page["status"] == 404
    assert page["error"] == "HTTPStatusError: 404 File not found"
    assert page["body"] == ""


def test_fetch_does_not_retry_a_4xx_status(site):
    fetch_one(quick_fetch(retries=3), site.url("birds/raven.html"))

    assert site.hits["/birds/raven.html"] == 1


def test_fetch_retries_a_5xx_status_until_it_succeeds(site):
    page = fetch_one(quick_fetch(retries=2), site.url("flaky"))

    assert (page["status"], page["error"]) == (200, None)
    assert "Recovered at last" in page["body"]
    assert site.hits["/flaky"] == 3


def test_fetch_outputs_the_last_5xx_status_as_an_error_when_retries_run_out(site):
    page = fetch_one(quick_fetch(retries=1), site.url("broken"))

    assert page["status"] == 500
    assert page["error"] == "HTTPStatusError: 500 Internal Server Error"
    assert site.hits["/broken"] == 2


def test_fetch_waits_with_exponential_backoff_between_retries(site, clock):
    fetch_one(on_clock(Fetch(retries=3, backoff_s=0.2), clock), site.url("broken"))

    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8])


def test_fetch_retries_a_refused_connection_then_outputs_an_error_item(refused_url, clock):
    page = fetch_one(on_clock(Fetch(retries=2, backoff_s=0.5), clock), refused_url)

    assert page["status"] is None
    assert page["error"].startswith("ConnectionRefusedError: Cannot connect to host 127.0.0.1:")
    assert page["body"] == ""
    # The retries are those of robots.txt; its failure is the page's, which is not tried again.
    assert clock.sleeps == pytest.approx([0.5, 1.0])


def test_fetch_outputs_a_timeout_as_an_error_item(site):
    page = fetch_one(quick_fetch(timeout_s=0.2, retries=0), site.url("hang"))

    assert page["status"] is None
    assert page["error"].startswith("TimeoutError: ")


def test_fetch_gets_https_urls_from_a_server_with_a_trusted_certificate(tls_site, monkeypatch):
    server, certificate = tls_site
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # read by ssl.create_default_context() in setup()

    page = fetch_one(Fetch(), server.url("birds/heron.html"))

    assert (page["status"], page["error"]) == (200, None)
    assert "<h1>Grey Heron</h1>" in page["body"]


def test_fetch_refuses_an_untrusted_certificate_without_retrying(tls_site, clock):
    server, _certificate = tls_site

    page = fetch_one(on_clock(Fetch(retries=2), clock), server.url("index.html"))

    assert page["status"] is None
    assert page["error"].startswith("SSLCertVerificationError: ")
    assert "self-signed certificate" in page["error"]
    assert clock.sleeps == []


def test_fetch_follows_a_redirect_and_reports_the_final_url(site):
    page = fetch_one(quick_fetch(), site.url("moved"))

    assert page["url"] == site.url("moved")
    assert page["final_url"] == site.url("birds/heron.html")
    assert page["status"] == 200
    assert "Grey Heron" in page["body"]


def test_fetch_follows_the_directory_redirect_of_a_real_server(site):
    page = fetch_one(quick_fetch(), site.url("birds"))

    assert page["final_url"] == site.url("birds/")
    assert "<h1>Birds of the valley</h1>" in page["body"]


def test_fetch_gives_up_after_five_redirects(site):
    page = fetch_one(quick_fetch(), site.url("loop"))

    assert page["status"] == 302
    assert page["error"] == f"TooManyRedirects: more than 5 redirects; the last one pointed to '{site.url('loop')}'"
    assert site.hits["/loop"] == MAX_REDIRECTS + 1


def test_fetch_reuses_one_keep_alive_connection_for_one_host(site):
    pages = fetch_all(quick_fetch(), [site.url(path) for path in ["index.html", "birds/index.html", "moved"]])

    assert [page["error"] for page in pages] == [None, None, None]
    assert [path for path, _port in site.requests] == [
        "/robots.txt", "/index.html", "/birds/index.html", "/moved", "/birds/heron.html"
    ]
    assert len(site.client_ports()) == 1


def test_fetch_reopens_a_keep_alive_connection_the_server_closed_without_using_a_retry(site):
    first, second = fetch_all(quick_fetch(retries=0), [site.url("drop"), site.url("index.html")])

    assert (first["status"], second["status"], second["error"]) == (200, 200, None)
    assert len(site.client_ports()) == 2


def test_fetch_decodes_the_body_with_the_charset_of_the_response(site):
    assert fetch_one(quick_fetch(), site.url("latin1"))["body"] == "<p>café crème</p>"


def test_fetch_decodes_a_body_without_charset_as_utf8_replacing_bad_bytes(site):
    assert fetch_one(quick_fetch(), site.url("bad-utf8"))["body"] == "<p>caf\ufffd</p>"


def test_fetch_uncompresses_a_gzip_encoded_body(site):
    page = fetch_one(quick_fetch(), site.url("gzip"))

    assert (page["status"], page["error"]) == (200, None)
    assert page["body"] == "<p>héron cendré</p>" * 100


def test_fetch_outputs_a_body_over_max_bytes_as_an_error_item(site):
    page = fetch_one(quick_fetch(max_bytes=100), site.url("index.html"))

    assert page["status"] == 200
    assert page["error"] == "BodyTooLarge: body is over max_bytes=100"
    assert page["body"] == ""


def test_fetch_outputs_a_body_over_max_bytes_without_content_length_as_an_error_item(site):
    page = fetch_one(quick_fetch(max_bytes=100), site.url("unsized"))

    assert page["error"] == "BodyTooLarge: body is over max_bytes=100"


def test_fetch_counts_max_bytes_of_the_uncompressed_body(site):
    page = fetch_one(quick_fetch(max_bytes=10_000), site.url("gzip-bomb"))

    assert page["error"] == "BodyTooLarge: body is over max_bytes=10000"


def test_fetch_opens_a_new_connection_after_leaving_a_body_unread(site):
    big, small = fetch_all(quick_fetch(max_bytes=500), [site.url("big"), site.url("bad-utf8")])

    assert big["error"] == "BodyTooLarge: body is over max_bytes=500"
    assert (small["status"], small["error"]) == (200, None)
    assert len(site.client_ports()) == 2


def test_fetch_outputs_a_non_http_url_as_an_error_item():
    page = fetch_one(Fetch(), "ftp://valley.test/birds.txt")

    assert page["error"] == (
        "ValueError: unsupported URL 'ftp://valley.test/birds.txt'; Fetch takes http:// and https:// URLs"
    )


def test_fetch_with_raise_errors_raises_fetch_error_naming_the_url(site):
    url = site.url("trees/elm.html")
    expected = (
        f"could not fetch '{url}': HTTPStatusError: 404 File not found "
        "(with Fetch(raise_errors=False) failures become items with 'error' set)"
    )

    with pytest.raises(FetchError, match=re.escape(expected)) as raised:
        fetch_one(quick_fetch(raise_errors=True), url)

    assert raised.value.status == 404
    assert isinstance(raised.value.__cause__, HTTPStatusError)


def test_fetch_with_raise_errors_raises_on_a_refused_connection(refused_url):
    with pytest.raises(FetchError, match=re.escape(f"could not fetch '{refused_url}': ConnectionRefusedError")):
        fetch_one(Fetch(retries=0, raise_errors=True), refused_url)


def test_fetch_rejects_an_item_without_a_url():
    expected = "Fetch takes a URL string or a dict with a 'url' string, not dict: {'href': 'x'}"
    with pytest.raises(TypeError, match=re.escape(expected)):
        fetch_one(Fetch(), {"href": "x"})


def test_fetch_rejects_a_negative_retries_count():
    with pytest.raises(ValueError, match=re.escape("Fetch needs an integer retries >= 0, got -1")):
        Fetch(retries=-1)


def test_fetch_rejects_a_per_host_limit_below_one():
    with pytest.raises(ValueError, match=re.escape("Fetch needs an integer per_host >= 1 (or None: no limit), got 0")):
        Fetch(per_host=0)


def test_fetch_pickles_with_its_configuration(site):
    fetch = Fetch(timeout_s=3.0, user_agent="valley-bot", per_host=2, robots=False)

    copy = pickle.loads(cloudpickle.dumps(fetch))

    assert (copy.timeout_s, copy.user_agent, copy.per_host, copy.robots) == (3.0, "valley-bot", 2, False)
    assert fetch_one(copy, site.url("index.html"))["status"] == 200


def test_fetch_process_without_setup_opens_the_session_on_the_running_loop(site):
    fetch = Fetch()

    async def run() -> dict[str, Any]:
        try:
            return await fetch.process(site.url("index.html"))
        finally:
            await fetch.teardown()

    assert asyncio.run(run())["status"] == 200


def test_fetch_teardown_without_setup_or_twice_is_harmless(site):
    fetch = Fetch()

    async def run() -> None:
        await fetch.teardown()
        await fetch.setup()
        await fetch.teardown()
        await fetch.teardown()

    asyncio.run(run())


def test_fetch_sends_at_most_per_host_requests_at_once_to_one_host(site):
    pages = fetch_all(quick_fetch(per_host=3), [site.url("slow")] * 50, concurrency=50)

    assert [page["status"] for page in pages] == [200] * 50
    assert site.slow_max_in_flight == 3


def test_fetch_without_per_host_has_as_many_requests_at_once_as_it_is_given(tmp_path):
    """The default sets no limit per host: ``concurrency=`` alone bounds what is in flight."""
    (tmp_path / "page.html").write_text("<title>page</title>")
    pages: list[dict[str, Any]] = []
    with serve(tmp_path) as server:
        with server.hold():
            client = threading.Thread(target=lambda: pages.extend(
                fetch_all(quick_fetch(robots=False), [f"{server.url}page.html?{n}" for n in range(20)], 20)))
            client.start()
            deadline = time.monotonic() + 30
            while server.in_flight < 20 and client.is_alive() and time.monotonic() < deadline:
                time.sleep(0.005)
            assert server.in_flight == 20
        client.join(30)
    assert [page["status"] for page in pages] == [200] * 20
    assert server.max_in_flight == 20


# --- Fetch and robots.txt -----------------------------------------------------------


def test_fetch_outputs_a_url_disallowed_by_robots_txt_as_a_robots_disallowed_item(site):
    site.robots_txt = "User-agent: *\nDisallow: /birds/\n"
    url = site.url("birds/heron.html")

    page = fetch_one(quick_fetch(), url)

    assert (page["status"], page["body"]) == (None, "")
    assert page["error"] == f"RobotsDisallowed: {url} is disallowed by {site.url('robots.txt')}"
    assert site.hits["/birds/heron.html"] == 0


def test_fetch_with_raise_errors_raises_for_a_url_disallowed_by_robots_txt(site):
    site.robots_txt = "User-agent: *\nDisallow: /birds/\n"

    with pytest.raises(FetchError) as raised:
        fetch_one(quick_fetch(raise_errors=True), site.url("birds/heron.html"))

    assert isinstance(raised.value.__cause__, RobotsDisallowed)


def test_fetch_asks_for_robots_txt_once_when_first_requests_come_at_once(site):
    site.robots_txt = "User-agent: *\nDisallow: /birds/\n"
    urls = [site.url(path) for path in ["index.html", "birds/heron.html", "trees/oak.html", "birds/wren.html"]] * 10

    pages = fetch_all(quick_fetch(), urls, concurrency=40)

    assert site.hits["/robots.txt"] == 1
    assert [page["status"] for page in pages] == [200, None, 200, None] * 10
    assert site.hits["/birds/heron.html"] == site.hits["/birds/wren.html"] == 0


def test_fetch_allows_everything_when_robots_txt_is_missing(site):
    page = fetch_one(quick_fetch(), site.url("birds/heron.html"))

    assert (page["status"], page["error"]) == (200, None)
    assert site.hits["/robots.txt"] == 1


def test_fetch_disallows_everything_when_robots_txt_answers_a_5xx_status(site):
    site.robots_txt, site.robots_status = "", 503
    url = site.url("index.html")

    page = fetch_one(quick_fetch(retries=1), url)

    assert page["error"] == f"RobotsDisallowed: {url} is disallowed by {site.url('robots.txt')}"
    assert (site.hits["/robots.txt"], site.hits["/index.html"]) == (2, 0)


def test_fetch_outputs_a_redirect_to_a_path_disallowed_by_robots_txt_as_robots_disallowed(site):
    site.robots_txt = "User-agent: *\nDisallow: /birds/\n"
    target = site.url("birds/heron.html")

    page = fetch_one(quick_fetch(), site.url("moved"))

    assert (page["final_url"], page["status"]) == (target, 301)
    assert page["error"] == f"RobotsDisallowed: {target} is disallowed by {site.url('robots.txt')}"
    assert site.hits["/birds/heron.html"] == 0


def test_fetch_reads_the_robots_txt_rules_for_its_user_agent(site):
    site.robots_txt = "User-agent: valley-bot\nDisallow: /\n"

    bot = fetch_one(quick_fetch(user_agent="valley-bot/2.0"), site.url("index.html"))
    other = fetch_one(quick_fetch(), site.url("index.html"))

    assert bot["error"].startswith("RobotsDisallowed: ")
    assert (other["status"], other["error"]) == (200, None)


def test_fetch_without_robots_does_not_ask_for_robots_txt(site):
    site.robots_txt = "User-agent: *\nDisallow: /\n"

    page = fetch_one(quick_fetch(robots=False), site.url("index.html"))

    assert (page["status"], page["error"]) == (200, None)
    assert site.hits["/robots.txt"] == 0


# --- Fetch politeness (min_interval_s) ------------------------------------------------


def test_fetch_with_min_interval_waits_the_interval_between_requests_to_one_host(site, clock):
    fetch = on_clock(quick_fetch(min_interval_s=1.5, robots=False), clock)

    pages = fetch_all(fetch, [site.url(path) for path in ["index.html", "birds/index.html", "trees/oak.html"]])

    assert [page["error"] for page in pages] == [None, None, None]
    assert clock.sleeps == [1.5, 1.5]


def test_fetch_with_min_interval_waits_only_for_the_rest_of_the_interval(site, clock):
    fetch = on_clock(quick_fetch(min_interval_s=1.0, robots=False), clock)

    async def run() -> None:
        await fetch.setup()
        try:
            await fetch.process(site.url("index.html"))
            clock.now_s += 0.25
            await fetch.process(site.url("birds/index.html"))
            clock.now_s += 3.0
            await fetch.process(site.url("trees/oak.html"))
        finally:
            await fetch.teardown()

    asyncio.run(run())

    assert clock.sleeps == pytest.approx([0.75])


def test_fetch_with_min_interval_does_not_wait_between_different_hosts_or_ports(site, other_site, clock):
    fetch = on_clock(quick_fetch(min_interval_s=1.0, robots=False), clock)

    first, second = fetch_all(fetch, [site.url("index.html"), other_site.url("index.html")])

    assert (first["error"], second["error"]) == (None, None)
    assert clock.sleeps == []


def test_fetch_with_min_interval_spaces_out_redirect_hops_too(site, clock):
    page = fetch_one(on_clock(quick_fetch(min_interval_s=1.0, robots=False), clock), site.url("moved"))

    assert page["final_url"] == site.url("birds/heron.html")
    assert clock.sleeps == [1.0]


def test_fetch_with_min_interval_counts_the_retry_backoff_towards_the_interval(site, clock):
    fetch = on_clock(quick_fetch(min_interval_s=1.0, retries=2, backoff_s=0.25, robots=False), clock)

    page = fetch_one(fetch, site.url("flaky"))

    assert page["status"] == 200
    # backoff 0.25, then the rest of the interval; backoff 0.5, then the rest again.
    assert clock.sleeps == pytest.approx([0.25, 0.75, 0.5, 0.5])


def test_fetch_with_min_interval_spaces_out_its_robots_txt_request_too(site, clock):
    page = fetch_one(on_clock(quick_fetch(min_interval_s=1.0), clock), site.url("index.html"))

    assert page["error"] is None
    assert [path for path, _port in site.requests] == ["/robots.txt", "/index.html"]
    assert clock.sleeps == [1.0]


def test_fetch_without_min_interval_never_waits(site, clock):
    fetch = on_clock(quick_fetch(), clock)

    fetch_all(fetch, [site.url(path) for path in ["index.html", "index.html", "moved"]])

    assert fetch.min_interval_s == 0.0
    assert clock.sleeps == []


def test_fetch_rejects_a_negative_min_interval():
    with pytest.raises(ValueError, match=re.escape("Fetch needs min_interval_s >= 0, got -0.5")):
        Fetch(min_interval_s=-0.5)


def test_fetch_with_min_interval_really_spaces_out_requests(site):
    started = time.monotonic()

    pages = fetch_all(
        quick_fetch(min_interval_s=0.1), [site.url(path) for path in ["index.html", "birds/index.html", "index.html"]]
    )

    assert [page["error"] for page in pages] == [None, None, None]
    assert 0.3 <= time.monotonic() - started < 5.0  # robots.txt, then three pages


def test_fetch_with_min_interval_spaces_out_concurrent_requests_to_one_host(site):
    interval_s = 0.1

    pages = fetch_all(quick_fetch(min_interval_s=interval_s), [site.url("index.html")] * 5, concurrency=5)

    assert [page["status"] for page in pages] == [200] * 5
    assert [path for path, _port in site.requests] == ["/robots.txt"] + ["/index.html"] * 5
    # Between the pages, which share robots.txt's connection; robots.txt
    # reaches the server later after its start: it opened the connection.
    assert len(site.client_ports()) == 1
    gaps_s = [later - earlier for earlier, later in itertools.pairwise(site.started_s[1:])]
    assert min(gaps_s) >= interval_s - 0.02, gaps_s  # as the server sees them, give or take its scheduling


def test_fetch_with_min_interval_in_a_run_fetches_every_url(site, mode):
    urls = [site.url(path) for path in ["index.html", "birds/index.html", "trees/oak.html", "moved"]]
    topo = Topology("polite")

    @topo.source
    def seeds():
        yield from urls

    fetch = topo.node(Fetch(min_interval_s=0.05), inputs=seeds, parallelism=2, concurrency=4, name="fetch")

    @topo.sink(inputs=fetch)
    def pages(page):
        pass

    got = run_and_collect(topo, mode=mode)["pages"]

    assert sorted((page["url"], page["status"]) for page in got) == sorted((url, 200) for url in urls)


def test_fetch_then_analyze_page_summarises_a_page_of_the_site(site):
    row = AnalyzePage(top_n=1).process(fetch_one(quick_fetch(), site.url("moved")))

    assert row["url"] == site.url("moved")
    assert row["title"] == "Grey Heron | Vale of Brenn field guide"
    assert row["top_words"] == [["heron", 4]]
    assert row["links"][:2] == [site.url("rivers/brenn.html"), site.url("rivers/tarn.html")]
