"""bridge.supervisor: crashes are logged, counted and restarted with backoff; stops are
bounded; a run that returns is restarted only when ``restart=True`` says so."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import structlog

from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.supervisor import RESTART, Supervisor, restart_delay


class Recorder:
    """A ``delay`` function that records the crash counts it is asked about."""

    def __init__(self, seconds: float = 0.01) -> None:
        self.asked: list[int] = []
        self.seconds = seconds

    def __call__(self, crashes: int) -> float:
        self.asked.append(crashes)
        return self.seconds


class Calls:
    """Counts the runs; ``reached(n)`` waits until ``run`` was called ``n`` times."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def add(self) -> int:
        async with self._changed:
            self.count += 1
            self._changed.notify_all()
        return self.count

    async def reached(self, n: int) -> None:
        async with asyncio.timeout(5), self._changed:
            await self._changed.wait_for(lambda: self.count >= n)


def crashes(metrics: Metrics, task: str) -> float:
    return metrics.value("bridge_task_crashes_total", task=task) or 0.0


async def test_a_crash_is_logged_counted_and_restarted_with_backoff() -> None:
    metrics, delay = Metrics(), Recorder()
    calls = 0
    restarted = asyncio.Event()

    async def run() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise ValueError(f"bug number {calls}")
        restarted.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(get_logger(), metrics, delay=delay)
    with structlog.testing.capture_logs() as logs:
        task = supervisor.spawn("loop", run)
        await asyncio.wait_for(restarted.wait(), 5)
    assert task.get_name() == "loop"
    assert calls == 4
    assert delay.asked == [1, 2, 3]  # consecutive crashes: the backoff grows
    assert crashes(metrics, "loop") == 3
    lines = [e for e in logs if e["event"] == "background task crashed; restarting"]
    assert [e["error"] for e in lines] == [
        "ValueError: bug number 1", "ValueError: bug number 2", "ValueError: bug number 3"
    ]
    assert all(e["task"] == "loop" and e["log_level"] == "error" for e in lines)
    assert all(isinstance(e["exc_info"], ValueError) for e in lines)  # the traceback
    assert [e["attempt"] for e in lines] == [1, 2, 3]
    await supervisor.stop(1)
    assert task.cancelled()


def test_the_restart_backoff_grows_to_30_seconds() -> None:
    assert 0.5 <= restart_delay(1) <= 1.0
    assert 1.0 <= restart_delay(2) <= 2.0
    assert 15.0 <= restart_delay(10) <= 30.0
    assert RESTART.maximum == 30.0


async def test_a_crash_waits_its_backoff_before_the_restart() -> None:
    starts: list[float] = []
    calls = Calls()

    async def run() -> None:
        starts.append(time.monotonic())
        await calls.add()
        raise RuntimeError("boom")

    supervisor = Supervisor(get_logger(), Metrics(), delay=lambda n: 0.2 * n)
    supervisor.spawn("slow", run)
    await calls.reached(3)
    await supervisor.stop(1)
    assert starts[1] - starts[0] >= 0.19
    assert starts[2] - starts[1] >= 0.39


async def test_a_long_healthy_run_resets_the_backoff() -> None:
    delay, calls = Recorder(), Calls()

    async def run() -> None:
        n = await calls.add()
        if n == 2:
            await asyncio.sleep(0.15)  # healthy for longer than healthy_after
        if n <= 3:
            raise OSError("again")
        await asyncio.Event().wait()

    supervisor = Supervisor(get_logger(), Metrics(), delay=delay, healthy_after=0.1)
    supervisor.spawn("loop", run)
    await calls.reached(4)
    await supervisor.stop(1)
    assert delay.asked == [1, 1, 2]


async def test_a_loop_that_returns_is_restarted_by_default() -> None:
    delay, calls = Recorder(), Calls()

    async def run() -> None:
        if await calls.add() >= 3:
            await asyncio.Event().wait()

    metrics = Metrics()
    supervisor = Supervisor(get_logger(), metrics, delay=delay)
    with structlog.testing.capture_logs() as logs:
        task = supervisor.spawn("loop", run)
        await calls.reached(3)
    assert not task.done()
    assert [e["event"] for e in logs] == ["background task ended; restarting"] * 2
    assert crashes(metrics, "loop") == 0  # returning is no crash
    await supervisor.stop(1)


