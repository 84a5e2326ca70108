"""A generated web site for tests and benchmarks: ``generate_site`` writes it, ``SiteFacts`` says what a crawl finds.

Not shipped: a helper of the tests, as ``helpers.py`` is. The site is a
seeded random link graph with the traps a crawler must handle: cycles, one
page under several URLs (relative and absolute links, ``#fragments``,
``dir/`` and ``dir/index.html``), links to missing pages, links to another
host, and a ``robots.txt`` that forbids a directory, behind which lie pages
that nothing else links to. Serve it with ``nodes.site.serve``.
"""

from __future__ import annotations

import posixpath
import random
from collections import deque
from dataclasses import dataclass
from math import isqrt
from pathlib import Path
from urllib.parse import urlsplit

from nodes.urls import normalize_url

EXTERNAL_HOST = "elsewhere.invalid"
"""The host of the links that leave the site (``.invalid`` never resolves, RFC 2606)."""

_EXTERNAL_FRACTION = 0.01
_DISALLOWED_FRACTION = 0.02
_FRAGMENT_FRACTION = 0.2
_SYLLABLES = """
    ba be bi bo bu da de di do ka ke ki ko la le li lo ma me mi mo na ne ni no ra re ri ro sa se si so ta te ti to
    va ve vi wa we
""".split()


@dataclass(frozen=True)
class SiteFacts:
    """What a polite crawl of a site made by ``generate_site`` finds, as normalised URL paths (``nodes.urls``)."""

    start_url_path: str
    """Where the crawl starts: ``"/"``, the root's ``index.html``."""
    allowed: frozenset[str]
    """The pages reachable from the start without passing through a disallowed page, the start page (``"/"``)
    included: what the crawl fetches, each with status 200."""
    broken: frozenset[str]
    """Paths that allowed pages link to and that do not exist: the crawl gets 404 for each."""
    disallowed: frozenset[str]
    """Paths under the disallowed prefix that allowed pages link to: robots.txt forbids them."""
    external: frozenset[str]
    """URLs on another host that allowed pages link to: a crawl of the site never fetches them."""


def generate_site(
    root: Path,
    pages: int,
    *,
    seed: int,
    links_per_page: tuple[int, int] = (3, 12),
    broken_fraction: float = 0.02,
    disallowed_prefix: str = "private/",
    words_per_page: tuple[int, int] = (100, 400),
) -> SiteFacts:
    """Write a site of ``pages`` HTML pages and a ``robots.txt`` into ``root``; the same ``seed``, the same site.

    The pages are ``index.html`` (the start page), ``section-N/index.html``,
    ``section-N/page-N.html`` and ``section-N/part-N/page-N.html``; about
    one in 50 is under ``disallowed_prefix`` (which robots.txt disallows;
    ``private/`` by default), and about one in 100 is linked only from those.
    A spanning tree of links makes every page reachable from the start page;
    the rest of each page's ``links_per_page`` (a range, both ends included)
    go up to its parent, to random pages (cycles), and, with these chances,
    to a missing page (``broken_fraction``), to ``EXTERNAL_HOST`` (1%) or
    from an allowed page into the disallowed directory (2%). The start page
    links to one of each besides. Each page has a ``<title>``, a heading and
    ``words_per_page`` words of text, with some inline markup, character
    references, a ``<style>`` and a ``<script>``. 3000 pages take a few
    seconds, most of it creating the files.
    """
    if pages < 3:
        raise ValueError(f"pages must be 3 or more (a start page, a disallowed one, one behind it), got {pages}")
    if links_per_page[0] < 2 or links_per_page[0] > links_per_page[1]:
        raise ValueError(f"links_per_page must be a range (low, high) with 2 <= low <= high, got {links_per_page}")
    if links_per_page[1] + 6 > words_per_page[0]:  # 3 links more on the start page, 3 words in the heading
        raise ValueError(f"each link needs a word: words_per_page {words_per_page} is too few for {links_per_page}")
    if not disallowed_prefix.endswith("/") or disallowed_prefix.startswith("/"):
        raise ValueError(f"disallowed_prefix must be a directory such as 'private/', got {disallowed_prefix!r}")
    rng = random.Random(seed)
    graph = _LinkGraph(rng, pages, links_per_page, broken_fraction, disallowed_prefix)
    allowed = graph.reachable_without_disallowed()
    facts = SiteFacts(
        start_url_path="/",
        allowed=frozenset(_url_path(graph.files[page]) for page in allowed),
        broken=frozenset(_url_path(target) for page in allowed for target in graph.broken_links[page]),
        disallowed=frozenset(
            _url_path(graph.files[target])
            for page in allowed
            for target in graph.links[page]
            if graph.is_disallowed(target)
        ),
        external=frozenset(url for page in allowed for url in graph.external_links[page]),
    )
    root.mkdir(parents=True, exist_ok=True)
    (root / "robots.txt").write_text(f"User-agent: *\nDisallow: /{disallowed_prefix}\n", encoding="utf-8")
    endings = ("", "n", "s", "th")
    vocabulary = [rng.choice(_SYLLABLES) + rng.choice(_SYLLABLES) + rng.choice(endings) for _ in range(1500)]
    for directory in sorted({posixpath.dirname(file) for file in graph.files}):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for page, file in enumerate(graph.files):
        (root / file).write_text(_page_html(rng, graph, page, vocabulary, words_per_page), encoding="utf-8")
    return facts


