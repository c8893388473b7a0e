"""Behaviour of the cron engine: syntax, day rules, macros, @every, DST and errors."""

from __future__ import annotations

import dataclasses
import re
from calendar import isleap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from bridge.schedule import Schedule, ScheduleError, parse_schedule

NEW_YORK = "America/New_York"
BERLIN = "Europe/Berlin"


def ticks(schedule: Schedule, after: datetime) -> Iterator[datetime]:
    """Successive fire times strictly after ``after`` (``next_after`` applied again and again)."""
    while True:
        after = schedule.next_after(after)
        yield after


def fires(expression: str, after: str, count: int, time_zone: str = "UTC") -> list[str]:
    """The next ``count`` fire times after the ISO timestamp ``after``, as ISO strings."""
    schedule = parse_schedule(expression, time_zone)
    start = datetime.fromisoformat(after)
    return [moment.isoformat() for moment in islice(ticks(schedule, start), count)]


# --------------------------------------------------------------------------- field syntax


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        pytest.param(
            "*/5 * * * *",
            "2026-05-17T13:07:31+00:00",
            ["2026-05-17T13:10:00+00:00", "2026-05-17T13:15:00+00:00"],
            id="minute step",
        ),
        pytest.param(
            "0 2 * * *",
            "2026-05-17T13:07:00+00:00",
            ["2026-05-18T02:00:00+00:00", "2026-05-19T02:00:00+00:00"],
            id="daily at two",
        ),
        pytest.param(
            "10-20/5 * * * *",
            "2026-05-17T13:07:00+00:00",
            [
                "2026-05-17T13:10:00+00:00",
                "2026-05-17T13:15:00+00:00",
                "2026-05-17T13:20:00+00:00",
                "2026-05-17T14:10:00+00:00",
            ],
            id="range with step",
        ),
        pytest.param(
            "45/10 * * * *",
            "2026-05-17T13:00:00+00:00",
            ["2026-05-17T13:45:00+00:00", "2026-05-17T13:55:00+00:00", "2026-05-17T14:45:00+00:00"],
            id="start/step runs to the field maximum",
        ),
        pytest.param(
            "0 8-10,22 * * *",
            "2026-05-17T09:30:00+00:00",
            ["2026-05-17T10:00:00+00:00", "2026-05-17T22:00:00+00:00", "2026-05-18T08:00:00+00:00"],
            id="list of range and value",
        ),
        pytest.param(
            "0 0 1 jan,Jul *",
            "2026-05-17T00:00:00+00:00",
            ["2026-07-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"],
            id="month names in any case",
        ),
        pytest.param(
            "0 0 1 MAR-MAY/2 *",
            "2026-01-01T00:00:00+00:00",
            ["2026-03-01T00:00:00+00:00", "2026-05-01T00:00:00+00:00", "2027-03-01T00:00:00+00:00"],
            id="month name range with step",
        ),
        pytest.param(
            "30 9 * * MON-FRI",
            "2026-05-15T10:00:00+00:00",  # a Friday, after 09:30
            ["2026-05-18T09:30:00+00:00", "2026-05-19T09:30:00+00:00"],
            id="weekday name range",
        ),
        pytest.param(
            "0 12 * * 0",
            "2026-05-17T13:00:00+00:00",  # a Sunday
            ["2026-05-24T12:00:00+00:00", "2026-05-31T12:00:00+00:00"],
            id="zero is Sunday",
        ),
        pytest.param(
            "0 12 * * 7",
            "2026-05-17T13:00:00+00:00",
            ["2026-05-24T12:00:00+00:00", "2026-05-31T12:00:00+00:00"],
            id="seven is Sunday",
        ),
        pytest.param(
            "0 12 * * 5-7",
            "2026-05-17T13:00:00+00:00",
            ["2026-05-22T12:00:00+00:00", "2026-05-23T12:00:00+00:00", "2026-05-24T12:00:00+00:00"],
            id="range ending at seven includes Sunday",
        ),
        pytest.param(
            "0 12 ? * sat",
            "2026-05-17T13:00:00+00:00",
            ["2026-05-23T12:00:00+00:00", "2026-05-30T12:00:00+00:00"],
            id="question mark is a star",
        ),
        pytest.param(
            "0 0 31 * *",
            "2026-01-01T00:00:00+00:00",
            [
                "2026-01-31T00:00:00+00:00",
                "2026-03-31T00:00:00+00:00",
                "2026-05-31T00:00:00+00:00",
                "2026-07-31T00:00:00+00:00",
                "2026-08-31T00:00:00+00:00",
            ],
            id="day 31 skips short months",
        ),
        pytest.param(
            "59 23 31 12 *",
            "2026-12-31T23:59:00+00:00",
            ["2027-12-31T23:59:00+00:00"],
            id="year rollover",
        ),
    ],
)
def test_field_syntax(expression: str, after: str, expected: list[str]) -> None:
    assert fires(expression, after, len(expected)) == expected


