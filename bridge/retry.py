"""Backoff as a pure function: exponential, capped, with full jitter."""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Upper bound for a server's ``Retry-After`` so one bad header cannot park an event for days.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True


def backoff(
    policy: RetryPolicy,
    attempt: int,
    retry_after: float | None = None,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based).

    Exponential from ``initial_backoff`` by ``multiplier`` up to ``max_backoff``. With
    ``jitter`` the delay is drawn uniformly from [delay/2, delay] ("equal jitter"), which
    spreads retries of a burst without ever retrying at once. A server's ``Retry-After``
    is a floor: we never retry earlier than asked (bounded by MAX_RETRY_AFTER).
    """
    exponent = max(0, attempt - 1)
    try:
        delay = policy.initial_backoff * policy.multiplier**exponent
    except OverflowError:
        delay = policy.max_backoff
    delay = min(delay, policy.max_backoff)
    if policy.jitter and delay > 0:
        delay = (rand or random).uniform(delay / 2, delay)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay
