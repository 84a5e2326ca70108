"""The README's topology and the other forms of ``inputs=``, as a type checker sees them.

Checked with ``mypy tests/typing/readme_example.py``, under the project's
settings; pytest does not collect it. Running it declares the topology and
checks it, which needs neither ``book.txt`` nor ``out.db``.

Mypy ignores what a class decorator returns (python/mypy#3135), so to mypy
``Count`` stays the class while at run time it is a ``Handle``;
``inputs=`` accepts a class for that reason. ``count_handle`` below shows
that the decorator itself returns a ``Handle``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from flowgraph import Handle, Plan, Topology, broadcast, by_key, context
from flowgraph.model.dsl import Grouping
from nodes.sqlite import SQLiteStore

if sys.version_info >= (3, 11):
    from typing import assert_type
else:
    from typing_extensions import assert_type

topo = Topology("words")


@topo.source
def lines():
    yield from open("book.txt")


@topo.node(inputs=lines, parallelism=3)
def split(line):
    for word in line.split():
        yield {"word": word.lower()}


@topo.node(inputs={split: by_key("word")}, parallelism=2)
class Count:
    def setup(self):
        self.counts = {}

    def process(self, item):
        self.counts[item["word"]] = self.counts.get(item["word"], 0) + 1

    def finish(self):
        yield from self.counts.items()

    def teardown(self):
        pass


@topo.sink(inputs=Count)
def show(pair):
    print(*pair)


assert_type(lines, Handle)
assert_type(split, Handle)
assert_type(show, Handle)
assert_type(Count, type[Count])  # mypy's view (python/mypy#3135); a Handle at run time


class Tally:
    def process(self, item):
        return item


count_with_keywords = topo.node(inputs={split: by_key("word")}, name="tally")
assert_type(count_with_keywords, Callable[[object], Handle])
count_handle = count_with_keywords(Tally)
assert_type(count_handle, Handle)

store = topo.sink(SQLiteStore("out.db", table="rows"), inputs=Count, name="store")
assert_type(store, Handle)


@topo.source(name="config", parallelism=1)
def settings():
    yield {"replica": context().replica}


@topo.node(inputs=[split, "tally"], name="merged")
def merged(item):
    return item


@topo.node(inputs={split: by_key("word"), "config": broadcast()}, name="configured")
def configured(item):
    return item


@topo.sink(inputs="merged", name="by_name")
def by_name(item):
    pass


groupings = {configured: by_key(0)}
assert_type(groupings, dict[Handle, Grouping])
topo.sink(lambda item: None, inputs=groupings, name="prebuilt")
topo.sink(lambda item: None, inputs={Count: broadcast()}, name="by_class")

assert_type(topo.check(), Plan)
