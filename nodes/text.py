"""Text from web pages: ``parse_html``, word functions and the ``AnalyzePage`` node.

Standard library only (``html.parser``): good for ordinary pages, not a
browser. It does not run scripts, apply CSS or honour ``hidden``.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

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
_WORD = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


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
    parser = _PageParser(base_url or "")
    parser.feed(html)
    parser.close()
    return {"title": parser.title(), "text": parser.text(), "links": parser.links}


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


class _PageParser(HTMLParser):
    def __init__(self, base_url: str) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self._title_parts: list[str] = []
        self.links: list[str] = []
        self._seen_links: set[str] = set()
        self._blocks: list[str] = []
        self._current: list[str] = []
        self._skip_depth = 0
        self._in_title = False
        self._has_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
        elif tag == "title" and not self._has_title:
            self._in_title = True
        elif tag in _BLOCK_TAGS:
            self._end_block()
        href = dict(attrs).get("href")
        if href is None:
            return
        if tag == "base":
            self.base_url = _join(self.base_url, href) or self.base_url
        elif tag == "a":
            self._add_link(href)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "title" and self._in_title:
            self._in_title = False
            self._has_title = True
        elif tag in _BLOCK_TAGS:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)
        elif not self._skip_depth:
            self._current.append(data)

    def title(self) -> str:
        return " ".join("".join(self._title_parts).split())

    def text(self) -> str:
        self._end_block()
        return "\n".join(self._blocks)

    def _end_block(self) -> None:
        line = " ".join("".join(self._current).split())
        if line:
            self._blocks.append(line)
        self._current = []

    def _add_link(self, href: str) -> None:
        link = urldefrag(_join(self.base_url, href)).url
        if urlsplit(link).scheme in ("http", "https") and link not in self._seen_links:
            self._seen_links.add(link)
            self.links.append(link)


def _join(base_url: str, href: str) -> str:
    """``href`` made absolute; ``""`` for a malformed one such as ``http://[oops``."""
    try:
        return urljoin(base_url, href.strip())
    except ValueError:
        return ""
