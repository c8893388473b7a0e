"""The cron connector's catch-up on gaining leadership and after a restart: which ticks,
and that the work is bounded by the handover window, not by the outage."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from bridge.config import parse_config
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.schedule import Schedule
from connectors.base import ConnectorContext
from connectors.cron import CronClock, CronConnector

NOW = datetime(2026, 3, 9, 2, 30, 0, 400_000, tzinfo=UTC)
WINDOW = timedelta(seconds=6)  # lease 3 s + renew deadline 2 s + retry period 1 s


class Leader:
    """A Leadership whose handover the test sets."""

    is_leader = True

    def __init__(self, since: datetime | None, window: timedelta = WINDOW) -> None:
        self.handover_since = since
        self.handover_window = window
        self.unfired: list[datetime] = []

    def on_change(self, callback: Callable[[bool], None]) -> None:
        return None

    async def wait_leader(self) -> None:
        return None

    async def start(self) -> None:
        return None

    def stop_leading(self) -> None:
        self.is_leader = False

    def note_unfired(self, scheduled: datetime) -> None:
        self.unfired.append(scheduled)

    async def stop(self) -> None:
        return None


class CountingSchedule(Schedule):
    calls = 0

    def next_after(self, after: datetime) -> datetime:
        type(self).calls += 1
        return super().next_after(after)


def connector(cron: str, leadership: Leader, clock: CronClock | None = None) -> CronConnector:
    config = parse_config(f"""
defaults:
  dead_letter: {{file: {{path: /tmp/dl.jsonl}}}}
functions:
  f: {{url: "http://127.0.0.1:9/"}}
triggers:
  - {{name: tick, function: f, cron: {cron}}}
""")
    context = ConnectorContext(Metrics(), get_logger(), leadership)
    if clock is not None:
        context.shared(CronClock, lambda: clock)
    return CronConnector(config.resolve(config.triggers[0]), context)


def seconds_before(now: datetime, *offsets: int) -> list[datetime]:
    base = now.replace(microsecond=0)
    return [base - timedelta(seconds=s) for s in offsets]


def test_a_lease_left_days_ago_gives_the_window_only() -> None:
    cron = connector('{schedule: "* * * * * *"}', Leader(NOW - timedelta(days=3)))
    # (now - 6 s, now]: exactly 6 whole seconds
    assert cron._handover_ticks(NOW) == seconds_before(NOW, 5, 4, 3, 2, 1, 0)


def test_the_window_is_also_cut_by_the_starting_deadline_and_the_last_renewal() -> None:
    since = NOW - timedelta(days=3)
    with_deadline = connector('{schedule: "* * * * * *", starting_deadline: 3s}', Leader(since))
    assert with_deadline._handover_ticks(NOW) == seconds_before(NOW, 2, 1, 0)
    recent = connector('{schedule: "* * * * * *"}', Leader(NOW - timedelta(seconds=2)))
    assert recent._handover_ticks(NOW) == seconds_before(NOW, 1, 0)


def test_older_ticks_follow_the_restart_rule() -> None:
    """A daily tick 30 min ago, outside the 6 s window: fired only if inside the
    starting deadline (the CronJob rule), never from an old Lease without one."""
    since = NOW - timedelta(days=3)
    daily = "0 2 * * *"
    inside = connector(f'{{schedule: "{daily}", starting_deadline: 1h}}', Leader(since))
    assert inside._handover_ticks(NOW) == [NOW.replace(minute=0, second=0, microsecond=0)]
    past = connector(f'{{schedule: "{daily}", starting_deadline: 10m}}', Leader(since))
    assert past._handover_ticks(NOW) == []
    without = connector(f'{{schedule: "{daily}"}}', Leader(since))
    assert without._handover_ticks(NOW) == []
    # a tick the previous leader held the Lease for is its own, even inside the deadline
    renewed_after = connector(f'{{schedule: "{daily}", starting_deadline: 1h}}',
                              Leader(NOW - timedelta(minutes=20)))
    assert renewed_after._handover_ticks(NOW) == []


def test_a_new_lease_gives_the_latest_tick_inside_the_deadline() -> None:
    cron = connector('{schedule: "* * * * * *", starting_deadline: 30s}', Leader(None))
    assert cron._handover_ticks(NOW) == seconds_before(NOW, 0)
    assert connector('{schedule: "* * * * * *"}', Leader(None))._handover_ticks(NOW) == []


@pytest.mark.parametrize("deadline", ["", ", starting_deadline: 1h"])
def test_the_work_does_not_grow_with_the_age_of_the_lease(deadline: str) -> None:
    counts = []
    for age in (timedelta(minutes=1), timedelta(days=3), timedelta(days=300)):
        cron = connector(f'{{schedule: "* * * * * *"{deadline}}}', Leader(NOW - age))
        cron._schedule = CountingSchedule("* * * * * *")
        CountingSchedule.calls = 0
        assert len(cron._handover_ticks(NOW)) == 6
        counts.append(CountingSchedule.calls)
    assert counts[0] == counts[1] == counts[2], counts
    assert counts[0] <= 6 + 1 + 40  # the window's ticks, one past it, one bounded search


def test_the_restart_catch_up_is_bounded_by_the_log_of_the_deadline() -> None:
    cron = connector('{schedule: "* * * * * *", starting_deadline: 720h}', Leader(None))
    cron._schedule = CountingSchedule("* * * * * *")
    CountingSchedule.calls = 0
    assert cron._catch_up(NOW) == seconds_before(NOW, 0)[0]
    assert CountingSchedule.calls <= 4  # was one call per second of the deadline


def test_the_last_fired_tick_outlives_the_connector() -> None:
    """Item 4 at unit level: a replaced connector of the same trigger (a reload) knows the
    last tick fired and does not catch it up again."""
    clock = CronClock()
    cron = '{schedule: "* * * * * *", starting_deadline: 30s}'
    first = connector(cron, Leader(None), clock)
    latest = datetime.now(UTC).replace(microsecond=0)
    first._fire(latest)
    assert clock.last_fired["tick"] == latest
    second = connector(cron, Leader(None), clock)
    assert second.last_schedule_time == latest
    assert second._catch_up(latest + timedelta(milliseconds=500)) is None
    fresh = connector(cron, Leader(None))  # a new process: the CronJob restart rule
    assert fresh._catch_up(latest + timedelta(milliseconds=500)) == latest


def test_a_tick_not_fired_is_reported_to_the_leadership() -> None:
    leadership = Leader(None)
    cron = connector('{schedule: "* * * * * *"}', leadership)
    leadership.stop_leading()
    due = datetime.now(UTC).replace(microsecond=0)
    cron._fire(due)
    assert leadership.unfired == [due]
    assert cron._mailbox._items == []
