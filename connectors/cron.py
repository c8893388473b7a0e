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

Beyond CronJob (issue 13):

- the ticks come from the trigger's :class:`~bridge.schedule.Calendar`: ``start_at`` /
  ``end_at`` bound them and ``exclude`` drops whole days;
- ``jitter``: a due tick fires after its :func:`~bridge.schedule.jitter_delay` (the
  same on every replica); id and ``ce-time`` keep the scheduled time, and the lag and
  the starting deadline count from the delayed time;
- ``BufferOne`` / ``BufferAll``: a tick due while a run is unsettled waits (one, or up
  to ``max_buffered``) and starts when it settles; past the bound it is skipped
  (``buffer_full``). Waiting ticks live in memory only;
- ``pause_on_failure``: a run that ends dead-lettered pauses the trigger (ticks skipped
  as ``paused``) until resumed; the pause is saved in the cron state store
  (``context.state``) with a fingerprint of the trigger's settings, so a restart or a
  new leader keeps it and a change of the settings resumes it;
- :class:`~bridge.cron_control.ScheduleControl` (``control``): run now, backfill (the
  bookkeeping in :mod:`connectors.cron_backfill`, its progress saved per settled tick),
  resume. Each acts only while ``context.leadership`` says this replica leads the
  trigger, so the cron Lease (or the trigger's shard) decides who acts. State work
  (loading, saving) runs in the trigger's pump: the mailbox carries it next to events.

Every computation over past ticks is bounded whatever the outage was:
:meth:`~bridge.schedule.Schedule.last_at_or_before` finds the latest tick in
``O(log span)`` steps, and the only loop over ticks is inside the handover window.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.executors.base import BaseExecutor
from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger

from bridge.cloudevents import is_json
from bridge.config import CronSource, ResolvedTrigger
from bridge.cron_control import (
    MAX_BACKFILL_TICKS,
    BackfillPolicy,
    BackfillProgress,
    ControlError,
    ManualRun,
    ScheduleControl,
)
from bridge.errors import describe
from bridge.events import Disposition, Event, Settler, format_time
from bridge.logs import Logger
from bridge.schedule import Calendar, jitter_delay
from connectors.base import ConnectorContext
from connectors.cron_backfill import Backfill

EVENT_TYPE = "dev.triggerbridge.cron.tick"

TickHandler = Callable[[list[datetime]], None]


class ScheduleTrigger(BaseTrigger):  # type: ignore[misc]
    """APScheduler trigger computing fire times with :mod:`bridge.schedule` (the
    schedule within its bounds and exclusions; None after ``end_at`` ends the job)."""

    def __init__(self, calendar: Calendar) -> None:
        self.calendar = calendar

    def get_next_fire_time(
        self, previous_fire_time: datetime | None, now: datetime
    ) -> datetime | None:
        return self.calendar.next_after(previous_fire_time or now)

    def __str__(self) -> str:
        schedule = self.calendar.schedule
        return f"schedule[{schedule.expression!r} {schedule.time_zone}]"


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
        self, name: str, trigger: ScheduleTrigger, handler: TickHandler, first: datetime | None
    ) -> None:
        """Schedule ``name``; ``first`` (may be in the past) overrides the first run."""
        scheduler = self._running()
        self._handlers[name] = handler
        options: dict[str, Any] = {} if first is None else {"next_run_time": first}
        scheduler.add_job(
            _never_called, trigger=trigger, id=name, executor="ticks",
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
    """One cron trigger: ticks in, events out, CronJob policies in between; and what an
    operator does to it from outside the schedule (:class:`ScheduleControl`)."""

    def __init__(self, trigger: ResolvedTrigger, context: ConnectorContext) -> None:
        source = trigger.config.cron
        assert source is not None
        self._name = trigger.name
        self._source: CronSource = source
        self._calendar = source.calendar()
        self._schedule = self._calendar.schedule
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
        self._trigger = trigger
        # Created on first use: most triggers never jitter, buffer, pause or backfill.
        self._timers: dict[datetime, asyncio.TimerHandle] | None = None
        self._buffer: deque[datetime] | None = None
        self._paused: dict[str, str] | None = None
        self._backfill: Backfill | None = None
        if source.pause_on_failure:
            self._stats.cron_paused = False
        if source.concurrency_policy in ("BufferOne", "BufferAll"):
            self._stats.cron_buffered = 0
        context.leadership.on_change(self._on_leadership)

    @functools.cached_property
    def _fingerprint(self) -> str:
        """What the trigger was paused under (pause_on_failure): a change of it resumes."""
        return hashlib.sha256(self._trigger.config.model_dump_json().encode()).hexdigest()[:16]

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

    @property
    def control(self) -> ScheduleControl:
        return self

    async def start(self) -> None:
        if self._started:
            return
        if self._source.suspend:
            self._started = True
            return
        await self._restore()
        now = datetime.now(UTC)
        self._clock.add(self._name, ScheduleTrigger(self._calendar), self._on_due,
                        self._catch_up(now))
        self._started = True
        upcoming = self._calendar.next_after(now)
        self._log.info("cron trigger scheduled", schedule=self._source.schedule,
                       time_zone=self._source.time_zone,
                       next=None if upcoming is None else upcoming.isoformat())
        self._release_backfill()

    async def stop(self) -> None:
        self._clock.remove(self._name)
        for timer in (self._timers or {}).values():
            timer.cancel()
        self._timers = None
        self._started = False

    async def events(self) -> AsyncIterator[Event]:
        while True:
            item = await self._mailbox.get()
            if isinstance(item, Event):
                yield item
            else:
                await item()  # state work, run here in the pump (a supervised task)

    def _catch_up(self, now: datetime) -> datetime | None:
        """The latest tick in (now - starting_deadline, now], if any and not yet fired."""
        if self._deadline is None:
            return None
        latest = self._calendar.last_at_or_before(now, now - self._deadline)
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
            if self._context.state.durable:
                # another replica may have paused it or moved a backfill on: read it again
                self._mailbox.put(self._restore_and_release)

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
        tick = self._calendar.next_after(max(floors))
        while tick is not None and tick <= now:
            ticks.append(tick)
            tick = self._calendar.next_after(tick)
        latest = self._catch_up(now)
        if not ticks and latest is not None and (since is None or latest > since):
            ticks.append(latest)
        return ticks

    def _on_ticks(self, run_times: list[datetime]) -> None:
        for scheduled in run_times:
            self._due(scheduled)

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
        self._due(latest)

    def _due(self, scheduled: datetime) -> None:
        """A tick is due: fire it now, or after its jitter delay."""
        if not self._source.jitter:
            self._fire(scheduled)
            return
        delay = jitter_delay(self._name, scheduled, self._source.jitter)
        timers = self._timers if self._timers is not None else {}
        self._timers = timers
        if scheduled not in timers:
            timers[scheduled] = asyncio.get_running_loop().call_later(
                delay, self._fire_jittered, scheduled, delay)

    def _fire_jittered(self, scheduled: datetime, delay: float) -> None:
        if self._timers is not None:
            self._timers.pop(scheduled, None)
        self._fire(scheduled, delay)

    def _fire(self, scheduled: datetime, delay: float = 0.0) -> None:
        """Run the tick due at ``scheduled`` (``delay``: its jitter, already waited)."""
        now = datetime.now(UTC)
        leadership = self._context.leadership
        if not leadership.is_leader:
            self._stats.skip("not_leader")
            leadership.note_unfired(scheduled)
            return
        if self._last_fired is not None and scheduled <= self._last_fired:
            return  # already fired (a catch-up ran it before the clock's own tick)
        late = now - scheduled - timedelta(seconds=delay)
        if self._deadline is not None and late > self._deadline:
            self._skip("missed_deadline", scheduled)
            return
        if self._paused is not None:
            self._skip("paused", scheduled)
            return
        policy = self._source.concurrency_policy
        if self._active and policy == "Forbid":
            self._skip("forbid", scheduled)
            return
        if self._active and policy == "Replace":
            self._replace_running()
        self._last_fired = self._clock.last_fired[self._name] = scheduled
        if self._active and policy in ("BufferOne", "BufferAll"):
            self._hold(scheduled)
            return
        self._stats.fire_lag(max(0.0, late.total_seconds()))
        self._start(self._event(scheduled, delay))

    def _start(self, event: Event) -> None:
        self._active.add(event)
        self._mailbox.put(event)

    def _hold(self, scheduled: datetime) -> None:
        """BufferOne / BufferAll: the tick waits for the running one (past the bound:
        skipped and counted as ``buffer_full``)."""
        buffer = self._buffer if self._buffer is not None else deque()
        self._buffer = buffer
        bound = 1 if self._source.concurrency_policy == "BufferOne" else self._source.max_buffered
        if len(buffer) >= bound:
            self._skip("buffer_full", scheduled)
            return
        buffer.append(scheduled)
        self._stats.cron_buffered = len(buffer)

    def _release_buffered(self) -> None:
        """The running tick settled: start the oldest buffered one still inside its
        starting deadline (on the leader, unless paused)."""
        buffer = self._buffer
        while buffer and not self._active:
            scheduled = buffer.popleft()
            self._stats.cron_buffered = len(buffer)
            if self._paused is not None:
                self._skip("paused", scheduled)
            elif not self._context.leadership.is_leader:
                self._stats.skip("not_leader")
            elif self._deadline is not None and datetime.now(UTC) - scheduled > self._deadline:
                self._skip("missed_deadline", scheduled)
            else:
                delay = jitter_delay(self._name, scheduled, self._source.jitter)
                self._start(self._event(scheduled, delay))

    def _skip(self, reason: str, scheduled: datetime) -> None:
        self._stats.skip(reason)
        self._log.warning("cron tick skipped", reason=reason, scheduled=format_time(scheduled))

    def _replace_running(self) -> None:
        for running in list(self._active):
            if running.cancel():
                self._stats.cron_replaced += 1
                self._log.info("cron run replaced", event_id=running.id)

    def _event(
        self, scheduled: datetime, delay: float = 0.0, *, event_id: str | None = None,
        settler: Settler | None = None,
    ) -> Event:
        utc = scheduled.astimezone(UTC)
        start = utc + timedelta(seconds=delay)
        return Event(
            trigger=self._name,
            id=event_id or f"{self._name}/{format_time(utc)}",
            source=f"/cron/{self._name}",
            type=EVENT_TYPE,
            data=self._body,
            content_type=self._source.content_type if self._body else None,
            time=utc,
            partition=self._name,
            origin=f"schedule {self._source.schedule} ({self._source.time_zone})",
            not_after=None if self._deadline is None else start + self._deadline,
            settler=settler or self._settle,
        )

    async def _settle(self, event: Event, disposition: Disposition) -> None:
        self._active.discard(event)
        if disposition is Disposition.ABANDONED and not event.abandoned:
            self._stats.skip("missed_deadline")  # the dispatcher could not start it in time
        if disposition is Disposition.DEAD_LETTERED and self._source.pause_on_failure:
            await self._pause(event)
        self._release_buffered()

    # --- pause on failure -----------------------------------------------------------

    async def _pause(self, event: Event) -> None:
        if self._paused is not None:
            return
        self._paused = {"event_id": event.id, "at": format_time(_now()),
                        "config": self._fingerprint}
        self._stats.cron_paused = True
        self._log.warning("cron trigger paused: a run was dead-lettered (pause_on_failure); "
                          "resume with trigger-bridge resume", event_id=event.id)
        await self._save()

    @property
    def paused(self) -> str | None:
        return None if self._paused is None else self._paused["event_id"]

    async def resume(self) -> bool:
        self._require_leader("resume")
        if self._paused is None:
            return False
        self._paused = None
        self._stats.cron_paused = False
        self._log.info("cron trigger resumed")
        await self._save()
        self._release_backfill()
        return True

    # --- run now --------------------------------------------------------------------

    def run_now(self, requested: datetime) -> ManualRun:
        """Fire once now, outside the schedule, with the trigger's data (id
        ``<trigger>/manual/<request time>``, ce-time the request time)."""
        self._require_leader("run now")
        moment = requested.astimezone(UTC)
        event_id = f"{self._name}/manual/{format_time(moment)}"
        self._stats.cron_manual += 1
        self._log.info("cron run requested now", event_id=event_id)
        self._start(self._event(moment, event_id=event_id))
        return ManualRun(self._name, event_id, format_time(moment))

    @property
    def leads(self) -> bool:
        return (self._started and not self._source.suspend
                and self._context.leadership.is_leader)

    def _require_leader(self, what: str) -> None:
        if not self._started or self._source.suspend:
            raise ControlError(409, f"trigger {self._name!r} is not running (suspended or "
                                    f"starting): cannot {what}")
        if not self._context.leadership.is_leader:
            raise ControlError(409, f"this replica does not lead trigger {self._name!r}: "
                                    f"ask the replica holding its cron Lease")

    # --- backfill -------------------------------------------------------------------

    async def backfill(
        self, start: datetime, end: datetime, policy: BackfillPolicy = "BufferAll"
    ) -> BackfillProgress:
        """Fire every tick of ``[start, end]`` with its own time and id (see
        :mod:`connectors.cron_backfill`); refused for a bad range or over a million ticks."""
        self._require_leader("backfill")
        if end < start:
            raise ControlError(400, f"backfill range in the wrong order: --from "
                                    f"{format_time(start)} is after --to {format_time(end)}")
        if self._backfill is not None and self._backfill.running:
            raise ControlError(409, f"a backfill is already running: "
                                    f"{self._backfill.progress.summary}")
        total, exact = self._calendar.count(start, end)
        if total > MAX_BACKFILL_TICKS:
            raise ControlError(400, (
                f"backfill range holds {'' if exact else 'about '}{total:,} ticks of "
                f"{self._source.schedule!r}, more than {MAX_BACKFILL_TICKS:,}: split it into "
                f"smaller ranges (--from/--to)"))
        if total == 0:
            raise ControlError(400, f"no tick of {self._source.schedule!r} fires between "
                                    f"{format_time(start)} and {format_time(end)}")
        progress = BackfillProgress(
            self._name, format_time(start.astimezone(UTC)), format_time(end.astimezone(UTC)),
            policy=policy, total=total, exact=exact, started_at=format_time(_now()))
        self._backfill = Backfill(progress, self._calendar, self._trigger.concurrency)
        if not self._context.state.durable:
            self._log.warning("backfill progress is not durable: a restart forgets it "
                              "(set BRIDGE_STATE_FILE or use leader election)")
        await self._save()
        self._log.info("backfill started", start=progress.start, end=progress.end,
                       ticks=total, exact=exact, policy=policy)
        self._release_backfill()
        return progress

    @property
    def backfill_progress(self) -> BackfillProgress | None:
        return None if self._backfill is None else self._backfill.progress

    async def cancel_backfill(self) -> BackfillProgress | None:
        self._require_leader("cancel a backfill")
        backfill = self._backfill
        if backfill is None or not backfill.running:
            return None
        backfill.cancel()
        self._log.info("backfill cancelled", summary=backfill.progress.summary)
        await self._save()
        return backfill.progress

    def _release_backfill(self) -> None:
        backfill = self._backfill
        if (backfill is None or not backfill.running or self._paused is not None
                or not self._started or not self._context.leadership.is_leader):
            return
        for tick in backfill.release():
            delay = jitter_delay(self._name, tick, self._source.jitter)
            self._mailbox.put(self._event(tick, delay, settler=self._settle_backfill))
            self._stats.cron_backfilled += 1
        if backfill.progress.state == "done":
            self._log.info("backfill finished", summary=backfill.progress.summary)

    async def _settle_backfill(self, event: Event, disposition: Disposition) -> None:
        backfill = self._backfill
        if backfill is None:
            return
        assert event.time is not None  # every cron event has its scheduled time
        backfill.settled(event.time, disposition)
        if disposition is Disposition.DEAD_LETTERED and self._source.pause_on_failure:
            await self._pause(event)  # saves; the backfill waits for the resume
            return
        self._release_backfill()  # before the save: it may find the range exhausted
        await self._save()

    # --- state that outlives the process --------------------------------------------

    async def _save(self) -> None:
        state: dict[str, Any] = {}
        if self._paused is not None:
            state["paused"] = self._paused
        if self._backfill is not None:
            state["backfill"] = self._backfill.progress.to_json()
        try:
            await self._context.state.save(self._name, state)
        except Exception as err:
            self._log.error("cron state not saved: a restart may repeat settled backfill "
                            "ticks or forget a pause", error=describe(err, 300))

    async def _restore(self) -> None:
        """The trigger's pause and backfill, as the store has them (another replica or
        an earlier process may have written them)."""
        try:
            state = await self._context.state.load(self._name)
        except Exception as err:
            self._log.error("cron state not readable; going on without it",
                            error=describe(err, 300))
            return
        paused = state.get("paused")
        if isinstance(paused, dict) and paused.get("config") == self._fingerprint:
            if self._paused is None:
                self._log.warning("cron trigger stays paused (pause_on_failure)",
                                  event_id=paused.get("event_id"))
            self._paused = {str(k): str(v) for k, v in paused.items()}
            self._stats.cron_paused = True
        elif self._paused is None and paused:
            self._log.info("cron trigger settings changed since it was paused: resumed")
        backfill = state.get("backfill")
        local = self._backfill
        if isinstance(backfill, dict) and not (local is not None and local.in_flight):
            progress = BackfillProgress.from_json(backfill)
            self._backfill = Backfill(progress, self._calendar, self._trigger.concurrency)
            if progress.state == "running" and self._context.leadership.is_leader:
                self._log.info("backfill resumed", summary=progress.summary,
                               done_until=progress.done_until)

    async def _restore_and_release(self) -> None:
        await self._restore()
        self._release_backfill()


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def encode_data(data: Any, content_type: str) -> bytes:
    """The body for ``data``: a string is sent as-is unless the type is JSON
    (:func:`bridge.cloudevents.is_json`: ``text/json`` is JSON too)."""
    if data is None:
        return b""
    if isinstance(data, str) and not is_json(content_type):
        return data.encode()
    return json.dumps(data).encode()


#: What the mailbox carries: an event, or state work the pump runs (it awaits).
_Item = Event | Callable[[], Awaitable[None]]


class _Mailbox:
    """A minimal unbounded queue: a list and one waiter.

    There is one per cron trigger, so it is smaller than an ``asyncio.Queue`` (see
    docs/benchmarks.md, *Cron*). Only one consumer (the trigger's pump) ever waits.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: _Item) -> None:
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> _Item:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)