async def test_a_one_shot_run_that_returns_is_not_restarted() -> None:
    calls = 0

    async def run() -> None:
        nonlocal calls
        calls += 1

    supervisor = Supervisor(get_logger(), Metrics(), delay=Recorder())
    with structlog.testing.capture_logs() as logs:
        task = supervisor.spawn("once", run, restart=False)
        await asyncio.wait_for(task, 1)
    assert calls == 1
    assert logs == []
    assert supervisor.tasks == frozenset()


async def test_a_one_shot_run_that_crashes_is_logged_and_counted_not_restarted() -> None:
    calls, metrics = 0, Metrics()

    async def run() -> None:
        nonlocal calls
        calls += 1
        raise KeyError("missing")

    supervisor = Supervisor(get_logger(), metrics, delay=Recorder())
    with structlog.testing.capture_logs() as logs:
        await asyncio.wait_for(supervisor.spawn("once", run, restart=False), 1)
    assert calls == 1
    assert crashes(metrics, "once") == 1
    [line] = logs
    assert line["event"] == "background task crashed"
    assert line["error"] == "KeyError: 'missing'"


async def test_a_cancellation_nobody_asked_for_is_a_crash() -> None:
    calls, metrics = Calls(), Metrics()

    async def run() -> None:
        if await calls.add() == 1:
            raise asyncio.CancelledError  # e.g. a library's own task cancelled inside
        await asyncio.Event().wait()

    supervisor = Supervisor(get_logger(), metrics, delay=Recorder())
    task = supervisor.spawn("leaky", run)
    await calls.reached(2)
    assert not task.done()
    assert crashes(metrics, "leaky") == 1
    await supervisor.stop(1)
    assert task.cancelled()


async def test_stop_cancels_every_task_and_waits_for_its_cleanup() -> None:
    cleaned: list[str] = []

    def loop(name: str) -> Any:
        async def run() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0.05)  # cleanup that takes a moment
                cleaned.append(name)
        return run

    supervisor = Supervisor(get_logger(), Metrics())
    tasks = [supervisor.spawn(name, loop(name)) for name in ("a", "b", "c")]
    await asyncio.sleep(0)
    await supervisor.stop(1)
    assert sorted(cleaned) == ["a", "b", "c"]
    assert all(t.cancelled() for t in tasks)
    assert supervisor.tasks == frozenset()


async def test_stop_cancels_a_task_waiting_for_its_restart() -> None:
    async def run() -> None:
        raise RuntimeError("crash")

    supervisor = Supervisor(get_logger(), Metrics(), delay=lambda n: 60.0)
    task = supervisor.spawn("down", run)
    await asyncio.sleep(0.01)
    started = time.monotonic()
    await supervisor.stop(1)
    assert time.monotonic() - started < 0.5
    assert task.cancelled()


async def test_stop_is_bounded_by_its_timeout() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # a cleanup that hangs

    supervisor = Supervisor(get_logger(), Metrics())
    task = supervisor.spawn("stubborn", stubborn)
    await asyncio.sleep(0)
    with structlog.testing.capture_logs() as logs:
        started = time.monotonic()
        await supervisor.stop(0.2)
        took = time.monotonic() - started
    assert 0.15 <= took < 1.0
    [line] = logs
    assert line["event"] == "background tasks did not stop in time"
    assert line["tasks"] == ["stubborn"]
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_cancelling_the_returned_task_stops_that_loop_only() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    supervisor = Supervisor(get_logger(), Metrics())
    one = supervisor.spawn("one", forever)
    two = supervisor.spawn("two", forever)
    await asyncio.sleep(0)
    one.cancel()
    with pytest.raises(asyncio.CancelledError):
        await one
    assert not two.done()
    assert supervisor.tasks == frozenset({two})
    await supervisor.stop(1)


async def test_no_spawn_after_stop() -> None:
    supervisor = Supervisor(get_logger(), Metrics())
    await supervisor.stop(1)

    async def run() -> None:
        return None

    with pytest.raises(RuntimeError, match="supervisor stopped"):
        supervisor.spawn("late", run)
