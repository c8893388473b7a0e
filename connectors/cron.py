"""Cron triggers with Kubernetes CronJob semantics, scheduled by APScheduler.

APScheduler (3.x, ``AsyncIOScheduler``) owns the timing: one scheduler and one timer
for every cron trigger in the process, however many there are. Its own crontab parser
does not follow the CronJob standard (day-of-week 0 is Monday there, and day-of-month
and day-of-week are ANDed), so jobs use :class:`ScheduleTrigger`, an APScheduler trigger
over :mod:`bridge.schedule` -- the same code ``trigger-bridge schedule`` prints from.
A small executor hands each due run time to its connector instead of calling a
function, so the connector sees the *scheduled* time, which becomes the event id
(``trigger/2026-03-09T06:30:00Z``) and ``ce-time``.

CronJob semantics implemented by the connector:

- ``concurrency_policy``: ``Allow`` runs every tick; ``Forbid`` skips a tick while the
  previous run is unsettled; ``Replace`` cancels the running invocation and starts the
  new one.
- ``starting_deadline``: a tick that cannot start within it (the process was busy or
  down, or every slot was taken) is skipped and counted. After a start, or on gaining
  cron leadership, the most recent tick still inside the deadline is run (CronJob
  starts only the latest missed schedule). Without a deadline, missed ticks are not
  caught up (there is no record of what already ran). When the process was late
  (frozen, suspended, its loop blocked) and several ticks are due at once, only the
  latest runs; the others are skipped and counted (``missed_deadline`` past the
  deadline, ``superseded`` within it), never dropped silently.
- ``suspend``: no ticks run.
- ticks run only on the leader (see :mod:`bridge.leadership`). A new leader fires the
  ticks the previous one may have missed *in the handover*: those after its last Lease
  renewal and inside the handover window (lease duration + renew deadline + retry
  period) before now, and inside the starting deadline, so a handover loses none (ids
  are stable for de-duplication). Anything older follows the restart rule above: a
  Lease left behind days ago brings no backlog.
- the last fired tick of a trigger outlives its connector (kept in the process's
  :class:`CronClock` by trigger name), so a config reload or Trigger change that
  restarts the trigger does not fire the latest tick again.

Every computation over past ticks is bounded whatever the outage was:
:meth:`~bridge.schedule.Schedule.last_at_or_before` finds the latest tick in
``O(log span)`` steps, and the only loop over ticks is inside the handover window.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from bridge.cloudevents import is_json
from bridge.config import CronSource, ResolvedTrigger
from bridge.events import Disposition, Event, format_time
from bridge.logs import Logger
from bridge.schedule import Schedule, parse_schedule
from connectors.base import ConnectorContext

EVENT_TYPE = "dev.triggerbridge.cron.tick"

TickHandler = Callable[[list[datetime]], None]


class ScheduleTrigger(BaseTrigger):  # type: ignore[misc]
    """APScheduler trigger computing fire times with :mod:`bridge.schedule`."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        return self.schedule.next_after(previous_fire_time or now)

    def __str__(self) -> str:
        return f"schedule[{self.schedule.expression!r} {self.schedule.time_zone}]"


class _TickExecutor(BaseExecutor):  # type: ignore[misc]
    """Passes due run times to the trigger's handler instead of running a callable."""

    def __init__(self, handlers: dict[str, TickHandler]) -> None:
        super().__init__()
        self._handlers = handlers

    def _do_submit_job(self, job: Job, run_times: list[datetime]) -> None:
        try:
            handler = self._handlers.get(job.id)
            if handler is not None:
                handler(run_times)
        finally:
            self._run_job_success(job.id, [])


def _never_called() -> None:
    """Placeholder callable for APScheduler jobs; the executor never calls it."""


