"""The daemon, assembled in one place: what ``trigger-bridge run`` is made of.

:class:`Daemon` builds the process from the config and the settings: the metrics and
the :class:`~bridge.supervisor.Supervisor` every background loop runs under; the
:class:`~bridge.reload.Composer` (config file + Trigger resources -> ``Runtime.apply``)
and the file's :class:`~bridge.reload.ConfigReloader`; the Kubernetes attachments when
configured (one API client, the cron Lease as the leadership, the Trigger watch and its
status writer, endpoint pools for ``kubernetes`` functions); and the
:class:`~bridge.runtime.Runtime`, which receives all of them in its constructor.

:func:`serve` runs it: start, tune the garbage collector, then wait for the first
*root task* to end -- a signal (SIGTERM or SIGINT sets an event; a second one exits at
once) -- and stop (drain, release; see :mod:`bridge.runtime`). Exit codes
(:mod:`bridge.exit_codes`): 0 after a stop; 2 for a config the connectors or sinks
refuse at start-up (raised as :class:`~bridge.config.ConfigError` for the CLI to print
one line per problem); 1 for a second signal.

Only this module (and the CLI, the demo and the redrive command, which use it) import
:mod:`bridge.kube`, and only when a Kubernetes feature is configured: an all-queue
daemon never loads ``kubernetes_asyncio``.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from bridge.cluster import Cluster
from bridge.config import BridgeConfig, KubernetesTarget
from bridge.cron_control import (
    CronStateStore,
    FileStateStore,
    MemoryStateStore,
    ScheduleControl,
)
from bridge.exit_codes import EXIT_FAILURE, EXIT_OK
from bridge.leadership import AlwaysLeader, Leadership
from bridge.logs import Logger, get_logger
from bridge.metrics import Metrics
from bridge.pools import WatchedPool
from bridge.reload import Composer, ConfigReloader
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.supervisor import Loop, Supervisor

if TYPE_CHECKING:
    from bridge.kube.client import KubeClient


class Daemon:
    """The whole process: every part built here, handed to the runtime at construction."""

    def __init__(
        self,
        config: BridgeConfig,
        settings: Settings,
        config_path: str | None = None,
        *,
        log: Logger | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._stopped = False
        self.log = log or get_logger()
        self.metrics = metrics or Metrics()
        self.supervisor = Supervisor(self.log, self.metrics)
        self.kubernetes = KubernetesParts(settings, self.log)
        self.composer = Composer(self._apply, config, self.log)
        services: list[Loop] = []
        probes: dict[str, Callable[[], bool]] = {}
        self.reloader: ConfigReloader | None = None
        if config_path:
            self.reloader = ConfigReloader(
                config_path, self.composer, settings.reload_interval, self.log
            )
            services.append(Loop("config-reload", self.reloader.run))
        self.cluster: Cluster | None = None
        self.state: CronStateStore = (
            FileStateStore(settings.state_file) if settings.state_file else MemoryStateStore()
        )
        leadership = self._attach_kubernetes(services, probes)
        self.runtime = Runtime(
            config, settings, metrics=self.metrics, log=self.log, supervisor=self.supervisor,
            leadership=leadership, services=services, probes=probes,
            kubernetes_pools=self.kubernetes.pool, resources=[self.kubernetes],
            cluster=self.cluster,
            state=self.state,
        )

    async def _apply(self, config: BridgeConfig) -> Mapping[str, str]:
        return await self.runtime.apply(config)

    def _attach_kubernetes(
        self, services: list[Loop], probes: dict[str, Callable[[], bool]]
    ) -> Leadership:
        """``BRIDGE_LEADER_ELECTION``: a Lease decides which replica fires cron ticks (the
        runtime's leadership: it stops firing first and is released last, after the
        triggers drained). ``BRIDGE_WATCH_TRIGGERS``: Trigger resources join the composed
        config (a service: started after the triggers, stopped before them). Each adds
        a readiness probe (false while the API refuses the service account)."""
        settings = self.settings
        leadership: Leadership = AlwaysLeader()
        if not (settings.leader_election or settings.watch_triggers
                or settings.cluster_quotas or settings.cron_shards):
            return leadership
        from bridge.kube.lease import LeaseLeadership
        from bridge.kube.members import MemberLeases
        from bridge.kube.trigger_watch import TriggerWatcher

        client = self.kubernetes.client()
        identity = settings.instance or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        if settings.cluster_quotas or settings.cron_shards:
            members = MemberLeases(
                client, settings.lease_name, identity, self.log,
                lease_duration=settings.lease_duration,
                renew_deadline=settings.lease_renew_deadline,
                retry_period=settings.lease_retry_period,
                shard_count=settings.cron_shards, metrics=self.metrics,
            )
            probes["cluster"] = lambda: members.ready
            self.cluster = members
        if settings.cron_shards:
            from bridge.kube.shards import ShardedLeadership

            cluster = self.cluster
            assert cluster is not None

            def shard_lease(name: str) -> LeaseLeadership:
                return LeaseLeadership(
                    client, name, identity, self.log,
                    lease_duration=settings.lease_duration,
                    renew_deadline=settings.lease_renew_deadline,
                    retry_period=settings.lease_retry_period, metrics=self.metrics,
                    holder_gone=cluster.gone,
                )

            sharded = ShardedLeadership.build(settings.cron_shards, shard_lease,
                                              settings.lease_name, cluster, self.log)
            probes["lease"] = lambda: all(shard.ready for shard in sharded.shards)
            leadership = sharded
        elif settings.leader_election:
            lease = LeaseLeadership(
                client, settings.lease_name, identity, self.log,
                lease_duration=settings.lease_duration,
                renew_deadline=settings.lease_renew_deadline,
                retry_period=settings.lease_retry_period, metrics=self.metrics,
            )
            probes["lease"] = lambda: lease.ready
            leadership = lease
        if settings.leader_election or settings.cron_shards:
            from bridge.kube.cron_state import LeaseStateStore, state_lease_name

            # shared by every replica: a pause or a backfill outlives a leader change
            self.state = LeaseStateStore(client, state_lease_name(settings.lease_name),
                                         self.log)
        if settings.watch_triggers:
            watcher = TriggerWatcher(
                client, self.log, refresh=self.composer.refresh, leadership=leadership,
                last_schedule_time=self._last_schedule_time, identity=identity,
                control=self._schedule_control,
            )
            self.composer.add_source(watcher)
            services += [Loop("trigger-resources", watcher.run),
                         Loop("trigger-status", watcher.status.run)]
            probes["trigger-resources"] = lambda: watcher.ready
        return leadership

    def _last_schedule_time(self, trigger: str) -> datetime | None:
        return self.runtime.last_schedule_time(trigger)

    def _schedule_control(self, trigger: str) -> tuple[ScheduleControl, str]:
        return self.runtime.schedule_control(trigger)

    async def start(self) -> None:
        """Start the runtime; ConfigError when a trigger's settings are refused."""
        await self.runtime.start()

    async def stop(self) -> None:
        """Drain and stop (see :meth:`Runtime.shutdown`); once: a second call returns."""
        if self._stopped:
            return
        self._stopped = True
        await self.runtime.shutdown()


