"""Reusable nodes for flowgraph topologies, built on the standard library, aiohttp and selectolax.

Import what you need from its module (``docs/nodes.md`` is the user guide):

- ``nodes.http``: ``Fetch``, an asynchronous node (aiohttp; give it
  ``concurrency=``) that downloads URLs over HTTP(S) with keep-alive,
  retries, redirects, robots.txt, a per-host limit and politeness interval,
  and turns failures into items.
- ``nodes.text``: ``parse_html`` (on selectolax's Lexbor parser, which reads
  a page as browsers do), ``tokenize``, ``word_counts``, ``top_words`` and
  ``AnalyzePage``, a node that summarises a fetched page.
- ``nodes.urls``: ``normalize_url``, the crawler's documented normalisation
  that tells when two URLs are one page, and ``same_site``.
- ``nodes.site``: ``serve``, a static web site from a directory over HTTP/1.1
  (aiohttp, in a daemon thread) that counts what it serves, for offline
  examples, tests and benchmarks.
- ``nodes.sqlite``: ``SQLiteStore``, a sink that writes dict rows to a table
  in batches, and ``count_rows``.
- ``nodes.files``: the sources ``ReadLines``, ``ReadJsonLines`` and
  ``ReadFiles``, which share files and glob patterns between replicas, and
  ``WriteJsonLines``, a sink that writes a JSON line per item.
- ``nodes.aggregates``: ``CountByKey``, ``SumByKey`` and ``TopK``, nodes that
  keep per-key state and emit at end of stream, and ``MergeCounts`` /
  ``combine_counts`` to add up what several replicas counted.

>>> from nodes.http import Fetch
>>> from nodes.text import AnalyzePage
>>> from nodes.urls import normalize_url, same_site
>>> from nodes.site import serve
>>> from nodes.sqlite import SQLiteStore
>>> from nodes.files import ReadLines, WriteJsonLines
>>> from nodes.aggregates import CountByKey, MergeCounts
"""