# --------------------------------------------------------------------------- day fields


@pytest.mark.parametrize(
    ("expression", "expected_days"),
    [
        pytest.param("0 0 15 * FRI", [6, 13, 15, 20, 27], id="both restricted: either matches"),
        pytest.param("0 0 15 * *", [15], id="only day-of-month restricts"),
        pytest.param("0 0 * * FRI", [6, 13, 20, 27], id="only day-of-week restricts"),
        pytest.param("0 0 15 * ?", [15], id="question mark day-of-week is a star"),
        pytest.param("0 0 ? * FRI", [6, 13, 20, 27], id="question mark day-of-month is a star"),
        pytest.param("0 0 15 * */1", [15], id="star with step 1 stays a star"),
        pytest.param(
            "0 0 */10 * FRI", [1, 6, 11, 13, 20, 21, 27, 31], id="star with step is a restriction"
        ),
        pytest.param("0 0 1-3 * SUN", [1, 2, 3, 8, 15, 22, 29], id="range and weekday"),
    ],
)
def test_day_of_month_and_day_of_week(expression: str, expected_days: list[int]) -> None:
    march = [
        moment
        for moment in islice(
            ticks(parse_schedule(expression), datetime(2026, 2, 28, tzinfo=UTC)), 40
        )
        if moment.month == 3 and moment.year == 2026
    ]
    assert [moment.day for moment in march] == expected_days


# --------------------------------------------------------------------------- macros


@pytest.mark.parametrize(
    ("macro", "equivalent"),
    [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ],
)
def test_macros_match_their_expansion(macro: str, equivalent: str) -> None:
    after = "2026-05-17T13:07:31+00:00"
    assert fires(macro, after, 3, NEW_YORK) == fires(equivalent, after, 3, NEW_YORK)


def test_macro_examples() -> None:
    assert fires("@weekly", "2026-05-17T13:00:00+00:00", 1) == ["2026-05-24T00:00:00+00:00"]
    assert fires("@yearly", "2026-05-17T13:00:00+00:00", 1) == ["2027-01-01T00:00:00+00:00"]
    assert fires("@hourly", "2026-05-17T13:00:00+00:00", 1) == ["2026-05-17T14:00:00+00:00"]


# --------------------------------------------------------------------------- @every


