"""bridge.limits: a FIFO limit whose capacity changes while in use, and chains of them."""

from __future__ import annotations

import asyncio

import pytest

from bridge.limits import Limit, acquire_all, release_all
from bridge.pools import BalancedPool, Target


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def holders(limit: Limit, count: int) -> list[asyncio.Task[None]]:
    tasks = [asyncio.create_task(limit.acquire()) for _ in range(count)]
    await settle()
    return tasks


async def test_admits_up_to_capacity_then_waits_in_arrival_order() -> None:
    limit = Limit(2)
    order: list[int] = []

    async def take(n: int) -> None:
        await limit.acquire()
        order.append(n)

    tasks = [asyncio.create_task(take(n)) for n in range(5)]
    await settle()
    assert order == [0, 1]
    assert limit.in_use == 2
    assert limit.waiting == 3
    limit.release()
    await settle()
    limit.release()
    await settle()
    assert order == [0, 1, 2, 3]
    limit.release()
    await settle()
    assert order == [0, 1, 2, 3, 4]
    await asyncio.gather(*tasks)


async def test_growing_wakes_waiters_at_once() -> None:
    limit = Limit(1)
    await limit.acquire()
    tasks = await holders(limit, 3)
    assert limit.waiting == 3
    limit.set_capacity(3)
    await settle()
    assert limit.in_use == 3
    assert limit.waiting == 1
    assert sum(t.done() for t in tasks) == 2


async def test_shrinking_lets_in_flight_finish_and_admits_nobody_until_below() -> None:
    limit = Limit(4)
    for _ in range(4):
        await limit.acquire()
    limit.set_capacity(1)
    assert limit.in_use == 4
    assert limit.capacity == 1
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    for expected_in_use in (3, 2, 1):
        limit.release()
        await settle()
        assert not waiter.done()
        assert limit.in_use == expected_in_use
    limit.release()
    await settle()
    assert waiter.done()
    assert limit.in_use == 1


async def test_zero_capacity_admits_nobody_and_try_acquire_refuses() -> None:
    limit = Limit(0)
    assert not limit.try_acquire()
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    assert not waiter.done()
    limit.set_capacity(1)
    await settle()
    assert waiter.done()
    assert limit.in_use == 1
    assert not limit.try_acquire()


async def test_try_acquire_never_overtakes_a_waiter() -> None:
    limit = Limit(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    limit.set_capacity(2)  # grants the waiter, not a later try
    assert not limit.try_acquire()
    await settle()
    assert waiter.done()
    assert limit.in_use == 2


async def test_cancelled_waiter_takes_no_slot() -> None:
    limit = Limit(1)
    await limit.acquire()
    first, second = await holders(limit, 2)
    first.cancel()
    await settle()
    assert limit.waiting == 1
    limit.release()
    await settle()
    assert second.done()
    assert limit.in_use == 1


async def test_granted_then_cancelled_in_the_same_instant_hands_the_slot_on() -> None:
    limit = Limit(1)
    await limit.acquire()
    first, second = await holders(limit, 2)
    limit.release()  # grants `first` ...
    first.cancel()  # ... which is cancelled before it runs
    await settle()
    assert first.cancelled()
    assert second.done()
    assert limit.in_use == 1


async def test_cancelled_then_passed_over_in_the_same_instant_is_a_plain_cancel() -> None:
    """A wake between the cancel and the task running pops the cancelled waiter: the
    task still ends cancelled (it raised ValueError, which the dispatcher took for a bug
    and dead-lettered as internal_error at a drain)."""
    limit = Limit(1)
    await limit.acquire()
    first, second = await holders(limit, 2)
    first.cancel()  # cancels its waiter now; the task runs later ...
    limit.release()  # ... after this wake passed over it and granted `second`
    await settle()
    assert first.cancelled()
    assert second.done()
    assert limit.in_use == 1
    assert limit.waiting == 0


def test_release_more_than_acquired_is_a_bug_not_a_silent_grow() -> None:
    with pytest.raises(RuntimeError, match="more often"):
        Limit(1).release()


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        Limit(-1)
    with pytest.raises(ValueError, match="negative"):
        Limit(1).set_capacity(-2)


async def test_acquire_all_gives_back_what_it_took_when_cancelled() -> None:
    own, shared = Limit(2), Limit(0)
    chain = asyncio.create_task(acquire_all((own, shared)))
    await settle()
    assert own.in_use == 1
    assert shared.waiting == 1
    chain.cancel()
    await settle()
    assert own.in_use == 0
    assert shared.waiting == 0
    await acquire_all((own,))
    release_all((own,))
    assert own.in_use == 0


async def test_target_takes_the_function_limit_then_the_shared_ones() -> None:
    team = Limit(1)
    a = Target("a", BalancedPool(["http://a"]), max_concurrency=2, limits=(team,))
    b = Target("b", BalancedPool(["http://b"]), limits=(team,))
    assert a.limit is not None
    assert a.chain == (a.limit, team)
    assert b.chain == (team,)
    route = await a.acquire()
    assert a.limit.in_use == 1
    assert team.in_use == 1
    waiting = asyncio.create_task(b.acquire())
    await settle()
    assert not waiting.done()  # the team quota is shared between the two functions
    a.release(route)
    b.release(await waiting)
    assert a.limit.in_use == 0
    assert team.in_use == 0


async def test_target_overflows_when_its_share_is_zero() -> None:
    target = Target("fn", BalancedPool(["http://in"]), max_concurrency=1,
                    overflow_url="http://over", overflow_after=0.01)
    assert target.limit is not None
    target.limit.set_capacity(0)
    route = await target.acquire()
    assert route.overflow
    assert route.url == "http://over"
    assert target.limit.in_use == 0
    target.limit.set_capacity(1)
    route = await target.acquire()
    assert not route.overflow
    assert target.limit.in_use == 1
