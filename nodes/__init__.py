"""Reusable nodes for flowgraph topologies, standard library only.

Import what you need from its module (``docs/nodes.md`` is the user guide):

- ``nodes.http``: ``Fetch``, a node that downloads URLs over HTTP(S) with
  keep-alive, retries, redirects and a per-host politeness interval, and
  turns failures into items.
- ``nodes.text``: ``parse_html``, ``tokenize``, ``word_counts``,
  ``top_words`` and ``AnalyzePage``, a node that summarises a fetched page.
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
>>> from nodes.sqlite import SQLiteStore
>>> from nodes.files import ReadLines, WriteJsonLines
>>> from nodes.aggregates import CountByKey, MergeCounts
"""
