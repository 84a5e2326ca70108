"""``context()``: where the calling node replica runs and what it is working on."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Mapping
from typing import Any

from ..errors import FlowgraphError

_local = threading.local()
_UNSET: Any = object()
item_input: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowgraph_item_input", default=_UNSET)
"""``context().input`` of the item an asyncio task or a pool thread works on (``concurrency=``)."""


class Context:
    """The running replica's view of itself; get it with ``flowgraph.context()``.

    The object lives as long as the replica; ``input`` changes with every item.
    """

    __slots__ = ("node", "replica", "parallelism", "host", "_input", "params", "incarnation", "checkpointing",
                 "checkpoint")

    def __init__(
        self, node: str, replica: int, parallelism: int, host: str, params: Mapping[str, Any], incarnation: int = 0,
        checkpointing: bool = False, checkpoint: int = 0,
    ) -> None:
        self.node = node
        """Name of the node this replica belongs to."""
        self.replica = replica
        """Index of this replica, ``0 <= replica < parallelism``."""
        self.parallelism = parallelism
        """Number of replicas of this node."""
        self.host = host
        """The host as named in ``--hosts``; ``"localhost"`` for local replicas."""
        self._input: str | None = None
        self.params = params
        """The run's parameters: ``--set KEY=VALUE`` (values are strings) or ``run(params=...)``."""
        self.incarnation = incarnation
        """How often this replica was restarted before (``--restarts``): 0 for its first start."""
        self.checkpointing = checkpointing
        """True in a run with ``--checkpoint``: a sink with commit hooks stages what it writes (``nodes.sqlite``)."""
        self.checkpoint = checkpoint
        """The id of the last checkpoint whose barrier this replica passed, or that it was restored from (0: none).

        What a replica writes now belongs after that checkpoint: a two-phase
        sink tags what it stages with it (see ``docs/checkpoints.md``).
        """

    @property
    def input(self) -> str | None:
        """Name of the upstream node of the item being processed (``None`` in sources and setup).

        With ``concurrency=``, each item in flight sees its own.
        """
        value = item_input.get()
        return self._input if value is _UNSET else value

    @input.setter
    def input(self, value: str | None) -> None:
        self._input = value

    def __repr__(self) -> str:
        return (
            f"Context(node={self.node!r}, replica={self.replica}, parallelism={self.parallelism}, "
            f"host={self.host!r}, input={self.input!r})"
        )


def context() -> Context:
    """The context of the node replica running in this thread.

    >>> from flowgraph import Topology, context
    >>> topo = Topology("ctx")
    >>> @topo.source(parallelism=2)
    ... def numbers():
    ...     me = context()
    ...     yield from range(me.replica, 10, me.parallelism)

    Raises ``FlowgraphError`` when called outside a running node.
    """
    current = current_context()
    if current is None:
        raise FlowgraphError("context() is only available inside a running node")
    return current


def current_context() -> Context | None:
    """The context of the calling thread, or None outside a running node."""
    return getattr(_local, "context", None)


def set_context(current: Context | None) -> None:
    """Make ``current`` the context of the calling thread (the worker does this)."""
    _local.context = current
