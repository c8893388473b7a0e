"""Admission, ordering lanes and workers: which event of a trigger runs when.

For one trigger, :class:`Lanes`

1. admits events: at most ``max_unsettled`` taken but not finished; :meth:`Lanes.submit`
   waits beyond that, which is the backpressure every connector feels;
2. puts each in its ordering lane: ``key`` (one lane per ordering key, falling back to
   the partition), ``partition`` (one lane per partition) or ``none`` (no lane); a lane
   runs its events one at a time in arrival order, different lanes run in parallel;
3. runs the events ready to start (every event without a lane, the next event of each
   lane) oldest first on at most ``concurrency`` workers: a worker takes one event after
   the other, so a busy trigger creates no task per event and nothing parks on a
   semaphore (both cost more than the rest of the work per event). What a worker does
   with an event is the dispatcher's (:mod:`bridge.dispatcher`): ``run(event)``.

A worker waiting for no invocation (a backoff, a dead-letter write) lends its place to
the ready events (:meth:`Lanes.lending_place`).

On drain (SIGTERM) no new event starts, with one exception: an event that a *later*
event of its partition has already overtaken (it waited behind a slow one of its key
while other keys went on) still runs. Left unsettled, it would hold its partition's
commit point (Kafka commits one offset per partition) below the events already
delivered, and the restart would deliver those a second time. Events that never
started are released unsettled: the source redelivers them.

:class:`bridge.batches.BatchLanes` extends this class for ``batch:`` triggers (a worker
takes a batch of ready events at a time); it uses ``_ready``, ``_workers``,
``_starting``, ``_concurrency``, ``_tasks``, ``_is_stale``, ``_withdraw``,
``_release`` and ``_lane_done``: a change to those is a change to it too
(tests/unit/test_batches.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Literal

from bridge.events import Event
from bridge.logs import Logger
from bridge.metrics import TriggerStats

Ordering = Literal["key", "partition", "none"]


class Lanes:
    """The scheduling of one trigger's events (see the module docs)."""

    __slots__ = (
        "_admission", "_arrival", "_arrivals", "_concurrency", "_debug", "_lanes", "_log",
        "_ordering", "_ready", "_run", "_started", "_starting", "_stats", "_tasks",
        "_workers", "open", "stopping",
    )

    def __init__(
        self,
        *,
        ordering: Ordering,
        concurrency: int,
        max_unsettled: int,
        stats: TriggerStats,
        run: Callable[[Event], Awaitable[None]],
        log: Callable[[], Logger],
        debug: bool = False,
    ) -> None:
        """``run(event)`` processes one event on a worker (it never raises for an
        outcome); ``log()`` is the trigger's logger (bound on first use)."""
        self._ordering = ordering
        self._concurrency = concurrency
        self._stats = stats
        self._run = run
        self._log = log
        self._debug = debug
        self._admission = asyncio.Semaphore(max_unsettled)
        #: Events admitted and not yet finished.
        self.open = 0
        #: Events ready to start, oldest first: with ``ordering: none`` every admitted
        #: event; with lanes only the next event of each lane (one at a time per lane).
        self._ready: deque[Event] = deque()
        #: Lanes with an event ready or started -> their later events, in arrival order.
        self._lanes: dict[Hashable, deque[Event]] = {}
        #: Workers holding a place (at most ``concurrency``, see ``lending_place``), and
        #: those of them created but not yet running (each will take one ready event).
        self._workers = 0
        self._starting = 0
        #: Arrival number of each open event, and per partition the highest one that
        #: started (reached the function or the dead-letter sink): see ``overtaken``.
        self._arrivals = 0
        self._arrival: dict[Event, int] = {}
        self._started: dict[str | None, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        #: True once :meth:`drain` began: nothing new starts.
        self.stopping = False

    async def submit(self, event: Event) -> None:
        """Accept an event; waits while ``max_unsettled`` events are open."""
        await self._admission.acquire()
        self.open += 1
        self._arrivals += 1
        self._arrival[event] = self._arrivals
        self._stats.received += 1
        self._stats.unsettled += 1
        if self.stopping:  # too late to start; the source redelivers it
            self._release(event)
            return
        lane = self._lane_of(event)
        if lane is not None:
            waiting = self._lanes.get(lane)
            if waiting is not None:
                waiting.append(event)
                return
            self._lanes[lane] = deque()
        self._ready.append(event)
        self._start_workers()

    def mark_started(self, event: Event) -> None:
        """``event`` reached the function or the dead-letter sink (see ``overtaken``)."""
        number = self._arrival.get(event, 0)
        if number > self._started.get(event.partition, 0):
            self._started[event.partition] = number

    def overtaken(self, event: Event) -> bool:
        """True when a later event of the same partition has already started."""
        return self._arrival.get(event, 0) < self._started.get(event.partition, 0)

    @contextlib.contextmanager
    def lending_place(self) -> Iterator[None]:
        """Give the worker's place to the ready events for the block (a backoff or a
        dead-letter write is no invocation). Coming back may make one worker too many:
        the first to finish its event leaves, and attempts stay bounded by the
        dispatcher's slots."""
        self._workers -= 1
        self._start_workers()
        try:
            yield
        finally:
            self._workers += 1

    async def drain(self, timeout: float) -> bool:
        """Start nothing new (but the overtaken events), let the running ones finish
        within ``timeout``, cancel the rest; True when everything finished in time.
        Events not finished stay unsettled (the source redelivers them)."""
        self.stopping = True
        waiting, self._ready = self._ready, deque()
        for event in waiting:
            if self.overtaken(event):
                self._ready.append(event)
            else:  # never started; left unsettled (with its lane) for the source
                self._release(event)
                lane = self._lane_of(event)
                if lane is not None:
                    self._close_lane(lane)
        self._start_workers()
        deadline = time.monotonic() + timeout
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        leftover = set(self._tasks)
        for task in leftover:
            task.cancel()
        if leftover:
            await asyncio.gather(*leftover, return_exceptions=True)
        for event in self._ready:
            self._release(event)
        for later in self._lanes.values():
            for event in later:
                self._release(event)
        self._ready.clear()
        self._lanes.clear()
        return not leftover

    # --- workers ----------------------------------------------------------------------

    def _start_workers(self) -> None:
        """Start a worker per ready event no starting worker will take, while places
        are free."""
        while len(self._ready) > self._starting and self._workers < self._concurrency:
            self._workers += 1
            self._starting += 1
            task = asyncio.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        task = asyncio.current_task()
        self._starting -= 1
        try:
            # More workers than places only after a lender came back: one of them leaves.
            while self._ready and self._workers <= self._concurrency:
                event = self._ready.popleft()
                if event.stale is not None and self._is_stale(event):
                    self._withdraw(event)
                    continue
                event.attach(task)
                try:
                    await self._run(event)
                except Exception as err:  # a bug, not an outcome: keep the other events going
                    self._log().error("dispatch failed", event_id=event.id,
                                      error=repr(err)[:300])
                finally:
                    self._release(event)
                    event.attach(None)
                    self._lane_done(event)
        finally:
            self._workers -= 1

    def _is_stale(self, event: Event) -> bool:
        assert event.stale is not None
        try:
            return event.stale()
        except Exception as err:  # a bug in the source's check: start the event anyway
            self._log().error("stale check failed", event_id=event.id, error=repr(err)[:300])
            return False

    def _withdraw(self, event: Event) -> None:
        """The source took the event back before it started: drop it, unsettled."""
        self._stats.withdrawn += 1
        if self._debug:
            self._log().debug("withdrawn by the source before it started", event_id=event.id)
        self._release(event)
        self._lane_done(event)

    def _release(self, event: Event) -> None:
        """``event`` is finished here (settled, or left for the source to redeliver)."""
        self._arrival.pop(event, None)
        self.open -= 1
        self._admission.release()
        self._stats.unsettled -= 1

    # --- lanes ------------------------------------------------------------------------

    def _lane_of(self, event: Event) -> Hashable | None:
        if self._ordering == "none":
            return None
        if self._ordering == "key" and event.ordering_key is not None:
            return ("k", event.ordering_key)
        return ("p", event.partition)

    def _lane_done(self, event: Event) -> None:
        """The event's lane moves on to its next event (or closes)."""
        lane = self._lane_of(event)
        if lane is None:
            return
        waiting = self._lanes[lane]
        if waiting and (not self.stopping or self.overtaken(waiting[0])):
            self._ready.append(waiting.popleft())
        else:
            self._close_lane(lane)

    def _close_lane(self, lane: Hashable) -> None:
        for later in self._lanes.pop(lane):  # never started: the source redelivers them
            self._release(later)
