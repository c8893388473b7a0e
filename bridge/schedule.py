"""Cron schedules with Kubernetes CronJob semantics, evaluated in an IANA time zone.

Syntax (the robfig/cron v3 standard parser that Kubernetes uses, plus a seconds field):

* Five fields ``minute hour day-of-month month day-of-week`` fire at second 0; six fields
  put a ``second`` field (0-59) in front.
* A field is a comma list of items: ``*`` or ``?`` (every value), ``n``, ``a-b``, ``*/n``,
  ``a-b/n`` and ``a/n`` (which means ``a-max/n``). Ranges must ascend and steps must be
  at least 1. Months accept ``JAN``-``DEC`` and weekdays ``SUN``-``SAT`` in any case, also
  inside ranges (``MON-FRI``). Day-of-week is 0-7 where both 0 and 7 are Sunday (robfig
  itself stops at 6); ``*`` and ``a/n`` still run to 6.
* Macros (any case): ``@yearly``/``@annually`` (``0 0 1 1 *``), ``@monthly`` (``0 0 1 * *``),
  ``@weekly`` (``0 0 * * 0``), ``@daily``/``@midnight`` (``0 0 * * *``), ``@hourly``
  (``0 * * * *``) and ``@every DURATION`` with a Go duration such as ``90s``, ``5m``,
  ``1h30m`` or ``1.5h`` (units ``h m s ms us ns``; the total must be a whole number of
  seconds and at least ``1s``).
* ``TZ=``/``CRON_TZ=`` prefixes are rejected: the zone is the separate ``time_zone``.

Day-of-month and day-of-week, exactly as robfig/cron: an item that is ``*`` or ``?``
without a step larger than 1 marks its field as *starred*. If either field is starred a
day must match both fields (so only the other one restricts); if neither is starred a day
matches when either field matches. ``0 0 13 * FRI`` therefore fires on every 13th and every
Friday, while ``0 0 */2 * FRI`` (``*/2`` clears the star, as robfig does) fires on odd days
and on Fridays.

Refinements over robfig/cron:

* Wall-clock times are local to the zone. A time skipped by a daylight-saving jump does not
  fire that day. A time that occurs twice when clocks go back fires once, at its first
  occurrence; the repeat is skipped.
* ``@every D`` fires at the multiples of ``D`` since the Unix epoch rather than counting
  from process start, so restarts and replicas agree on tick times; the zone only changes
  how results are expressed (a tick inside a repeated hour therefore carries ``fold=1``).
* An expression whose day fields can never match (``0 0 30 2 *``) is rejected at parse time.
"""

from __future__ import annotations

import functools
import hashlib
import re
from bisect import bisect_left
from calendar import isleap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import MAXYEAR, UTC, date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

__all__ = [
    "Calendar", "Schedule", "ScheduleError", "jitter_delay", "parse_exclusion", "parse_schedule",
    "shortest_interval",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MIDNIGHT = (0, 0, 0)
_HORIZON_YEARS = 100
_DAYS_IN_MONTH = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_MAX_DAYS_IN_MONTH = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DURATION_UNITS = {
    "h": Fraction(3600),
    "m": Fraction(60),
    "s": Fraction(1),
    "ms": Fraction(1, 10**3),
    "us": Fraction(1, 10**6),
    "µs": Fraction(1, 10**6),
    "μs": Fraction(1, 10**6),
    "ns": Fraction(1, 10**9),
}
_DURATION_PART = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|µs|μs|ms|h|m|s)")
_DURATION = re.compile(f"(?:{_DURATION_PART.pattern})+")


class ScheduleError(ValueError):
    """Invalid expression or time zone; ``str(err)`` is a short human reason."""


@dataclass(frozen=True, slots=True)
class _FieldSpec:
    name: str
    low: int
    high: int  # largest value that may be written
    open_high: int  # where ``*`` and ``a/n`` stop (day-of-week: 6, although 7 is allowed)
    names: dict[str, int] = field(default_factory=dict)


