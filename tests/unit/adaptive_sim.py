"""A simulated function with a capacity, for the adaptive limit's unit tests.

Discrete events on a simulated clock (no sleeping, no wall time): the function has
``capacity`` workers and a FIFO waiting room of ``queue_factor`` x capacity; a request
beyond that is answered 429 at once. A worker takes ``service`` seconds +/- ``jitter``
(seeded). The client keeps as many requests in flight as the limit allows (an endless
backlog) and feeds every answer to the limit. The capacity changes at each phase.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bridge.adaptive import AdaptiveLimit

#: One-way network time between client and function.
HOP = 0.0005


@dataclass
class Phase:
    capacity: int
    seconds: float
    delivered: int = 0
    rejected: int = 0
    latencies: list[float] = field(default_factory=list)
    #: The limit after each answer.
    limits: list[int] = field(default_factory=list)

    def throughput_share(self, service: float) -> float:
        """Delivered / what ``capacity`` workers serve in the phase."""
        return self.delivered / (self.capacity * self.seconds / service)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[round(0.99 * (len(ordered) - 1))]


@dataclass
class Simulation:
    phases: list[Phase]
    #: The adaptive limit under test, or None for a static ``static`` in flight.
    limit: AdaptiveLimit | None
    static: int = 0
    service: float = 0.05
    jitter: float = 0.1
    queue_factor: int = 2
    seed: int = 7
    #: Called with (phase index, limit) as each phase starts (e.g. to set a ceiling).
    on_phase: Callable[[int, AdaptiveLimit], None] | None = None
    now: float = 0.0
    _events: list[tuple[float, int, str, float]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _waiting: deque[float] = field(default_factory=deque)
    _in_flight: int = 0
    _busy: int = 0
    _capacity: int = 0
    _phase: int = -1

    def run(self) -> list[Phase]:
        self._rng = random.Random(self.seed)
        at = 0.0
        for index, phase in enumerate(self.phases):
            self._push(at, "phase", index)
            at += phase.seconds
        self._push(at, "end", 0)
        handlers = {"phase": self._next_phase, "arrive": self._arrive,
                    "done": self._done, "ok": self._answer, "429": self._answer}
        while self._events:
            self.now, _, kind, value = heapq.heappop(self._events)
            if kind == "end":
                break
            handlers[kind](kind, value)
        return self.phases

    def _push(self, at: float, kind: str, value: float) -> None:
        heapq.heappush(self._events, (at, next(self._seq), kind, value))

    def _allowed(self) -> int:
        return self.limit.limit if self.limit is not None else self.static

    def _send(self) -> None:
        while self._in_flight < self._allowed():
            self._in_flight += 1
            self._push(self.now + HOP, "arrive", self.now)

    def _start(self, sent: float) -> None:
        self._busy += 1
        took = self.service * self._rng.uniform(1 - self.jitter, 1 + self.jitter)
        self._push(self.now + took, "done", sent)

    def _next_phase(self, _: str, index: float) -> None:
        self._phase = int(index)
        self._capacity = self.phases[self._phase].capacity
        if self.on_phase is not None and self.limit is not None:
            self.on_phase(self._phase, self.limit)
        self._serve_waiting()
        self._send()

    def _serve_waiting(self) -> None:
        while self._waiting and self._busy < self._capacity:
            self._start(self._waiting.popleft())

    def _arrive(self, _: str, sent: float) -> None:
        if self._busy < self._capacity:
            self._start(sent)
        elif len(self._waiting) < self.queue_factor * self._capacity:
            self._waiting.append(sent)
        else:
            self._push(self.now + HOP, "429", sent)

    def _done(self, _: str, sent: float) -> None:
        self._busy -= 1
        self._serve_waiting()
        self._push(self.now + HOP, "ok", sent)

    def _answer(self, kind: str, sent: float) -> None:
        phase, latency = self.phases[self._phase], self.now - sent
        if kind == "ok":
            phase.delivered += 1
            phase.latencies.append(latency)
            if self.limit is not None:
                self.limit.delivered(self.now, latency, self._in_flight)
        else:
            phase.rejected += 1
            if self.limit is not None:
                self.limit.overloaded(self.now, latency, self._in_flight)
        self._in_flight -= 1
        phase.limits.append(self._allowed())
        self._send()
