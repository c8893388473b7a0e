"""Backoff: exponential growth, cap, equal jitter, Retry-After as a floor."""

from __future__ import annotations

import random

import pytest

from bridge.retry import MAX_RETRY_AFTER, RetryPolicy, backoff

FIXED = RetryPolicy(initial_backoff=0.2, max_backoff=30.0, multiplier=2.0, jitter=False)


@pytest.mark.parametrize(
    ("attempt", "delay"),
    [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 3.2), (8, 25.6), (9, 30.0), (50, 30.0)],
)
def test_exponential_growth_and_cap(attempt: int, delay: float) -> None:
    assert backoff(FIXED, attempt) == pytest.approx(delay)


def test_attempt_zero_or_negative_is_treated_as_the_first() -> None:
    assert backoff(FIXED, 0) == pytest.approx(0.2)
    assert backoff(FIXED, -3) == pytest.approx(0.2)


def test_huge_attempt_numbers_do_not_overflow() -> None:
    assert backoff(FIXED, 10_000) == 30.0
    steep = RetryPolicy(initial_backoff=1.0, max_backoff=60.0, multiplier=100.0, jitter=False)
    assert backoff(steep, 5000) == 60.0


def test_multiplier_one_is_constant() -> None:
    flat = RetryPolicy(initial_backoff=0.5, max_backoff=30.0, multiplier=1.0, jitter=False)
    assert [backoff(flat, n) for n in range(1, 6)] == [0.5] * 5


def test_initial_above_max_is_capped() -> None:
    odd = RetryPolicy(initial_backoff=10.0, max_backoff=2.0, jitter=False)
    assert backoff(odd, 1) == 2.0


def test_jitter_stays_within_half_to_full_delay() -> None:
    policy = RetryPolicy(initial_backoff=0.2, max_backoff=30.0, multiplier=2.0, jitter=True)
    rand = random.Random(42)
    for attempt in range(1, 12):
        full = min(0.2 * 2 ** (attempt - 1), 30.0)
        samples = [backoff(policy, attempt, rand=rand) for _ in range(200)]
        assert all(full / 2 <= s <= full for s in samples)
        # spread, not a constant: the samples cover most of the allowed band
        assert max(samples) - min(samples) > full * 0.4


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    policy = RetryPolicy(jitter=True)
    first = [backoff(policy, n, rand=random.Random(7)) for n in range(1, 6)]
    second = [backoff(policy, n, rand=random.Random(7)) for n in range(1, 6)]
    assert first == second


def test_zero_backoff_stays_zero_with_jitter() -> None:
    policy = RetryPolicy(initial_backoff=0.0, jitter=True)
    assert backoff(policy, 3, rand=random.Random(1)) == 0.0


def test_retry_after_is_a_floor() -> None:
    assert backoff(FIXED, 1, retry_after=5.0) == 5.0
    # a shorter Retry-After than our own backoff does not make us retry sooner
    assert backoff(FIXED, 5, retry_after=1.0) == pytest.approx(3.2)
    # above max_backoff: the server's wish wins over our cap
    assert backoff(FIXED, 1, retry_after=120.0) == 120.0
    jittered = RetryPolicy(jitter=True)
    rand = random.Random(3)
    assert all(backoff(jittered, 2, retry_after=9.0, rand=rand) == 9.0 for _ in range(50))


def test_retry_after_is_capped() -> None:
    assert MAX_RETRY_AFTER == 3600.0
    assert backoff(FIXED, 1, retry_after=86_400.0) == MAX_RETRY_AFTER
    assert backoff(FIXED, 1, retry_after=float("inf")) == MAX_RETRY_AFTER


def test_retry_after_zero_keeps_our_backoff() -> None:
    assert backoff(FIXED, 2, retry_after=0.0) == pytest.approx(0.4)
