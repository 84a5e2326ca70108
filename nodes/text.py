"""Text from web pages: ``parse_html``, word functions and the ``AnalyzePage`` node.

``parse_html`` uses Lexbor (through selectolax), an HTML parser in C that
builds the tree as browsers do, by the HTML standard's rules; with its own
joining of plain relative links it takes a quarter or less of the CPU that
``html.parser`` took on a 100 KB page. Misnested or stray tags are read as
a browser reads them, and the content of ``<template>`` is left out, as a
browser leaves it. It is good for ordinary pages, not a browser: it does not
run scripts, apply CSS or honour ``hidden``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import urldefrag, urljoin, urlparse, urlsplit

from selectolax.lexbor import LexborHTMLParser, LexborNode

ENGLISH_STOPWORDS: frozenset[str] = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    it's don't i'm isn't you're they're we're there's that's can't won't doesn't didn't
    """.split()
)
"""Common English function words that ``top_words`` leaves out by default."""

_SKIPPED_TAGS = frozenset({"script", "style"})
# Tags that end a run of text: their start and end separate words, so
# "<p>one</p><p>two</p>" reads "one", "two" while "<b>ex</b>ample" stays one word.
_BLOCK_TAGS = frozenset(
    """
    address article aside blockquote body br dd div dl dt fieldset figcaption figure footer form
    h1 h2 h3 h4 h5 h6 header hr html li main nav ol option p pre section table td th tr ul
    """.split()
)
# Put into the tree before and after each block, then the text is split at it. Parsing drops
# or replaces every U+0000 of a page (the HTML standard says so), so no page text contains it.
_BLOCK_MARK = "\x00"
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
_PLAIN_PATH = re.compile(r"[A-Za-z0-9._~%/+-]+")  # hrefs that _join_plain_path joins without urljoin


def parse_html(html: str, base_url: str | None = None) -> dict[str, Any]:
    """Parse a page into ``{"title": str, "text": str, "links": list[str]}``.

    - ``title``: the first ``<title>``, whitespace collapsed; ``""`` if none.
    - ``text``: the visible text, without the title and without the content
      of ``<script>`` and ``<style>``; one line per block (paragraph,
      heading, list item...), whitespace inside a line collapsed.
    - ``links``: the ``href`` of every ``<a>``, made absolute against
      ``base_url`` (or the page's ``<base href>``), without the ``#fragment``,
      only ``http``/``https``, each once, in page order. Without
      ``base_url`` only links that are already absolute are kept.

    >>> page = parse_html(
    ...     '<title> Grey  heron </title><p>Tall <a href="../rivers/brenn.html#banks">wader</a>.'
    ...     '<script>var x = 1;</script>',
    ...     base_url="http://valley.test/birds/heron.html",
    ... )
    >>> page["title"], page["text"], page["links"]
    ('Grey heron', 'Tall wader.', ['http://valley.test/rivers/brenn.html'])
    """
    root = LexborHTMLParser(html).root
    assert root is not None, "a parsed document always has <html>: the parser adds what is missing"
    title: LexborNode | None = None
    skipped: list[LexborNode] = []
    anchors: list[tuple[str, str]] = []
    for node in root.traverse():
        tag = node.tag
        if tag in _BLOCK_TAGS:
            node.insert_before(_BLOCK_MARK)
            node.insert_after(_BLOCK_MARK)
        elif tag in _SKIPPED_TAGS:
            skipped.append(node)
        elif tag == "title" and title is None:
            title = node
            skipped.append(node)
        elif tag in ("a", "base"):
            href = node.attrs.get("href")
            if href is not None:
                anchors.append((tag, href))
    title_text = "" if title is None else " ".join(title.text().split())
    # Last first, so descendants go before their ancestors: a node inside one already removed
    # is freed memory (in SVG, a <script> may hold a <style> and a <title> a <script>).
    for node in reversed(skipped):
        node.decompose()
    lines = (" ".join(block.split()) for block in root.text().split(_BLOCK_MARK))
    text = "\n".join(line for line in lines if line)
    return {"title": title_text, "text": text, "links": _links(anchors, base_url or "")}


def tokenize(text: str) -> list[str]:
    """Split ``text`` into lowercase words of Unicode letters and digits.

    An apostrophe between two letters stays in the word (``"don't"``,
    ``"o'clock"``); typographic ``’`` counts as ``'``. Underscores, hyphens
    and other punctuation separate words.

    >>> tokenize("Don’t feed the heron_s: 2 e-mails, 'quoted'.")
    ["don't", 'feed', 'the', 'heron', 's', '2', 'e', 'mails', 'quoted']
    """
    normalized = unicodedata.normalize("NFC", text).replace("\u2019", "'")
    return [word.lower() for word in _WORD.findall(normalized)]


def word_counts(text: str) -> Counter[str]:
    """How often each word of ``tokenize(text)`` occurs.

    >>> word_counts("The heron, the heron!")["heron"]
    2
    """
    return Counter(tokenize(text))


def top_words(
    text: str, n: int = 10, stopwords: Iterable[str] = ENGLISH_STOPWORDS
) -> list[tuple[str, int]]:
    """The ``n`` most frequent words of ``text`` that are not in ``stopwords``, as (word, count).

    Words with the same count come in the order they first appear. Pass
    ``stopwords=()`` to count every word.

    >>> top_words("The heron and the dipper; the heron again.", n=2)
    [('heron', 2), ('dipper', 1)]
    """
    excluded = frozenset(stopwords)
    counts = Counter(word for word in tokenize(text) if word not in excluded)
    return counts.most_common(n)


