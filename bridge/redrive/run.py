"""The redrive itself: every dead letter of a source, through the daemon's own path.

Re-invoking (the default) builds, per trigger, the daemon's :class:`Dispatcher` with
the function's :class:`Target` (its quota, endpoints and overflow pool), the shared
:class:`Invoker`, and the trigger's dead-letter sinks from the config: the same
retries and backoff, the same per-key order (the letters of one key are redriven one
after the other, in the order they were stored), the same dead-letter rules. The
rebuilt event keeps its CloudEvent id. Each letter is settled with its source (see
:mod:`bridge.redrive.sources`) only once its redrive is done: a 2xx from the function,
or -- when it fails again -- a confirmed new dead letter, which carries the history
(``bridge-redrive-attempts``, ``bridge-redrive-history``). The new dead letter goes to
the trigger's sink from the config, or back where it was read (``--dead-letter-back``,
and always for a ``rabbitmq: {reject: true}`` sink, which has nothing to write to).

``--to-source`` republishes the original message (body, key, headers, CloudEvent id)
to the topic or exchange it came from instead, through the trigger's own connection;
the daemon then takes it like any new message. A letter is removed once the broker
confirmed the publish; one whose publish fails three times stays where it is.

``--dry-run`` reads, filters and checks every letter, prints what would happen and
settles nothing. A signal stops reading; attempts in flight finish within
``BRIDGE_DRAIN_TIMEOUT``, everything else stays where it is (a second signal exits).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from bridge.closing import close_quietly
from bridge.config import BridgeConfig, ResolvedTrigger, SinkConfig, secrets_of
from bridge.deadletter import DeadLetter, Sink, sink_key
from bridge.dispatcher import Dispatcher
from bridge.errors import describe
from bridge.events import Disposition, Event, Settler
from bridge.invoker import Invoker
from bridge.leadership import AlwaysLeader
from bridge.logs import Logger, Redactor
from bridge.metrics import Metrics
from bridge.pools import BalancedPool, Pool, Target
from bridge.redrive.letters import Letter, NotRedrivable, to_event
from bridge.redrive.report import Counts, Report
from bridge.redrive.selection import Selection
from bridge.redrive.sources import Item, LetterSource, Republisher
from bridge.runtime import KubernetesPools
from bridge.supervisor import Supervisor
from connectors.base import ConnectorContext, republisher_factory, sink_factory

#: How long a dead-letter sink may take to connect before the first write tries again.
_SINK_START_TIMEOUT = 5.0
#: Publishes awaiting their broker confirm at once (``--to-source``).
_PUBLISH_WINDOW = 100
_PUBLISH_TRIES = 3
#: How long the endpoint watches of ``kubernetes`` functions may take to stop.
_WATCH_STOP_TIMEOUT = 5.0
#: Bound of closing one sink, target or republisher at the end.
_CLOSE_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class RedriveOptions:
    selection: Selection = field(default_factory=Selection)
    to_source: bool = False
    dry_run: bool = False
    #: Failures go back where they were read, not to the trigger's sink.
    back: bool = False
    #: Overrides every trigger's ``concurrency`` (the function quota still applies).
    concurrency: int | None = None
    #: Redrive at most this many letters; the rest stay for the next run.
    limit: int | None = None
    drain_timeout: float = 10.0
    #: Named in messages ("trigger 'x' is not in CONFIG").
    config_name: str = "the config"


class Redrive:
    def __init__(
        self,
        config: BridgeConfig,
        source: LetterSource,
        options: RedriveOptions,
        report: Report,
        log: Logger,
        *,
        kubernetes_pools: KubernetesPools | None = None,
    ) -> None:
        """``kubernetes_pools`` builds the pools of ``kubernetes`` functions (the
        daemon's :class:`~bridge.daemon.KubernetesParts`); their watches run under the
        redrive's own supervisor."""
        self.config = config
        self.source = source
        self.options = options
        self.report = report
        self.counts = report.counts
        self.interrupted = False
        self._log = log
        self._context = ConnectorContext(
            metrics=Metrics(), log=log, leadership=AlwaysLeader()
        )
        self._kubernetes_pools = kubernetes_pools
        self._supervisor = Supervisor(log, self._context.metrics)
        self._triggers = {t.name: t for t in config.triggers}
        self._session: aiohttp.ClientSession | None = None
        self._invoker: Invoker | None = None
        self._dispatchers: dict[tuple[str, str], Dispatcher] = {}
        self._targets: dict[str, Target] = {}
        self._sinks: dict[str, _Noting] = {}
        self._republishers: dict[str, Republisher] = {}
        #: Events handed to a dispatcher and not yet settled.
        self._open = 0
        self._idle = asyncio.Event()
        self._idle.set()
        #: The last dead letter written per (trigger, id, source), for the output line.
        self._written: dict[tuple[str, str, str], tuple[DeadLetter, str]] = {}
        self._window = asyncio.Semaphore(_PUBLISH_WINDOW)
        self._selected = 0

    async def run(self, stop: asyncio.Event) -> Counts:
        """Redrive everything; returns the counts (also kept in the report)."""
        await self.source.open()
        try:
            self.report.begin(self.source.name, self.source.total, self.source.recovered)
            work = asyncio.ensure_future(self._work())
            halt = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({work, halt}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                halt.cancel()
            if work.done():
                work.result()
            else:
                self.interrupted = True
                self.report.problem("interrupted: finishing the attempts in flight; "
                                    "the rest stays where it is")
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                await asyncio.gather(*(d.drain(self.options.drain_timeout)
                                       for d in self._dispatchers.values()))
        finally:
            await self._close()
        self.report.finish(self.interrupted)
        return self.counts

    # --- reading ------------------------------------------------------------------

    async def _work(self) -> None:
        async with asyncio.TaskGroup() as confirms:
            items = aiter(self.source.items())
            while self.options.limit is None or self._selected < self.options.limit:
                try:
                    item = await anext(items)
                except StopAsyncIteration:
                    break
                except Exception as err:  # the broker went away: finish what was read
                    self.counts.stopped = True
                    self.report.problem(f"reading {self.source.name} failed: {describe(err)}; "
                                        "what was not read stays where it is")
                    break
                self.counts.read += 1
                await self._handle(item, confirms)
        await self._idle.wait()

    async def _handle(self, item: Item, confirms: asyncio.TaskGroup) -> None:
        letter = item.letter
        if letter is None:
            self.counts.unreadable += 1
            self.report.problem(f"{item.position}: {item.problem}; left in place")
            await self._pass(item)
            return
        if self.options.selection.why_not(letter) is not None:
            self.counts.skipped += 1
            self.report.tick()
            await self._pass(item)
            return
        self._selected += 1
        try:
            trigger = self._trigger(letter)
            if self.options.to_source:
                republisher = self._republisher(trigger)
                where = republisher.describe(letter, trigger)
            else:
                to_event(letter, trigger.config.kind, _no_settle)  # can it be rebuilt?
                where = f"function {trigger.function_name}"
        except NotRedrivable as err:
            self.counts.unredrivable += 1
            self.report.problem(f"{letter.describe()}: cannot be redriven: {err}; left in place")
            await self._pass(item)
            return
        if self.options.dry_run:
            self.counts.selected += 1
            self.report.would(f"would redrive {letter.describe()} -> {where}")
        elif self.options.to_source:
            await self._republish(item, letter, trigger, republisher, confirms)
        else:
            await self._invoke(item, letter, trigger)

    async def _pass(self, item: Item) -> None:
        if not self.options.dry_run:
            await item.settle(False)

    def _trigger(self, letter: Letter) -> ResolvedTrigger:
        """The letter's trigger with every default applied, calling the letter's function."""
        name = self.options.config_name
        trigger = self._triggers.get(letter.trigger)
        if trigger is None:
            raise NotRedrivable(f"trigger {letter.trigger!r} is not in {name}")
        if self.options.to_source:
            return self.config.resolve(trigger)
        if letter.function not in self.config.functions:
            raise NotRedrivable(f"function {letter.function!r} is not in {name}")
        resolved = self.config.resolve(trigger.model_copy(update={"function": letter.function}))
        if self.options.concurrency is not None:
            resolved = dataclasses.replace(resolved, concurrency=self.options.concurrency)
        return resolved

    # --- re-invoking ----------------------------------------------------------------

    async def _invoke(self, item: Item, letter: Letter, trigger: ResolvedTrigger) -> None:
        event = to_event(letter, trigger.config.kind, self._settler(item, letter))
        dispatcher = await self._dispatcher(trigger)
        self._open += 1
        self._idle.clear()
        await dispatcher.submit(event)

    def _settler(self, item: Item, letter: Letter) -> Settler:
        async def settle(event: Event, disposition: Disposition) -> None:
            try:
                if disposition is Disposition.ABANDONED:
                    self.counts.failed += 1
                    self.report.failed(f"{letter.describe()}: failed again and could not be "
                                       "dead-lettered; left in place")
                    return
                if disposition is Disposition.DELIVERED:
                    self.counts.redriven += 1
                    self.report.redriven(letter.describe())
                else:
                    self.counts.dead_lettered += 1
                    self.report.failed(f"{letter.describe()}: failed again, "
                                       f"{self._failure(event)}")
                await self._remove(item, letter)
            finally:
                self._open -= 1
                if not self._open:
                    self._idle.set()

        return settle

    def _failure(self, event: Event) -> str:
        written = self._written.pop((event.trigger, event.id, event.origin), None)
        if written is None:
            return "dead-lettered again"
        record, where = written
        status = "" if record.last_status is None else f" {record.last_status}"
        return (f"{record.error}{status} after {record.attempts} attempt(s): "
                f"dead-lettered again to {where}")

    async def _remove(self, item: Item, letter: Letter) -> None:
        try:
            await item.settle(True)
        except Exception as err:
            self.report.problem(f"{letter.position}: done, but its removal was not recorded "
                                f"({describe(err)}); the next run sends it again")

    async def _dispatcher(self, trigger: ResolvedTrigger) -> Dispatcher:
        key = (trigger.name, trigger.function_name)
        if key not in self._dispatchers:
            if self._invoker is None:
                self._session = Invoker.new_session()
                self._invoker = Invoker(self._session)
            sink, fallback = await self._dead_letter_sinks(trigger)
            self._dispatchers[key] = Dispatcher(
                trigger, target=self._target(trigger), invoker=self._invoker, sink=sink,
                metrics=self._context.metrics, log=self._log, fallback=fallback,
                ordering=trigger.ordering,
            )
        return self._dispatchers[key]

    def _target(self, trigger: ResolvedTrigger) -> Target:
        """The function as the daemon calls it (as Runtime builds it): endpoints, quota,
        configured headers, overflow pool."""
        name, function = trigger.function_name, trigger.function
        if name not in self._targets:
            pool: Pool
            if function.kubernetes is not None:
                if self._kubernetes_pools is None:
                    raise LookupError("no Kubernetes pools in this process")
                watched = self._kubernetes_pools(name, function.kubernetes)
                self._supervisor.spawn(f"endpoints:{name}", watched.run)
                pool = watched
            else:
                pool = BalancedPool(function.static_urls)
            self._targets[name] = Target(
                name=name, pool=pool, max_concurrency=function.max_concurrency,
                headers=function.headers,
                overflow_url=function.overflow.url if function.overflow else None,
                overflow_after=function.overflow.after if function.overflow else 0.25,
                adaptive=function.adaptive,
                redact=Redactor(secrets_of(function)),
            )
        return self._targets[name]

    async def _dead_letter_sinks(self, trigger: ResolvedTrigger) -> tuple[Sink, Sink | None]:
        dead_letter = trigger.dead_letter
        if self.options.back or dead_letter is None or dead_letter.rejects:
            return await self._back(), None
        sink = await self._sink(dead_letter.primary(), trigger)
        fallback = None
        if dead_letter.fallback is not None:
            fallback = await self._sink(dead_letter.fallback, trigger)
        return sink, fallback

    async def _back(self) -> Sink:
        if "back" not in self._sinks:
            self._sinks["back"] = await self._started(
                self.source.back_sink(), f"{self.source.name} (where it was read)")
        return self._sinks["back"]

    async def _sink(self, config: SinkConfig, trigger: ResolvedTrigger) -> Sink:
        """The trigger's sink, shared by equal settings (as in the daemon)."""
        key = sink_key(config, trigger)
        if key not in self._sinks:
            sink = sink_factory(config.kind)(config, trigger)
            self._sinks[key] = await self._started(sink, _sink_name(config))
        return self._sinks[key]

    async def _started(self, sink: Sink, name: str) -> _Noting:
        try:
            async with asyncio.timeout(_SINK_START_TIMEOUT):
                await sink.start()
        except Exception as err:  # its writes connect again (and are retried)
            error = (f"no answer within {_SINK_START_TIMEOUT:g}s"
                     if isinstance(err, TimeoutError) else describe(err))
            self.report.problem(f"dead-letter sink {name} not available yet: {error}")
        return _Noting(sink, name, self._written)

    # --- republishing (--to-source) ----------------------------------------------

    def _republisher(self, trigger: ResolvedTrigger) -> Republisher:
        kind = trigger.config.kind
        if kind == "cron":
            raise NotRedrivable("a cron trigger has no source to publish to (redrive it "
                                "without --to-source)")
        if kind not in self._republishers:
            self._republishers[kind] = republisher_factory(kind)()
        return self._republishers[kind]

    async def _republish(
        self, item: Item, letter: Letter, trigger: ResolvedTrigger,
        republisher: Republisher, confirms: asyncio.TaskGroup,
    ) -> None:
        """Hand the message over now (in read order), await its confirm in a task."""
        await self._window.acquire()
        first: Awaitable[None] | Exception
        try:
            first = await republisher.send(letter, trigger)
        except Exception as err:
            first = err
        confirms.create_task(self._confirm(item, letter, trigger, republisher, first))

    async def _confirm(
        self, item: Item, letter: Letter, trigger: ResolvedTrigger,
        republisher: Republisher, first: Awaitable[None] | Exception,
    ) -> None:
        """Wait for the broker's confirm; a failed publish is sent again (3 tries)."""
        try:
            confirm = first
            for attempt in range(1, _PUBLISH_TRIES + 1):
                try:
                    if isinstance(confirm, Exception):
                        raise confirm
                    await confirm
                    break
                except Exception as err:
                    if attempt == _PUBLISH_TRIES:
                        self.counts.failed += 1
                        self.report.failed(f"{letter.describe()}: not published "
                                           f"({describe(err)}); left in place")
                        return
                    await asyncio.sleep(0.5 * 2 ** (attempt - 1))
                    try:
                        confirm = await republisher.send(letter, trigger)
                    except Exception as again:
                        confirm = again
            self.counts.redriven += 1
            where = republisher.describe(letter, trigger)
            self.report.redriven(f"{letter.describe()} -> published to {where}")
            await self._remove(item, letter)
        finally:
            self._window.release()

    # --- the end ------------------------------------------------------------------

    async def _close(self) -> None:
        await self._supervisor.stop(_WATCH_STOP_TIMEOUT)
        closers: list[Callable[[], Awaitable[object]]] = [s.close for s in self._sinks.values()]
        closers += [t.close for t in self._targets.values()]
        closers += [r.close for r in self._republishers.values()]
        await asyncio.gather(*(close_quietly(close, timeout=_CLOSE_TIMEOUT, log=self._log)
                               for close in closers))
        if self._session is not None:
            await self._session.close()
        await self.source.close()


class _Noting:
    """A dead-letter sink that remembers what it wrote (for the letter's output line)."""

    def __init__(
        self, sink: Sink, name: str, written: dict[tuple[str, str, str], tuple[DeadLetter, str]]
    ) -> None:
        self._sink = sink
        self._name = name
        self._written = written

    async def start(self) -> None:
        await self._sink.start()

    async def write(self, record: DeadLetter) -> None:
        await self._sink.write(record)
        key = (record.trigger, record.cloudevent.get("id", ""), record.source)
        self._written[key] = (record, self._name)

    async def close(self) -> None:
        await self._sink.close()


def _sink_name(config: SinkConfig) -> str:
    if config.file is not None:
        return f"file {config.file.path}"
    if config.kafka is not None:
        return f"kafka topic {config.kafka.topic}"
    assert config.rabbitmq is not None
    return f"rabbitmq exchange {config.rabbitmq.exchange!r}"


async def _no_settle(event: Event, disposition: Disposition) -> None:
    """Settler of an event only built to check that it can be."""