class CronClock:
    """The process's one scheduler. Created on first use, shut down with the runtime."""

    def __init__(self) -> None:
        self._handlers: dict[str, TickHandler] = {}
        self._scheduler: AsyncIOScheduler | None = None
        #: The scheduled time of the last tick fired, by trigger name: kept when a
        #: trigger's connector is replaced (reload), so its latest tick is not re-run.
        self.last_fired: dict[str, datetime] = {}

    def _running(self) -> AsyncIOScheduler:
        if self._scheduler is None:
            scheduler = AsyncIOScheduler(timezone=UTC, event_loop=asyncio.get_running_loop())
            scheduler.add_executor(_TickExecutor(self._handlers), alias="ticks")
            scheduler.start()
            self._scheduler = scheduler
        return self._scheduler

    def add(
        self, name: str, schedule: Schedule, handler: TickHandler, first: datetime | None
    ) -> None:
        """Schedule ``name``; ``first`` (may be in the past) overrides the first run."""
        scheduler = self._running()
        self._handlers[name] = handler
        options: dict[str, Any] = {} if first is None else {"next_run_time": first}
        scheduler.add_job(
            _never_called, trigger=ScheduleTrigger(schedule), id=name, executor="ticks",
            # Not coalesced here: the connector gets every due run time, runs the latest
            # and counts the ones it drops (see CronConnector._on_due).
            coalesce=False, misfire_grace_time=None, max_instances=1_000_000,
            replace_existing=True, **options,
        )

    def remove(self, name: str) -> None:
        self._handlers.pop(name, None)
        if self._scheduler is not None and self._scheduler.get_job(name) is not None:
            self._scheduler.remove_job(name)

    async def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None


