"""``Fetch``: an asynchronous node that downloads web pages with aiohttp.

``Fetch.process`` is ``async def``: declared with ``concurrency=N``, each
replica has up to N URLs in flight at once on its event loop, over one
pooled ``aiohttp.ClientSession`` that keeps connections alive per (scheme,
host, port). Per host, each replica asks robots.txt first and, if told to
(politeness), sends at most ``per_host`` requests at once and leaves
``min_interval_s`` between the starts of two of them.

Why aiohttp and not httpx: with many requests in flight it is much faster
(a C HTTP parser, a mature connection pool, ``TCPConnector``, with a limit per
host). It has no client HTTP/2, which a crawler of many hosts does not miss.

A failed fetch is an item, not an exception, unless ``raise_errors=True``:
its ``error`` is a one-line ``"ExcType: message"``. A connection that could
not be made is named by the operating system's error under aiohttp's
message (``"ConnectionRefusedError: Cannot connect to host ..."``), a
certificate that does not verify by ``ssl``'s
(``"SSLCertVerificationError: ..."``), and every timeout is
``"TimeoutError: ..."``. Other failures keep aiohttp's names
(``"ServerDisconnectedError: Server disconnected"``...). ``error`` also names:

- ``HTTPStatusError``: the final response had a status of 400 or more,
  e.g. ``"HTTPStatusError: 404 Not Found"``;
- ``TooManyRedirects``: more than 5 redirects in a row;
- ``BodyTooLarge``: the body is longer than ``max_bytes``;
- ``RobotsDisallowed``: robots.txt disallows the URL, or a URL it redirects to;
- ``ValueError``: the URL is not an http or https URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NamedTuple
from urllib.parse import SplitResult, urljoin, urlsplit
from urllib.robotparser import RobotFileParser

import aiohttp

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
"""Redirects followed for one URL before giving up with ``TooManyRedirects``."""

ROBOTS_MAX_BYTES = 512 * 1024
"""How much of a robots.txt is read; the rest is ignored (RFC 9309 asks for at least 500 KiB)."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK_BYTES = 64 * 1024
# The robots.txt lines that stand for "no robots.txt" and "robots.txt is out of order".
_ROBOTS_ALLOW_ALL: list[str] = []
_ROBOTS_DISALLOW_ALL = ["User-agent: *", "Disallow: /"]
# Failures that may go away on a second try: timeouts, refused or dropped
# connections, truncated bodies. A TLS or certificate failure is one too for
# aiohttp (a ClientConnectorError), but retrying it cannot help.
_TRANSIENT_ERRORS = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError)
_PERMANENT_ERRORS = (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch)


class FetchError(Exception):
    """A URL could not be fetched; raised only by ``Fetch(raise_errors=True)``.

    ``url`` is the URL as given, ``status`` the status of the last response
    (``None`` when there was none) and ``error`` the one-line description
    that ``raise_errors=False`` puts into the item. The original exception is
    the ``__cause__``.
    """

    def __init__(self, url: str, status: int | None, error: str) -> None:
        super().__init__(
            f"could not fetch {url!r}: {error} "
            "(with Fetch(raise_errors=False) failures become items with 'error' set)"
        )
        self.url = url
        self.status = status
        self.error = error


class HTTPStatusError(Exception):
    """The final response has a status of 400 or more; the message is ``"404 Not Found"``."""


class TooManyRedirects(Exception):
    """A URL redirected more than ``MAX_REDIRECTS`` times in a row (a redirect loop?)."""


class BodyTooLarge(Exception):
    """A response body is longer than the ``max_bytes`` of the ``Fetch`` that read it."""


class RobotsDisallowed(Exception):
    """The robots.txt of a host disallows a URL for the ``user_agent`` of the ``Fetch`` that asked."""


_FETCH_FAILURES = (
    ValueError, HTTPStatusError, TooManyRedirects, BodyTooLarge, RobotsDisallowed,
    aiohttp.ClientError, asyncio.TimeoutError, OSError,
)
"""What ``Fetch`` turns into an item with ``error`` set (or into ``FetchError``)."""


