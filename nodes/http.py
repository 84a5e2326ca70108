"""``Fetch``: a node that downloads web pages with ``http.client``.

Each replica keeps one keep-alive connection per (scheme, host, port), so a
crawl over one site opens one connection per replica, not one per URL.
With ``min_interval_s`` it also spaces out its requests to each of them.

A failed fetch is an item, not an exception, unless ``raise_errors=True``:
its ``error`` is a one-line ``"ExcType: message"``. Besides the exceptions
of ``socket``, ``ssl`` and ``http.client`` (``ConnectionRefusedError``,
``TimeoutError``, ``RemoteDisconnected``...), ``error`` names these:

- ``HTTPStatusError``: the final response had a status of 400 or more,
  e.g. ``"HTTPStatusError: 404 Not Found"``;
- ``TooManyRedirects``: more than 5 redirects in a row;
- ``BodyTooLarge``: the body is longer than ``max_bytes``;
- ``ValueError``: the URL is not an http or https URL.
"""

from __future__ import annotations

import http.client
import logging
import ssl
import time
from typing import Any, NamedTuple
from urllib.parse import SplitResult, quote, urljoin, urlsplit

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 5
"""Redirects followed for one URL before giving up with ``TooManyRedirects``."""

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Failures that may go away on a second try. ValueError is caught before these
# because ssl.SSLCertVerificationError and http.client.InvalidURL are both an
# OSError or HTTPException *and* a ValueError, and retrying them cannot help.
_TRANSIENT_ERRORS = (OSError, http.client.HTTPException)


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


_FETCH_FAILURES = (ValueError, HTTPStatusError, TooManyRedirects, BodyTooLarge, *_TRANSIENT_ERRORS)
"""What ``Fetch`` turns into an item with ``error`` set (or into ``FetchError``)."""


class _Response(NamedTuple):
    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes | None
    """``None`` when the body is longer than ``max_bytes``."""


_Key = tuple[str, str, int]