class AnalyzePage:
    """A node that turns a page from ``nodes.http.Fetch`` into a summary row (it keeps no state: restartable).

    Takes a dict with ``url`` and ``body`` (and, as ``Fetch`` outputs them,
    ``final_url``, ``status`` and ``error``) and returns::

        {"url": str, "status": int | None, "error": str | None, "title": str,
         "words": int, "top_words": [[word, count], ...], "links": [url, ...]}

    Every row has every key, so a table created from the first row (see
    ``nodes.sqlite.SQLiteStore``) fits all rows. Relative links are resolved
    against ``final_url`` when present, else ``url``. A page with ``error``
    set keeps the error and gets ``title`` ``""``, ``words`` 0 and empty
    lists. ``top_n`` and ``stopwords`` are passed to ``top_words``.

    >>> AnalyzePage(top_n=1).process(
    ...     {"url": "http://valley.test/", "status": 200, "error": None,
    ...      "body": "<title>Vale</title><p>Herons and more herons"}
    ... )["top_words"]
    [['herons', 2]]
    """

    restartable = True
    """A restart loses nothing: ``--restarts`` may restart its replicas."""

    def __init__(self, top_n: int = 10, stopwords: Iterable[str] = ENGLISH_STOPWORDS) -> None:
        self.top_n = top_n
        self.stopwords = frozenset(stopwords)

    def process(self, page: dict[str, Any]) -> dict[str, Any]:
        """Summarise one fetched page; see the class docstring for the row."""
        row: dict[str, Any] = {
            "url": page["url"],
            "status": page.get("status"),
            "error": page.get("error"),
            "title": "",
            "words": 0,
            "top_words": [],
            "links": [],
        }
        if row["error"]:
            return row
        parsed = parse_html(page.get("body") or "", base_url=page.get("final_url") or page["url"])
        words = tokenize(parsed["text"])
        row["title"] = parsed["title"]
        row["words"] = len(words)
        row["top_words"] = [
            [word, count] for word, count in top_words(parsed["text"], self.top_n, self.stopwords)
        ]
        row["links"] = parsed["links"]
        return row


def _links(anchors: list[tuple[str, str]], base_url: str) -> list[str]:
    """The links of ``parse_html`` from the ``href`` of each ``<a>`` and ``<base>``, in page order."""
    links: list[str] = []
    seen: set[str] = set()
    base = _split_base(base_url)
    for tag, href in anchors:
        if tag == "base":
            base_url = _join(base_url, href) or base_url
            base = _split_base(base_url)
            continue
        link = _join_plain_path(base, href.strip()) or _http_link(base_url, href)
        if link and link not in seen:
            seen.add(link)
            links.append(link)
    return links


def _join(base_url: str, href: str) -> str:
    """``href`` made absolute; ``""`` for a malformed one such as ``http://[oops``."""
    try:
        return urljoin(base_url, href.strip())
    except ValueError:
        return ""


def _http_link(base_url: str, href: str) -> str:
    """``href`` made absolute, without its ``#fragment``, if it is an http(s) URL; else ``""``."""
    try:
        link = urldefrag(urljoin(base_url, href.strip())).url
        return link if urlsplit(link).scheme in ("http", "https") else ""
    except ValueError:  # malformed, such as http://[oops
        return ""


def _split_base(base_url: str) -> tuple[str, str, list[str]] | None:
    """(scheme, netloc, directory segments) of an http(s) base for ``_join_plain_path``; ``None`` for other bases."""
    try:
        scheme, netloc, path, _params, _query, _fragment = urlparse(base_url)
    except ValueError:
        return None
    if scheme not in ("http", "https") or not netloc:
        return None
    directory = path.split("/")
    if directory[-1]:
        del directory[-1]  # a file: links are relative to its directory
    return scheme, netloc, directory


def _join_plain_path(base: tuple[str, str, list[str]] | None, href: str) -> str | None:
    """``urldefrag(urljoin(base_url, href)).url`` for an ``href`` that is a plain path; else ``None``.

    ``urljoin`` takes about 10 µs, most of what ``parse_html`` spends on a page
    full of links. A path of the characters of ``_PLAIN_PATH`` (maybe with a
    ``#fragment``) has no scheme, host, parameters or query, and for it this
    follows ``urljoin``'s own steps, without parsing and unparsing.
    """
    path = href.partition("#")[0]
    if base is None or not _PLAIN_PATH.fullmatch(path) or path.startswith("//"):
        return None
    scheme, netloc, directory = base
    segments = path.split("/")
    if not path.startswith("/"):
        segments = directory + segments
        segments[1:-1] = filter(None, segments[1:-1])  # as urljoin: no empty segments in the middle
    resolved: list[str] = []
    for segment in segments:
        if segment == "..":
            if resolved:
                resolved.pop()
        elif segment != ".":
            resolved.append(segment)
    if segments[-1] in (".", ".."):
        resolved.append("")
    joined = "/".join(resolved)
    return f"{scheme}://{netloc}{'' if joined.startswith('/') else '/'}{joined}"