_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_WEEKDAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_SECOND_FIELD = _FieldSpec("second", 0, 59, 59)
_FIELDS = (
    _FieldSpec("minute", 0, 59, 59),
    _FieldSpec("hour", 0, 23, 23),
    _FieldSpec("day-of-month", 1, 31, 31),
    _FieldSpec("month", 1, 12, 12, {n: i for i, n in enumerate(_MONTH_NAMES, 1)}),
    _FieldSpec("day-of-week", 0, 7, 6, {n: i for i, n in enumerate(_WEEKDAY_NAMES)}),
)


# --------------------------------------------------------------------------- parsing


def _parse_value(text: str, item: str, spec: _FieldSpec) -> int:
    named = spec.names.get(text.lower())
    if named is not None:
        return named
    if not text:
        raise ScheduleError(f"field '{spec.name}': missing value in '{item}'")
    if not (text.isascii() and text.isdigit()):
        kind = "unknown name" if text.isalpha() else "invalid value"
        where = "" if text == item else f" in '{item}'"
        raise ScheduleError(f"field '{spec.name}': {kind} '{text}'{where}")
    value = int(text)
    if not spec.low <= value <= spec.high:
        raise ScheduleError(
            f"field '{spec.name}': value {value} out of range {spec.low}-{spec.high}"
        )
    return value


def _parse_step(text: str, item: str, spec: _FieldSpec) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ScheduleError(f"field '{spec.name}': invalid step '{text}' in '{item}'")
    if int(text) < 1:
        raise ScheduleError(f"field '{spec.name}': step must be at least 1 in '{item}'")
    return int(text)


def _parse_item(item: str, spec: _FieldSpec) -> tuple[range, bool]:
    """Values of one list item and whether it is a star (``*``/``?`` with step 1)."""
    span, slash, step_text = item.partition("/")
    if "/" in step_text:
        raise ScheduleError(f"field '{spec.name}': too many '/' in '{item}'")
    step = _parse_step(step_text, item, spec) if slash else 1
    if span in ("*", "?"):
        return range(spec.low, spec.open_high + 1, step), step == 1
    low_text, dash, high_text = span.partition("-")
    if "-" in high_text:
        raise ScheduleError(f"field '{spec.name}': too many '-' in '{item}'")
    low = _parse_value(low_text, item, spec)
    high = low
    if dash:
        high = _parse_value(high_text, item, spec)
    elif slash:  # "a/n" means "a-max/n"
        high = spec.open_high
    if low > high:
        raise ScheduleError(f"field '{spec.name}': range '{item}' is descending ({low} > {high})")
    return range(low, high + 1, step), False


def _parse_field(text: str, spec: _FieldSpec) -> tuple[frozenset[int], bool]:
    """All values of a comma list and whether any item is a star."""
    values: set[int] = set()
    star = False
    for item in text.split(","):
        if not item:
            raise ScheduleError(f"field '{spec.name}': empty list item in '{text}'")
        item_values, item_star = _parse_item(item, spec)
        values.update(item_values)
        star = star or item_star
    return frozenset(values), star


def _next_table(values: Iterable[int], size: int) -> tuple[int | None, ...]:
    """``table[i]`` is the smallest value ``>= i``, or None; ``size`` covers one past the max."""
    ordered = sorted(values)
    table: list[int | None] = []
    for i in range(size):
        pos = bisect_left(ordered, i)
        table.append(ordered[pos] if pos < len(ordered) else None)
    return tuple(table)


def _parse_every(text: str) -> int:
    if not _DURATION.fullmatch(text):
        raise ScheduleError(
            f"invalid @every duration '{text}' (expected e.g. '90s', '5m' or '1h30m')"
        )
    total = sum(
        (Fraction(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(text)),
        Fraction(0),
    )
    if total < 1:
        raise ScheduleError(f"@every duration '{text}' is shorter than 1s")
    if total.denominator != 1:
        raise ScheduleError(f"@every duration '{text}' is not a whole number of seconds")
    return int(total)


def _parse_zone(name: str) -> ZoneInfo:
    if not name.strip():
        raise ScheduleError("time zone must not be empty")
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        raise ScheduleError(f"unknown time zone '{name}'") from None


def _compile(expression: str) -> _Cron | _Every:
    text = expression.strip()
    if not text:
        raise ScheduleError("schedule expression is empty")
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise ScheduleError("time zone prefixes are not supported in the schedule; use time_zone")
    if text.startswith("@"):
        head, *rest = text.split(None, 1)
        if head.lower() == "@every":
            if not rest:
                raise ScheduleError("@every needs a duration, e.g. '@every 5m'")
            return _Every(_parse_every(rest[0].strip()))
        if rest or head.lower() not in _MACROS:
            raise ScheduleError(f"unknown macro '{text}'")
        text = _MACROS[head.lower()]
    return _Cron.from_fields(text.split())


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True, slots=True)
class _Every:
    seconds: int

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        elapsed = (after - _EPOCH) // _SECOND  # whole seconds, floored
        ticks = elapsed // self.seconds + 1
        return (_EPOCH + timedelta(seconds=ticks * self.seconds)).astimezone(zone)