@pytest.mark.parametrize(
    ("expression", "seconds"),
    [
        ("@every 90s", 90.0),
        ("@every 5m", 300.0),
        ("@every 1h30m", 5400.0),
        ("@every 1.5h", 5400.0),
        ("@every .5m", 30.0),
        ("@every 1m30s", 90.0),
        ("@every 2000ms", 2.0),
        ("@every 1s", 1.0),
    ],
)
def test_every_durations(expression: str, seconds: float) -> None:
    after = datetime(2026, 5, 17, 13, 7, 31, tzinfo=UTC)
    first, second, third = islice(ticks(parse_schedule(expression), after), 3)
    assert (second - first).total_seconds() == seconds
    assert (third - second).total_seconds() == seconds
    assert first.timestamp() % seconds == 0  # multiples since the epoch
    assert 0 < (first - after).total_seconds() <= seconds


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        pytest.param(
            "@every 5m",
            "2026-05-17T13:07:31.250000+00:00",
            ["2026-05-17T13:10:00+00:00", "2026-05-17T13:15:00+00:00"],
            id="aligned to multiples since the epoch",
        ),
        pytest.param(
            "@every 5m",
            "2026-05-17T13:10:00+00:00",
            ["2026-05-17T13:15:00+00:00"],
            id="strictly after a tick",
        ),
        pytest.param(
            "@every 7s",
            "1970-01-01T00:00:00+00:00",
            ["1970-01-01T00:00:07+00:00", "1970-01-01T00:00:14+00:00"],
            id="counted from the epoch",
        ),
        pytest.param(
            "@every 1h30m",
            "2026-05-17T00:00:00+00:00",
            ["2026-05-17T01:30:00+00:00", "2026-05-17T03:00:00+00:00"],
            id="hour and a half",
        ),
    ],
)
def test_every_ticks(expression: str, after: str, expected: list[str]) -> None:
    assert fires(expression, after, len(expected)) == expected


def test_every_ignores_the_zone_for_tick_instants() -> None:
    # Kolkata is UTC+05:30, so hourly ticks fall on the half hour there.
    assert fires("@every 1h", "2026-03-01T00:00:00+00:00", 2, "Asia/Kolkata") == [
        "2026-03-01T06:30:00+05:30",
        "2026-03-01T07:30:00+05:30",
    ]


def test_every_keeps_real_intervals_through_the_repeated_hour() -> None:
    assert fires("@every 30m", "2026-11-01T00:40:00-04:00", 5, NEW_YORK) == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-01T01:00:00-05:00",
        "2026-11-01T01:30:00-05:00",
        "2026-11-01T02:00:00-05:00",
    ]


# --------------------------------------------------------------------------- seconds field


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        pytest.param(
            "*/15 * * * * *",
            "2026-05-17T13:07:31+00:00",
            ["2026-05-17T13:07:45+00:00", "2026-05-17T13:08:00+00:00"],
            id="six fields: seconds step",
        ),
        pytest.param(
            "30 0 9 * * *",
            "2026-05-17T13:07:31+00:00",
            ["2026-05-18T09:00:30+00:00"],
            id="six fields: exact second",
        ),
        pytest.param(
            "* * * * *",
            "2026-05-17T13:07:00.500000+00:00",
            ["2026-05-17T13:08:00+00:00"],
            id="five fields fire at second zero",
        ),
        pytest.param(
            "* * * * *",
            "2026-05-17T13:07:59.999999+00:00",
            ["2026-05-17T13:08:00+00:00"],
            id="microseconds before a fire time",
        ),
        pytest.param(
            "* * * * * *",
            "2026-05-17T13:07:00.000001+00:00",
            ["2026-05-17T13:07:01+00:00"],
            id="every second",
        ),
    ],
)
def test_seconds(expression: str, after: str, expected: list[str]) -> None:
    assert fires(expression, after, len(expected)) == expected


# --------------------------------------------------------------------------- results


def test_next_after_is_strictly_after() -> None:
    schedule = parse_schedule("0 2 * * *")
    fire = datetime(2026, 5, 17, 2, tzinfo=UTC)
    assert schedule.next_after(fire) == fire + timedelta(days=1)


def test_result_is_in_the_schedule_zone_whatever_the_input_zone() -> None:
    schedule = parse_schedule("30 9 * * MON-FRI", NEW_YORK)
    in_utc = datetime(2026, 5, 18, 12, tzinfo=UTC)
    in_tokyo = in_utc.astimezone(ZoneInfo("Asia/Tokyo"))
    result = schedule.next_after(in_tokyo)
    assert result == schedule.next_after(in_utc)
    assert result.isoformat() == "2026-05-18T09:30:00-04:00"
    assert result.tzinfo is ZoneInfo(NEW_YORK)
    assert (result.microsecond, result.fold) == (0, 0)


def test_naive_datetime_is_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        parse_schedule("* * * * *").next_after(datetime(2026, 5, 17))


