"""Schedules beyond CronJob, through the daemon (``trigger-bridge run``): jitter,
start_at / end_at, excluded days, and the BufferOne / BufferAll overlap policies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bridge.schedule import jitter_delay
from tests.integration.test_cron_daemon import until
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction, always


def config(url: str, tmp: Path, triggers: str) -> str:
    return f"""
defaults:
  retry: {{max_attempts: 1}}
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
{triggers}
"""


def tick_of(event_id: str) -> datetime:
    return datetime.fromisoformat(event_id.split("/", 1)[1].replace("Z", "+00:00"))


async def test_jitter_delays_each_tick_but_id_and_time_keep_the_schedule(tmp_path: Path) -> None:
    triggers = """
  - name: spread
    function: fn
    cron: {schedule: "*/5 * * * * *", jitter: 4s}
"""
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(fn.url, tmp_path, triggers), tmp_path) as bridge,
    ):
        calls = await fn.wait_calls(3, timeout=30)
        assert await bridge.terminate() == 0
    delays = []
    for call in calls:
        scheduled = tick_of(call.event_id)
        assert scheduled.second % 5 == 0
        assert scheduled.microsecond == 0
        assert datetime.fromisoformat(call.headers["ce-time"].replace("Z", "+00:00")) == scheduled
        expected = jitter_delay("spread", scheduled, 4.0)
        actual = call.received - scheduled.timestamp()
        # sent after its own delay (the daemon's, the one the preview prints), not before
        assert expected - 0.05 <= actual <= expected + 0.6, (call.event_id, expected, actual)
        delays.append(expected)
    assert max(delays) - min(delays) > 0.05, "every tick got the same delay"


async def test_start_at_end_at_and_excluded_days_bound_the_ticks(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now + timedelta(seconds=3), now + timedelta(seconds=6)
    today = now.date().isoformat()
    triggers = f"""
  - name: bounded
    function: fn
    cron: {{schedule: "* * * * * *", start_at: "{start.isoformat()}", end_at: "{end.isoformat()}"}}
  - name: holiday
    function: fn
    cron: {{schedule: "* * * * * *", exclude: ["{today}", "2030-01-01"]}}
  - name: control
    function: fn
    cron: {{schedule: "* * * * * *", exclude: ["2030-01-01"]}}
"""
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(fn.url, tmp_path, triggers), tmp_path) as bridge,
    ):
        await asyncio.sleep((end - datetime.now(UTC)).total_seconds() + 2.5)
        assert await bridge.terminate() == 0
    by_trigger: dict[str, list[datetime]] = {}
    for call in fn.calls:
        by_trigger.setdefault(call.event_id.split("/")[0], []).append(tick_of(call.event_id))
    if datetime.now(UTC).date() == now.date():  # not across midnight UTC
        assert "holiday" not in by_trigger
    assert len(by_trigger["control"]) >= 5
    bounded = sorted(by_trigger["bounded"])
    assert bounded == [start + timedelta(seconds=i) for i in range(4)], bounded


async def test_buffer_one_runs_one_waiting_tick_and_skips_the_rest(tmp_path: Path) -> None:
    triggers = """
  - name: one
    function: fn
    cron: {schedule: "* * * * * *", concurrency_policy: BufferOne}
"""
    async with (
        RecordingFunction(always(200, delay=2.2)) as fn,
        BridgeProcess(config(fn.url, tmp_path, triggers), tmp_path) as bridge,
    ):
        calls = await fn.wait_calls(3, timeout=30)
        skipped = bridge.metric("bridge_cron_ticks_skipped_total", reason="buffer_full")
        assert await bridge.terminate() == 0
    assert fn.max_in_flight == 1
    ticks = [tick_of(c.event_id) for c in calls]
    # the tick right after a running one waited for it (its id: its own time); the
    # ticks behind it were skipped
    assert ticks[1] == ticks[0] + timedelta(seconds=1), ticks
    assert ticks[2] == ticks[1] + timedelta(seconds=1) or ticks[2] > ticks[1], ticks
    assert calls[1].received >= calls[0].received - 0.05  # only after the first ended
    assert skipped >= 2


async def test_buffer_all_runs_ticks_in_order_and_bounds_the_queue(tmp_path: Path) -> None:
    triggers = """
  - name: all
    function: fn
    cron: {schedule: "* * * * * *", concurrency_policy: BufferAll, max_buffered: 2}
"""
    async with (
        RecordingFunction(always(200, delay=1.6)) as fn,
        BridgeProcess(config(fn.url, tmp_path, triggers), tmp_path) as bridge,
    ):
        await until(lambda: bridge.metric(
            "bridge_cron_ticks_skipped_total", reason="buffer_full") >= 1, timeout=30)
        buffered = bridge.metric("bridge_cron_buffered_ticks", trigger="all")
        calls = await fn.wait_calls(4, timeout=30)
        assert await bridge.terminate() == 0
    assert fn.max_in_flight == 1
    assert 1 <= buffered <= 2
    ticks = [tick_of(c.event_id) for c in calls]
    assert ticks == sorted(ticks)
    # the first ticks after the running one all ran, one after another, in order
    assert ticks[1] == ticks[0] + timedelta(seconds=1)
    assert ticks[2] == ticks[1] + timedelta(seconds=1)
