"""The daemon's lifecycle: build every trigger, run it, drain it.

Shape (after kopf's reactor): a handful of named root tasks -- one *pump* per trigger
(connector -> dispatcher) and the admin server -- under one :class:`Runtime`. A signal
sets the stop event; then cron stops firing (a Lease stays held), intake stops (pumps
are cancelled), in-flight work drains within ``BRIDGE_DRAIN_TIMEOUT``, connectors settle
and close (commit, ack), the Lease is released (so the next leader cannot overlap a run
of ours), sinks and clients close, and the process exits 0. The whole stop fits in
``BRIDGE_DRAIN_TIMEOUT`` + 5 s: every step after the drain is cut off at that budget.
A pump whose connector fails to start or breaks is restarted with backoff and logs
why; its trigger reads not-ready meanwhile. Nothing runs unsupervised.

Triggers are units keyed by name, so a config reload or a Trigger resource change can
add, replace or remove one without touching the others (:meth:`Runtime.apply`). A
trigger that cannot be *built* (its connector or sink refuses the settings) stops the
start-up (a config problem: the CLI exits 2 naming it); after that it is one trigger
down, reported (log, ``/readyz``, its Trigger's status), while the others run on.

Dead-letter sinks are shared by the triggers whose sink settings are equal, compared by
their real values (:func:`~bridge.deadletter.sink_key`: a password or virtual host of
its own is a sink of its own). Each unit holds the keys of its sinks; after an apply,
a sink no unit holds any more is closed, so a rotated credential or a removed sink
leaves no connection behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp

from bridge.admin import AdminServer
from bridge.config import (
    BridgeConfig,
    ConfigError,
    ConfigProblem,
    FunctionConfig,
    ResolvedTrigger,
    SinkConfig,
    secrets_of,
)
from bridge.deadletter import Sink, sink_key
from bridge.dispatcher import Dispatcher, DispatchParts
from bridge.invoker import Invoker
from bridge.leadership import AlwaysLeader, Leadership
from bridge.logs import Logger, get_logger, redact
from bridge.metrics import Metrics
from bridge.pools import BalancedPool, Pool, Target
from bridge.retry import RetryPolicy, backoff
from bridge.settings import Settings
from connectors.base import Connector, ConnectorContext, connector_factory, sink_factory

_RESTART = RetryPolicy(max_attempts=1, initial_backoff=1.0, max_backoff=30.0)
_STOP_TIMEOUT = 15.0
#: The whole stop takes at most BRIDGE_DRAIN_TIMEOUT + this (deploy/'s grace period is
#: set from it). Half a second of the documented 5 s is left for the interpreter's exit.
STOP_GRACE = 5.0
_STOP_BUDGET = STOP_GRACE - 0.5
#: Kept for the steps after the drain (connectors, Lease, sinks) if the steps before it
#: were slow: the drain is shortened rather than those skipped.
_AFTER_DRAIN = 2.0
#: Left by a hanging connector stop for the Lease release, and by a hanging release for
#: closing sinks, clients and the admin server.
_CLOSE_RESERVE = 0.5
#: How long start-up waits for a dead-letter sink to connect. A sink that is not
#: reachable by then connects on its first write (the Sink contract), so a hanging
#: broker (packets dropped: no refusal, only the client's 30 s request timeout) cannot
#: hold every later trigger's start.
_SINK_START_TIMEOUT = 5.0


class Service(Protocol):
    """A runtime companion with its own lifecycle (config reload, Lease, Trigger watch)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BuildFailure:
    """A trigger that could not be built: tried again when its settings change."""

    trigger: ResolvedTrigger
    reason: str


@dataclass(slots=True, eq=False)
class Unit:
    """One running trigger."""

    trigger: ResolvedTrigger
    connector: Connector
    dispatcher: Dispatcher
    pump: asyncio.Task[None] | None = None
    failures: int = field(default=0)
    #: Keys (in Runtime._sinks) of its dead-letter sink and fallback.
    sinks: tuple[str, ...] = ()


