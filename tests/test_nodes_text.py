"""Tests of ``nodes.text``: parsing HTML, words, ``AnalyzePage``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from nodes.text import ENGLISH_STOPWORDS, AnalyzePage, parse_html, tokenize, top_words, word_counts

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
