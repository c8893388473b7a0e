"""Adaptive concurrency: how many invocations a function takes at once, found from its
answers (``functions.<name>.concurrency.adaptive: {min, max}``).

This module is the algorithm only: no clock, no asyncio. :class:`AdaptiveLimit` is fed
each answer (when it came, how long it took, how many invocations were in flight) and
says what the function's concurrency limit is now; :class:`bridge.pools.Target` applies
that to a resizable :class:`bridge.limits.Limit` next to the quota, which stays the hard
cap (:meth:`AdaptiveLimit.set_ceiling`).

The rule, a gradient limit with a congestion signal (docs/configuration.md
*Adaptive concurrency* says why this one):

- Answers are taken in **windows** of at least ``WINDOW_ANSWERS`` answers and at least
  one baseline latency. Only answers to requests sent after the limit last changed
  count: earlier ones tell nothing about the limit as it is now.
- The **baseline** is the lowest window median latency of the last ``BASELINE_MEMORY``
  seconds: the function's latency without a queue. The limit's own sawtooth brings it
  back to the function's capacity every few windows, so the baseline is measured again
  and again while traffic runs; no probing phase takes throughput away.
- A window whose median latency is above ``TOLERANCE`` x baseline, plus ``SLACK`` and
  ``NOISE`` standard errors of the window's median (its interquartile range /
  sqrt(answers): a function whose latency varies a lot is not mistaken for a queue),
  is **congested**: a queue has formed in front of the function. The limit goes to
  what Little's law says the function serves without a queue, *mean in flight x
  baseline / median latency* (at most ``MAX_DECREASE`` off per window).
- A **429 or 503 answer, or a timeout**, is an overload signal that needs no baseline:
  the limit goes to ``BACKOFF`` x the invocations in flight (once per round trip: the
  answers to requests sent before that decrease do not count again).
- Otherwise, when the window used the limit (in flight reached it), the limit **grows**
  by ``sqrt(limit) / 2`` (at least 1); an idle or lightly loaded function does not
  grow it.
- The limit stays within ``[min, max]`` and under the ceiling (the quota); a ceiling
  below ``min`` wins. At ``min`` and still congested for ``RELEARN_WINDOWS`` windows,
  the latency is not the bridge's doing (the function got slower, or others load it):
  the baseline is set to the current latency and the limit grows again from there (as
  Envoy's gradient controller measures its minRTT again when its limit sits at the
  minimum).

It starts at ``min``. Figures from a simulated function (``tests/unit/adaptive_sim.py``)
and from the real daemon: docs/benchmarks.md *Adaptive concurrency*.
"""

from __future__ import annotations

import math
import statistics

#: A window median latency above TOLERANCE x baseline (+ SLACK + NOISE) is congestion.
TOLERANCE = 1.2
#: Seconds of latency no function queue is blamed for (event loop and network jitter).
SLACK = 0.002
#: How many "standard errors" of a window's median (its interquartile range / sqrt(n))
#: a window may be above the tolerance before it counts as congested.
NOISE = 3.0
#: A 429 or 503 answer, or a timeout: the limit goes to this x the invocations in flight.
BACKOFF = 0.9
#: At most this factor off the limit per congested window.
MAX_DECREASE = 0.5
#: Answers a window needs before it closes.
WINDOW_ANSWERS = 10
#: Seconds the baseline remembers a low latency (between half of it and all of it).
BASELINE_MEMORY = 60.0
#: Congested windows at ``min`` after which the baseline is measured again.
RELEARN_WINDOWS = 5