class _LinkGraph:
    """Which page links to which, by page number; page 0 is the start page, ``files`` their paths under the root."""

    def __init__(
        self,
        rng: random.Random,
        pages: int,
        links_per_page: tuple[int, int],
        broken_fraction: float,
        disallowed_prefix: str,
    ) -> None:
        disallowed_count = max(1, pages // 50)
        hidden_count = max(1, pages // 100)  # linked only from disallowed pages
        allowed_count = pages - disallowed_count - hidden_count
        self.first_disallowed = allowed_count
        self.first_hidden = allowed_count + disallowed_count
        self.files = _files(rng, allowed_count, disallowed_count, hidden_count, disallowed_prefix)
        self.parents = [0] * pages
        self.links: list[list[int]] = [[] for _ in range(pages)]
        self.broken_links: list[list[str]] = [[] for _ in range(pages)]
        self.external_links: list[list[str]] = [[] for _ in range(pages)]
        capacity = [rng.randint(*links_per_page) for _ in range(pages)]
        self._spanning_tree(rng, capacity)
        sections = sorted({posixpath.dirname(file) for file in self.files if file.startswith("section-")})
        for page in range(pages):
            for slot in range(capacity[page] - len(self.links[page])):
                self._add_extra_link(rng, page, is_first=slot == 0, broken_fraction=broken_fraction, sections=sections)
        self.links[0].append(self.first_disallowed)
        self.broken_links[0].append(f"{sections[0]}/missing-0.html" if sections else "missing-0.html")
        self.external_links[0].append(f"http://{EXTERNAL_HOST}/")

    def is_disallowed(self, page: int) -> bool:
        return self.first_disallowed <= page < self.first_hidden

    def reachable_without_disallowed(self) -> list[int]:
        """The pages a polite crawl reaches from page 0, in page order."""
        seen = {0}
        queue = deque([0])
        while queue:
            page = queue.popleft()
            for target in self.links[page]:
                if target not in seen and not self.is_disallowed(target):
                    seen.add(target)
                    queue.append(target)
        return sorted(seen)

    def _spanning_tree(self, rng: random.Random, capacity: list[int]) -> None:
        """Link each page from an earlier one with a free link: allowed from allowed, disallowed from allowed, hidden
        from disallowed. Capacity suffices as every page has at least 2 links."""
        allowed = [0]
        disallowed: list[int] = []
        for page in range(1, len(self.files)):
            if page < self.first_disallowed:
                parents = allowed
            elif page < self.first_hidden:
                parents = allowed if page == self.first_disallowed else rng.choice((allowed, disallowed))
            else:
                parents = disallowed
            index = rng.randrange(len(parents))
            parent = parents[index]
            self.parents[page] = parent
            self.links[parent].append(page)
            if len(self.links[parent]) == capacity[parent]:  # full: swap it out of the choices
                parents[index] = parents[-1]
                parents.pop()
            if page < self.first_hidden:
                (allowed if page < self.first_disallowed else disallowed).append(page)

    def _add_extra_link(
        self, rng: random.Random, page: int, *, is_first: bool, broken_fraction: float, sections: list[str]
    ) -> None:
        if is_first and page:
            self.links[page].append(self.parents[page])  # back up the tree: a cycle
            return
        if page >= self.first_disallowed:  # behind robots.txt anything goes, hidden pages too
            self.links[page].append(rng.randrange(len(self.files)))
            return
        chance = rng.random()
        if chance < broken_fraction:
            directory = rng.choice(sections) + "/" if sections else ""
            self.broken_links[page].append(f"{directory}missing-{rng.randrange(50)}.html")
        elif chance < broken_fraction + _EXTERNAL_FRACTION:
            self.external_links[page].append(f"http://{EXTERNAL_HOST}/page-{rng.randrange(20)}.html")
        elif chance < broken_fraction + _EXTERNAL_FRACTION + _DISALLOWED_FRACTION:
            self.links[page].append(rng.randrange(self.first_disallowed, self.first_hidden))
        else:
            self.links[page].append(rng.randrange(self.first_disallowed))


def _files(rng: random.Random, allowed: int, disallowed: int, hidden: int, disallowed_prefix: str) -> list[str]:
    """The file of each page: the start page, section indexes, section pages; disallowed; hidden (in sections)."""
    sections = max(1, isqrt(allowed // 4))
    files = ["index.html"]
    files += [f"section-{section}/index.html" for section in range(1, min(sections + 1, allowed))]
    for page in range(len(files), allowed + disallowed + hidden):
        if allowed <= page < allowed + disallowed:
            files.append(disallowed_prefix + ("index.html" if page == allowed else f"page-{page}.html"))
            continue
        directory = f"section-{rng.randint(1, sections)}/"
        if rng.random() < 1 / 3:
            directory += f"part-{rng.randint(1, 3)}/"
        files.append(f"{directory}page-{page}.html")
    return files


def _url_path(file: str) -> str:
    """The normalised URL path of a file under the root: ``section-1/index.html`` → ``/section-1/``."""
    return urlsplit(normalize_url(f"http://site.invalid/{file}")).path


def _href(rng: random.Random, source: str, target: str) -> str:
    """A link from file ``source`` to file ``target`` (which may not exist), in one of the forms a page may use."""
    forms = [_relative(source, target), "/" + target]
    if posixpath.basename(target) == "index.html":
        directory = target[: -len("index.html")]
        forms += ["/" + directory, _relative(source, directory) or "./"]
    href = rng.choice(forms)
    if not href.startswith(("/", ".")) and rng.random() < 0.1:
        href = "./" + href
    if rng.random() < _FRAGMENT_FRACTION:
        href += f"#s{rng.randint(1, 3)}"
    return href


def _relative(source: str, target: str) -> str:
    """The relative URL of ``target`` on page ``source``, both paths under the root (``posixpath.relpath`` is slow)."""
    here = source.split("/")[:-1]
    parts = target.split("/")
    common = 0
    while common < min(len(here), len(parts) - 1) and here[common] == parts[common]:
        common += 1
    return "/".join([".."] * (len(here) - common) + parts[common:])


def _page_html(
    rng: random.Random, graph: _LinkGraph, page: int, vocabulary: list[str], words_per_page: tuple[int, int]
) -> str:
    source = graph.files[page]
    hrefs = [_href(rng, source, graph.files[target]) for target in graph.links[page]]
    hrefs += [_href(rng, source, target) for target in graph.broken_links[page]]
    hrefs += graph.external_links[page]
    rng.shuffle(hrefs)
    title = f"{rng.choice(vocabulary).capitalize()} {rng.choice(vocabulary)} {page}"
    words = rng.choices(vocabulary, k=rng.randint(*words_per_page) - 3)  # the heading is 3 words
    for position, href in zip(rng.sample(range(len(words)), len(hrefs)), hrefs, strict=True):
        words[position] = f'<a href="{href}">{words[position]}</a>'
    for position in rng.sample(range(len(words)), len(words) // 40):
        word = words[position]
        if not word.startswith("<"):
            words[position] = rng.choice((f"<b>{word[:2]}</b>{word[2:]}", f"<em>{word}</em>", f"{word}&nbsp;&amp;"))
    blocks = []
    start = 0
    while start < len(words):
        kind = rng.random()
        end = min(len(words), start + (rng.randint(2, 8) if kind < 0.15 else rng.randint(15, 60)))
        text = " ".join(words[start:end])
        if kind < 0.15:
            blocks.append(f"<h2 id=\"s{len(blocks) % 3 + 1}\">{text}</h2>")
        elif kind < 0.3:
            middle = (start + end) // 2
            blocks.append(f"<ul><li>{' '.join(words[start:middle])}<li>{' '.join(words[middle:end])}</ul>")
        else:
            blocks.append(f"<p>{text}<br>\n</p>" if kind > 0.95 else f"<p>{text}</p>")
        start = end
    body = "\n".join(blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        "<style>body { max-width: 40em; margin: auto; }</style>\n</head>\n<body>\n"
        f"<h1>{title}</h1>\n{body}\n<!-- page {page} -->\n<script>var page = {page};</script>\n</body>\n</html>\n"
    )