@dataclass(frozen=True, slots=True)
class _Cron:
    """Precomputed lookup tables; ``*_next[i]`` is the first allowed value ``>= i``."""

    second_next: tuple[int | None, ...]
    minute_next: tuple[int | None, ...]
    hour_next: tuple[int | None, ...]
    dom_next: tuple[int | None, ...]
    month_next: tuple[int | None, ...]
    dow_gap: tuple[int, ...]  # days from a weekday (0 = Sunday) to the next allowed one
    dom_or_dow: bool  # neither day field starred: a day matches if either field matches
    first_minute: int
    first_second: int

    @classmethod
    def from_fields(cls, fields: list[str]) -> _Cron:
        if len(fields) not in (5, 6):
            raise ScheduleError(f"expected 5 or 6 fields, got {len(fields)}")
        seconds = _parse_field(fields[0], _SECOND_FIELD)[0] if len(fields) == 6 else {0}
        parsed = [_parse_field(text, spec) for text, spec in zip(fields[-5:], _FIELDS, strict=True)]
        (minutes, _), (hours, _), (doms, dom_star), (months, _), (dows, dow_star) = parsed
        weekdays = {d % 7 for d in dows}
        if (dom_star or dow_star) and min(doms) > max(_MAX_DAYS_IN_MONTH[m] for m in months):
            raise ScheduleError(
                f"schedule never fires: day-of-month '{fields[-3]}' "
                f"does not exist in month '{fields[-2]}'"
            )
        return cls(
            second_next=_next_table(seconds, 61),
            minute_next=_next_table(minutes, 61),
            hour_next=_next_table(hours, 25),
            dom_next=_next_table(doms, 33),
            month_next=_next_table(months, 14),
            dow_gap=tuple(
                min(gap for gap in range(7) if (day + gap) % 7 in weekdays) for day in range(7)
            ),
            dom_or_dow=not (dom_star or dow_star),
            first_minute=min(minutes),
            first_second=min(seconds),
        )

    def next_after(self, after: datetime, zone: ZoneInfo) -> datetime:
        """First local wall time strictly after ``after`` that exists, at its first occurrence."""
        after_utc = after.astimezone(UTC)
        local = after_utc.astimezone(zone)
        floor = local.replace(tzinfo=None, microsecond=0, fold=0)
        if local.fold:  # inside the repeated hour: every first occurrence is already past
            floor = max(floor, _repeat_end(zone, local) - _SECOND)
        while True:
            wall = self._next_wall(floor + _SECOND)
            candidate = wall.replace(tzinfo=zone)
            instant = candidate.astimezone(UTC)
            if instant.astimezone(zone) != candidate:  # skipped by a jump forward
                floor = max(wall, _gap_end(zone, candidate, instant) - _SECOND)
            elif instant <= after_utc:  # defensive: never return the past
                floor = wall
            else:
                return candidate

    def _next_wall(self, start: datetime) -> datetime:
        """First matching naive wall time at or after ``start``."""
        year, month, day = start.year, start.month, start.day
        clock = (start.hour, start.minute, start.second)
        limit = min(year + _HORIZON_YEARS, MAXYEAR)
        while year <= limit:
            allowed_month = self.month_next[month]
            if allowed_month is None:
                year, month, day, clock = year + 1, 1, 1, _MIDNIGHT
                continue
            if allowed_month != month:
                month, day, clock = allowed_month, 1, _MIDNIGHT
            found = self._next_day(year, month, day)
            if found is None:
                month, day, clock = month + 1, 1, _MIDNIGHT
                continue
            if found != day:
                clock = _MIDNIGHT
            time_of_day = self._next_time(*clock)
            if time_of_day is not None:
                return datetime(year, month, found, *time_of_day)
            day, clock = found + 1, _MIDNIGHT
        raise ScheduleError(f"no fire time from {start} to the end of year {limit}")

    def _next_day(self, year: int, month: int, day: int) -> int | None:
        """First matching day of the month at or after ``day``."""
        last = 29 if month == 2 and isleap(year) else _DAYS_IN_MONTH[month]
        if day > last:
            return None
        weekday = date(year, month, day).isoweekday() % 7  # 0 = Sunday
        if self.dom_or_dow:
            by_dom = self.dom_next[day]
            by_dow = day + self.dow_gap[weekday]
            best = by_dow if by_dom is None else min(by_dom, by_dow)
            return best if best <= last else None
        while day <= last:  # both fields must match; at least one of them allows every day
            by_dom = self.dom_next[day]
            if by_dom is None:
                return None
            by_dow = by_dom + self.dow_gap[(weekday + by_dom - day) % 7]
            if by_dow == by_dom:
                return by_dom if by_dom <= last else None
            weekday, day = (weekday + by_dow - day) % 7, by_dow
        return None

    def _next_time(self, hour: int, minute: int, second: int) -> tuple[int, int, int] | None:
        """First matching (hour, minute, second) at or after the given one, on the same day."""
        found_hour = self.hour_next[hour]
        if found_hour == hour:
            found_minute = self.minute_next[minute]
            if found_minute == minute:
                found_second = self.second_next[second]
                if found_second is not None:
                    return hour, minute, found_second
                found_minute = self.minute_next[minute + 1]
            if found_minute is not None:
                return hour, found_minute, self.first_second
            found_hour = self.hour_next[hour + 1]
        if found_hour is None:
            return None
        return found_hour, self.first_minute, self.first_second


