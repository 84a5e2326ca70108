"""URL normalisation for crawlers: ``normalize_url`` and ``same_site``.

A crawler meets one page under several URLs (``/a/index.html``, ``/a/``,
``/a/./index.html#top``) and must fetch it once: it keeps the normalised
URL of each page it has queued. ``normalize_url`` applies these rules, the
syntax-based normalisation of RFC 3986 (section 6.2.2) plus one for static
sites, and nothing else:

1. The scheme and the host are lowercased.
2. The ``#fragment`` is dropped: it names a place in the page, not a page.
3. A default port is dropped, ``:80`` for http and ``:443`` for https, as
   is an empty one (``http://h:/``); a port is written as a plain number.
4. An empty path becomes ``/``.
5. ``.`` and ``..`` segments are resolved (RFC 3986's remove_dot_segments);
   a ``..`` above the root is dropped.
6. A last path segment ``index.html`` is dropped (``/a/index.html`` becomes
   ``/a/``): static servers serve a directory's ``index.html`` as the
   directory. Only that exact name (not ``index.htm`` or ``INDEX.HTML``).
7. The query is kept as given, not sorted and not decoded; an empty one (a
   bare ``?``) is dropped.
8. Percent-encoding is kept as given, except that the hex digits of each
   escape are uppercased (``%7e`` becomes ``%7E``). So ``~`` and ``%7E``,
   which RFC 3986 calls equivalent, stay two URLs.

Rules 4 to 6 apply to URLs with a host (``http:``, ``https:``); rule 3 to
http and https only. The userinfo and the case of the path are kept. Two
URLs that a server treats alike may still differ after normalisation: ``/a``
and ``/a/`` (the server's redirect says which is the page), or paths that
differ in case on a case-insensitive server.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_ESCAPE = re.compile(r"%[0-9a-fA-F]{2}")
_INDEX = "index.html"


def normalize_url(url: str) -> str:
    """``url`` in the normal form the module docstring describes, for telling whether two URLs are one page.

    Raises ``ValueError`` for a URL that ``urllib.parse.urlsplit`` rejects
    (``http://[oops/``) or whose port is not a number from 0 to 65535.

    Each rule, in the order of the module docstring:

    >>> normalize_url("HTTP://Valley.TEST/Birds/Heron.html")
    'http://valley.test/Birds/Heron.html'
    >>> normalize_url("http://valley.test/birds/heron.html#nest")
    'http://valley.test/birds/heron.html'
    >>> normalize_url("http://valley.test:80/"), normalize_url("https://valley.test:443/")
    ('http://valley.test/', 'https://valley.test/')
    >>> normalize_url("http://valley.test:443/"), normalize_url("http://valley.test:/")
    ('http://valley.test:443/', 'http://valley.test/')
    >>> normalize_url("http://valley.test")
    'http://valley.test/'
    >>> normalize_url("http://valley.test/birds/./wren/../heron.html"), normalize_url("http://valley.test/../a")
    ('http://valley.test/birds/heron.html', 'http://valley.test/a')
    >>> normalize_url("http://valley.test/birds/index.html"), normalize_url("http://valley.test/index.html?p=2")
    ('http://valley.test/birds/', 'http://valley.test/?p=2')
    >>> normalize_url("http://valley.test/search?q=heron&lang=en"), normalize_url("http://valley.test/a?")
    ('http://valley.test/search?q=heron&lang=en', 'http://valley.test/a')
    >>> normalize_url("http://valley.test/%7ewren/a%2fb?q=%c3%a9")
    'http://valley.test/%7Ewren/a%2Fb?q=%C3%A9'
    """
    parts = urlsplit(url)
    netloc, path = parts.netloc, parts.path
    if netloc:
        netloc = _normalize_netloc(parts)
        path = _normalize_path(path)
    return urlunsplit((parts.scheme, _upper_escapes(netloc), _upper_escapes(path), _upper_escapes(parts.query), ""))


def same_site(url: str, base: str) -> bool:
    """Whether two absolute URLs have the same scheme, host and port once normalised.

    A crawler follows a link only if it is on the same site as the start URL.
    Raises ``ValueError`` as ``normalize_url`` does.

    >>> same_site("http://Valley.test:80/birds/", "http://valley.test/")
    True
    >>> same_site("https://valley.test/", "http://valley.test/"), same_site("http://valley.test:8080/", "http://valley.test/")
    (False, False)
    """
    return _origin(url) == _origin(base)


def _normalize_netloc(parts: SplitResult) -> str:
    userinfo, at, _host_and_port = parts.netloc.rpartition("@")
    host = parts.hostname or ""
    if ":" in host:  # IPv6: hostname dropped the brackets
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return f"{userinfo}{at}{host}"


def _normalize_path(path: str) -> str:
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(segments) > 1:  # segments[0] is the "" before the path's first "/"
                segments.pop()
        elif segment != ".":
            segments.append(segment)
    if path.rpartition("/")[2] in (".", ".."):
        segments.append("")  # "/a/b/.." is the directory "/a/"
    if segments[-1] == _INDEX:
        segments[-1] = ""
    return "/".join(segments) or "/"


def _upper_escapes(text: str) -> str:
    return _ESCAPE.sub(lambda escape: escape.group().upper(), text)


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urlsplit(url)
    port = parts.port
    return parts.scheme, parts.hostname, _DEFAULT_PORTS.get(parts.scheme) if port is None else port
