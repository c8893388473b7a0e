"""The adaptive concurrency limit: stays within min/max and under the ceiling (the
quota), backs off on 429/503/timeouts and on a latency climb, recovers, re-learns a
slower function; and on a simulated function whose capacity changes, keeps its
throughput with few 429s and a bounded latency (simulated clock: nothing here waits)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.adaptive import BACKOFF, RELEARN_WINDOWS, WINDOW_ANSWERS, AdaptiveLimit
from bridge.config import AdaptiveConcurrency
from bridge.limits import Limit
from bridge.outcome import Outcome, OutcomeKind
from bridge.pools import BalancedPool, Target
from tests.unit.adaptive_sim import Phase, Simulation


class Clock:
    """Feeds answers to a limit on a simulated clock."""

    def __init__(self, limit: AdaptiveLimit) -> None:
        self.limit = limit
        self.now = 0.0

    def busy(self, windows: int, latency: float = 0.05, in_flight: int | None = None) -> int:
        """``windows`` windows of answers taking ``latency``, with the limit in use (or
        ``in_flight`` invocations); returns the limit after them."""
        for _ in range(windows * WINDOW_ANSWERS):
            self.now += latency / WINDOW_ANSWERS * 1.01
            flight = self.limit.limit if in_flight is None else in_flight
            self.limit.delivered(self.now, latency, flight)
        return self.limit.limit

    def overload(self, latency: float = 0.001) -> int:
        """One 429 for a request sent ``latency`` ago."""
        self.now += latency
        return self.limit.overloaded(self.now, latency, self.limit.limit)


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="minimum <= maximum"):
        AdaptiveLimit(5, 4)
    with pytest.raises(ValueError, match="1 <= minimum"):
        AdaptiveLimit(0, 4)


def test_starts_at_min_and_grows_to_max_while_the_limit_is_used() -> None:
    clock = Clock(AdaptiveLimit(2, 20))
    assert clock.limit.limit == 2
    seen = [clock.busy(1) for _ in range(40)]
    assert seen == sorted(seen)
    assert seen[-1] == 20
    assert clock.busy(20) == 20


def test_a_lightly_used_limit_does_not_grow() -> None:
    clock = Clock(AdaptiveLimit(4, 64))
    assert clock.busy(30, in_flight=2) == 4


def test_the_ceiling_caps_the_limit_and_a_ceiling_below_min_wins() -> None:
    clock = Clock(AdaptiveLimit(2, 64, ceiling=10))
    assert clock.busy(40) == 10
    assert clock.limit.set_ceiling(6) == 6
    assert clock.busy(10) == 6
    assert clock.limit.set_ceiling(1) == 1
    assert clock.overload() == 1
    assert clock.limit.set_ceiling(None) == 2
    assert clock.busy(60) == 64


def test_a_429_backs_off_once_per_round_trip() -> None:
    clock = Clock(AdaptiveLimit(1, 100))
    clock.busy(40)
    before = clock.limit.limit
    after = clock.overload()
    assert after == round(before * BACKOFF)
    # Answers to requests sent before that decrease (a burst) do not count again.
    for _ in range(20):
        assert clock.limit.overloaded(clock.now, 1.0, after) == after
    # A request sent after it and refused too: back off again.
    assert clock.overload() == round(after * BACKOFF)


def test_overloads_never_take_the_limit_below_min() -> None:
    clock = Clock(AdaptiveLimit(3, 50))
    clock.busy(30)
    for _ in range(100):
        clock.overload()
    assert clock.limit.limit == 3


def test_a_latency_climb_brings_the_limit_to_what_the_function_serves() -> None:
    """Little's law: 30 in flight at twice the baseline latency = 15 without a queue."""
    clock = Clock(AdaptiveLimit(1, 30))
    clock.busy(60, latency=0.05)
    assert clock.limit.limit == 30
    assert clock.busy(2, latency=0.1, in_flight=30) == 15


def test_recovers_after_overload_and_congestion() -> None:
    clock = Clock(AdaptiveLimit(1, 40))
    clock.busy(60)
    for _ in range(30):
        clock.overload()
    clock.busy(3, latency=0.2, in_flight=clock.limit.limit)
    low = clock.limit.limit
    assert low <= 4
    assert clock.busy(60) == 40


def test_a_function_that_got_slower_for_good_is_relearned_at_min() -> None:
    """At min and still congested: the latency is not the bridge's doing."""
    clock = Clock(AdaptiveLimit(2, 40))
    clock.busy(60, latency=0.05)
    assert clock.limit.baseline == pytest.approx(0.05)
    clock.busy(10, latency=0.3, in_flight=2)
    assert clock.limit.limit == 2
    clock.busy(RELEARN_WINDOWS, latency=0.3, in_flight=2)
    assert clock.limit.baseline == pytest.approx(0.3)
    assert clock.busy(60, latency=0.3) == 40


def capacity_change(limit: AdaptiveLimit | None, static: int = 0, seed: int = 1,
                    seconds: float = 20.0) -> list[Phase]:
    phases = [Phase(8, seconds), Phase(32, seconds), Phase(4, seconds)]
    return Simulation(phases, limit, static=static, seed=seed).run()