class Runtime:
    def __init__(
        self,
        config: BridgeConfig,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        leadership: Leadership | None = None,
        log: Logger | None = None,
    ) -> None:
        self.config = config
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.log = log or get_logger()
        self.context = ConnectorContext(
            metrics=self.metrics,
            log=self.log,
            leadership=leadership or AlwaysLeader(),
        )
        self.units: dict[str, Unit] = {}
        #: Triggers of the config that could not be built (see :meth:`apply`).
        self.failures: dict[str, BuildFailure] = {}
        self.admin = AdminServer(
            self.metrics, self.readiness, settings.admin_host, settings.admin_port
        )
        self._session: aiohttp.ClientSession | None = None
        self._invoker: Invoker | None = None
        self._targets: dict[str, Target] = {}
        self._sinks: dict[str, Sink] = {}
        self._functions: dict[str, FunctionConfig] = {}
        #: Started after the triggers, stopped before them: config reload, Trigger
        #: resources (see bridge.reload.wire). Each has start() and stop(). The
        #: leadership (a Lease) is not one of them: it is released last.
        self.services: list[Service] = []
        #: Extra readiness checks by name (e.g. a Kubernetes watch refused by RBAC).
        self.probes: dict[str, Callable[[], bool]] = {}
        #: True while start() runs: not ready before every trigger is built (with no
        #: unit yet, "every unit ready" would be vacuously true).
        self._starting = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._starting = True
        self._session = Invoker.new_session()
        self._invoker = Invoker(self._session)
        try:
            await self._start_admin()
            await self._start_all()
        except ConfigError:
            await self._release()
            raise
        await self.context.leadership.start()
        for service in self.services:
            await service.start()
        self._starting = False
        self.log.info(
            "trigger-bridge started", triggers=len(self.units), admin_port=self.admin.port
        )

    async def shutdown(self) -> None:
        started = time.monotonic()
        deadline = started + self.settings.drain_timeout + _STOP_BUDGET
        units = list(self.units.values())
        self.log.info("draining", triggers=len(units), timeout=self.settings.drain_timeout)
        leadership = self.context.leadership
        leadership.stop_leading()  # no tick fires from now on; a Lease stays held
        for service in reversed(self.services):
            await self._stop_step(f"stop {type(service).__name__}", deadline, service.stop)
        await self._stop_step("stop intake", deadline, lambda: self._stop_intake(units))
        drain_for = max(0.0, min(self.settings.drain_timeout,
                                 deadline - _AFTER_DRAIN - time.monotonic()))
        drained = await asyncio.gather(*(u.dispatcher.drain(drain_for) for u in units))
        await asyncio.gather(*(
            self._stop_step("stop connector", deadline - 2 * _CLOSE_RESERVE, u.connector.stop,
                            trigger=u.trigger.name)
            for u in units
        ))
        self.units.clear()
        # Released only now: a run of ours (Forbid) never overlaps the next leader's.
        await self._stop_step("release the Lease", deadline - _CLOSE_RESERVE, leadership.stop)
        resources = [*self._sinks.values(), *self._targets.values(),
                     *self.context.shared_values()]
        await asyncio.gather(*(
            self._stop_step(f"close {type(r).__name__}", deadline, r.close)
            for r in resources if callable(getattr(r, "close", None))
        ))
        self._sinks.clear()
        self._targets.clear()
        if self._session is not None:
            await self._stop_step("close the HTTP session", deadline, self._session.close)
        await self._stop_step("stop the admin server", deadline, self.admin.stop)
        self.log.info(
            "stopped", drained=all(drained), seconds=round(time.monotonic() - started, 3)
        )

    async def _stop_step(
        self, what: str, deadline: float, step: Callable[[], Awaitable[object]], **context: str
    ) -> None:
        """One step of the stop, cut off at the stop budget; a failure is logged, not raised."""
        timeout = max(0.0, min(_STOP_TIMEOUT, deadline - time.monotonic()))
        try:
            async with asyncio.timeout(timeout):
                await step()
        except TimeoutError:
            self.log.warning("stop step cut off at the stop budget", step=what,
                             timeout=round(timeout, 3), **context)
        except Exception as err:
            self.log.warning("stop step failed", step=what, error=_describe(err), **context)

    def readiness(self) -> Mapping[str, bool]:
        ready = {name: unit.connector.ready for name, unit in self.units.items()}
        ready.update(dict.fromkeys(self.failures, False))
        if self._starting:
            ready["startup"] = False
        ready.update({name: probe() for name, probe in self.probes.items()})
        for name, target in self._targets.items():
            pool_ready = getattr(target.pool, "ready", None)
            if pool_ready is not None:
                ready[f"function:{name}"] = bool(pool_ready)
        for name, unit in self.units.items():
            if unit.dispatcher.blocked:  # dead letters every sink refuses: see dispatcher
                ready[f"dead_letter:{name}"] = False
        return ready

    # --- units ----------------------------------------------------------------------

    async def apply(self, config: BridgeConfig) -> Mapping[str, str]:
        """Move to ``config``: start new triggers, restart changed ones, stop removed ones.

        Per trigger: one that cannot be built (its connector or sink refuses its settings)
        is logged and left out, and every other trigger still stops, starts or runs on.
        It is tried again once its settings change. Returns the triggers of ``config``
        that are not running for that reason (name -> secret-free reason).
        """
        wanted = {t.name: config.resolve(t) for t in config.triggers}
        self.config = config
        changed = [n for n, u in self.units.items() if wanted.get(n) != u.trigger]
        for name in changed:
            await self.stop_unit(name)
            if name not in wanted:
                self.metrics.forget(name)  # removed: its series go too
        self.failures = {n: f for n, f in self.failures.items() if wanted.get(n) == f.trigger}
        for name in [f for f, fn in self._functions.items() if config.functions.get(f) != fn]:
            # Changed or removed function: its triggers were stopped above; rebuild it.
            self._functions.pop(name)
            await _close_quietly(self._targets.pop(name, None), self.log)
        for name, resolved in wanted.items():
            if name in self.units or name in self.failures:
                continue
            try:
                self._launch(await self._build_unit(resolved))
            except Exception as err:
                failure = BuildFailure(resolved, _build_error(resolved, err))
                self.failures[name] = failure
                self.log.error("trigger cannot be started; the others go on", trigger=name,
                               error=failure.reason)
        await self._close_unused_sinks()
        return {name: failure.reason for name, failure in self.failures.items()}

    async def _start_all(self) -> None:
        """Build every trigger of the config, then start them; ConfigError if any fails.

        At start-up a trigger that cannot be built is a config problem: nothing is started
        and the CLI exits 2 naming it (``triggers[3]: cannot be started: ...``).
        """
        units, problems = [], []
        for index, trigger in enumerate(self.config.triggers):
            resolved = self.config.resolve(trigger)
            try:
                units.append(await self._build_unit(resolved))
            except Exception as err:
                problems.append(ConfigProblem(
                    f"triggers[{index}]", f"cannot be started: {_build_error(resolved, err)}"
                ))
        if problems:
            raise ConfigError(problems)
        for unit in units:
            self._launch(unit)

    async def _start_admin(self) -> None:
        """The admin server; a port it cannot take is a settings problem (exit 2)."""
        try:
            await self.admin.start()
        except OSError as err:
            where = f"{self.settings.admin_host}:{self.settings.admin_port}"
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise ConfigError([ConfigProblem(
                "BRIDGE_ADMIN_PORT", f"cannot listen on {where}: {reason}"
            )]) from None

    async def _release(self) -> None:
        """Close what a start-up that failed opened (no trigger runs yet): quietly, since
        the CLI's answer is the problem lines alone."""
        for resource in [*self._sinks.values(), *self._targets.values(),
                         *self.context.shared_values()]:
            await _close_quietly(resource, self.log)
        self._sinks.clear()
        self._targets.clear()
        if self._session is not None:
            await self._session.close()
        await self.admin.stop()

    async def _build_unit(self, trigger: ResolvedTrigger) -> Unit:
        """The trigger's connector, sink and dispatcher; raises if its settings are refused."""
        assert self._invoker is not None, "start() first"
        connector = connector_factory(trigger.config.kind)(trigger, self.context)
        dead_letter = trigger.dead_letter
        assert dead_letter is not None, "validated: every trigger has a dead-letter sink"
        sink_id, sink = await self._sink(dead_letter.primary(), trigger)
        sinks: tuple[str, ...] = (sink_id,)
        fallback: Sink | None = None
        if dead_letter.fallback is not None:
            fallback_id, fallback = await self._sink(dead_letter.fallback, trigger)
            sinks += (fallback_id,)
        parts = DispatchParts(
            target=self._target(trigger.function_name, trigger.function),
            invoker=self._invoker,
            sink=sink,
            metrics=self.metrics,
            log=self.log,
            fallback=fallback,
        )
        dispatcher = Dispatcher(trigger, parts, trigger.ordering, connector.max_unsettled)
        return Unit(trigger, connector, dispatcher, sinks=sinks)

    def _launch(self, unit: Unit) -> None:
        connector, trigger = unit.connector, unit.trigger
        # Read at every scrape: bridge_connector_ready needs no /readyz call first.
        self.metrics.trigger(trigger.name, trigger.function_name).readiness = (
            lambda: connector.ready
        )
        unit.pump = asyncio.create_task(self._pump(unit), name=f"pump:{trigger.name}")
        self.units[trigger.name] = unit

    async def stop_unit(self, name: str) -> None:
        unit = self.units.pop(name, None)
        if unit is None:
            return
        await self._stop_intake([unit])
        await unit.dispatcher.drain(self.settings.drain_timeout)
        await self._stop_connector(unit)
        self.metrics.trigger(name).readiness = None
        self.log.info("trigger stopped", trigger=name)

    async def _pump(self, unit: Unit) -> None:
        """connector -> dispatcher, restarting the connector with backoff when it fails."""
        while True:
            try:
                await unit.connector.start()
                unit.failures = 0
                async for event in unit.connector.events():
                    await unit.dispatcher.submit(event)
                    del event  # do not keep the last event alive until the next one
                self.log.warning("source ended; restarting", trigger=unit.trigger.name)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                unit.failures += 1
                delay = backoff(_RESTART, unit.failures)
                self.log.error(
                    "source failed", trigger=unit.trigger.name, error=_describe(err),
                    attempt=unit.failures, retry_in=round(delay, 2),
                )
                await _close_quietly(unit.connector, self.log, method="stop")
                await asyncio.sleep(delay)

    async def _stop_intake(self, units: list[Unit]) -> None:
        pumps = [u.pump for u in units if u.pump is not None]
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)

    async def _stop_connector(self, unit: Unit) -> None:
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await unit.connector.stop()
        except Exception as err:
            self.log.warning(
                "connector stop failed", trigger=unit.trigger.name, error=_describe(err)
            )

    # --- shared parts ----------------------------------------------------------------

    def _target(self, name: str, function: FunctionConfig) -> Target:
        """One target per function: its quota is shared by every trigger that calls it."""
        if name not in self._targets:
            self._functions[name] = function
            self._targets[name] = Target(
                name=name,
                pool=self._pool(name, function),
                max_concurrency=function.max_concurrency,
                headers=function.headers,
                overflow_url=function.overflow.url if function.overflow else None,
                overflow_after=function.overflow.after if function.overflow else 0.25,
            )
        return self._targets[name]

    def _pool(self, name: str, function: FunctionConfig) -> Pool:
        if function.kubernetes is not None:
            from bridge.kube.pool import kubernetes_pool

            return kubernetes_pool(name, function.kubernetes, self.context)
        return BalancedPool(function.static_urls)

    async def _sink(self, config: SinkConfig, trigger: ResolvedTrigger) -> tuple[str, Sink]:
        """The sink for ``config`` (shared with every trigger whose settings are equal,
        secrets included) and its key."""
        key = sink_key(config, trigger)
        if key not in self._sinks:
            sink = sink_factory(config.kind)(config, trigger)
            try:
                async with asyncio.timeout(_SINK_START_TIMEOUT):
                    await sink.start()
            except Exception as err:
                error = (f"no answer within {_SINK_START_TIMEOUT:g}s"
                         if isinstance(err, TimeoutError) else _describe(err))
                self.log.error("dead-letter sink not available yet", trigger=trigger.name,
                               sink=config.kind, error=error)
            self._sinks[key] = sink
        return key, self._sinks[key]

    async def _close_unused_sinks(self) -> None:
        """Close the sinks no running trigger uses any more (removed, or settings changed:
        another URL, a rotated password)."""
        used = {key for unit in self.units.values() for key in unit.sinks}
        for key in [k for k in self._sinks if k not in used]:
            sink = self._sinks.pop(key)
            await _close_quietly(sink, self.log)
            self.log.info("dead-letter sink closed: no trigger uses it",
                          sink=type(sink).__name__)


def _build_error(trigger: ResolvedTrigger, err: BaseException) -> str:
    """Why ``trigger`` could not be built, without any piece of its secrets."""
    return redact(_describe(err), secrets_of(trigger.config, trigger.function,
                                             trigger.dead_letter))


def _describe(err: BaseException) -> str:
    text = str(err)
    return f"{type(err).__name__}: {text}"[:400] if text else type(err).__name__


async def _close_quietly(resource: Any, log: Logger, method: str = "close") -> None:
    closer = getattr(resource, method, None)
    if closer is None:
        return
    with contextlib.suppress(Exception):
        async with asyncio.timeout(_STOP_TIMEOUT):
            await closer()