class AdaptiveLimit:
    """The concurrency limit of one function, moved by its answers.

    ``limit`` is what to admit now (an integer >= 1). Each ``delivered`` /
    ``overloaded`` call returns it, so the caller resizes its limit only on a change.
    ``now`` is any monotonic clock in seconds; ``in_flight`` counts the invocations of
    the function in flight when the answer came, this one included.
    """

    __slots__ = (
        "_answers", "_ceiling", "_changed", "_flight_sum", "_half_start", "_latencies",
        "_limit", "_maximum", "_minimum", "_newer", "_older", "_overloaded", "_peak",
        "_start", "_stuck",
    )

    def __init__(self, minimum: int, maximum: int, ceiling: int | None = None) -> None:
        if not 1 <= minimum <= maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {minimum} and {maximum}")
        self._minimum, self._maximum, self._ceiling = minimum, maximum, ceiling
        self._limit = float(minimum)
        self._older = self._newer = math.inf
        self._half_start: float | None = None
        self._stuck = 0
        #: When the limit last changed: earlier requests tell nothing about it.
        self._changed = -math.inf
        self._start: float | None = None
        self._answers = self._peak = self._flight_sum = 0
        self._latencies: list[float] = []
        self._overloaded = False
        self._limit = self._clamp(self._limit)

    @property
    def limit(self) -> int:
        return max(1, round(self._limit))

    @property
    def baseline(self) -> float | None:
        """The latency without a queue, as measured (None before the first window)."""
        lowest = min(self._older, self._newer)
        return None if lowest == math.inf else lowest

    def set_ceiling(self, ceiling: int | None) -> int:
        """The quota the limit must stay under (None: only ``max``)."""
        self._ceiling = ceiling
        self._limit = self._clamp(self._limit)
        return self.limit

    def delivered(self, now: float, latency: float, in_flight: int) -> int:
        """A 2xx answer that took ``latency`` seconds."""
        if self._answer(now, latency, in_flight):
            self._latencies.append(latency)
            self._flight_sum += in_flight
        return self._maybe_close(now)

    def overloaded(self, now: float, latency: float, in_flight: int) -> int:
        """A 429 or 503 answer, or a timeout, after ``latency`` seconds: back off (once
        per window)."""
        if self._answer(now, latency, in_flight):
            self._overloaded = True
            self._set(now, min(self._limit, in_flight) * BACKOFF)
        return self._maybe_close(now)

    # --- windows ---------------------------------------------------------------------

    def _answer(self, now: float, latency: float, in_flight: int) -> bool:
        """Count an answer in the window; False if its request was sent before the limit
        last changed (it tells nothing about the limit as it is)."""
        if now - latency < self._changed:
            return False
        self._peak = max(self._peak, in_flight)
        if self._start is None:
            self._start = now
        self._answers += 1
        return True

    def _set(self, now: float, value: float) -> None:
        value = self._clamp(value)
        if round(value) != round(self._limit):
            self._changed = now
        self._limit = value

    def _maybe_close(self, now: float) -> int:
        start = self._start
        if (start is not None and self._answers >= WINDOW_ANSWERS
                and now - start >= (self.baseline or 0.0)):
            self._close(now)
        return self.limit

    def _close(self, now: float) -> None:
        if self._latencies:
            latencies = sorted(self._latencies)
            count = len(latencies)
            latency = statistics.median(latencies)
            spread = latencies[(3 * count) // 4] - latencies[count // 4]
            baseline = self._remember(now, latency)
            mean_flight = self._flight_sum / count
            if latency > TOLERANCE * baseline + SLACK + NOISE * spread / math.sqrt(count):
                self._congested(now, latency, baseline, mean_flight)
            elif not self._overloaded and self._peak >= self.limit:
                self._stuck = 0
                self._set(now, self._limit + max(1.0, math.sqrt(self._limit) / 2))
        self._start = None
        self._answers = self._peak = self._flight_sum = 0
        self._latencies = []
        self._overloaded = False

    def _congested(self, now: float, latency: float, baseline: float, flight: float) -> None:
        """Down to what the function serves without a queue (Little's law)."""
        at_floor = self._limit <= self._floor()
        served = flight * baseline / latency
        self._set(now, max(self._limit * MAX_DECREASE, min(self._limit, served)))
        if not at_floor:
            self._stuck = 0
            return
        self._stuck += 1
        if self._stuck >= RELEARN_WINDOWS:
            self._stuck = 0
            self._older, self._newer, self._half_start = math.inf, latency, now

    # --- baseline and bounds ---------------------------------------------------------

    def _remember(self, now: float, latency: float) -> float:
        """Add a window's median to the baseline; returns the baseline."""
        if self._half_start is None or now - self._half_start >= BASELINE_MEMORY / 2:
            self._older, self._newer, self._half_start = self._newer, math.inf, now
        self._newer = min(self._newer, latency)
        return min(self._older, self._newer)

    def _ceiling_or_max(self) -> int:
        if self._ceiling is None:
            return self._maximum
        return max(1, min(self._maximum, self._ceiling))

    def _floor(self) -> int:
        return min(self._minimum, self._ceiling_or_max())

    def _clamp(self, value: float) -> float:
        return min(float(self._ceiling_or_max()), max(float(self._floor()), value))