class KubernetesParts:
    """The process's one Kubernetes API client (made on first use) and the endpoint
    pools of ``kubernetes`` functions built on it."""

    def __init__(self, settings: Settings, log: Logger) -> None:
        self._settings = settings
        self._log = log
        self._client: KubeClient | None = None

    def client(self) -> KubeClient:
        if self._client is None:
            from bridge.kube.client import KubeClient

            self._client = KubeClient(self._settings, self._log)
        return self._client

    def pool(self, function_name: str, target: KubernetesTarget) -> WatchedPool:
        """A function's pool over its EndpointSlices (its watch runs supervised)."""
        from bridge.kube.pool import KubernetesPool

        return KubernetesPool(function_name, target, self.client(), self._log)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()


async def serve(config: BridgeConfig, settings: Settings, config_path: str | None = None) -> int:
    """``trigger-bridge run``: start, run until a signal, stop; the exit code."""
    stop = stop_on_signals()
    daemon = Daemon(config, settings, config_path)
    await daemon.start()  # ConfigError: the CLI prints it and exits 2
    await asyncio.sleep(0)  # let every pump reach its first wait
    tune_gc()
    try:
        await first_of({"signal": stop.wait()}, daemon.log)
    finally:
        await daemon.stop()
    return EXIT_OK


async def first_of(roots: Mapping[str, Awaitable[object]], log: Logger) -> str:
    """Run the root tasks until the first one ends, cancel the others (as kopf does);
    the name of the one that ended. Its exception, if any, is raised."""
    tasks = {asyncio.ensure_future(root): name for name, root in roots.items()}
    for task, name in tasks.items():
        task.set_name(f"root:{name}")
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    first = next(iter(done))
    log.info("stopping", reason=tasks[first])
    first.result()
    return tasks[first]


def tune_gc() -> None:
    """Keep the garbage collector from pausing the event loop.

    What start-up built (config, triggers, schedules, waiting pumps) lives as long as the
    process: ``gc.freeze`` keeps it out of every later pass. Each trigger also keeps a
    few long-lived objects (its pump's current wait, its stats), so full passes stay
    costly with many triggers (0.1-0.5 s with 10,000, seen as cron fire-lag spikes);
    they are made rare, while young collections, which catch the short cycles of
    request handling, stay frequent.
    """
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT; a second signal exits at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            print(f"second {signal.Signals(signum).name}: exiting now", file=sys.stderr)
            raise SystemExit(EXIT_FAILURE)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop
