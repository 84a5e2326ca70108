"""Count the words of text files: the classic streaming word count, with by_key and finish().

    flowgraph run topologies/wordcount.py
    flowgraph run topologies/wordcount.py --inproc
    flowgraph run topologies/wordcount.py --set texts='books/*.txt' --set out=books.jsonl

Two ``lines`` replicas read the lines of the text files (``--set texts=GLOB``,
relative to the current directory; by default the five stories and essays in
``topologies/texts/``), sharing the files between them. Three ``split``
replicas cut the lines into words (``nodes.text.tokenize``). ``count``
(``CountByKey``, two replicas) gets them by ``by_key("word")``, so every
occurrence of a word reaches the same replica, and emits its ``(word, count)``
pairs in ``finish()``, once every ``split`` replica has ended. ``merge``
(``MergeCounts``, parallelism 1) orders them, most frequent first, and
``save`` writes every word and its count as JSON lines to
``./wordcount.jsonl`` (``--set out=FILE``), then prints the ten most
frequent words and where the file is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from flowgraph import Topology, by_key, context
from nodes.aggregates import CountByKey, MergeCounts
from nodes.files import ReadLines, WriteJsonLines
from nodes.text import tokenize

TEXTS = str(Path(__file__).resolve().parent / "texts" / "*.txt")


class ReadTexts(ReadLines):
    """The lines of the files ``--set texts=GLOB`` names, or of the bundled texts."""

    def setup(self) -> None:
        self.paths = [context().params.get("texts", TEXTS)]
        super().setup()


class SaveCounts(WriteJsonLines):
    """Writes ``{"word", "count"}`` lines to ``--set out=FILE`` (default ./wordcount.jsonl); prints the top ten."""

    def setup(self) -> None:
        self.path = context().params.get("out", "wordcount.jsonl")
        Path(self.path).expanduser().unlink(missing_ok=True)  # one replica appends to one file: start afresh
        super().setup()
        self.words = 0
        self.top: list[tuple[str, int]] = []

    def process(self, pair: tuple[str, int]) -> None:
        word, count = pair
        self.words += 1
        if len(self.top) < 10:  # merge sends the most frequent first, and a 1-to-1 edge keeps order
            self.top.append(pair)
        super().process({"word": word, "count": count})

    def finish(self) -> None:
        super().finish()
        for word, count in self.top:
            print(f"{count:6} {word}")
        print(f"stored the counts of {self.words} different words in {self.path}")


topo = Topology("wordcount")
lines = topo.source(ReadTexts(TEXTS, skip_blank=True), name="lines", parallelism=2)


@topo.node(inputs=lines, parallelism=3)
def split(line: str) -> Iterator[dict[str, str]]:
    for word in tokenize(line):
        yield {"word": word}


count = topo.node(CountByKey("word"), inputs={split: by_key("word")}, parallelism=2, name="count")
merge = topo.node(MergeCounts(), inputs=count, name="merge")
topo.sink(SaveCounts(None, per_replica=False), inputs=merge, name="save")
