"""Reusable nodes for flowgraph topologies, standard library only.

Import what you need from its module:

- ``nodes.http``: ``Fetch``, a node that downloads URLs over HTTP(S) with
  keep-alive, retries and redirects, and turns failures into items.
- ``nodes.text``: ``parse_html``, ``tokenize``, ``word_counts``,
  ``top_words`` and ``AnalyzePage``, a node that summarises a fetched page.
- ``nodes.sqlite``: ``SQLiteStore``, a sink that writes dict rows to a table
  in batches, and ``count_rows``.

>>> from nodes.http import Fetch
>>> from nodes.text import AnalyzePage
>>> from nodes.sqlite import SQLiteStore
"""
