"""Tests of ``nodes.text``: parsing HTML, words, ``AnalyzePage``; ``parse_html`` against the html.parser version."""

from __future__ import annotations

import random
from collections import Counter
from html import escape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest

from nodes.text import ENGLISH_STOPWORDS, AnalyzePage, parse_html, tokenize, top_words, word_counts
from website import generate_site

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "topologies" / "site"


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


def test_parse_html_keeps_no_link_when_base_url_is_malformed():
    html = '<a href="">same page</a><a href="heron.html">h</a><a href="http://valley.test/">v</a>'

    assert parse_html(html, base_url="http://[oops/")["links"] == []


def test_parse_html_removes_skipped_elements_nested_in_each_other():
    # In SVG a <style> may hold a <script>: removing the outer one first would free the inner one.
    html = "<p>before<svg><style>a<script>b</script></style><script>c<style>d</style></script></svg><p>after"

    assert parse_html(html)["text"] == "before\nafter"


def test_parse_html_reads_character_references_in_links_as_browsers_do():
    # html.parser read "&copy=" as "©=", which no browser does.
    html = '<a href="search?a=1&copy=2&amp;lang=en">s</a>'

    assert parse_html(html, base_url="http://valley.test/")["links"] == ["http://valley.test/search?a=1&copy=2&lang=en"]


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


# --- parse_html against html.parser ----------------------------------------------------
# parse_html used html.parser until it moved to selectolax for speed. This is that version,
# kept as the reference: for ordinary pages the two must agree on title, text and links.


class _ReferencePageParser(HTMLParser):
    SKIPPED_TAGS = frozenset({"script", "style"})
    BLOCK_TAGS = frozenset(
        """
        address article aside blockquote body br dd div dl dt fieldset figcaption figure footer form
        h1 h2 h3 h4 h5 h6 header hr html li main nav ol option p pre section table td th tr ul
        """.split()
    )

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
        if tag in self.SKIPPED_TAGS:
            self._skip_depth += 1
        elif tag == "title" and not self._has_title:
            self._in_title = True
        elif tag in self.BLOCK_TAGS:
            self._end_block()
        href = dict(attrs).get("href")
        if href is None:
            return
        if tag == "base":
            self.base_url = _join(self.base_url, href) or self.base_url
        elif tag == "a":
            link = urldefrag(_join(self.base_url, href)).url
            if urlsplit(link).scheme in ("http", "https") and link not in self._seen_links:
                self._seen_links.add(link)
                self.links.append(link)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "title" and self._in_title:
            self._in_title = False
            self._has_title = True
        elif tag in self.BLOCK_TAGS:
            self._end_block()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)
        elif not self._skip_depth:
            self._current.append(data)

    def _end_block(self) -> None:
        line = " ".join("".join(self._current).split())
        if line:
            self._blocks.append(line)
        self._current = []


def _join(base_url: str, href: str) -> str:
    try:
        return urljoin(base_url, href.strip())
    except ValueError:
        return ""


def reference_parse_html(html: str, base_url: str | None = None) -> dict[str, Any]:
    """What ``parse_html`` returned when it used ``html.parser``."""
    parser = _ReferencePageParser(base_url or "")
    parser.feed(html)
    parser.close()
    parser._end_block()
    title = " ".join("".join(parser._title_parts).split())
    return {"title": title, "text": "\n".join(parser._blocks), "links": parser.links}


def _assert_parse_html_agrees_with_the_reference(root: Path, base_url: str) -> int:
    pages = sorted(root.rglob("*.html"))
    for path in pages:
        html = path.read_text(encoding="utf-8")
        url = base_url + path.relative_to(root).as_posix()
        assert parse_html(html, base_url=url) == reference_parse_html(html, base_url=url), path
    return len(pages)


def test_parse_html_agrees_with_html_parser_on_every_page_of_the_bundled_site():
    assert _assert_parse_html_agrees_with_the_reference(SITE, "http://valley.test/") >= 40


def test_parse_html_agrees_with_html_parser_on_every_page_of_a_generated_site(tmp_path):
    generate_site(tmp_path, 300, seed=21)

    assert _assert_parse_html_agrees_with_the_reference(tmp_path, "http://127.0.0.1:8000/") == 300


def test_parse_html_agrees_with_html_parser_on_pages_of_100_kb(tmp_path):
    generate_site(tmp_path, 3, seed=22, words_per_page=(14_000, 15_000), links_per_page=(300, 400))
    assert min(path.stat().st_size for path in tmp_path.rglob("*.html")) > 100_000

    assert _assert_parse_html_agrees_with_the_reference(tmp_path, "http://127.0.0.1:8000/") == 3


@pytest.mark.parametrize(
    "html",
    [
        "<p>one<p>two<li>three<li>four",
        "<b>ex</b>ample<br>next<br/>last",
        "<h1>x<div>y</div>z</h1><ul><li>a</ul>b",
        "<table><tr><td>a<td>b</table><p>x<table><tr><td>y</td></tr></table>z",
        "<p>a&nbsp;b &notit; &#x80; &eacute &amp;c</p>",
        "<p>un<!-- a comment -->closed",
        "<pre>  a\n  b</pre><textarea>plain</textarea><select><option>a<option>b</select>",
        "<noscript><p>no scripts</p></noscript><div hidden>hidden</div>",
        "<script>a</script>tail<style>b</style><script>if (a < b) { c(); }</script>",
        "<svg><title>icon</title><a href='s.html'>s</a></svg><p>after",
        "<title>one</title><title>two</title><p>body",
        "<base href='/x/'><a href=y>y</a><base href='z/'><a href=w>w</a>",
        "<a href=' http://valley.test/a  '>s</a><A HREF=Up.html>u</A><a href>empty</a>",
        "<a href='//other.test/x'>o</a><a href='HTTPS://X.test/a?#f'>f</a><a href='http://[oops'>b</a>",
        "<p>\r\nx\ry\tz\x0cw</p>",
    ],
)
def test_parse_html_agrees_with_html_parser_on_ordinary_markup(html):
    url = "http://valley.test/birds/heron.html"

    assert parse_html(html, base_url=url) == reference_parse_html(html, base_url=url)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://valley.test/birds/heron.html",
        "http://valley.test",
        "https://recorder@valley.test:8443/a/b/",
        "http://valley.test/a;p/b;q/c.html;r?x=1#y",
        "http://valley.test/a/?",
        "HTTP://Valley.test/a/./b/../c",
        "ftp://valley.test/a/",
        "",
    ],
)
def test_parse_html_agrees_with_html_parser_on_random_links(base_url):
    # parse_html joins plain paths itself rather than with urljoin (for speed): it must match urljoin.
    pieces = ["a", "b.html", "index.html", ".", "..", "", "%2e", "%7e", "~x", "a+b", "-_", "?q=1", "#f", ";p", ":",
              "//", "http:", "HTTP://Other.test", "https://valley.test", " ", "\t", "\\", "@", "é", "&", "\x01"]
    rng = random.Random(base_url)
    for _ in range(400):
        href = "".join(rng.choice(pieces) + rng.choice(("/", "/", "")) for _ in range(rng.randint(1, 5)))
        html = f'<a href="{escape(href)}">x</a>'

        assert parse_html(html, base_url=base_url) == reference_parse_html(html, base_url=base_url), href
