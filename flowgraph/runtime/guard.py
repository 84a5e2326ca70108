"""A node's error policy at work: each item on its own, retried, skipped or dead-lettered.

Only a node whose policy catches anything (``ErrorPolicy.catches``) goes
through the guard; the default fail-fast runs the faster ``run_chunk`` of
``node``. Per item, never per batch: an item's neighbours are processed
once, and an item's outputs are kept only once it completed (a generator's
outputs for an item are held until it is done), so a retried item's outputs
appear once. Every input item ends exactly once as processed, skipped or
dead-lettered; the counters say which.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from ..errors import Phase, user_traceback
from ..model.policy import DeadLetter, ErrorPolicy, backoff_s
from .context import Context
from .counters import Counters
from .failures import Failure, PoisonItem, Stopped
from .keeping import POISON_DEATHS
from .operator import Operator, emitted


def retry_wait_s(policy: ErrorPolicy, error: Exception, attempts: int, rng: random.Random) -> float | None:
    """How long to wait before trying again an item whose attempt number ``attempts`` raised ``error``; None when
    the policy gives it up."""
    if attempts <= policy.retries and isinstance(error, policy.retry_on):
        return backoff_s(attempts, policy.retry_backoff_s, rng)
    return None


def set_aside(item: Any, policy: ErrorPolicy, counters: Counters, context: Context) -> DeadLetter | None:
    """A poison item (it killed this replica each of the last ``POISON_DEATHS`` times it came): not processed.

    It is dead-lettered or skipped, as the node's policy says; with
    ``on_error="fail"`` the run fails naming it, whatever the restart budget
    (a restart would only bring it back).
    """
    error = PoisonItem(f"it was in flight at {POISON_DEATHS} deaths of {context.node}/{context.replica} in a row, "
                       "so it is not processed again")
    counters.errors += 1
    if policy.on_error == "dead_letter":
        counters.dead_lettered += 1
        return DeadLetter(item, context.node, context.replica, context.host, type(error).__name__, str(error), "",
                          POISON_DEATHS)
    if policy.on_error == "skip":
        counters.skipped += 1
        return None
    raise Failure(Phase.PROCESS, error, item, has_item=True, fatal=True,
                  reason="a poison item (declare on_error=\"dead_letter\" or \"skip\" to set it aside)")


class ItemGuard:
    """Runs ``process`` on each item of a chunk under ``policy``."""

    def __init__(self, policy: ErrorPolicy, operator: Operator, counters: Counters, context: Context,
                 pause: Callable[[float], None], rng: random.Random | None = None) -> None:
        """``pause(seconds)`` waits between attempts and raises ``Stopped`` if the launcher asks to stop."""
        self._policy = policy
        self._process = operator.process
        self._counters = counters
        self._context = context
        self._pause = pause
        self._rng = rng or random.Random()

    def run(self, chunk: list[Any], keep: bool) -> tuple[list[Any], list[DeadLetter]]:
        """(the outputs to send, or none when not ``keep``; the dead letters); raises ``Failure``."""
        results: list[Any] = []
        letters: list[DeadLetter] = []
        for item in chunk:
            outputs = self._attempt(item, letters)
            if keep:
                results += outputs
        return results, letters

    def _attempt(self, item: Any, letters: list[DeadLetter]) -> list[Any]:
        """The outputs of ``item``, after as many attempts as the policy allows; [] if it was given up."""
        policy, counters = self._policy, self._counters
        attempts = 0
        while True:
            attempts += 1
            try:
                return list(emitted(self._process(item)))
            except Stopped:
                raise
            except Exception as error:  # user code: anything
                counters.errors += 1
                wait_s = retry_wait_s(policy, error, attempts, self._rng)
                if wait_s is not None:
                    counters.retries += 1
                    self._pause(wait_s)
                    continue
                self.give_up(item, error, attempts, letters)
                return []

    def give_up(self, item: Any, error: Exception, attempts: int, letters: list[DeadLetter]) -> None:
        """``item`` raised ``error`` at its last attempt: fail (raise ``Failure``), skip it or dead-letter it
        into ``letters``, as the policy says; more than ``max_errors`` given up fails too."""
        policy, counters = self._policy, self._counters
        if policy.on_error == "fail":
            raise Failure(Phase.PROCESS, error, item, has_item=True) from error
        if policy.on_error == "skip":
            counters.skipped += 1
        else:
            context = self._context
            letters.append(DeadLetter(item, context.node, context.replica, context.host, type(error).__name__,
                                      str(error), user_traceback(error), attempts))
            counters.dead_lettered += 1
        given_up = counters.skipped + counters.dead_lettered
        if policy.max_errors is not None and given_up > policy.max_errors:
            raise Failure(Phase.PROCESS, error, item, has_item=True,
                          reason=f"gave up on more than max_errors={policy.max_errors} items "
                                 f"({counters.skipped} skipped, {counters.dead_lettered} dead-lettered); "
                                 "the last one raised") from error
