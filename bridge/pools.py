"""Where a function's invocations go: its endpoint pool, quota and overflow.

A :class:`Pool` knows a function's endpoints and picks the one with the fewest
outstanding requests. A :class:`Target` wraps a pool with the platform team's
per-function quota (``max_concurrency``, shared by every trigger of the function), any
further limits on top of it (:mod:`bridge.limits`: the adaptive limit, a team quota's
share) and the hybrid overflow: when no in-cluster capacity is available within
``after``, the invocation goes to the overflow URL instead of waiting. The adaptive
limit (``concurrency.adaptive``) is moved by :mod:`bridge.adaptive` from the outcomes
handed back with :meth:`Target.release`.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.adaptive import AdaptiveLimit
from bridge.config import AdaptiveConcurrency
from bridge.limits import Limit, acquire_all, release_all
from bridge.logs import NO_SECRETS, Redactor
from bridge.outcome import Outcome

#: Answers that say "too many at once" to the adaptive limit (a timeout says it too).
OVERLOAD_STATUSES = frozenset({429, 503})


class NoEndpoints(Exception):
    """The function has no ready endpoint (and no overflow to go to)."""


@dataclass(slots=True, eq=False)
class Endpoint:
    url: str
    outstanding: int = 0
    ready: bool = True


class Pool(Protocol):
    """A function's endpoints. Static here; the Kubernetes pool watches EndpointSlices."""

    def pick(self) -> Endpoint | None:
        """The ready endpoint with the fewest outstanding requests, or None."""

    async def wait_ready(self) -> None:
        """Return once at least one endpoint is ready."""

    async def close(self) -> None:
        """Let go of what the pool holds (nothing, for a static pool)."""


class WatchedPool(Pool, Protocol):
    """A pool that keeps its endpoints current from a watch (the Kubernetes pool).

    The runtime runs :meth:`run` under its supervisor while the function is in use.
    """

    @property
    def ready(self) -> bool:
        """True once the endpoints are known (feeds ``/readyz`` as ``function:<name>``)."""

    async def run(self) -> None:
        """Watch the endpoints until cancelled."""


class BalancedPool:
    """Fewest-outstanding balancing over a mutable endpoint set; ties rotate.

    ``pick`` runs on every attempt, so it scans only the ready endpoints (kept as a
    list when the set changes) and lets ``min`` do the scan in C: a rotated copy makes
    ``min``'s first-minimum rule spread ties evenly.
    """

    def __init__(self, urls: Sequence[str] = ()) -> None:
        self._endpoints: list[Endpoint] = [Endpoint(u) for u in urls]
        self._ready = list(self._endpoints)
        self._turn = 0
        self._changed = asyncio.Event()

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def pick(self) -> Endpoint | None:
        ready = self._ready
        count = len(ready)
        if count <= 1:
            return ready[0] if ready else None
        self._turn = start = (self._turn + 1) % count
        return min(ready[start:] + ready[:start], key=_outstanding)

    async def wait_ready(self) -> None:
        while not self._ready:
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        """Nothing to let go of."""

    def replace(self, urls: Mapping[str, bool]) -> None:
        """Set the endpoint set to ``urls`` (url -> ready), keeping outstanding counts."""
        current = {e.url: e for e in self._endpoints}
        updated: list[Endpoint] = []
        for url, ready in urls.items():
            endpoint = current.get(url) or Endpoint(url)
            endpoint.ready = ready
            updated.append(endpoint)
        self._endpoints = updated
        self._ready = [e for e in updated if e.ready]
        self._changed.set()


_outstanding = operator.attrgetter("outstanding")


@dataclass(frozen=True, slots=True)
class Route:
    """Where one attempt goes; hand it back with :meth:`Target.release`."""

    url: str
    overflow: bool = False
    endpoint: Endpoint | None = None


