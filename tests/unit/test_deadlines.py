"""Deadlines: asyncio.timeout's behaviour for many operations on one timer."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from bridge.deadlines import Deadlines


async def guarded(deadlines: Deadlines, work: float) -> str:
    """Sleep ``work`` seconds under a deadline: 'done' or 'timeout'."""
    expiry = deadlines.start()
    try:
        await asyncio.sleep(work)
        return "done"
    except asyncio.CancelledError:
        if not deadlines.expired(expiry):
            raise
        return "timeout"
    finally:
        deadlines.finish(expiry)


async def test_an_operation_past_its_deadline_is_cancelled_and_told_so() -> None:
    deadlines = Deadlines(0.05)
    started = time.monotonic()
    assert await guarded(deadlines, 5) == "timeout"
    assert 0.04 < time.monotonic() - started < 1
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_operations_that_finish_in_time_are_left_alone() -> None:
    deadlines = Deadlines(0.2)
    assert await asyncio.gather(*(guarded(deadlines, 0.01) for _ in range(50))) == ["done"] * 50
    await asyncio.sleep(0.3)  # the timer fires with nothing due and stops
    assert await guarded(deadlines, 0.01) == "done"


async def test_many_deadlines_expire_each_at_its_own_time() -> None:
    deadlines = Deadlines(0.15)
    results: dict[str, str] = {}

    async def run(name: str, delay: float, work: float) -> None:
        await asyncio.sleep(delay)
        results[name] = await guarded(deadlines, work)

    await asyncio.gather(
        run("early-slow", 0.0, 1.0),   # expires at 0.15
        run("late-fast", 0.1, 0.1),    # finishes at 0.2, before its deadline at 0.25
        run("late-slow", 0.1, 1.0),    # expires at 0.25
    )
    assert results == {"early-slow": "timeout", "late-fast": "done", "late-slow": "timeout"}


async def test_a_cancellation_from_elsewhere_is_not_taken_for_a_timeout() -> None:
    deadlines = Deadlines(5)
    task = asyncio.create_task(guarded(deadlines, 5))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancellation_arriving_with_the_expiry_still_propagates() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(0.05)
    task = asyncio.create_task(guarded(deadlines, 5))
    await asyncio.sleep(0)  # the task starts: its deadline is ~0.05 s from now
    loop.call_at(loop.time() + 0.08, task.cancel)
    time.sleep(0.15)  # noqa: ASYNC251 - block the loop: both timers fall due in one pass
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_an_expiry_the_operation_swallowed_leaves_no_cancel_on_the_task() -> None:
    deadlines = Deadlines(0.02)
    expiry = deadlines.start()
    with contextlib.suppress(asyncio.CancelledError):  # swallowed, as libraries may
        await asyncio.sleep(1)
    deadlines.finish(expiry)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.01)  # and the task goes on normally
