"""The daemon's lifecycle: build every trigger, run it, drain it.

:class:`Runtime` is given everything it works with in its constructor (the daemon,
:mod:`bridge.daemon`, assembles them): the :class:`~bridge.supervisor.Supervisor` that
runs its loops, the cron leadership, the *services* (loops started after the triggers
and stopped before them: config reload, the Trigger watch and its status writer), the
readiness probes, and the factory of Kubernetes endpoint pools (so the engine never
imports :mod:`bridge.kube`). Nothing assigns them afterwards.

Every loop runs under the supervisor: one *pump* per trigger (connector ->
dispatcher, ``pump:<trigger>``), the leadership's, the services and each Kubernetes
pool's endpoint watch (``endpoints:<function>``). A pump whose connector fails to start
or breaks restarts the connector with backoff and logs why; its trigger reads not-ready
meanwhile. A bug in any loop is the supervisor's: logged, counted, restarted.

The stop (:meth:`Runtime.shutdown`, after a signal): cron stops firing (a Lease stays
held), the services stop, intake stops (pumps are cancelled), in-flight work drains
within ``BRIDGE_DRAIN_TIMEOUT``, connectors settle and close (commit, ack), the Lease
is released (so the next leader cannot overlap a run of ours), sinks, pools and clients
close, and the process exits 0. The whole stop fits in ``BRIDGE_DRAIN_TIMEOUT`` + 5 s:
every step after the drain is cut off at that budget.

Running triggers are keyed by name, so a config reload or a Trigger resource change can
add, replace or remove one without touching the others (:meth:`Runtime.apply`). A
trigger that cannot be *built* (its connector or sink refuses the settings) stops the
start-up (a config problem: the CLI exits 2 naming it); after that it is one trigger
down, reported (log, ``/readyz``, its Trigger's status), while the others run on.

Dead-letter sinks are shared by the triggers whose sink settings are equal, compared by
their real values (:func:`~bridge.deadletter.sink_key`: a password or virtual host of
its own is a sink of its own). Each running trigger holds the keys of its sinks; after
an apply, a sink no running trigger holds any more is closed, so a rotated credential
or a removed sink leaves no connection behind.
"""


from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Protocol

import aiohttp

from bridge.admin import AdminServer
from bridge.closing import close_quietly
from bridge.cluster import Cluster
from bridge.config import (
    BridgeConfig,
    ConfigError,
    ConfigProblem,
    FunctionConfig,
    KubernetesTarget,
    ResolvedTrigger,
    SinkConfig,
    secrets_of,
    unused_quotas,
)
from bridge.control import ControlApi
from bridge.cron_control import ControlError, CronStateStore, MemoryStateStore, ScheduleControl
from bridge.deadletter import Sink, SinkRefused, sink_key
from bridge.dispatcher import Dispatcher
from bridge.errors import describe
from bridge.eventloop import loop_name
from bridge.invoker import Invoker
from bridge.leadership import AlwaysLeader, Leadership
from bridge.logs import Logger, Redactor, get_logger, redact
from bridge.metrics import Metrics
from bridge.pools import BalancedPool, Pool, Target, WatchedPool
from bridge.quotas import QuotaLimits
from bridge.replies import ReplySink
from bridge.retry import Backoff
from bridge.settings import Settings
from bridge.supervisor import Loop, Supervisor
from bridge.tracing import Tracer
from bridge.tracing import build as build_tracer
from connectors.base import (
    Connector,
    ConnectorContext,
    connector_factory,
    reply_factory,
    sink_factory,
)

#: A connector that fails to start or breaks is started again after this.
_RESTART = Backoff(initial=1.0, maximum=30.0)
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

#: Builds the endpoint pool of a function with a ``kubernetes`` target (the daemon gives
#: one that imports :mod:`bridge.kube` on first use).
KubernetesPools = Callable[[str, KubernetesTarget], WatchedPool]


class Closable(Protocol):
    async def close(self) -> None: ...


