"""``trigger-bridge schedule`` for a cron trigger with jitter, bounds or exclusions.

One line per tick that fires: its scheduled time (the event id and ``ce-time``) and,
with jitter, when it is sent. Lines starting with ``#`` say what else applies: the
settings (first line), an excluded day (once per day, however many ticks it holds),
the start of the bounds, and their end. With ``key`` (a trigger name) the delays are
exactly the daemon's (:func:`bridge.schedule.jitter_delay`); without one they are
shown as a range.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from bridge.config import CronSource
from bridge.schedule import ScheduleError, jitter_delay


def preview(source: CronSource, moment: datetime, count: int, key: str | None) -> Iterator[str]:
    calendar = source.calendar()
    yield "# " + _settings(source, calendar.start_at, calendar.end_at, key)
    schedule = calendar.schedule
    if calendar.start_at is not None and moment < calendar.start_at:
        yield f"# nothing before start_at {calendar.start_at.isoformat()}"
        moment = calendar.start_at - timedelta(microseconds=1)
    shown, skipped_days = 0, 0
    while shown < count:
        try:
            tick = schedule.next_after(moment)
        except (ScheduleError, OverflowError):
            yield f"# no fire time after {moment.isoformat()} within years 1-9999"
            return
        reason = calendar.excluded_by(tick)
        if reason == "after end_at":
            assert calendar.end_at is not None
            yield f"# no tick after end_at {calendar.end_at.isoformat()}"
            return
        if reason is not None:
            skipped_days += 1
            if skipped_days > 3660:
                yield "# every day of the next ten years is excluded"
                return
            yield f"# {tick.date().isoformat()}: not fired ({reason})"
            moment = calendar._end_of_day(tick)
            continue
        yield _tick_line(tick, source.jitter, key)
        moment, shown = tick, shown + 1


def _tick_line(tick: datetime, jitter: float, key: str | None) -> str:
    if not jitter:
        return tick.isoformat()
    if key is None:
        return f"{tick.isoformat()}  sent within {jitter:g}s after"
    delay = jitter_delay(key, tick, jitter)
    sent = tick + timedelta(seconds=delay)
    return f"{tick.isoformat()}  sent +{delay:.3f}s at {sent.isoformat(timespec='milliseconds')}"


def _settings(
    source: CronSource, start: datetime | None, end: datetime | None, key: str | None
) -> str:
    parts = [f"{source.schedule!r} in {source.time_zone}"]
    if source.jitter:
        parts.append(f"jitter below {source.jitter:g}s")
    if start is not None:
        parts.append(f"from {start.isoformat()}")
    if end is not None:
        parts.append(f"until {end.isoformat()}")
    if source.exclude:
        parts.append("excluding " + ", ".join(source.exclude))
    return ("" if key is None else f"trigger {key}: ") + ", ".join(parts)
