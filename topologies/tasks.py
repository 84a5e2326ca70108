"""Distributed task scheduling: split a job into chunks, spread them over workers, combine at the end.

    flowgraph run topologies/tasks.py
    flowgraph run topologies/tasks.py --set assign=key
    flowgraph run topologies/tasks.py --set n=10000000 --set chunk=200000 --set out=primes-10M.json

The job: count the primes below ``n`` (default 2,000,000). A source splits
[2, n) into chunks of ``chunk`` numbers (default 50,000), numbered from 0;
four ``sieve`` replicas each count the primes in the chunks they get (a
segment of the sieve of Eratosthenes) and emit ``{chunk, primes, replica}``;
``combine`` (parallelism 1) adds the counts up in ``finish()``, checks that
every chunk came back exactly once, writes ``./primes.json`` (``--set
out=FILE``: the total, how many chunks each replica did and which replica
did each chunk) and prints the total and where the file is.

``--set assign=`` chooses how chunks are assigned to the workers:

- ``round-robin`` (the default): a ``shuffle()`` edge deals the chunks to
  the replicas in turn, and passes over a replica whose input buffer is full,
  so a slow worker gets fewer.
- ``key``: a ``by_key("chunk")`` edge, consistent hashing. flowgraph's
  by_key picks the replica by jump consistent hashing of a stable hash of
  the key (of its type and value, the same in every process, on every host
  and in every run; never Python's salted ``hash``), so a chunk always lands
  on the same replica: the place to keep a cache or state per chunk. With
  one replica more, only about 1/(n+1) of the chunks move.

An edge's grouping is fixed when the topology is declared, while ``--set``
is only known when it runs; so there is one source per mode, each with its
own edge into ``sieve``, and only the chosen one emits the chunks.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from flowgraph import Topology, by_key, context, shuffle

ASSIGN_MODES = ("round-robin", "key")


def job(params: Mapping[str, str]) -> tuple[int, int, str]:
    """``(n, chunk, assign)`` from the run parameters; ``ValueError`` names a bad one."""
    n, chunk = int(params.get("n", 2_000_000)), int(params.get("chunk", 50_000))
    assign = params.get("assign", "round-robin")
    if n < 2 or chunk < 1:
        raise ValueError(f"--set n= must be at least 2 and chunk= at least 1, got n={n}, chunk={chunk}")
    if assign not in ASSIGN_MODES:
        raise ValueError(f"--set assign= must be 'round-robin' or 'key', got {assign!r}")
    return n, chunk, assign


def count_primes(start: int, stop: int) -> int:
    """How many primes p there are with ``start <= p < stop`` (``start >= 2``)."""
    limit = math.isqrt(stop - 1)
    small = bytearray([1]) * (limit + 1)  # the primes up to sqrt(stop), by a plain sieve
    for p in range(2, math.isqrt(limit) + 1):
        if small[p]:
            small[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
    segment = bytearray([1]) * (stop - start)  # segment[i]: is start + i a prime?
    for p in range(2, limit + 1):
        if small[p]:
            first = max(p * p, -(-start // p) * p)  # from start on; p itself is prime, so from p*p
            segment[first - start :: p] = bytes(len(range(first - start, stop - start, p)))
    return segment.count(1)


def chunks(assign: str) -> Iterator[dict[str, int]]:
    """The chunks of the job if ``--set assign`` is ``assign``; nothing otherwise."""
    n, size, chosen = job(context().params)
    if chosen == assign:
        for number, start in enumerate(range(2, n, size)):
            yield {"chunk": number, "start": start, "stop": min(start + size, n)}


topo = Topology("tasks")


@topo.source
def round_robin() -> Iterator[dict[str, int]]:
    yield from chunks("round-robin")


@topo.source
def keyed() -> Iterator[dict[str, int]]:
    yield from chunks("key")


@topo.node(inputs={round_robin: shuffle(), keyed: by_key("chunk")}, parallelism=4)
def sieve(task: dict[str, int]) -> dict[str, int]:
    return {"chunk": task["chunk"], "primes": count_primes(task["start"], task["stop"]),
            "replica": context().replica}


@topo.sink(inputs=sieve, name="combine")
class Combine:
    """Adds up the primes of every chunk; writes ``--set out=FILE`` (default ./primes.json)."""

    def setup(self) -> None:
        self.results: dict[int, dict[str, int]] = {}

    def process(self, result: dict[str, int]) -> None:
        if result["chunk"] in self.results:
            raise RuntimeError(f"chunk {result['chunk']} came back twice: {self.results[result['chunk']]}, {result}")
        self.results[result["chunk"]] = result

    def finish(self) -> None:
        n, size, assign = job(context().params)
        expected = len(range(2, n, size))
        missing = sorted(set(range(expected)) - self.results.keys())
        if missing:
            raise RuntimeError(f"{len(missing)} of {expected} chunks never came back: {missing[:10]}")
        total = sum(result["primes"] for result in self.results.values())
        replicas = [self.results[number]["replica"] for number in range(expected)]
        summary: dict[str, Any] = {
            "n": n, "chunk": size, "assign": assign, "chunks": expected, "primes": total,
            "chunks_per_replica": {str(replica): done for replica, done in sorted(Counter(replicas).items())},
            "replica_of_chunk": replicas,
        }
        path = Path(context().params.get("out", "primes.json")).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2) + "\n")
        print(f"{total} primes below {n}, counted in {expected} chunks ({assign}); written to {path}")
