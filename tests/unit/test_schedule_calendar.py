"""Calendars (a schedule within start_at/end_at, minus excluded days), jitter delays,
the shortest interval, tick counting, and their preview through the CLI."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from bridge.cli import main
from bridge.config import CronSource
from bridge.schedule import (
    Calendar,
    jitter_delay,
    parse_exclusion,
    parse_schedule,
    shortest_interval,
)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_excluded_dates_and_cron_days_do_not_fire() -> None:
    source = CronSource(schedule="0 9 * * *", exclude=["2026-12-25", "* * * * SAT,SUN"])
    ticks = list(source.calendar().ticks(at("2026-12-23T00:00:00Z"), at("2026-12-29T23:00:00Z")))
    assert [t.date() for t in ticks] == [
        date(2026, 12, 23), date(2026, 12, 24), date(2026, 12, 28), date(2026, 12, 29)]


def test_exclusions_are_days_in_the_trigger_zone() -> None:
    # 23:30 UTC on 2026-12-24 is already the 25th in Tokyo: excluded there
    calendar = CronSource(schedule="30 23 * * *", exclude=["2026-12-25"],
                          time_zone="Asia/Tokyo").calendar()
    tick = calendar.next_after(at("2026-12-24T00:00:00Z"))
    assert tick is not None
    assert tick.date() == date(2026, 12, 24)
    assert calendar.excluded_by(at("2026-12-24T23:30:00Z")) == "excluded 2026-12-25"


def test_start_at_and_end_at_bound_the_ticks() -> None:
    calendar = CronSource(schedule="@hourly", start_at="2026-05-01T10:30:00",
                          end_at="2026-05-01T13:00:00Z").calendar()
    assert calendar.next_after(at("2026-01-01T00:00:00Z")) == at("2026-05-01T11:00:00Z")
    assert calendar.next_after(at("2026-05-01T12:00:00Z")) == at("2026-05-01T13:00:00Z")
    assert calendar.next_after(at("2026-05-01T13:00:00Z")) is None
    assert calendar.last_at_or_before(at("2026-06-01T00:00:00Z"),
                                      at("2026-04-01T00:00:00Z")) == at("2026-05-01T13:00:00Z")


def test_last_at_or_before_skips_excluded_days() -> None:
    calendar = Calendar(parse_schedule("0 6 * * *"), exclude=(date(2026, 3, 9),))
    assert calendar.last_at_or_before(at("2026-03-09T12:00:00Z"),
                                      at("2026-03-01T00:00:00Z")) == at("2026-03-08T06:00:00Z")


def test_a_calendar_that_excludes_every_day_never_fires() -> None:
    calendar = Calendar(parse_schedule("@daily"), exclude=(parse_exclusion("* * * * *"),))
    assert calendar.next_after(at("2026-01-01T00:00:00Z")) is None


def test_jitter_delay_is_below_the_jitter_stable_and_spread() -> None:
    tick = at("2026-03-09T06:00:00Z")
    delays = [jitter_delay(f"job-{i}", tick, 30.0) for i in range(2000)]
    assert all(0 <= d < 30 for d in delays)
    assert jitter_delay("job-1", tick, 30.0) == delays[1]  # same on every replica
    # spread evenly: each 3-second slice holds about a tenth of them
    slices = [sum(1 for d in delays if k * 3 <= d < (k + 1) * 3) for k in range(10)]
    assert min(slices) > 140, slices
    assert max(slices) < 260, slices


def test_shortest_interval() -> None:
    assert shortest_interval(parse_schedule("@every 90s")) == timedelta(seconds=90)
    assert shortest_interval(parse_schedule("*/15 * * * *")) == timedelta(minutes=15)
    assert shortest_interval(parse_schedule("0 0 1,2 * *")) == timedelta(days=1)
    assert shortest_interval(parse_schedule("0 9,17 * * MON-FRI")) == timedelta(hours=8)


def test_count_is_exact_for_small_ranges_and_estimated_for_huge_ones() -> None:
    calendar = Calendar(parse_schedule("0 * * * *"))
    assert calendar.count(at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:00Z")) == (25, True)
    every = Calendar(parse_schedule("@every 1s"))
    assert every.count(at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z")) == (
        31 * 86400 + 1, True)
    total, exact = Calendar(parse_schedule("* * * * * *")).count(
        at("2026-01-01T00:00:00Z"), at("2026-02-01T00:00:00Z"))
    assert not exact
    assert abs(total - 31 * 86400) < 31 * 86400 * 0.01


# --- the preview ----------------------------------------------------------------------


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], list[str]]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_preview_shows_exclusions_bounds_and_jitter(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["schedule", "0 0 * * *", "--jitter", "30m", "--exclude", "2026-12-25",
                          "--exclude", "* * * * SAT,SUN", "--from", "2026-12-23T12:00:00Z",
                          "--end-at", "2026-12-29T00:00:00Z", "--count", "9"], capsys)
    assert (code, err) == (0, [])
    assert out == [
        "# '0 0 * * *' in UTC, jitter below 1800s, until 2026-12-29T00:00:00+00:00, "
        "excluding 2026-12-25, * * * * SAT,SUN",
        "2026-12-24T00:00:00+00:00  sent within 1800s after",
        "# 2026-12-25: not fired (excluded 2026-12-25)",
        "# 2026-12-26: not fired (excluded by '* * * * SAT,SUN')",
        "# 2026-12-27: not fired (excluded by '* * * * SAT,SUN')",
        "2026-12-28T00:00:00+00:00  sent within 1800s after",
        "2026-12-29T00:00:00+00:00  sent within 1800s after",
        "# no tick after end_at 2026-12-29T00:00:00+00:00",
    ]


def test_preview_of_a_configured_trigger_prints_the_daemons_delays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(
        "defaults: {dead_letter: {file: {path: /tmp/dl.jsonl}}}\n"
        "functions: {f: {url: 'http://127.0.0.1:8080/'}}\n"
        "triggers: [{name: nightly, function: f, cron: {schedule: '0 2 * * *', "
        "jitter: 10m, start_at: '2026-03-05T00:00:00'}}]\n")
    code, out, err = run(["schedule", "--config", str(config), "--trigger", "nightly",
                          "--from", "2026-03-01T00:00:00Z", "--count", "2"], capsys)
    assert (code, err) == (0, [])
    delay = jitter_delay("nightly", at("2026-03-05T02:00:00Z"), 600.0)
    sent = at("2026-03-05T02:00:00Z") + timedelta(seconds=delay)
    assert out[0].startswith("# trigger nightly: '0 2 * * *' in UTC, jitter below 600s, from ")
    assert out[1] == "# nothing before start_at 2026-03-05T00:00:00+00:00"
    assert out[2] == (f"2026-03-05T02:00:00+00:00  sent +{delay:.3f}s at "
                      f"{sent.isoformat(timespec='milliseconds')}")
    assert out[3].startswith("2026-03-06T02:00:00+00:00  sent +")


@pytest.mark.parametrize(("argv", "message"), [
    (["schedule", "* * * * *", "--jitter", "2m"],
     "--jitter: 120s is not shorter than the schedule's interval (60s between ticks of "
     "'* * * * *')"),
    (["schedule", "@hourly", "--exclude", "2026-13-01"],
     "--exclude: not a date (YYYY-MM-DD): '2026-13-01'"),
    (["schedule", "@hourly", "--start-at", "2026-02-01", "--end-at", "2026-01-01"],
     "--end-at: must be after start_at"),
    (["schedule", "@hourly", "--start-at", "soon"], "--start-at: expected an ISO 8601 time"),
    (["schedule"], "schedule: give an EXPRESSION (or --config FILE --trigger NAME)"),
])
def test_preview_refuses_bad_options_naming_them(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert out == []
    assert len(err) == 1, err
    assert err[0].startswith(message), err


def test_preview_of_a_trigger_that_is_not_cron(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(
        "defaults: {dead_letter: {file: {path: /tmp/dl.jsonl}}}\n"
        "functions: {f: {url: 'http://127.0.0.1:8080/'}}\n"
        "triggers: [{name: q, function: f, rabbitmq: {url: 'amqp://h/', queue: q}}]\n")
    code, _, err = run(["schedule", "--config", str(config), "--trigger", "q"], capsys)
    assert (code, err) == (2, ["--trigger: 'q' is a rabbitmq trigger, not a cron one"])
    code, _, err = run(["schedule", "--config", str(config), "--trigger", "nope"], capsys)
    assert (code, err) == (2, ["--trigger: no trigger named 'nope' in the config"])