def _offset_change(zone: ZoneInfo, before: datetime, after: datetime) -> datetime:
    """The instant in ``(before, after]`` at which the zone's UTC offset changed, in ``zone``.

    Both bounds are UTC datetimes with different offsets in ``zone``; bisects to the second.
    """
    low, high = (before - _EPOCH) // _SECOND, (after - _EPOCH) // _SECOND
    target = after.astimezone(zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if (_EPOCH + timedelta(seconds=middle)).astimezone(zone).utcoffset() == target:
            high = middle
        else:
            low = middle
    return (_EPOCH + timedelta(seconds=high)).astimezone(zone)


def _gap_end(zone: ZoneInfo, candidate: datetime, instant: datetime) -> datetime:
    """First naive wall time after the jump forward that skipped ``candidate``."""
    earlier = candidate.replace(fold=1).astimezone(UTC)  # read with the offset after the jump
    return _offset_change(zone, earlier, instant).replace(tzinfo=None)


def _repeat_end(zone: ZoneInfo, local: datetime) -> datetime:
    """First naive wall time after the repeated hour that ``local`` (fold=1) lies in."""
    first = local.replace(fold=0).astimezone(UTC)
    second = local.astimezone(UTC)
    change = _offset_change(zone, first, second)
    return change.replace(tzinfo=None) + (second - first)


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True, slots=True)
class Schedule:
    """A validated schedule; build it with :func:`parse_schedule` (or directly).

    ``next_after`` returns an aware datetime in ``ZoneInfo(time_zone)`` with microsecond 0;
    cron results always have ``fold=0`` because only first occurrences fire.
    """

    expression: str
    time_zone: str = "UTC"
    _zone: ZoneInfo = field(init=False, compare=False, repr=False)
    _matcher: _Cron | _Every = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_matcher", _compile(self.expression))
        object.__setattr__(self, "_zone", _parse_zone(self.time_zone))

    def next_after(self, after: datetime) -> datetime:
        """First fire time strictly after the aware datetime ``after``, in the schedule's zone."""
        if after.tzinfo is None or after.utcoffset() is None:
            raise ValueError("next_after needs a timezone-aware datetime")
        return self._matcher.next_after(after, self._zone)

    def last_at_or_before(self, moment: datetime, after: datetime) -> datetime | None:
        """The latest fire time in ``(after, moment]``, or None if there is none.

        Bounded work whatever the span: ``next_after`` is monotonic, and every fire time
        is a whole second, so an exponential search back from ``moment`` followed by a
        bisection to one second needs ``O(log(moment - after))`` calls -- about 40 for a
        per-second schedule three days back, never one call per tick.
        """
        if after >= moment or self.next_after(after) > moment:
            return None
        good, bad, step = after, moment, _SECOND  # next_after(good) <= moment < next_after(bad)
        while (probe := moment - step) > good:
            if self.next_after(probe) <= moment:
                good = probe
                break
            bad, step = probe, step * 2
        while bad - good > _SECOND:  # (good, bad] holds at most one whole second: the answer
            middle = good + (bad - good) / 2
            if self.next_after(middle) <= moment:
                good = middle
            else:
                bad = middle
        return self.next_after(good)


