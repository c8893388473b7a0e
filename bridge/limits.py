"""A concurrency limit whose capacity can change while it is in use.

:class:`Limit` is a FIFO counting semaphore with a settable capacity: the function's
quota share, a team quota share and an adaptive limit are each one, and a
:class:`bridge.pools.Target` holds them as a chain. Growing the capacity wakes
waiters at once; shrinking it lets what is in flight finish and admits nobody until
``in_use`` is below the new capacity. A capacity of 0 admits nobody (a replica with
no share of a quota).

Waiters are served in arrival order, so a waiter is never overtaken by a later
``acquire``; ``acquire`` takes the fast path (no future) when a slot is free and
nobody waits, which is every call below the limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence


class Limit:
    """At most :attr:`capacity` holders at once; :meth:`set_capacity` resizes it."""

    __slots__ = ("_capacity", "_in_use", "_waiters")

    def __init__(self, capacity: int) -> None:
        _check(capacity)
        self._capacity = capacity
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return (f"Limit(capacity={self._capacity}, in_use={self._in_use}, "
                f"waiting={len(self._waiters)})")

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def in_use(self) -> int:
        """Slots held now (may exceed :attr:`capacity` right after a shrink)."""
        return self._in_use

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def set_capacity(self, capacity: int) -> None:
        """Resize: growing admits waiters now, shrinking takes nothing back."""
        _check(capacity)
        self._capacity = capacity
        self._wake()

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody waits; never blocks."""
        if self._in_use < self._capacity and not self._waiters:
            self._in_use += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot (in arrival order). Cancelling the wait takes none."""
        if self._in_use < self._capacity and not self._waiters:
            self._in_use += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Granted in the same instant as cancelled: hand the slot on.
                self.release()
            else:
                # A wake may have passed over it already (cancelled, then a release in
                # the same instant, before this task ran).
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()
            raise

    def release(self) -> None:
        """Give a slot back (exactly once per successful acquire)."""
        if self._in_use <= 0:
            raise RuntimeError("Limit released more often than acquired")
        self._in_use -= 1
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        """Grant slots to the oldest waiters while capacity allows."""
        waiters = self._waiters
        while waiters and self._in_use < self._capacity:
            waiter = waiters.popleft()
            if not waiter.done():
                self._in_use += 1
                waiter.set_result(None)


async def acquire_all(limits: Sequence[Limit]) -> None:
    """Take a slot of each limit in order; on failure or cancellation give back what was taken.

    Every caller takes a given set of limits in the same order (the function's own
    first, shared ones after), so two chains never wait on each other in a cycle.
    """
    taken = 0
    try:
        for limit in limits:
            await limit.acquire()
            taken += 1
    except BaseException:
        release_all(limits[:taken])
        raise


def release_all(limits: Sequence[Limit]) -> None:
    for limit in limits:
        limit.release()


def _check(capacity: int) -> None:
    if capacity < 0:
        raise ValueError(f"a limit's capacity cannot be negative (got {capacity})")