@dataclass(slots=True, eq=False)
class Target:
    """One function as the invoker sees it.

    An attempt holds one slot of every limit in :attr:`chain`, taken in order: the
    function's own (:attr:`limit`, from ``max_concurrency``) first, then its adaptive
    limit (``adaptive``; its ceiling follows :attr:`limit`'s capacity, so the quota
    stays the hard cap), then ``limits`` (shared ones, such as a team quota's share,
    come after the function's own so a function at its own limit never holds a shared
    slot while it waits).
    """

    name: str
    pool: Pool
    max_concurrency: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    overflow_url: str | None = None
    #: Takes the function's secrets (header values, URL passwords) out of what an attempt
    #: reports (an error body, an error message), which logs and dead letters show.
    redact: Redactor = NO_SECRETS
    overflow_after: float = 0.25
    limits: tuple[Limit, ...] = ()
    #: The function's own limit: given (a cluster-wide quota's share, bridge.quotas),
    #: else made from ``max_concurrency``.
    limit: Limit | None = None
    #: ``concurrency.adaptive``: a limit moved by the answers, after the function's own.
    adaptive: AdaptiveConcurrency | None = None
    chain: tuple[Limit, ...] = field(default=(), init=False)
    _adaptive: AdaptiveLimit | None = field(default=None, init=False)
    _adaptive_slots: Limit | None = field(default=None, init=False)
    _ceiling: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.limit is None and self.max_concurrency is not None:
            self.limit = Limit(self.max_concurrency)
        own: tuple[Limit, ...] = (self.limit,) if self.limit else ()
        if self.adaptive is not None:
            self._ceiling = self.limit.capacity if self.limit else None
            self._adaptive = AdaptiveLimit(self.adaptive.min, self.adaptive.max,
                                           ceiling=self._ceiling)
            self._adaptive_slots = Limit(self._adaptive.limit)
            own += (self._adaptive_slots,)
        self.chain = own + tuple(self.limits)

    @property
    def concurrency_limit(self) -> int | None:
        """The adaptive limit now (None without ``concurrency.adaptive``)."""
        return None if self._adaptive_slots is None else self._adaptive_slots.capacity

    async def acquire(self) -> Route:
        """A quota slot and an endpoint (or the overflow URL) for one attempt.

        Raises NoEndpoints when the pool has no ready endpoint and there is no
        overflow. (A pair of calls, not a context manager: this runs on every attempt.)
        """
        if self.overflow_url is None:
            await self._take_slot()
        elif not await self._capacity_within(self.overflow_after):
            return Route(self.overflow_url, overflow=True)
        endpoint = self.pool.pick()
        if endpoint is None:
            self._release_slot()
            raise NoEndpoints(f"function {self.name!r} has no ready endpoints")
        endpoint.outstanding += 1
        return Route(endpoint.url, endpoint=endpoint)

    def release(self, route: Route, outcome: Outcome | None = None) -> None:
        """Hand back what :meth:`acquire` gave, with the attempt's outcome (None: it was
        cancelled) for the adaptive limit."""
        if route.endpoint is not None:
            route.endpoint.outstanding -= 1
            if outcome is not None and self._adaptive is not None:
                self._adapt(outcome)
            self._release_slot()

    def _adapt(self, outcome: Outcome) -> None:
        """Feed one in-cluster answer to the adaptive limit; resize on a change."""
        adaptive, slots = self._adaptive, self._adaptive_slots
        assert adaptive is not None
        assert slots is not None
        limit = slots.capacity
        ceiling = self.limit.capacity if self.limit else None
        if ceiling != self._ceiling:  # the quota's share moved (BRIDGE_CLUSTER_QUOTAS)
            self._ceiling = ceiling
            limit = adaptive.set_ceiling(ceiling)
        if outcome.ok:
            limit = adaptive.delivered(time.monotonic(), outcome.duration, slots.in_use)
        elif outcome.status in OVERLOAD_STATUSES or outcome.reason == "timeout":
            limit = adaptive.overloaded(time.monotonic(), outcome.duration, slots.in_use)
        if limit != slots.capacity:
            slots.set_capacity(limit)

    def _release_slot(self) -> None:
        if self.chain:
            release_all(self.chain)

    async def _take_slot(self) -> None:
        if self.chain:
            await acquire_all(self.chain)

    async def _capacity_within(self, seconds: float) -> bool:
        """Take a quota slot with a ready endpoint within ``seconds``; False means overflow."""
        taken = False
        try:
            async with asyncio.timeout(seconds):
                await self._take_slot()
                taken = True
                await self.pool.wait_ready()
        except BaseException as err:
            if taken:
                self._release_slot()
            if isinstance(err, TimeoutError):
                return False
            raise
        return True

    async def close(self) -> None:
        """Close the pool (callers close targets quietly: ``bridge.closing``)."""
        await self.pool.close()
