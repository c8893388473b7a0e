"""Timeouts of one length for many concurrent operations, on a single timer.

``asyncio.timeout`` schedules and cancels a timer handle on every use, mostly in Python
code, which costs about as much as the rest of the dispatcher's work on an event
(docs/benchmarks.md). Every attempt of a trigger has the same timeout, so deadlines
arrive in the order they are set: keeping them in an insertion-ordered dict, one timer
for the oldest serves them all, and starting or finishing an operation is a dict insert
or delete.

Semantics are those of ``asyncio.timeout``: on expiry the task is cancelled; the
operation sees ``CancelledError`` and :meth:`Deadlines.expired` tells a timeout (it
uncancels the task) from a cancellation that came from elsewhere (which must go on).
"""

from __future__ import annotations

import asyncio

#: The loop may run a timer up to its clock resolution early; a deadline this close is due.
_SLACK = 0.001


class Expiry:
    """One operation's deadline."""

    __slots__ = ("expired", "task", "uncancelled", "when")

    def __init__(self, task: asyncio.Task[object], when: float) -> None:
        self.task = task
        self.when = when
        #: The deadline cancelled the task; ``uncancelled`` once that cancel was taken back.
        self.expired = False
        self.uncancelled = False


class Deadlines:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._pending: dict[Expiry, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> Expiry:
        """The current task's operation must finish within ``seconds`` from now."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadlines.start() outside a task")
        expiry = Expiry(task, loop.time() + self.seconds)
        self._pending[expiry] = None
        if self._timer is None:
            self._timer = loop.call_at(expiry.when, self._fire)
        return expiry

    def finish(self, expiry: Expiry) -> None:
        """The operation ended (in any way): its deadline no longer applies.

        Like ``asyncio.timeout``, a cancel this deadline requested is taken back even if
        the operation swallowed the ``CancelledError``: it must not stay on the task.
        """
        self._pending.pop(expiry, None)
        if expiry.expired and not expiry.uncancelled:
            expiry.uncancelled = True
            expiry.task.uncancel()

    @staticmethod
    def expired(expiry: Expiry) -> bool:
        """Called on ``CancelledError``: True when this deadline caused it and nothing
        else cancelled the task meanwhile (the task is then uncancelled)."""
        if not expiry.expired or expiry.uncancelled:
            return False
        expiry.uncancelled = True
        return expiry.task.uncancel() == 0

    def _fire(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time() + _SLACK
        due = []
        for expiry in self._pending:
            if expiry.when > now:
                self._timer = loop.call_at(expiry.when, self._fire)
                break
            due.append(expiry)
        for expiry in due:
            del self._pending[expiry]
            expiry.expired = True
            expiry.task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
