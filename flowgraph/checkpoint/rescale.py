"""The parts for the replicas of the plan about to run, from a checkpoint: as stored, or dealt over a new parallelism.

A node with the parallelism it had at the checkpoint gets its parts as
stored. One whose parallelism changed (``check_compatible`` allows it only
for a node without state, and for a by_key node whose ``snapshot()`` is a
mapping by its key) gets empty parts, or its old replicas' states merged and
split again by key, with the placement items are routed by
(``flowgraph.wire.keys.replica_for_key``): each key's state lands on the
replica its items will reach. That placement is jump consistent hashing, so
growing from n to n + 1 replicas moves only about 1/(n + 1) of the keys.

Splitting unpickles the states, and unpickling is code execution: resume
only from a checkpoint directory your own runs wrote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import cloudpickle

from ..errors import CheckpointError
from ..model.plan import Plan, replica_id
from ..wire.keys import replica_for_key
from .compat import check_compatible
from .store import Checkpoint, Part


def split_keyed(node: str, states: Sequence[Any], parallelism: int) -> list[dict[Any, Any]]:
    """The states of ``node``'s old replicas, merged and split over ``parallelism`` replicas by key.

    Each state must be a mapping by the node's by_key key (None counts as
    empty); raises ``CheckpointError`` naming the node and the replica when
    one is not, or when a key is in two of them.

    >>> split_keyed("count", [{"a": 1}, None, {"b": 2}], 1)
    [{'a': 1, 'b': 2}]
    """
    owners: dict[Any, int] = {}
    merged: dict[Any, Any] = {}
    for index, state in enumerate(states):
        if state is None:
            continue
        if not isinstance(state, Mapping):
            raise CheckpointError(
                f"node {node!r}: replica {index}'s state is a {type(state).__name__}, not a mapping by its by_key "
                f"key, so it cannot be split over {parallelism} replicas; resume with its old parallelism, or make "
                "snapshot() return a dict keyed by the key")
        for key, value in state.items():
            if key in owners:
                raise CheckpointError(
                    f"node {node!r}: key {key!r} is in the states of both replica {owners[key]} and replica "
                    f"{index}, so they cannot be merged; resume with its old parallelism")
            owners[key] = index
            merged[key] = value
    shares: list[dict[Any, Any]] = [{} for _ in range(parallelism)]
    for key, value in merged.items():
        shares[replica_for_key(key, parallelism)][key] = value
    return shares


def assign_parts(checkpoint: Checkpoint, plan: Plan, fingerprint: Mapping[str, Any]) -> dict[str, Part]:
    """A part for every replica of ``plan``, by replica id, from ``checkpoint``.

    ``fingerprint`` is that of the topology ``plan`` runs. Raises
    ``CheckpointError`` when the checkpoint cannot serve it (it calls
    ``check_compatible`` first), lacks a part, holds a state that cannot be
    split, or had finished some replicas of a rescaled node and not others.
    A node without state now gets no state, even if it kept some then.
    """
    check_compatible(checkpoint.fingerprint, fingerprint)
    parts: dict[str, Part] = {}
    for node in plan.nodes:
        then = checkpoint.fingerprint["nodes"][node.name]["parallelism"]
        old = [_stored(checkpoint, node.name, index) for index in range(then)]
        new = _rescaled(node.name, old, node.parallelism, fingerprint["nodes"][node.name]["stateful"])
        parts.update((part.replica, part) for part in new)
    return parts


def _stored(checkpoint: Checkpoint, node: str, index: int) -> Part:
    replica = replica_id(node, index)
    if replica not in checkpoint.parts:
        raise CheckpointError(f"checkpoint {checkpoint.id} has no part of replica {replica}; "
                              "run it without --resume to start again")
    return checkpoint.parts[replica]


def _rescaled(node: str, old: list[Part], parallelism: int, stateful: bool) -> list[Part]:
    """The parts of ``node``'s ``parallelism`` replicas, from those of its old ones."""
    if len(old) == parallelism:
        return old if stateful else [replace(part, state=None) for part in old]
    finished = _finished(node, old)
    if not stateful:
        return [Part(replica_id(node, index), None, finished=finished) for index in range(parallelism)]
    shares = split_keyed(node, [_unpickled(node, part) for part in old], parallelism)
    return [Part(replica_id(node, index), cloudpickle.dumps(share), finished=finished)
            for index, share in enumerate(shares)]


def _finished(node: str, old: list[Part]) -> bool:
    """Whether all of ``node``'s old replicas had finished (False if none had); ``CheckpointError`` if some had."""
    done = [part.replica for part in old if part.finished]
    if done and len(done) < len(old):
        running = [part.replica for part in old if not part.finished]
        raise CheckpointError(
            f"node {node!r}: {', '.join(done)} had finished at the checkpoint and {', '.join(running)} had not, "
            f"so its replicas cannot change in number; resume with its old parallelism ({len(old)})")
    return bool(done)


def _unpickled(node: str, part: Part) -> Any:
    if part.state is None:
        return None
    try:
        return cloudpickle.loads(part.state)
    except Exception as error:  # anything a state's __reduce__ or a missing module raises
        raise CheckpointError(f"node {node!r}: the state of replica {part.replica} cannot be unpickled to split it "
                              f"({type(error).__name__}: {error})") from error