class _Response(NamedTuple):
    status: int
    reason: str
    content_type: str
    """The media type without parameters; ``""`` when unknown."""
    charset: str | None
    location: str | None
    """Where a redirect points, as given; ``None`` for any other response."""
    body: bytes
    """The body, uncompressed, cut to one byte more than the limit it was read with."""


_Key = tuple[str, str, int]


class _Host:
    """What a replica keeps for one (scheme, host, port) until ``teardown()``."""

    __slots__ = ("slots", "turn", "last_start_s", "robots")

    def __init__(self, per_host: int | None) -> None:
        self.slots = asyncio.Semaphore(per_host) if per_host else None
        """Held from the wait for a turn until the response is read: ``per_host`` requests in flight (None: no
        limit but the node's ``concurrency=``)."""
        self.turn = asyncio.Lock()
        """Held by the one request that waits for ``min_interval_s`` to pass; the others queue behind it."""
        self.last_start_s = float("-inf")
        """When the last request started, by ``Fetch._clock``."""
        self.robots: asyncio.Task[RobotFileParser] | None = None
        """The fetch of robots.txt, shared by every request that waits for it; ``None`` until asked."""


class Fetch:
    """An asynchronous node that fetches the URL of each item and outputs the response as a dict.

    Restartable (``--restarts``): its state is its connections and its
    robots.txt cache, which it builds again.

    An item is a URL string, or a dict with a ``"url"`` key whose other keys
    are copied into the output (keys of the same name below win). The output:

    - ``url``: the URL as given;
    - ``final_url``: the URL that answered, after redirects (use it as the
      base for relative links);
    - ``status``: the HTTP status of the last response, or ``None`` when
      there was no response (connection refused, timeout, robots.txt...);
    - ``content_type``: the media type without parameters, e.g.
      ``"text/html"``; ``""`` when unknown;
    - ``body``: the body, uncompressed (gzip, deflate) and decoded with the
      response's charset (UTF-8 when it names none or an unknown one;
      undecodable bytes become U+FFFD); ``""`` whenever ``error`` is set;
    - ``elapsed_s``: wall time spent on the item, waits and retries included;
    - ``error``: ``None``, or a one-line ``"ExcType: message"`` (see the
      module docstring). A status of 400 or more is an error.

    Arguments:

    - ``timeout_s``: limit for connecting and for each read from the socket;
    - ``retries``: further attempts after a connection error, a timeout or
      a 5xx status, waiting ``backoff_s``, then twice as long each time. A
      4xx status and a certificate that does not verify are never retried.
      A keep-alive connection that the server had closed is reopened once
      by aiohttp without using up a retry;
    - ``user_agent``: the ``User-Agent`` header, and the name looked up in
      robots.txt;
    - ``max_bytes``: a longer (uncompressed) body is a ``BodyTooLarge`` error;
    - ``raise_errors``: raise ``FetchError`` instead of outputting an item
      with ``error`` set, which fails the run;
    - ``min_interval_s``: politeness; the least time between the starts of
      two requests to the same (scheme, host, port) from this replica.
      Every request counts: retries, redirect hops and robots.txt too.
      Concurrent requests to one host queue for their turns; a request
      that comes later than its turn goes at once. The limit is per
      replica: ``parallelism=4`` may send a host four requests per
      interval. To hold a host to one request per interval, route its URLs
      to one replica with ``by_key(lambda url: urlsplit(url).hostname)``;
    - ``per_host``: at most this many requests in flight at once to one
      (scheme, host, port) from this replica; the others wait. ``None``
      (the default): no limit but the node's ``concurrency=``, which bounds
      the requests in flight over all hosts;
    - ``robots``: honour robots.txt (see below).

    With ``robots=True`` each replica fetches the ``/robots.txt`` of a
    (scheme, host, port) once, before its first request there; requests
    that come meanwhile wait for that one fetch. A URL it disallows for
    ``user_agent``, the item's or one a redirect points to, is not fetched:
    ``error`` is ``"RobotsDisallowed: <url> is disallowed by <robots.txt
    URL>"`` and ``status`` that of the last response (``None`` unless a
    redirect led there). The robots.txt request waits its turn like any
    (``per_host``, ``min_interval_s``), is retried alike and follows
    redirects; then, after RFC 9309, a 4xx status (there is no robots.txt)
    allows everything, and a 5xx status disallows everything (and logs a
    warning). A connection error or a timeout fails the requests that
    waited for it with that error, as their own request would have failed,
    and the next request to the host asks again. What was read is kept
    until ``teardown()``: a long crawl sees robots.txt as it was at first.

    Redirects (301, 302, 303, 307, 308) are followed here, not by aiohttp,
    so that each hop is checked against robots.txt and spaced out by
    ``min_interval_s``, up to ``MAX_REDIRECTS`` hops. ``https``
    certificates are verified against the system's CAs (``SSL_CERT_FILE``
    and ``SSL_CERT_DIR`` as they are at ``setup()``). No cookies are kept.
    Proxies from the environment are not used.

    ``setup()`` opens the session and ``teardown()`` closes it; a
    ``process()`` called without ``setup()``, as in a unit test, opens it
    on the running loop, and then ``teardown()`` must be awaited too. In a
    topology, give it ``concurrency=``; requests to one host are spread
    over at most ``per_host`` of them::

        topo.node(Fetch(timeout_s=10, min_interval_s=0.5), inputs=urls, parallelism=4, concurrency=32)

    >>> import asyncio
    >>> asyncio.run(Fetch().process("ftp://valley.test/birds.txt"))["error"]
    "ValueError: unsupported URL 'ftp://valley.test/birds.txt'; Fetch takes http:// and https:// URLs"
    """

    restartable = True
    """A restart loses nothing: ``--restarts`` may restart its replicas."""

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.2,
        user_agent: str = "flowgraph/0.1",
        max_bytes: int = 10_000_000,
        raise_errors: bool = False,
        min_interval_s: float = 0.0,
        per_host: int | None = None,
        robots: bool = True,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"Fetch needs timeout_s > 0, got {timeout_s!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"Fetch needs an integer retries >= 0, got {retries!r}")
        if not backoff_s >= 0:
            raise ValueError(f"Fetch needs backoff_s >= 0, got {backoff_s!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"Fetch needs an integer max_bytes >= 1, got {max_bytes!r}")
        if not min_interval_s >= 0:
            raise ValueError(f"Fetch needs min_interval_s >= 0, got {min_interval_s!r}")
        if per_host is not None and (isinstance(per_host, bool) or not isinstance(per_host, int) or per_host < 1):
            raise ValueError(f"Fetch needs an integer per_host >= 1 (or None: no limit), got {per_host!r}")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.user_agent = user_agent
        self.max_bytes = max_bytes
        self.raise_errors = raise_errors
        self.min_interval_s = min_interval_s
        self.per_host = per_host
        self.robots = robots
        # Made on the replica's event loop; None and empty until then, so the instance pickles.
        self._session: aiohttp.ClientSession | None = None
        self._hosts: dict[_Key, _Host] = {}
        # What min_interval_s and the retry backoff measure and wait with; tests put a fake clock here.
        self._clock: Callable[[], float] = time.monotonic
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def setup(self) -> None:
        """Open the HTTP session (its connection pool) on the running event loop."""
        self._open_session()

    async def process(self, item: str | dict[str, Any]) -> dict[str, Any]:
        """Fetch the URL of ``item`` and return the output dict described on the class.

        Raises ``TypeError`` for an item that is neither a string nor a dict
        with a ``"url"`` string: that is a bug upstream, not a failed fetch.
        """
        url, fields = _url_and_fields(item)
        started = time.monotonic()
        page: dict[str, Any] = {
            "url": url,
            "final_url": url,
            "status": None,
            "content_type": "",
            "body": "",
            "elapsed_s": 0.0,
            "error": None,
        }
        try:
            await self._fetch_page(url, page)
        except _FETCH_FAILURES as exc:
            error = _describe(exc)
            if self.raise_errors:
                raise FetchError(url, page["status"], error) from exc
            page["error"] = error
        page["elapsed_s"] = time.monotonic() - started
        return {**fields, **page}

    async def teardown(self) -> None:
        """Close every connection and forget the robots.txt files; harmless without ``setup()`` or twice."""
        session, self._session = self._session, None
        pending = [host.robots for host in self._hosts.values() if host.robots is not None]
        self._hosts.clear()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        if session is not None:
            await session.close()

    async def _fetch_page(self, url: str, page: dict[str, Any]) -> None:
        """Fill ``page`` from the response to ``url``, following redirects; raise on failure."""
        response = await self._follow_redirects(url, limit=self.max_bytes, page=page)
        if response.status >= 400:
            raise HTTPStatusError(f"{response.status} {response.reason}")
        if len(response.body) > self.max_bytes:
            raise BodyTooLarge(f"body is over max_bytes={self.max_bytes}")
        page["body"] = _decode(response.body, response.charset)

    async def _follow_redirects(self, url: str, *, limit: int, page: dict[str, Any] | None = None) -> _Response:
        """The last response to a GET of ``url``, following up to ``MAX_REDIRECTS`` redirects.

        For a page (``page`` given) each hop is checked against robots.txt,
        and ``page`` keeps the ``final_url``, ``status`` and ``content_type``
        of the hops so far, so that they describe a failure too.
        """
        for _ in range(MAX_REDIRECTS + 1):
            if page is not None:
                page["final_url"] = url
            response = await self._get(url, limit=limit, check_robots=page is not None and self.robots)
            if page is not None:
                page["status"] = response.status
                page["content_type"] = response.content_type
            if response.location is None:
                return response
            url = urljoin(url, response.location)
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects; the last one pointed to {url!r}")

    async def _get(self, url: str, *, limit: int, check_robots: bool) -> _Response:
        """One GET of ``url`` (no redirects followed), after robots.txt if asked, with retries."""
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"unsupported URL {url!r}; Fetch takes http:// and https:// URLs")
        if not parts.hostname:
            raise ValueError(f"URL {url!r} names no host")
        key = (parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme])
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host(self.per_host)
        if check_robots:
            await self._check_robots(url, parts, host)
        return await self._get_with_retries(url, host, limit)

    async def _check_robots(self, url: str, parts: SplitResult, host: _Host) -> None:
        """Raise ``RobotsDisallowed`` unless the robots.txt of ``host`` allows ``url``."""
        robots_url = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/robots.txt"
        if host.robots is None:
            host.robots = asyncio.ensure_future(self._load_robots(host, robots_url))
        # Shielded: a cancelled item must not cancel the fetch that other items wait for.
        rules = await asyncio.shield(host.robots)
        if not rules.can_fetch(self.user_agent, url):
            raise RobotsDisallowed(f"{url} is disallowed by {robots_url}")

    async def _load_robots(self, host: _Host, robots_url: str) -> RobotFileParser:
        """Fetch and parse ``robots_url``; raise (and let the next request try again) if unreachable."""
        try:
            response = await self._follow_redirects(robots_url, limit=ROBOTS_MAX_BYTES)
        except (TooManyRedirects, ValueError) as exc:
            logger.info("allowing everything: robots.txt %s cannot be had (%s)", robots_url, _describe(exc))
            lines = _ROBOTS_ALLOW_ALL
        except BaseException:
            host.robots = None
            raise
        else:
            if response.status >= 500:
                logger.warning(
                    "disallowing every URL of %s for this replica: it answered %d %s",
                    robots_url, response.status, response.reason,
                )
                lines = _ROBOTS_DISALLOW_ALL
            elif response.status >= 400:
                lines = _ROBOTS_ALLOW_ALL
            else:
                lines = _decode(response.body[:ROBOTS_MAX_BYTES], response.charset).splitlines()
        rules = RobotFileParser(robots_url)
        rules.parse(lines)
        return rules

    async def _get_with_retries(self, url: str, host: _Host, limit: int) -> _Response:
        attempt = 0
        while True:
            try:
                response = await self._exchange(url, host, limit)
            except _PERMANENT_ERRORS:
                raise
            except _TRANSIENT_ERRORS as exc:
                if attempt >= self.retries:
                    raise
                failure = _describe(exc)
            else:
                if response.status < 500 or attempt >= self.retries:
                    return response
                failure = f"status {response.status}"
            delay_s = self.backoff_s * 2**attempt
            attempt += 1
            logger.info(
                "retrying %s in %.2f s after %s (retry %d of %d)", url, delay_s, failure, attempt, self.retries
            )
            await self._sleep(delay_s)

    async def _exchange(self, url: str, host: _Host, limit: int) -> _Response:
        """Send one GET when it is ``host``'s turn and read at most ``limit + 1`` bytes of the body."""
        session = self._open_session()
        async with self._turn(host), session.get(url, allow_redirects=False) as response:
            # A body left partly unread makes aiohttp close the connection, not pool it.
            body = await _read_at_most(response.content, limit + 1)
            return _Response(
                response.status,
                response.reason or "",
                _media_type(response.headers.get("Content-Type", "")),
                response.charset,
                _redirect_location(response.status, response.headers.get("Location", "")),
                body,
            )

    @contextlib.asynccontextmanager
    async def _turn(self, host: _Host) -> AsyncIterator[None]:
        """Hold one of ``host``'s ``per_host`` slots, from the wait for this request's turn until the exit.

        Requests wait for their turns one after the other, and a start is
        taken once the wait is over, so that no sleep that ends late can
        bring two starts closer than ``min_interval_s``.
        """
        async with host.slots or contextlib.nullcontext():
            if self.min_interval_s:
                async with host.turn:
                    wait_s = host.last_start_s + self.min_interval_s - self._clock()
                    if wait_s > 0:
                        logger.debug("waiting %.3f s for a turn", wait_s)
                        await self._sleep(wait_s)
                    host.last_start_s = self._clock()
            yield

    def _open_session(self) -> aiohttp.ClientSession:
        """The session, opened on the running loop if it is not yet."""
        if self._session is None:
            # aiohttp's own default context is made once, when aiohttp is
            # imported; a context of our own reads SSL_CERT_FILE now.
            connector = aiohttp.TCPConnector(  # 0: no limit (the node's concurrency= bounds what is in flight)
                limit=0, limit_per_host=self.per_host or 0, ssl=ssl.create_default_context()
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout_s, sock_read=self.timeout_s),
                headers={"User-Agent": self.user_agent, "Accept": "*/*"},
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