class SettingRefused(Exception):
    """A broker refuses one setting of a trigger (a reply topic or exchange that does
    not exist): reported at that setting's path (``triggers[0].reply.kafka.topic``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class BuildFailure:
    """A trigger that could not be built: tried again when its settings change."""

    trigger: ResolvedTrigger
    reason: str


@dataclass(slots=True, eq=False)
class RunningTrigger:
    """One trigger the runtime runs: its connector, dispatcher and pump."""

    trigger: ResolvedTrigger
    connector: Connector
    dispatcher: Dispatcher
    #: The supervised pump task (connector -> dispatcher), once launched.
    pump: asyncio.Task[None] | None = None
    #: Consecutive failures of the connector (its restart backoff).
    failures: int = field(default=0)
    #: Keys (in Runtime._sinks / _replies) of its dead-letter sink, fallback and reply.
    sinks: tuple[str, ...] = ()


class Runtime:
    def __init__(
        self,
        config: BridgeConfig,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        log: Logger | None = None,
        supervisor: Supervisor | None = None,
        leadership: Leadership | None = None,
        services: Sequence[Loop] = (),
        probes: Mapping[str, Callable[[], bool]] | None = None,
        kubernetes_pools: KubernetesPools | None = None,
        resources: Sequence[Closable] = (),
        cluster: Cluster | None = None,
        state: CronStateStore | None = None,
    ) -> None:
        """``services``: loops started after the triggers and stopped before them
        (config reload, the Trigger watch). ``probes``: extra readiness checks by name
        (e.g. a Kubernetes watch refused by RBAC). ``resources``: closed at the end of
        the stop, with the sinks (a Kubernetes API client). ``cluster``: the live
        replicas (its loop runs from the start; it is left after the drain); with
        ``BRIDGE_CLUSTER_QUOTAS`` each replica enforces its share of every quota.
        ``state``: where cron triggers keep a pause and a backfill's progress (default:
        in memory)."""
        self.config = config
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.log = log or get_logger()
        self._supervisor = supervisor or Supervisor(self.log, self.metrics)
        self.leadership: Leadership = leadership or AlwaysLeader()
        self.context = ConnectorContext(
            metrics=self.metrics,
            log=self.log,
            leadership=self.leadership,
            state=state or MemoryStateStore(),
        )
        self._services = tuple(services)
        self._probes = dict(probes or {})
        self._kubernetes_pools = kubernetes_pools
        self._resources = tuple(resources)
        self._cluster = cluster
        self.quotas = QuotaLimits(cluster if settings.cluster_quotas else None,
                                  self.metrics, self.log)
        self.triggers: dict[str, RunningTrigger] = {}
        #: Triggers of the config that could not be built (see :meth:`apply`).
        self.failures: dict[str, BuildFailure] = {}
        control = ControlApi(self.schedule_control, settings.control_token_file,
                             self.metrics, self.log)
        self.admin = AdminServer(
            self.metrics, self.readiness, settings.admin_host, settings.admin_port, control
        )
        self._session: aiohttp.ClientSession | None = None
        self._invoker: Invoker | None = None
        #: Set by start() when tracing is on (bridge.tracing); None: off.
        self._tracer: Tracer | None = None
        self._targets: dict[str, Target] = {}
        #: The pools of the targets that watch their endpoints, and their watch tasks.
        self._watched: dict[str, WatchedPool] = {}
        self._watches: dict[str, asyncio.Task[None]] = {}
        self._sinks: dict[str, Sink] = {}
        #: Reply targets (bridge.replies), shared like the sinks.
        self._replies: dict[str, ReplySink] = {}
        self._functions: dict[str, FunctionConfig] = {}
        self._service_tasks: list[asyncio.Task[None]] = []
        self._leadership_task: asyncio.Task[None] | None = None
        self._cluster_task: asyncio.Task[None] | None = None
        #: True while start() runs: not ready before every trigger is built (with no
        #: trigger running yet, "every trigger ready" would be vacuously true).
        self._starting = False

    # --- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._starting = True
        self._session = Invoker.new_session()
        self._invoker = Invoker(self._session)
        self._tracer = build_tracer(self.settings, self.log)
        try:
            await self._start_admin()
            await self._start_all()
        except ConfigError:
            await self._release()
            raise
        if self._cluster is not None:
            self._cluster_task = self._supervisor.spawn("cluster", self._cluster.run)
        self._leadership_task = self._supervisor.spawn("leadership", self.leadership.run)
        self._service_tasks = [self._supervisor.spawn(s.name, s.run) for s in self._services]
        self._starting = False
        self.log.info(
            "trigger-bridge started", triggers=len(self.triggers), admin_port=self.admin.port,
            event_loop=loop_name(),
        )

    async def shutdown(self) -> None:
        started = time.monotonic()
        deadline = started + self.settings.drain_timeout + _STOP_BUDGET
        running = list(self.triggers.values())
        self.log.info("draining", triggers=len(running), timeout=self.settings.drain_timeout)
        leadership = self.leadership
        leadership.stop_leading()  # no tick fires from now on; a Lease stays held
        services, self._service_tasks = self._service_tasks, []
        await self._stop_step("stop the services", deadline, partial(_cancel, services))
        await self._stop_step("stop intake", deadline, lambda: self._stop_intake(running))
        drain_for = max(0.0, min(self.settings.drain_timeout,
                                 deadline - _AFTER_DRAIN - time.monotonic()))
        drained = await asyncio.gather(*(r.dispatcher.drain(drain_for) for r in running))
        await asyncio.gather(*(
            self._stop_step("stop connector", deadline - 2 * _CLOSE_RESERVE, r.connector.stop,
                            trigger=r.trigger.name)
            for r in running
        ))
        self.triggers.clear()
        # Released only now: a run of ours (Forbid) never overlaps the next leader's.
        await self._stop_step("release the Lease", deadline - _CLOSE_RESERVE,
                              self._release_leadership)
        await self._stop_step("leave the cluster", deadline - _CLOSE_RESERVE,
                              self._leave_cluster)
        watches = list(self._watches.values())
        self._watches.clear()
        await self._stop_step("stop the endpoint watches", deadline, partial(_cancel, watches))
        resources: list[Closable] = [*self._sinks.values(), *self._replies.values(),
                                     *self._targets.values(), *self.context.shared_values(),
                                     *self._resources,
                                     *([] if self._tracer is None else [self._tracer])]
        await asyncio.gather(*(
            self._stop_step(f"close {type(r).__name__}", deadline, r.close)
            for r in resources
        ))
        self._sinks.clear()
        self._replies.clear()
        self._targets.clear()
        self._watched.clear()
        if self._session is not None:
            await self._stop_step("close the HTTP session", deadline, self._session.close)
        await self._stop_step("stop the admin server", deadline, self.admin.stop)
        await self._supervisor.stop(max(0.0, deadline - time.monotonic()))
        self.log.info(
            "stopped", drained=all(drained), seconds=round(time.monotonic() - started, 3)
        )

    async def _release_leadership(self) -> None:
        """End the leadership's loop, then give leadership up (release the Lease)."""
        task, self._leadership_task = self._leadership_task, None
        if task is not None:
            await _cancel([task])
        await self.leadership.close()

    async def _leave_cluster(self) -> None:
        """After the drain (our in-flight count against our shares until now): end the
        membership loop and leave, so the other replicas take our shares at once."""
        task, self._cluster_task = self._cluster_task, None
        if task is not None:
            await _cancel([task])
        if self._cluster is not None:
            await self._cluster.close()

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
            self.log.warning("stop step failed", step=what, error=describe(err, 400), **context)

    def readiness(self) -> Mapping[str, bool]:
        ready = {name: running.connector.ready for name, running in self.triggers.items()}
        ready.update(dict.fromkeys(self.failures, False))
        if self._starting:
            ready["startup"] = False
        ready.update({name: probe() for name, probe in self._probes.items()})
        for name, pool in self._watched.items():
            ready[f"function:{name}"] = pool.ready
        for name, running in self.triggers.items():
            if running.dispatcher.blocked:  # dead letters every sink refuses: see dispatcher
                ready[f"dead_letter:{name}"] = False
            control = running.connector.control
            if control is not None and control.paused is not None:  # pause_on_failure
                ready[f"paused:{name}"] = False
        return ready

    def schedule_control(self, trigger: str) -> tuple[ScheduleControl, str]:
        """The control of running cron trigger ``trigger`` and its time zone;
        ControlError 404 (unknown) or 409 (not cron, not running)."""
        running = self.triggers.get(trigger)
        known = {t.name: t for t in self.config.triggers}
        if trigger not in known:
            raise ControlError(404, f"no trigger named {trigger!r}")
        config = known[trigger]
        if config.cron is None:
            raise ControlError(409, f"trigger {trigger!r} is a {config.kind} trigger: only "
                                    "cron triggers run now, backfill or resume")
        control = None if running is None else running.connector.control
        if control is None:
            raise ControlError(409, f"trigger {trigger!r} is not running (see /readyz)")
        return control, config.cron.time_zone

    def last_schedule_time(self, trigger: str) -> datetime | None:
        """The scheduled time of the last tick ``trigger`` fired (cron), else None."""
        running = self.triggers.get(trigger)
        return None if running is None else running.connector.last_schedule_time

    # --- running triggers -----------------------------------------------------------

    async def apply(self, config: BridgeConfig) -> Mapping[str, str]:
        """Move to ``config``: start new triggers, restart changed ones, stop removed ones.

        Per trigger: one that cannot be built (its connector or sink refuses its settings)
        is logged and left out, and every other trigger still stops, starts or runs on.
        It is tried again once its settings change. Returns the triggers of ``config``
        that are not running for that reason (name -> secret-free reason).
        """
        wanted = {t.name: config.resolve(t) for t in config.triggers}
        self.config = config
        self._apply_quotas(wanted.values())
        changed = [n for n, r in self.triggers.items() if wanted.get(n) != r.trigger]
        for name in changed:
            await self.stop_trigger(name)
            if name not in wanted:
                self.metrics.forget(name)  # removed: its series go too
        for name in [n for n in self.failures if n not in wanted]:
            self.metrics.forget(name)  # a removed trigger that never ran: its series go too
        self.failures = {n: f for n, f in self.failures.items() if wanted.get(n) == f.trigger}
        for name in [f for f, fn in self._functions.items() if config.functions.get(f) != fn]:
            # Changed or removed function: its triggers were stopped above; rebuild it.
            self._functions.pop(name)
            await self._close_target(name)
        for name, resolved in wanted.items():
            if name in self.triggers or name in self.failures:
                continue
            try:
                self._launch(await self._build(resolved))
            except Exception as err:
                failure = BuildFailure(resolved, _build_error(resolved, err))
                self.failures[name] = failure
                # Its series exist and read not ready (bridge_connector_ready 0).
                self.metrics.trigger(name, resolved.function_name).readiness = None
                self.log.error("trigger cannot be started; the others go on", trigger=name,
                               error=failure.reason)
        await self._close_unused_sinks()
        return {name: failure.reason for name, failure in self.failures.items()}

    def _apply_quotas(self, triggers: Iterable[ResolvedTrigger]) -> None:
        """Team quotas of the config: resized in place (the functions joining them keep
        running), dropped when removed; a quota no function joins is logged."""
        quotas = self.config.quotas
        for name in self.quotas.names("team") - set(quotas):
            self.quotas.drop("team", name)
        for name in self.quotas.names("team") & set(quotas):
            self.quotas.limit("team", name, quotas[name].max_concurrency)
        for name in unused_quotas(self.config, (t.function for t in triggers)):
            self.log.warning("quota is used by no function", quota=name,
                             max_concurrency=quotas[name].max_concurrency)

    async def _start_all(self) -> None:
        """Build every trigger of the config, then start them; ConfigError if any fails.

        At start-up a trigger that cannot be built is a config problem: nothing is started
        and the CLI exits 2 naming it (``triggers[3]: cannot be started: ...``).
        """
        built, problems = [], []
        self._apply_quotas(self.config.resolve(t) for t in self.config.triggers)
        for index, trigger in enumerate(self.config.triggers):
            resolved = self.config.resolve(trigger)
            try:
                built.append(await self._build(resolved))
            except SettingRefused as err:
                problems.append(ConfigProblem(f"triggers[{index}].{err.path}",
                                              _build_error(resolved, err, err.reason)))
            except Exception as err:
                problems.append(ConfigProblem(
                    f"triggers[{index}]", f"cannot be started: {_build_error(resolved, err)}"
                ))
        if problems:
            raise ConfigError(problems)
        for running in built:
            self._launch(running)

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
        for name in list(self._targets):
            await self._close_target(name)
        for resource in [*self._sinks.values(), *self._replies.values(),
                         *self.context.shared_values(), *self._resources,
                         *([] if self._tracer is None else [self._tracer])]:
            await close_quietly(resource.close, timeout=_STOP_TIMEOUT)
        self._sinks.clear()
        self._replies.clear()
        if self._session is not None:
            await self._session.close()
        await self.admin.stop()

    async def _build(self, trigger: ResolvedTrigger) -> RunningTrigger:
        """The trigger's connector, sink and dispatcher; raises if its settings are refused."""
        assert self._invoker is not None, "start() first"
        connector = connector_factory(trigger.config.kind)(trigger, self._context_of(trigger))
        dead_letter = trigger.dead_letter
        assert dead_letter is not None, "validated: every trigger has a dead-letter sink"
        sink_id, sink = await self._sink(dead_letter.primary(), trigger)
        sinks: tuple[str, ...] = (sink_id,)
        fallback: Sink | None = None
        if dead_letter.fallback is not None:
            fallback_id, fallback = await self._sink(dead_letter.fallback, trigger)
            sinks += (fallback_id,)
        replies: ReplySink | None = None
        if trigger.reply is not None:
            reply_id, replies = await self._reply_sink(trigger)
            sinks += (reply_id,)
        dispatcher = Dispatcher(
            trigger,
            target=self._target(trigger.function_name, trigger.function),
            invoker=self._invoker,
            sink=sink,
            fallback=fallback,
            metrics=self.metrics,
            log=self.log,
            ordering=trigger.ordering,
            max_unsettled=connector.max_unsettled,
            replies=replies,
            tracer=self._tracer,
        )
        return RunningTrigger(trigger, connector, dispatcher, sinks=sinks)

    def _context_of(self, trigger: ResolvedTrigger) -> ConnectorContext:
        """The connectors' context with the trigger's own leadership (its cron shard's
        Lease when cron is sharded; the same object otherwise)."""
        leadership = self.leadership.for_trigger(trigger.name)
        if leadership is self.leadership:
            return self.context
        return dataclasses.replace(self.context, leadership=leadership)

    def _launch(self, running: RunningTrigger) -> None:
        connector, trigger = running.connector, running.trigger
        # Read at every scrape: bridge_connector_ready needs no /readyz call first.
        self.metrics.trigger(trigger.name, trigger.function_name).readiness = (
            lambda: connector.ready
        )
        running.pump = self._supervisor.spawn(f"pump:{trigger.name}",
                                              partial(self._pump, running))
        self.triggers[trigger.name] = running

    async def stop_trigger(self, name: str) -> None:
        running = self.triggers.pop(name, None)
        if running is None:
            return
        await self._stop_intake([running])
        await running.dispatcher.drain(self.settings.drain_timeout)
        await self._stop_connector(running)
        self.metrics.trigger(name).readiness = None
        self.log.info("trigger stopped", trigger=name)

    async def _pump(self, running: RunningTrigger) -> None:
        """connector -> dispatcher, restarting the connector with backoff when it fails."""
        connector, dispatcher = running.connector, running.dispatcher
        while True:
            try:
                await connector.start()
                running.failures = 0
                async for event in connector.events():
                    await dispatcher.submit(event)
                    del event  # do not keep the last event alive until the next one
                self.log.warning("source ended; restarting", trigger=running.trigger.name)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                running.failures += 1
                delay = _RESTART.delay(running.failures)
                self.log.error(
                    "source failed", trigger=running.trigger.name, error=describe(err, 400),
                    attempt=running.failures, retry_in=round(delay, 2),
                )
                await close_quietly(connector.stop, timeout=_STOP_TIMEOUT)
                await asyncio.sleep(delay)

    async def _stop_intake(self, running: list[RunningTrigger]) -> None:
        await _cancel([r.pump for r in running if r.pump is not None])

    async def _stop_connector(self, running: RunningTrigger) -> None:
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await running.connector.stop()
        except Exception as err:
            self.log.warning(
                "connector stop failed", trigger=running.trigger.name, error=describe(err, 400)
            )

    # --- shared parts ----------------------------------------------------------------

    def _target(self, name: str, function: FunctionConfig) -> Target:
        """One target per function: its quota is shared by every trigger that calls it."""
        if name not in self._targets:
            self._functions[name] = function
            limit = (None if function.max_concurrency is None
                     else self.quotas.limit("function", name, function.max_concurrency))
            team = self.config.quotas.get(function.quota) if function.quota else None
            self._targets[name] = Target(
                name=name,
                pool=self._pool(name, function),
                max_concurrency=function.max_concurrency,
                limit=limit,
                limits=() if team is None or function.quota is None else (
                    self.quotas.limit("team", function.quota, team.max_concurrency),),
                headers=function.headers,
                overflow_url=function.overflow.url if function.overflow else None,
                overflow_after=function.overflow.after if function.overflow else 0.25,
                adaptive=function.adaptive,
                redact=Redactor(secrets_of(function)),
            )
            self._export_limit(name, self._targets[name])
        return self._targets[name]

    def _export_limit(self, name: str, target: Target) -> None:
        """``bridge_function_concurrency_limit{function}``, read at scrape time."""
        if target.concurrency_limit is not None:
            self.metrics.function_limit(name, lambda: target.concurrency_limit or 0)

    def _pool(self, name: str, function: FunctionConfig) -> Pool:
        """A static pool, or a Kubernetes one whose endpoint watch runs supervised."""
        if function.kubernetes is None:
            return BalancedPool(function.static_urls)
        if self._kubernetes_pools is None:
            raise LookupError("no Kubernetes pools in this process")
        pool = self._kubernetes_pools(name, function.kubernetes)
        self._watched[name] = pool
        self._watches[name] = self._supervisor.spawn(f"endpoints:{name}", pool.run)
        return pool

    async def _close_target(self, name: str) -> None:
        """Stop a function's endpoint watch (if any) and close its target."""
        watch = self._watches.pop(name, None)
        if watch is not None:
            await _cancel([watch])
        self._watched.pop(name, None)
        self.quotas.drop("function", name)
        target = self._targets.pop(name, None)
        if target is not None:
            self.metrics.function_limit(name, None)
            await close_quietly(target.close, timeout=_STOP_TIMEOUT)

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
                         if isinstance(err, TimeoutError) else describe(err, 400))
                self.log.error("dead-letter sink not available yet", trigger=trigger.name,
                               sink=config.kind, error=error)
            self._sinks[key] = sink
        return key, self._sinks[key]

    async def _reply_sink(self, trigger: ResolvedTrigger) -> tuple[str, ReplySink]:
        """The reply target of ``trigger`` (shared like the sinks) and its key.

        A target the broker refuses for good at start (a topic or exchange that does
        not exist, access refused) is a config problem: raised, so the trigger is not
        built. One not reachable yet connects on its first publish.
        """
        config = trigger.reply
        assert config is not None
        key = "reply:" + sink_key(config, trigger)
        if key not in self._replies:
            replies = reply_factory(config.kind)(trigger)
            try:
                async with asyncio.timeout(_SINK_START_TIMEOUT):
                    await replies.start()
            except SinkRefused as err:
                await close_quietly(replies.close, timeout=_STOP_TIMEOUT)
                target = "topic" if config.kind == "kafka" else "exchange"
                raise SettingRefused(f"reply.{config.kind}.{target}", str(err)) from None
            except Exception as err:
                error = (f"no answer within {_SINK_START_TIMEOUT:g}s"
                         if isinstance(err, TimeoutError) else describe(err, 400))
                self.log.error("reply target not available yet", trigger=trigger.name,
                               reply=config.kind, error=error)
            self._replies[key] = replies
        return key, self._replies[key]

    async def _close_unused_sinks(self) -> None:
        """Close the sinks and reply targets no running trigger uses any more (removed,
        or settings changed: another URL, a rotated password)."""
        used = {key for running in self.triggers.values() for key in running.sinks}
        for key in [k for k in self._sinks if k not in used]:
            sink = self._sinks.pop(key)
            await close_quietly(sink.close, timeout=_STOP_TIMEOUT)
            self.log.info("dead-letter sink closed: no trigger uses it",
                          sink=type(sink).__name__)
        for key in [k for k in self._replies if k not in used]:
            replies = self._replies.pop(key)
            await close_quietly(replies.close, timeout=_STOP_TIMEOUT)
            self.log.info("reply target closed: no trigger uses it",
                          target=type(replies).__name__)


def _build_error(trigger: ResolvedTrigger, err: BaseException, text: str | None = None) -> str:
    """Why ``trigger`` could not be built (``text``, else the error described), without
    any piece of its secrets."""
    if text is None:
        text = str(err)[:400] if isinstance(err, SettingRefused) else describe(err, 400)
    return redact(text, secrets_of(trigger.config, trigger.function, trigger.dead_letter))



async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they ended."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

