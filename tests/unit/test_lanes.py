"""bridge.lanes on its own: admission, lanes, workers and the drain rule, with a ``run``
the test controls (the dispatcher's attempts are tested in test_dispatcher.py)."""

from __future__ import annotations

import asyncio

import structlog

from bridge.events import Event
from bridge.lanes import Lanes, Ordering
from bridge.logs import get_logger
from bridge.metrics import Metrics, TriggerStats


class Gate:
    """A ``run`` that records starts and holds each event until released."""

    def __init__(self) -> None:
        #: Told of each start (the dispatcher marks an event started at its first attempt).
        self.scheduler: Lanes | None = None
        self.started: list[str] = []
        self.finished: list[str] = []
        self._open: dict[str, asyncio.Event] = {}
        self.changed = asyncio.Condition()

    async def run(self, event: Event) -> None:
        if self.scheduler is not None:
            self.scheduler.mark_started(event)
        self.started.append(event.id)
        async with self.changed:
            self.changed.notify_all()
        await self._open.setdefault(event.id, asyncio.Event()).wait()
        self.finished.append(event.id)

    def release(self, *ids: str) -> None:
        for event_id in ids:
            self._open.setdefault(event_id, asyncio.Event()).set()

    async def until_started(self, *ids: str) -> None:
        async with asyncio.timeout(2), self.changed:
            await self.changed.wait_for(lambda: set(ids) <= set(self.started))


def event(event_id: str, key: str | None = None, partition: str | None = "p0") -> Event:
    return Event(trigger="t", id=event_id, source="/test", type="t", data=b"",
                 content_type="text/plain", ordering_key=key, partition=partition)


def lanes(gate: Gate, ordering: Ordering = "key", concurrency: int = 4,
          max_unsettled: int = 100) -> tuple[Lanes, TriggerStats]:
    stats = Metrics().trigger("t", "fn")
    gate.scheduler = Lanes(ordering=ordering, concurrency=concurrency,
                           max_unsettled=max_unsettled, stats=stats, run=gate.run,
                           log=get_logger)
    return gate.scheduler, stats


async def test_a_key_runs_one_event_at_a_time_and_keys_run_in_parallel() -> None:
    gate = Gate()
    scheduler, _ = lanes(gate)
    for name, key in [("a1", "a"), ("a2", "a"), ("b1", "b")]:
        await scheduler.submit(event(name, key))
    await gate.until_started("a1", "b1")
    await asyncio.sleep(0.01)
    assert "a2" not in gate.started  # behind a1
    gate.release("a1")
    await gate.until_started("a2")
    gate.release("a2", "b1")
    assert await scheduler.drain(1)
    assert gate.finished.index("a1") < gate.finished.index("a2")
    assert sorted(gate.finished) == ["a1", "a2", "b1"]


async def test_submit_waits_at_max_unsettled_and_counts_open_events() -> None:
    gate = Gate()
    scheduler, stats = lanes(gate, ordering="none", max_unsettled=2)
    await scheduler.submit(event("e1"))
    await scheduler.submit(event("e2"))
    third = asyncio.ensure_future(scheduler.submit(event("e3")))
    await asyncio.sleep(0.01)
    assert not third.done()
    assert (scheduler.open, stats.unsettled, stats.received) == (2, 2, 2)
    gate.release("e1")
    await asyncio.wait_for(third, 1)
    gate.release("e2", "e3")
    assert await scheduler.drain(1)
    assert (scheduler.open, stats.unsettled, stats.received) == (0, 0, 3)


async def test_no_more_workers_than_concurrency_and_no_task_per_event() -> None:
    gate = Gate()
    scheduler, _ = lanes(gate, ordering="none", concurrency=2)
    for n in range(6):
        await scheduler.submit(event(f"e{n}"))
    await gate.until_started("e0", "e1")
    await asyncio.sleep(0.01)
    assert gate.started == ["e0", "e1"]
    assert len(scheduler._tasks) == 2
    gate.release(*(f"e{n}" for n in range(6)))
    await gate.until_started(*(f"e{n}" for n in range(6)))
    assert await scheduler.drain(1)
    assert sorted(gate.finished) == [f"e{n}" for n in range(6)]
    assert scheduler.open == 0


async def test_a_lent_place_starts_another_worker() -> None:
    lent = asyncio.Event()
    started: list[str] = []

    async def run(ev: Event) -> None:
        started.append(ev.id)
        if ev.id == "slow":
            with scheduler.lending_place():  # e.g. a backoff
                await lent.wait()

    stats = Metrics().trigger("t", "fn")
    scheduler = Lanes(ordering="none", concurrency=1, max_unsettled=10, stats=stats,
                      run=run, log=get_logger)
    await scheduler.submit(event("slow"))
    await scheduler.submit(event("next"))
    await asyncio.sleep(0.01)
    assert started == ["slow", "next"]  # one place, lent while "slow" waits
    assert len(scheduler._tasks) == 1  # the lender's worker; "next" ran on a new one
    lent.set()
    assert await scheduler.drain(1)


async def test_drain_runs_an_overtaken_event_and_releases_the_rest_unsettled() -> None:
    gate = Gate()
    scheduler, stats = lanes(gate, concurrency=4)
    # a1 is slow; a2 waits behind it (key a); b1 of the same partition starts after a2
    # arrived, so a2 is overtaken: it must run in the drain. c2 (behind c1) is not.
    for name, key in [("a1", "a"), ("c1", "c"), ("a2", "a"), ("b1", "b"), ("c2", "c")]:
        await scheduler.submit(event(name, key))
    await gate.until_started("a1", "c1", "b1")
    gate.release("b1")
    drain = asyncio.ensure_future(scheduler.drain(2))
    await asyncio.sleep(0.01)
    gate.release("a1", "c1")
    await gate.until_started("a2")
    gate.release("a2")
    assert await drain
    assert "a2" in gate.finished
    assert "c2" not in gate.started
    assert (scheduler.open, stats.unsettled) == (0, 0)


async def test_a_bug_in_run_is_logged_and_the_worker_goes_on() -> None:
    done: list[str] = []

    async def run(ev: Event) -> None:
        if ev.id == "bad":
            raise KeyError("bug")
        done.append(ev.id)

    stats = Metrics().trigger("t", "fn")
    scheduler = Lanes(ordering="none", concurrency=1, max_unsettled=10, stats=stats,
                      run=run, log=get_logger)
    with structlog.testing.capture_logs() as logs:
        await scheduler.submit(event("bad"))
        await scheduler.submit(event("good"))
        await asyncio.sleep(0.01)
        assert await scheduler.drain(1)
    assert done == ["good"]
    assert [e["event"] for e in logs] == ["dispatch failed"]
    assert scheduler.open == 0