class CronConnector:
    """One cron trigger: ticks in, events out, CronJob policies in between."""

    def __init__(self, trigger: ResolvedTrigger, context: ConnectorContext) -> None:
        source = trigger.config.cron
        assert source is not None
        self._name = trigger.name
        self._source: CronSource = source
        self._schedule = parse_schedule(source.schedule, source.time_zone)
        deadline = source.starting_deadline
        self._deadline = None if deadline is None else timedelta(seconds=deadline)
        self._body = encode_data(source.data, source.content_type)
        self._context = context
        self._clock = context.shared(CronClock, CronClock)
        self._mailbox = _Mailbox()
        self._active: set[Event] = set()
        self._last_fired: datetime | None = self._clock.last_fired.get(self._name)
        self._started = False
        self._stats = context.metrics.trigger(self._name, trigger.function_name)
        self._bound_log: Logger | None = None
        context.leadership.on_change(self._on_leadership)

    @property
    def _log(self) -> Logger:
        if self._bound_log is None:
            self._bound_log = self._context.log.bind(trigger=self._name)
        return self._bound_log

    @property
    def ready(self) -> bool:
        return self._started

    @property
    def max_unsettled(self) -> int | None:
        return None

    async def start(self) -> None:
        if self._started or self._source.suspend:
            self._started = True
            return
        now = datetime.now(UTC)
        self._clock.add(self._name, self._schedule, self._on_due, self._catch_up(now))
        self._started = True
        self._log.info("cron trigger scheduled", schedule=self._source.schedule,
                       time_zone=self._source.time_zone,
                       next=self._schedule.next_after(now).isoformat())

    async def stop(self) -> None:
        self._clock.remove(self._name)
        self._started = False

    async def events(self) -> AsyncIterator[Event]:
        while True:
            yield await self._mailbox.get()

    def _catch_up(self, now: datetime) -> datetime | None:
        """The latest tick in (now - starting_deadline, now], if any and not yet fired."""
        if self._deadline is None:
            return None
        latest = self._schedule.last_at_or_before(now, now - self._deadline)
        if latest is not None and self._last_fired is not None and latest <= self._last_fired:
            return None
        return latest

    @property
    def last_schedule_time(self) -> datetime | None:
        """The scheduled time of the last tick this replica fired (a CronJob's status)."""
        return self._last_fired

    def _on_leadership(self, leader: bool) -> None:
        if leader and self._started and not self._source.suspend:
            ticks = self._handover_ticks(datetime.now(UTC))
            if ticks:
                self._log.info("cron leadership gained: firing missed ticks", count=len(ticks),
                               first=format_time(ticks[0]), last=format_time(ticks[-1]))
            self._on_ticks(ticks)

    def _handover_ticks(self, now: datetime) -> list[datetime]:
        """Ticks to fire on gaining leadership.

        The previous leader may have stopped firing at its last Lease renewal
        (``handover_since``) and can have done so unnoticed only within the handover
        window before now. Every tick after both (and after our own last fired one,
        and inside the starting deadline) fires, so a handover loses no tick. Older
        ones follow the CronJob restart rule: the latest tick inside the starting
        deadline (none without one), also when nothing is known (a new Lease). The work
        is bounded by the window, never by how long ago the Lease was renewed.
        """
        leadership = self._context.leadership
        since = leadership.handover_since
        # since None: no handover to cover (the window is empty), only the restart rule
        floors = [now - leadership.handover_window, now if since is None else since]
        if self._last_fired is not None:
            floors.append(self._last_fired)
        if self._deadline is not None:
            floors.append(now - self._deadline)
        ticks = []
        tick = self._schedule.next_after(max(floors))
        while tick <= now:
            ticks.append(tick)
            tick = self._schedule.next_after(tick)
        latest = self._catch_up(now)
        if not ticks and latest is not None and (since is None or latest > since):
            ticks.append(latest)
        return ticks

    def _on_ticks(self, run_times: list[datetime]) -> None:
        for scheduled in run_times:
            self._fire(scheduled)

    def _on_due(self, run_times: list[datetime]) -> None:
        """The clock's due run times: several at once when the process was late (frozen,
        suspended, its loop blocked). As a CronJob, only the latest runs; the earlier ones
        are skipped and counted: ``missed_deadline`` when past the starting deadline,
        else ``superseded`` (a later tick replaced them)."""
        if not run_times:
            return
        *late, latest = run_times
        if late and self._context.leadership.is_leader:
            now = datetime.now(UTC)
            late = [t for t in late if self._last_fired is None or t > self._last_fired]
            past = [t for t in late if self._deadline is not None and now - t > self._deadline]
            for reason, ticks in (("missed_deadline", past),
                                  ("superseded", [t for t in late if t not in past])):
                if ticks:
                    self._stats.cron_skipped[reason] = (
                        self._stats.cron_skipped.get(reason, 0) + len(ticks)
                    )
                    self._log.warning("cron ticks skipped", reason=reason, count=len(ticks),
                                      first=format_time(ticks[0]), last=format_time(ticks[-1]))
        else:
            for scheduled in late:
                self._fire(scheduled)  # not the leader: each counted as such
        self._fire(latest)

    def _fire(self, scheduled: datetime) -> None:
        now = datetime.now(UTC)
        leadership = self._context.leadership
        if not leadership.is_leader:
            self._stats.skip("not_leader")
            leadership.note_unfired(scheduled)
            return
        if self._last_fired is not None and scheduled <= self._last_fired:
            return  # already fired (a catch-up ran it before the clock's own tick)
        if self._deadline is not None and now - scheduled > self._deadline:
            self._skip("missed_deadline", scheduled)
            return
        if self._active and self._source.concurrency_policy == "Forbid":
            self._skip("forbid", scheduled)
            return
        if self._active and self._source.concurrency_policy == "Replace":
            self._replace_running()
        event = self._event(scheduled)
        self._active.add(event)
        self._last_fired = self._clock.last_fired[self._name] = scheduled
        self._stats.fire_lag(max(0.0, (now - scheduled).total_seconds()))
        self._mailbox.put(event)

    def _skip(self, reason: str, scheduled: datetime) -> None:
        self._stats.skip(reason)
        self._log.warning("cron tick skipped", reason=reason, scheduled=format_time(scheduled))

    def _replace_running(self) -> None:
        for running in list(self._active):
            if running.cancel():
                self._stats.cron_replaced += 1
                self._log.info("cron run replaced", event_id=running.id)

    def _event(self, scheduled: datetime) -> Event:
        utc = scheduled.astimezone(UTC)
        return Event(
            trigger=self._name,
            id=f"{self._name}/{format_time(utc)}",
            source=f"/cron/{self._name}",
            type=EVENT_TYPE,
            data=self._body,
            content_type=self._source.content_type if self._body else None,
            time=utc,
            partition=self._name,
            origin=f"schedule {self._source.schedule} ({self._source.time_zone})",
            not_after=None if self._deadline is None else utc + self._deadline,
            settler=self._settle,
        )

    async def _settle(self, event: Event, disposition: Disposition) -> None:
        self._active.discard(event)
        if disposition is Disposition.ABANDONED and not event.abandoned:
            self._stats.skip("missed_deadline")  # the dispatcher could not start it in time


def encode_data(data: Any, content_type: str) -> bytes:
    """The body for ``data``: a string is sent as-is unless the type is JSON
    (:func:`bridge.cloudevents.is_json`: ``text/json`` is JSON too)."""
    if data is None:
        return b""
    if isinstance(data, str) and not is_json(content_type):
        return data.encode()
    return json.dumps(data).encode()


class _Mailbox:
    """A minimal unbounded queue: a list and one waiter.

    There is one per cron trigger, so it is smaller than an ``asyncio.Queue`` (see
    docs/benchmarks.md, *Cron*). Only one consumer (the trigger's pump) ever waits.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Event) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Event:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)