def test_schedule_value_semantics() -> None:
    schedule = parse_schedule(" 0 2 * * * ", BERLIN)
    assert schedule == Schedule(" 0 2 * * * ", BERLIN)
    assert hash(schedule) == hash(Schedule(" 0 2 * * * ", BERLIN))
    assert schedule.expression == " 0 2 * * * "
    assert repr(schedule) == "Schedule(expression=' 0 2 * * * ', time_zone='Europe/Berlin')"
    assert dataclasses.replace(schedule, time_zone="UTC").time_zone == "UTC"
    with pytest.raises(ScheduleError, match="unknown time zone"):
        Schedule("0 2 * * *", "Nowhere/Special")


# --------------------------------------------------------------------------- daylight saving time


@pytest.mark.parametrize(
    ("expression", "time_zone", "after", "expected"),
    [
        pytest.param(
            "30 2 * * *",
            NEW_YORK,
            "2026-03-07T12:00:00-05:00",
            ["2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"],
            id="new york: skipped wall time does not fire",
        ),
        pytest.param(
            "0 * * * *",
            NEW_YORK,
            "2026-03-08T00:30:00-05:00",
            ["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"],
            id="new york: hourly across spring forward",
        ),
        pytest.param(
            "* * * * * *",
            NEW_YORK,
            "2026-03-08T01:59:58-05:00",
            ["2026-03-08T01:59:59-05:00", "2026-03-08T03:00:00-04:00"],
            id="new york: every second across spring forward",
        ),
        pytest.param(
            "30 1 * * *",
            NEW_YORK,
            "2026-10-31T12:00:00-04:00",
            ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
            id="new york: repeated wall time fires once",
        ),
        pytest.param(
            "0 * * * *",
            NEW_YORK,
            "2026-11-01T00:30:00-04:00",
            ["2026-11-01T01:00:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T03:00:00-05:00"],
            id="new york: hourly across fall back",
        ),
        pytest.param(
            "*/30 * * * *",
            NEW_YORK,
            "2026-11-01T00:10:00-04:00",
            [
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T01:00:00-04:00",
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T02:00:00-05:00",
                "2026-11-01T02:30:00-05:00",
            ],
            id="new york: half-hourly across fall back",
        ),
        pytest.param(
            "30 2 * * *",
            BERLIN,
            "2026-03-28T12:00:00+01:00",
            ["2026-03-30T02:30:00+02:00"],
            id="berlin: skipped wall time does not fire",
        ),
        pytest.param(
            "0 * * * *",
            BERLIN,
            "2026-03-29T00:30:00+01:00",
            ["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
            id="berlin: hourly across spring forward",
        ),
        pytest.param(
            "30 2 * * *",
            BERLIN,
            "2026-10-24T12:00:00+02:00",
            ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
            id="berlin: repeated wall time fires once",
        ),
        pytest.param(
            "0 * * * *",
            BERLIN,
            "2026-10-25T00:30:00+02:00",
            [
                "2026-10-25T01:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T03:00:00+01:00",
                "2026-10-25T04:00:00+01:00",
            ],
            id="berlin: hourly across fall back",
        ),
        pytest.param(
            "*/30 * * * *",
            BERLIN,
            "2026-10-25T01:10:00+02:00",
            [
                "2026-10-25T01:30:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-25T02:30:00+02:00",
                "2026-10-25T03:00:00+01:00",
            ],
            id="berlin: half-hourly across fall back",
        ),
        pytest.param(
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-10-04T01:40:00+10:30",
            ["2026-10-04T01:45:00+10:30", "2026-10-04T02:30:00+11:00"],
            id="lord howe: half-hour spring forward",
        ),
        pytest.param(
            "*/15 * * * *",
            "Australia/Lord_Howe",
            "2026-04-05T01:20:00+11:00",
            ["2026-04-05T01:30:00+11:00", "2026-04-05T01:45:00+11:00", "2026-04-05T02:00:00+10:30"],
            id="lord howe: half-hour fall back",
        ),
    ],
)
def test_daylight_saving_transitions(
    expression: str, time_zone: str, after: str, expected: list[str]
) -> None:
    assert fires(expression, after, len(expected), time_zone) == expected


@pytest.mark.parametrize(
    ("expression", "time_zone", "after", "expected"),
    [
        pytest.param(
            "*/30 * * * *",
            NEW_YORK,
            datetime(2026, 11, 1, 1, 10, fold=1, tzinfo=ZoneInfo(NEW_YORK)),
            "2026-11-01T02:00:00-05:00",
            id="new york: 01:30 first occurrence is already past",
        ),
        pytest.param(
            "*/30 * * * *",
            NEW_YORK,
            datetime(2026, 11, 1, 6, 10, tzinfo=UTC),
            "2026-11-01T02:00:00-05:00",
            id="new york: same instant given in UTC",
        ),
        pytest.param(
            "30 1 * * *",
            NEW_YORK,
            datetime(2026, 11, 1, 1, 0, fold=1, tzinfo=ZoneInfo(NEW_YORK)),
            "2026-11-02T01:30:00-05:00",
            id="new york: daily repeat skipped",
        ),
        pytest.param(
            "* * * * * *",
            NEW_YORK,
            datetime(2026, 11, 1, 1, 0, 5, fold=1, tzinfo=ZoneInfo(NEW_YORK)),
            "2026-11-01T02:00:00-05:00",
            id="new york: every second resumes after the repeated hour",
        ),
        pytest.param(
            "*/30 * * * *",
            BERLIN,
            datetime(2026, 10, 25, 2, 10, fold=1, tzinfo=ZoneInfo(BERLIN)),
            "2026-10-25T03:00:00+01:00",
            id="berlin: 02:30 first occurrence is already past",
        ),
    ],
)
def test_after_inside_the_repeated_hour(
    expression: str, time_zone: str, after: datetime, expected: str
) -> None:
    assert parse_schedule(expression, time_zone).next_after(after).isoformat() == expected


# Independent oracle: scan every UTC minute, keep the first occurrence of each wall time.
ORACLE_CASES: list[tuple[str, Callable[[datetime], bool]]] = [
    ("* * * * *", lambda t: True),
    ("*/7 1-3 * * *", lambda t: t.minute % 7 == 0 and 1 <= t.hour <= 3),
    ("30 1,2 * * *", lambda t: t.minute == 30 and t.hour in (1, 2)),
    ("0 9 * * MON-FRI", lambda t: (t.minute, t.hour) == (0, 9) and t.isoweekday() <= 5),
]
ORACLE_WINDOWS = [
    (NEW_YORK, datetime(2026, 3, 8, 2, tzinfo=UTC)),
    (NEW_YORK, datetime(2026, 11, 1, 2, tzinfo=UTC)),
    (BERLIN, datetime(2026, 3, 28, 22, tzinfo=UTC)),
    (BERLIN, datetime(2026, 10, 24, 22, tzinfo=UTC)),
]


def _oracle_next(matches: Callable[[datetime], bool], zone: ZoneInfo, after: datetime) -> datetime:
    moment = after.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while True:
        local = moment.astimezone(zone)
        if local.fold == 0 and matches(local):
            return local
        moment += timedelta(minutes=1)


@pytest.mark.parametrize(("time_zone", "window_start"), ORACLE_WINDOWS)
@pytest.mark.parametrize(("expression", "matches"), ORACLE_CASES)
def test_matches_a_minute_by_minute_scan(
    expression: str,
    matches: Callable[[datetime], bool],
    time_zone: str,
    window_start: datetime,
) -> None:
    zone = ZoneInfo(time_zone)
    schedule = parse_schedule(expression, time_zone)
    for minutes in range(0, 10 * 60, 23):
        after = (window_start + timedelta(minutes=minutes, seconds=17)).astimezone(zone)
        expected = _oracle_next(matches, zone, after.astimezone(UTC))
        assert schedule.next_after(after).isoformat() == expected.isoformat(), after


# --------------------------------------------------------------------------- sparse schedules


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("2026-01-01T00:00:00+00:00", ["2028-02-29T00:00:00+00:00", "2032-02-29T00:00:00+00:00"]),
        ("2096-03-01T00:00:00+00:00", ["2104-02-29T00:00:00+00:00"]),  # 2100 is not a leap year
    ],
)
def test_february_29(after: str, expected: list[str]) -> None:
    assert fires("0 0 29 2 *", after, len(expected)) == expected