@functools.lru_cache(maxsize=4096)
def parse_schedule(expression: str, time_zone: str = "UTC") -> Schedule:
    """Parse and validate a schedule; raise ScheduleError with a short reason if invalid.

    Schedules are immutable, so equal expressions share one parsed object (config
    validation and the cron connector both parse; many triggers share expressions).
    """
    return Schedule(expression, time_zone)


# --------------------------------------------------------------------------- calendars

#: Consecutive excluded days (or ticks outside the bounds) searched before a calendar
#: says it never fires again: ten years of exclusions in a row.
_MAX_EXCLUDED_DAYS = 3660
_INTERVAL_SAMPLE = 2000
_INTERVAL_FROM = datetime(2026, 1, 1, tzinfo=UTC)


def parse_exclusion(text: str, time_zone: str = "UTC") -> date | Schedule:
    """One ``exclude`` entry: an ISO date (``2026-12-25``) or a cron expression whose
    every day it fires on is excluded (``* * 25 12 *``, ``* * * * SAT,SUN``)."""
    entry = text.strip()
    if len(entry) == 10 and entry[4] == "-" and entry[7] == "-":
        try:
            return date.fromisoformat(entry)
        except ValueError:
            raise ScheduleError(f"not a date (YYYY-MM-DD): {entry!r}") from None
    if entry.lower().startswith("@every"):
        raise ScheduleError(f"@every names no days: {entry!r} (use a date or a cron expression)")
    try:
        return parse_schedule(entry, time_zone)
    except ScheduleError as err:
        raise ScheduleError(f"neither a date (YYYY-MM-DD) nor a cron expression: {err}") from None


@functools.lru_cache(maxsize=4096)
def shortest_interval(schedule: Schedule) -> timedelta:
    """The shortest time between two consecutive ticks (over a sample of its ticks: the
    first 2,000 from 2026-01-01 or two years of them, whichever ends first)."""
    matcher = schedule._matcher
    if isinstance(matcher, _Every):
        return timedelta(seconds=matcher.seconds)
    shortest: timedelta | None = None
    tick = schedule.next_after(_INTERVAL_FROM)
    horizon = _INTERVAL_FROM + timedelta(days=731)
    for _ in range(_INTERVAL_SAMPLE):
        following = schedule.next_after(tick)
        gap = following - tick
        shortest = gap if shortest is None else min(shortest, gap)
        if following > horizon:
            break
        tick = following
    assert shortest is not None
    return shortest


def jitter_delay(key: str, scheduled: datetime, jitter: float) -> float:
    """The delay in ``[0, jitter)`` seconds of the tick of ``key`` (a trigger name) due
    at ``scheduled``: pseudo-random (spread evenly over the triggers and the ticks) but
    the same in every replica and after a restart, so the preview can print it."""
    if jitter <= 0:
        return 0.0
    stamp = scheduled.astimezone(UTC).isoformat()
    digest = hashlib.blake2b(f"{key}\x00{stamp}".encode(), digest_size=8).digest()
    return jitter * int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True, slots=True)