class Fetch:
    """A node that fetches the URL of each item and outputs the response as a dict.

    Restartable (``--restarts``): its state is its connections, which it opens again.

    An item is a URL string, or a dict with a ``"url"`` key whose other keys
    are copied into the output (keys of the same name below win). The output:

    - ``url``: the URL as given;
    - ``final_url``: the URL that answered, after redirects (use it as the
      base for relative links);
    - ``status``: the HTTP status of the last response, or ``None`` when
      there was no response (connection refused, timeout...);
    - ``content_type``: the media type without parameters, e.g.
      ``"text/html"``; ``""`` when unknown;
    - ``body``: the body decoded with the response's charset (UTF-8 when it
      names none or an unknown one; undecodable bytes become U+FFFD);
      ``""`` whenever ``error`` is set;
    - ``elapsed_s``: wall time spent on the item, retries included;
    - ``error``: ``None``, or a one-line ``"ExcType: message"`` (see the
      module docstring). A status of 400 or more is an error.

    Arguments:

    - ``timeout_s``: limit for connecting and for each read from the socket;
    - ``retries``: further attempts after a connection error or a 5xx
      status, waiting ``backoff_s``, then twice as long each time. A 4xx
      status is never retried. A keep-alive connection that the server had
      closed is reopened once without using up a retry;
    - ``user_agent``: the ``User-Agent`` header;
    - ``max_bytes``: a longer body is a ``BodyTooLarge`` error;
    - ``raise_errors``: raise ``FetchError`` instead of outputting an item
      with ``error`` set, which fails the run;
    - ``min_interval_s``: politeness; the least time between the starts of
      two requests to the same (scheme, host, port) from this replica.
      Every request counts: retries and redirect hops too. A request that
      comes sooner waits (``time.sleep``) only for the rest of the
      interval; one that comes later goes at once. The limit is per
      replica: ``parallelism=4`` may send a host four requests per
      interval. To hold a host to one request per interval, route its URLs
      to one replica with ``by_key(lambda url: urlsplit(url).hostname)``.

    Redirects (301, 302, 303, 307, 308) are followed up to ``MAX_REDIRECTS``
    hops. ``https`` certificates are verified against the system's CAs.

    >>> from flowgraph import Topology
    >>> topo = Topology("crawl")
    >>> @topo.source
    ... def urls():
    ...     yield "http://127.0.0.1:8000/index.html"
    >>> fetch = topo.node(Fetch(timeout_s=5, min_interval_s=0.5), inputs=urls, parallelism=4, name="fetch")
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
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.user_agent = user_agent
        self.max_bytes = max_bytes
        self.raise_errors = raise_errors
        self.min_interval_s = min_interval_s
        # Opened lazily in process(); empty until then, so the instance pickles.
        self._connections: dict[_Key, http.client.HTTPConnection] = {}
        # When the last request to each (scheme, host, port) started, by _clock.
        self._last_request_s: dict[_Key, float] = {}
        # What min_interval_s and the retry backoff measure and wait with; tests put a fake clock here.
        self._clock = time.monotonic
        self._sleep = time.sleep

    def process(self, item: str | dict[str, Any]) -> dict[str, Any]:
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
            self._follow_redirects(url, page)
        except _FETCH_FAILURES as exc:
            error = _one_line(exc)
            if self.raise_errors:
                raise FetchError(url, page["status"], error) from exc
            page["error"] = error
        page["elapsed_s"] = time.monotonic() - started
        return {**fields, **page}

    def teardown(self) -> None:
        """Close every open connection."""
        for connection in self._connections.values():
            connection.close()
        self._connections.clear()

    def _follow_redirects(self, url: str, page: dict[str, Any]) -> None:
        """Fill ``page`` from the response to ``url``, following redirects; raise on failure."""
        for _ in range(MAX_REDIRECTS + 1):
            page["final_url"] = url
            response = self._get_with_retries(url)
            page["status"] = response.status
            page["content_type"] = _media_type(response.headers)
            location = response.headers.get("Location")
            if response.status in _REDIRECT_STATUSES and location:
                url = urljoin(url, location.strip())
                continue
            if response.status >= 400:
                raise HTTPStatusError(f"{response.status} {response.reason}")
            if response.body is None:
                raise BodyTooLarge(f"body is over max_bytes={self.max_bytes}")
            page["body"] = _decode(response.body, response.headers)
            return
        raise TooManyRedirects(f"more than {MAX_REDIRECTS} redirects; the last one pointed to {url!r}")

    def _get_with_retries(self, url: str) -> _Response:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(f"unsupported URL {url!r}; Fetch takes http:// and https:// URLs")
        if not parts.hostname:
            raise ValueError(f"URL {url!r} names no host")
        key = (parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS[parts.scheme])
        target = _request_target(parts)
        attempt = 0
        while True:
            try:
                response = self._get(key, target)
            except ValueError:
                raise
            except _TRANSIENT_ERRORS as exc:
                if attempt >= self.retries:
                    raise
                failure = _one_line(exc)
            else:
                if response.status < 500 or attempt >= self.retries:
                    return response
                failure = f"status {response.status}"
            delay_s = self.backoff_s * 2**attempt
            attempt += 1
            logger.info(
                "retrying %s in %.2f s after %s (retry %d of %d)", url, delay_s, failure, attempt, self.retries
            )
            self._sleep(delay_s)

    def _get(self, key: _Key, target: str) -> _Response:
        connection = self._connections.get(key)
        is_reused = connection is not None and connection.sock is not None
        try:
            return self._exchange(key, target)
        except ConnectionError:
            if not is_reused:
                raise
        # The server had closed the idle keep-alive connection (we see
        # RemoteDisconnected, a reset or a broken pipe). That is no sign of
        # trouble, so a fresh connection gets the (idempotent) GET again
        # without counting it as a retry.
        logger.debug("keep-alive connection to %s:%s was closed by the server; reconnecting", key[1], key[2])
        return self._exchange(key, target)

    def _exchange(self, key: _Key, target: str) -> _Response:
        """Send one GET on the pooled connection for ``key`` and read the whole response."""
        connection = self._connections.get(key)
        if connection is None:
            connection = self._connections[key] = self._open(key)
        self._wait_for_turn(key)
        try:
            connection.request("GET", target, headers={"User-Agent": self.user_agent, "Accept": "*/*"})
            response = connection.getresponse()
            body = self._read_body(response)
        except BaseException:
            # A half-read response leaves the connection unusable.
            self._connections.pop(key).close()
            raise
        if body is None:
            self._connections.pop(key).close()
        return _Response(response.status, response.reason, response.headers, body)

    def _wait_for_turn(self, key: _Key) -> None:
        """Sleep until ``min_interval_s`` has passed since the last request to ``key`` started."""
        if not self.min_interval_s:
            return
        last_s = self._last_request_s.get(key)
        if last_s is not None:
            wait_s = last_s + self.min_interval_s - self._clock()
            if wait_s > 0:
                logger.debug("waiting %.3f s before the next request to %s:%s", wait_s, key[1], key[2])
                self._sleep(wait_s)
        self._last_request_s[key] = self._clock()

    def _open(self, key: _Key) -> http.client.HTTPConnection:
        scheme, host, port = key
        if scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=self.timeout_s, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout_s)

    def _read_body(self, response: http.client.HTTPResponse) -> bytes | None:
        """The whole body, or ``None`` if it is longer than ``max_bytes`` (then partly unread)."""
        announced = response.headers.get("Content-Length", "").strip()
        if announced.isdigit() and int(announced) > self.max_bytes:
            return None
        body = response.read(self.max_bytes + 1)
        return body if len(body) <= self.max_bytes else None


def _url_and_fields(item: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) and isinstance(item.get("url"), str):
        return item["url"], dict(item)
    raise TypeError(
        f"Fetch takes a URL string or a dict with a 'url' string, not {type(item).__name__}: {item!r:.200}"
    )


def _request_target(parts: SplitResult) -> str:
    """The path and query to send, with characters outside ASCII percent-encoded."""
    target = parts.path or "/"
    if parts.query:
        target = f"{target}?{parts.query}"
    return quote(target, safe="/?&=%:@!$'()*+,;~-._")


def _media_type(headers: http.client.HTTPMessage) -> str:
    return headers.get("Content-Type", "").split(";")[0].strip().lower()


def _decode(body: bytes, headers: http.client.HTTPMessage) -> str:
    charset = headers.get_content_charset() or "utf-8"
    try:
        return body.decode(charset, errors="replace")
    except LookupError:
        return body.decode("utf-8", errors="replace")


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