def test_sparse_schedules_iterate_far_ahead() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    leap_days = list(islice(ticks(parse_schedule("0 0 29 2 *"), start), 200))
    assert [day.year for day in leap_days] == [year for year in range(2026, 2849) if isleap(year)]
    month_ends = list(islice(ticks(parse_schedule("0 0 31 * *"), start), 700))
    assert [(day.month, day.day) for day in month_ends[:7]] == [
        (m, 31) for m in (1, 3, 5, 7, 8, 10, 12)
    ]
    assert all(day.day == 31 for day in month_ends)


def test_day_30_of_february_with_a_weekday_fires_on_that_weekday() -> None:
    assert fires("0 0 30 2 MON", "2026-01-01T00:00:00+00:00", 2) == [
        "2026-02-02T00:00:00+00:00",
        "2026-02-09T00:00:00+00:00",
    ]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("* * * *", "expected 5 or 6 fields, got 4"),
        ("* * * * * * *", "expected 5 or 6 fields, got 7"),
        ("60 * * * *", "field 'minute': value 60 out of range 0-59"),
        ("0 24 * * *", "field 'hour': value 24 out of range 0-23"),
        ("0 0 0 * *", "field 'day-of-month': value 0 out of range 1-31"),
        ("0 0 32 * *", "field 'day-of-month': value 32 out of range 1-31"),
        ("0 0 * 13 *", "field 'month': value 13 out of range 1-12"),
        ("0 0 * * 8", "field 'day-of-week': value 8 out of range 0-7"),
        ("60 0 0 * * *", "field 'second': value 60 out of range 0-59"),
        ("*/0 * * * *", "field 'minute': step must be at least 1"),
        ("*/x * * * *", "field 'minute': invalid step 'x'"),
        ("1/2/3 * * * *", "too many '/'"),
        ("5-1 * * * *", "field 'minute': range '5-1' is descending"),
        ("0 0 * * FRI-MON", "field 'day-of-week': range 'FRI-MON' is descending"),
        ("1-2-3 * * * *", "too many '-'"),
        ("1,,2 * * * *", "empty list item"),
        ("-5 * * * *", "missing value"),
        ("5x * * * *", "invalid value '5x'"),
        ("0 0 * FOO *", "field 'month': unknown name 'FOO'"),
        ("0 0 * JAN-FOO *", "unknown name 'FOO' in 'JAN-FOO'"),
        ("0 0 * * MONDAY", "field 'day-of-week': unknown name 'MONDAY'"),
        ("MON * * * *", "field 'minute': unknown name 'MON'"),
        ("TZ=UTC 0 0 * * *", "time zone prefixes are not supported in the schedule; use time_zone"),
        ("CRON_TZ=Europe/Berlin 0 0 * * *", "time zone prefixes are not supported"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
        ("0 0 30,31 FEB ?", "never fires"),
        ("@fortnightly", "unknown macro"),
        ("@daily 5", "unknown macro"),
        ("@every", "@every needs a duration"),
        ("@every 250ms", "shorter than 1s"),
        ("@every 0s", "shorter than 1s"),
        ("@every 1.5s", "not a whole number of seconds"),
        ("@every 5", "invalid @every duration '5'"),
        ("@every -5m", "invalid @every duration"),
        ("@every 5 minutes", "invalid @every duration"),
        ("@every 1d", "invalid @every duration"),
    ],
)
def test_invalid_expressions(expression: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        parse_schedule(expression)


@pytest.mark.parametrize(
    ("time_zone", "message"),
    [
        ("Mars/Base", "unknown time zone 'Mars/Base'"),
        ("America", "unknown time zone 'America'"),
        ("../etc/passwd", "unknown time zone"),
        ("", "time zone must not be empty"),
    ],
)
def test_invalid_time_zones(time_zone: str, message: str) -> None:
    with pytest.raises(ScheduleError, match=re.escape(message)):
        parse_schedule("0 0 * * *", time_zone)


def test_schedule_error_is_a_value_error() -> None:
    assert issubclass(ScheduleError, ValueError)


# --------------------------------------------------------------------------- latest fire time


_TOO_MANY = datetime.max.replace(tzinfo=UTC)


def _latest_by_iteration(schedule: Schedule, moment: datetime, after: datetime) -> datetime | None:
    """The oracle: walk forward tick by tick (``_TOO_MANY`` past 500 ticks, to stay fast)."""
    latest = None
    for tick in islice(ticks(schedule, after), 500):
        if tick > moment:
            return latest
        latest = tick
    return _TOO_MANY


LATEST_CASES = [
    ("* * * * * *", "UTC"),
    ("*/7 * * * * *", "UTC"),
    ("30 1,2 * * *", NEW_YORK),  # the DST days of the oracle windows
    ("*/7 1-3 * * *", BERLIN),
    ("0 9 * * MON-FRI", NEW_YORK),
    ("@every 90s", BERLIN),
    ("0 0 13 * FRI", "UTC"),
]


@pytest.mark.parametrize(("time_zone", "window_start"), ORACLE_WINDOWS)
@pytest.mark.parametrize(("expression", "schedule_zone"), LATEST_CASES)
def test_last_at_or_before_matches_forward_iteration(
    expression: str, schedule_zone: str, time_zone: str, window_start: datetime
) -> None:
    schedule = parse_schedule(expression, schedule_zone)
    for minutes in range(0, 10 * 60, 37):
        moment = window_start + timedelta(minutes=minutes, seconds=13, microseconds=250)
        for back in (timedelta(seconds=1), timedelta(minutes=5), timedelta(hours=3),
                     timedelta(days=9)):
            after = moment - back
            expected = _latest_by_iteration(schedule, moment, after)
            if expected is _TOO_MANY:
                continue
            assert schedule.last_at_or_before(moment, after) == expected, (moment, back)


def test_last_at_or_before_includes_the_moment_and_excludes_after() -> None:
    schedule = parse_schedule("*/10 * * * * *")
    tick = datetime(2026, 5, 17, 12, 0, 30, tzinfo=UTC)
    assert schedule.last_at_or_before(tick, tick - timedelta(seconds=10)) == tick
    assert schedule.last_at_or_before(tick, tick) is None
    assert schedule.last_at_or_before(tick - timedelta(microseconds=1),
                                      tick - timedelta(seconds=10)) is None
    later = tick + timedelta(seconds=9.9)
    assert schedule.last_at_or_before(later, tick - timedelta(seconds=1)) == tick


def test_last_at_or_before_finds_sparse_ticks_far_back() -> None:
    leap_day = parse_schedule("0 0 29 2 *")
    moment = datetime(2031, 6, 1, tzinfo=UTC)
    assert leap_day.last_at_or_before(moment, datetime(2020, 1, 1, tzinfo=UTC)) == datetime(
        2028, 2, 29, tzinfo=UTC
    )
    assert leap_day.last_at_or_before(moment, datetime(2028, 3, 1, tzinfo=UTC)) is None


class _CountingSchedule(Schedule):
    calls = 0

    def next_after(self, after: datetime) -> datetime:
        type(self).calls += 1
        return super().next_after(after)


@pytest.mark.parametrize("expression", ["* * * * * *", "0 2 * * *", "@every 7s", "0 0 29 2 *"])
def test_last_at_or_before_work_grows_with_the_log_of_the_span(expression: str) -> None:
    schedule = _CountingSchedule(expression)
    moment = datetime(2031, 6, 1, 12, 34, 56, 789, tzinfo=UTC)
    counts = []
    for span in (timedelta(hours=1), timedelta(days=3), timedelta(days=3000)):
        _CountingSchedule.calls = 0
        schedule.last_at_or_before(moment, moment - span)
        counts.append(_CountingSchedule.calls)
    # at most ~2 x log2(span in seconds) + 2 calls: 3,000 days are 2.6e8 seconds
    assert max(counts) <= 2 * 28 + 2, counts