@pytest.fixture(scope="module")
def static_64_rejections() -> int:
    """429s of a static concurrency of 64 in the same scenario, in phases a tenth as
    long (a stricter bar, and quick: it refuses about 50,000 requests a second)."""
    return sum(p.rejected for p in capacity_change(None, static=64, seconds=2.0))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_simulated_capacity_change_keeps_throughput_with_few_429s(
    seed: int, static_64_rejections: int
) -> None:
    """8, then 32, then 4 workers (beyond them a queue, then 429): per phase at least
    90 % of what the workers serve, under a tenth of static 64's 429s, a p99 latency
    within 2x the function's own, and the limit within min/max throughout."""
    adaptive = capacity_change(AdaptiveLimit(1, 64), seed=seed)
    for phase in adaptive:
        assert phase.throughput_share(0.05) >= 0.9
        assert min(phase.limits) >= 1
        assert max(phase.limits) <= 64
    assert sum(p.rejected for p in adaptive) <= 0.1 * static_64_rejections
    latencies = sorted(x for p in adaptive for x in p.latencies)
    uncongested = 0.05 * 1.1 + 0.001
    assert latencies[round(0.99 * (len(latencies) - 1))] <= 2 * uncongested


def test_simulated_ceiling_is_a_hard_cap() -> None:
    """The quota (ceiling) changes per phase: the limit never goes above it."""
    ceilings = [6, 20, 3]
    phases = [Phase(8, 10.0), Phase(32, 10.0), Phase(4, 10.0)]

    def set_ceiling(index: int, limit: AdaptiveLimit) -> None:
        limit.set_ceiling(ceilings[index])

    Simulation(phases, AdaptiveLimit(1, 64), on_phase=set_ceiling).run()
    for phase, ceiling in zip(phases, ceilings, strict=True):
        assert max(phase.limits) <= ceiling
    assert max(phases[1].limits) == 20


def test_a_noisy_function_is_not_mistaken_for_a_queue() -> None:
    """Service times spread +/-30 %: the limit still finds the workers."""
    phases = [Phase(16, 30.0)]
    Simulation(phases, AdaptiveLimit(1, 64), jitter=0.3).run()
    assert phases[0].throughput_share(0.05) >= 0.85


# --- the adaptive limit in a Target (real limits and clock; answers take no time) ---

OK = Outcome(OutcomeKind.DELIVERED, "ok", 200, duration=0.0)
REFUSED = Outcome(OutcomeKind.RETRYABLE, "http_429", 429, duration=0.0)
FAILED = Outcome(OutcomeKind.RETRYABLE, "http_500", 500, duration=0.0)


def adaptive_target(**options: Any) -> Target:
    return Target("fn", BalancedPool(["http://fn"]),
                  adaptive=AdaptiveConcurrency(min=1, max=8), **options)


async def rounds(target: Target, count: int, outcome: Outcome) -> list[int]:
    """``count`` rounds: take every slot the target gives at once, hand them all back
    with ``outcome``; the limit after each round."""
    seen = []
    for _ in range(count):
        routes = [await target.acquire()]
        while len(routes) < min(limit.capacity for limit in target.chain):
            routes.append(await target.acquire())
        for route in routes:
            target.release(route, outcome)
        seen.append(target.concurrency_limit or 0)
    return seen


async def test_a_target_chains_the_adaptive_limit_after_its_own() -> None:
    team = Limit(100)
    target = adaptive_target(max_concurrency=8, limits=(team,))
    assert target.limit is not None
    assert len(target.chain) == 3
    assert target.chain[0] is target.limit
    assert target.chain[2] is team
    assert target.concurrency_limit == 1
    assert Target("plain", BalancedPool(["http://p"])).concurrency_limit is None


async def test_a_target_grows_on_2xx_backs_off_on_429_and_ignores_other_failures() -> None:
    target = adaptive_target()
    grown = await rounds(target, 40, OK)
    assert grown[-1] == 8
    assert max(grown) == 8
    assert await rounds(target, 5, FAILED) == [8] * 5
    refused = await rounds(target, 30, REFUSED)
    assert refused[0] < 8
    assert refused[-1] == 1


async def test_the_quota_share_caps_the_adaptive_limit_as_it_moves() -> None:
    target = adaptive_target(max_concurrency=8)
    assert target.limit is not None
    await rounds(target, 40, OK)
    assert target.concurrency_limit == 8
    target.limit.set_capacity(3)  # this replica's share of a cluster quota shrank
    assert max(await rounds(target, 10, OK)) <= 3
    target.limit.set_capacity(8)
    assert (await rounds(target, 40, OK))[-1] == 8


async def test_overflow_answers_do_not_move_the_adaptive_limit() -> None:
    target = adaptive_target(max_concurrency=1, overflow_url="http://over",
                             overflow_after=0.001)
    assert target.limit is not None
    target.limit.set_capacity(0)
    for _ in range(30):
        route = await target.acquire()
        assert route.overflow
        target.release(route, REFUSED)
    assert target.concurrency_limit == 1
    assert target._adaptive_slots is not None
    assert target._adaptive_slots.in_use == 0