class Calendar:
    """When a trigger fires at all: its schedule's ticks within ``[start_at, end_at]``
    and not on an excluded day (a date, or a day a cron expression fires on, in the
    schedule's zone). Without bounds and exclusions it is the schedule itself."""

    schedule: Schedule
    start_at: datetime | None = None
    end_at: datetime | None = None
    exclude: tuple[date | Schedule, ...] = ()

    @property
    def plain(self) -> bool:
        return self.start_at is None and self.end_at is None and not self.exclude

    def excluded_by(self, tick: datetime) -> str | None:
        """Why ``tick`` does not fire: ``"before start_at"``, ``"after end_at"`` or the
        exclusion that names its day; None when it fires."""
        if self.start_at is not None and tick < self.start_at:
            return "before start_at"
        if self.end_at is not None and tick > self.end_at:
            return "after end_at"
        if self.exclude:
            day = tick.astimezone(self.schedule._zone).date()
            for entry in self.exclude:
                if isinstance(entry, date):
                    if entry == day:
                        return f"excluded {entry.isoformat()}"
                elif _fires_on(entry, day):
                    return f"excluded by {entry.expression!r}"
        return None

    def next_after(self, after: datetime) -> datetime | None:
        """The first tick after ``after`` that fires; None if none ever will."""
        if self.plain:
            return self.schedule.next_after(after)
        if self.start_at is not None and after < self.start_at:
            after = self.start_at - timedelta(microseconds=1)
        for _ in range(_MAX_EXCLUDED_DAYS):
            tick = self.schedule.next_after(after)
            reason = self.excluded_by(tick)
            if reason is None:
                return tick
            if reason == "after end_at":
                return None
            after = self._end_of_day(tick)
        return None

    def last_at_or_before(self, moment: datetime, after: datetime) -> datetime | None:
        """The latest tick in ``(after, moment]`` that fires, or None."""
        if self.end_at is not None:
            moment = min(moment, self.end_at)
        if self.start_at is not None:
            after = max(after, self.start_at - timedelta(microseconds=1))
        for _ in range(_MAX_EXCLUDED_DAYS):
            tick = self.schedule.last_at_or_before(moment, after)
            if tick is None or self.excluded_by(tick) is None:
                return tick
            local = tick.astimezone(self.schedule._zone)
            moment = datetime(local.year, local.month, local.day, tzinfo=local.tzinfo) - (
                timedelta(microseconds=1))
        return None

    def ticks(self, start: datetime, end: datetime) -> Iterator[datetime]:
        """Every tick in ``[start, end]`` that fires, in order."""
        tick = self.next_after(start - timedelta(microseconds=1))
        while tick is not None and tick <= end:
            yield tick
            tick = self.next_after(tick)

    def count(self, start: datetime, end: datetime, sample: int = 10_000) -> tuple[int, bool]:
        """How many ticks fire in ``[start, end]``: ``(n, True)`` when there are at most
        ``sample`` (or the schedule is a plain ``@every``: arithmetic); else
        ``(estimate, False)`` from the density of the first ``sample``, so a range of
        millions of ticks is measured without walking them all."""
        matcher = self.schedule._matcher
        if self.plain and isinstance(matcher, _Every):
            first = self.schedule.next_after(start - timedelta(microseconds=1))
            if first > end:
                return 0, True
            return (end - first) // timedelta(seconds=matcher.seconds) + 1, True
        counted, first = 0, start
        for tick in self.ticks(start, end):
            first = tick if counted == 0 else first
            counted += 1
            if counted > sample:
                covered = (tick - first).total_seconds() or 1.0
                return int(counted * (end - first).total_seconds() / covered), False
        return counted, True

    def _end_of_day(self, tick: datetime) -> datetime:
        """The last instant of ``tick``'s local day (so the next search starts on the
        following day)."""
        local = tick.astimezone(self.schedule._zone)
        following = local.date() + timedelta(days=1)
        midnight = datetime(following.year, following.month, following.day,
                            tzinfo=self.schedule._zone)
        return midnight - timedelta(microseconds=1)


@functools.lru_cache(maxsize=8192)
def _fires_on(schedule: Schedule, day: date) -> bool:
    """Whether ``schedule`` fires at some time of ``day`` (local to its zone)."""
    zone = schedule._zone
    start = datetime(day.year, day.month, day.day, tzinfo=zone)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=zone)
    return schedule.next_after(start - timedelta(microseconds=1)) < end