def _url_and_fields(item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and isinstance(item.get("url"), str):
        return item["url"], dict(item)
    raise TypeError(
        f"Fetch takes a URL string or a dict with a 'url' string, not {type(item).__name__}: {item!r:.200}"
    )


async def _read_at_most(content: aiohttp.StreamReader, size: int) -> bytes:
    """The body, or its first ``size`` bytes if it is longer (then the rest is left unread)."""
    chunks: list[bytes] = []
    read = 0
    async for chunk in content.iter_chunked(_CHUNK_BYTES):
        chunks.append(chunk)
        read += len(chunk)
        if read >= size:
            break
    return b"".join(chunks)[:size]


def _media_type(content_type: str) -> str:
    return content_type.split(";")[0].strip().lower()


def _redirect_location(status: int, location: str) -> str | None:
    location = location.strip()
    return location if status in _REDIRECT_STATUSES and location else None


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _describe(exc: BaseException) -> str:
    """The one-line ``"ExcType: message"`` of a failure, naming what aiohttp wraps."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return _one_line(exc.certificate_error)
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's ServerTimeoutError too
        return _one_line(exc, name="TimeoutError")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _one_line(exc, name=type(exc.os_error).__name__)
    return _one_line(exc)


def _one_line(exc: BaseException, name: str | None = None) -> str:
    name = name or type(exc).__name__
    message = " ".join(str(exc).split())
    return f"{name}: {message}" if message else name
