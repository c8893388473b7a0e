"""Backoff as a pure function: exponential, capped, with equal jitter.

:class:`Backoff` is the curve alone (a frozen value; :meth:`Backoff.delay` is pure but
for the jitter's random draw, which a caller may seed). :class:`RetryPolicy` is a
trigger's ``retry:`` settings: how many attempts, and the curve between them. Loops
that retry until they succeed or are stopped (reconnects, dead-letter writes, restarts)
use a ``Backoff`` and count their own tries.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: Upper bound for a server's ``Retry-After`` so one bad header cannot park an event for days.
MAX_RETRY_AFTER = 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential from ``initial`` by ``multiplier`` up to ``maximum`` (seconds)."""

    initial: float = 0.2
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True

    def delay(
        self, attempt: int, retry_after: float | None = None, rand: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based).

        With ``jitter`` the delay is drawn uniformly from [delay/2, delay] ("equal
        jitter"), which spreads retries of a burst without ever retrying at once. A
        server's ``Retry-After`` is a floor: we never retry earlier than asked (bounded
        by MAX_RETRY_AFTER).
        """
        exponent = max(0, attempt - 1)
        try:
            delay = self.initial * self.multiplier**exponent
        except OverflowError:
            delay = self.maximum
        delay = min(delay, self.maximum)
        if self.jitter and delay > 0:
            delay = (rand or random).uniform(delay / 2, delay)
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
        return delay


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A trigger's retries: at most ``max_attempts`` attempts, :attr:`curve` between."""

    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    multiplier: float = 2.0
    jitter: bool = True

    @property
    def curve(self) -> Backoff:
        return Backoff(self.initial_backoff, self.max_backoff, self.multiplier, self.jitter)


def backoff(
    policy: RetryPolicy,
    attempt: int,
    retry_after: float | None = None,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait after failed attempt ``attempt`` of ``policy`` (:meth:`Backoff.delay`)."""
    return policy.curve.delay(attempt, retry_after, rand)
