"""A replica's share of checkpoints: its state, its barrier, its two-phase hooks.

What a replica stores (a ``checkpoint.store.Part``):

- a source: its position, the number of items it emitted over the whole
  run (a restored one skips as many, or ``seek(n)``), or its own
  ``snapshot()``;
- a class node: its ``snapshot()``, restored by ``restore(state)``; without
  these, its instance ``__dict__`` pickled and put back; nothing if it
  declares ``restartable = True`` (its ``setup()`` rebuilds all it needs);
- a function: nothing.

A state that cannot be pickled fails the run (exit 2) naming the attribute,
at ``setup()`` already (a trial snapshot, before any item) or at the first
barrier it fails at. The two-phase hooks of a sink (``nodes.sqlite``) run
here as well: ``precommit()`` at every barrier and at the end, before the
part goes to the launcher; ``commit(n)`` when the launcher says checkpoint n
is complete (the final checkpoint's before ``teardown()``); ``rollback(n)``
then ``commit(n)`` when the replica starts from checkpoint n
(``rollback(0)``: from the beginning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cloudpickle

from ..checkpoint.store import Part
from ..errors import CheckpointError, Phase
from ..model.dsl import NodeKind, NodeSpec
from ..wire.control import Stored
from .context import Context
from .counters import Counters
from .failures import Failure
from .operator import Operator
from .outputs import Outputs
from .pipe import ControlPipe

HINT = ("define snapshot() (returning what it needs) and restore(state) on its class, or declare restartable = True "
        "if its setup() rebuilds all it needs")


class Snapshots:
    """Checkpoints as one replica takes part in them."""

    def __init__(self, node: NodeSpec, operator: Operator, outputs: Outputs, control: ControlPipe,
                 counters: Counters, context: Context, restored: Part | None) -> None:
        """``restored``: its part of the checkpoint it starts from, if any."""
        self._node = node
        self._instance = operator.instance
        self._outputs = outputs
        self._control = control
        self._counters = counters
        self._context = context
        instance = operator.instance
        self._snapshot: Callable[[], Any] | None = getattr(instance, "snapshot", None)
        self.skip = 0
        """How many items a restored source skips: its position, unless its own ``snapshot()`` keeps it."""
        if restored is not None and node.kind is NodeKind.SOURCE and self._snapshot is None:
            self.skip = restored.position
        self._restore: Callable[[Any], Any] | None = getattr(instance, "restore", None)
        self._precommit: Callable[[], Any] | None = getattr(instance, "precommit", None)
        self._commit: Callable[[int], Any] | None = getattr(instance, "commit", None)
        self._rollback: Callable[[int], Any] | None = getattr(instance, "rollback", None)

    def start(self, state: bytes | None, checkpoint: int) -> None:
        """After ``setup()``: put back ``state`` (from ``checkpoint``, 0: none), let a two-phase sink drop what it
        staged after it and commit up to it, and try a snapshot (an unpicklable state fails before any item)."""
        self._context.checkpoint = checkpoint
        if state is not None:
            value = cloudpickle.loads(state)
            try:
                if self._restore is not None:
                    self._restore(value)
                elif self._instance is not None:
                    vars(self._instance).update(value)
            except Exception as error:
                raise Failure(Phase.CHECKPOINT, error) from error
        self._hook(self._rollback, checkpoint)
        if checkpoint:
            self._hook(self._commit, checkpoint)
        self.state()

    def barrier(self, checkpoint: int) -> None:
        """Every input delivered barrier ``checkpoint`` (a source: it was asked for it): forward the barrier behind
        the outputs so far, store this replica's part, and go on after it."""
        self._outputs.send_barrier(checkpoint)
        self._hook(self._precommit)
        self._control.send(Stored(checkpoint), self._part(finished=False))
        self._context.checkpoint = checkpoint

    def final(self) -> None:
        """The replica ended (``finish()`` ran, end of stream went out): its part as it ended."""
        self._hook(self._precommit)
        self._control.send(Stored(0, final=True), self._part(finished=True))

    def commit(self, checkpoint: int) -> None:
        """The launcher declared ``checkpoint`` complete."""
        self._hook(self._commit, checkpoint)

    def state(self) -> bytes | None:
        """The pickled state of this replica now (None: it keeps none); raises ``Failure`` naming what fails."""
        if self._snapshot is not None:
            value = self._call(self._snapshot)
            try:
                data: bytes = cloudpickle.dumps(value)
            except Exception as error:
                raise self._unpicklable(f"its snapshot() returned a {type(value).__name__} that cannot be pickled "
                                        f"({type(error).__name__}: {error})") from error
            return data
        if self._instance is None or self._node.restartable:
            return None
        attributes = vars(self._instance)
        try:
            pickled: bytes = cloudpickle.dumps(attributes)
        except Exception as error:
            raise self._unpicklable(_culprit(attributes, error)) from error
        return pickled

    def _part(self, finished: bool) -> Part:
        position = 0
        if self._node.kind is NodeKind.SOURCE and self._snapshot is None:
            position = self.skip + self._counters.items_out
        return Part(self._context_id(), self.state(), position, finished)

    def _context_id(self) -> str:
        return f"{self._context.node}/{self._context.replica}"

    def _hook(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        if hook is not None:
            self._call(hook, *args)

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        try:
            return function(*args)
        except Exception as error:
            raise Failure(Phase.CHECKPOINT, error) from error

    def _unpicklable(self, what: str) -> Failure:
        message = f"{self._node.kind.value} {self._node.name!r} cannot be checkpointed: {what}; {HINT}"
        return Failure(Phase.CHECKPOINT, CheckpointError(message), fatal=True)


def _culprit(attributes: dict[str, Any], error: Exception) -> str:
    """Which attribute of an instance's ``__dict__`` does not pickle, as the message says it."""
    for name, value in attributes.items():
        try:
            cloudpickle.dumps(value)
        except Exception as own:
            return f"its attribute {name!r} holds a {type(value).__name__}, which cannot be pickled ({own})"
    return f"its attributes cannot be pickled ({type(error).__name__}: {error})"
