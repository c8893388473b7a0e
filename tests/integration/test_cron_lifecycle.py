"""Cron triggers across a config reload, and what a scrape shows, through the real daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction


def config(url: str, tmp: Path, version: int, extra: str = "") -> str:
    return f"""
defaults:
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - name: tick
    function: fn
    cron: {{schedule: "* * * * * *", starting_deadline: 30s, data: {{version: {version}}}}}
{extra}"""


def logged(bridge: BridgeProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in bridge.logs() if e.get("event") == event]


async def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_a_reload_that_keeps_the_schedule_does_not_fire_the_latest_tick_again(
    tmp_path: Path,
) -> None:
    """Item 4: each reload changes the trigger's data, so the trigger restarts with the
    same schedule and a 30 s starting deadline. The restarted trigger must not run the
    latest tick again (the CronJob restart rule applies to a *process* start, when no
    record of the last run exists; a reload has one)."""
    async with RecordingFunction() as fn, \
            BridgeProcess(config(fn.url, tmp_path, 1), tmp_path) as bridge:
        assert bridge.process is not None
        await fn.wait_calls(2, timeout=10)
        for version in (2, 3, 4):
            await asyncio.sleep(0.4)  # mid-second: the latest tick has fired
            bridge.config_path.write_text(config(fn.url, tmp_path, version))
            os.kill(bridge.process.pid, signal.SIGHUP)
            await fn.wait_for(
                lambda v=version: any(json.loads(c.body) == {"version": v} for c in fn.calls),
                timeout=10,
            )
        await fn.wait_for(lambda: json.loads(fn.calls[-1].body) == {"version": 4}
                          and len(fn.calls) >= 8, timeout=10)
        assert await bridge.terminate() == 0
    reloads = logged(bridge, "config reloaded")
    assert [r["changed"] for r in reloads] == [["tick"]] * 3
    assert len(logged(bridge, "trigger stopped")) == 3
    repeated = {i: n for i, n in Counter(fn.ids()).items() if n > 1}
    assert repeated == {}, repeated
    # and none was lost across the restarts
    times = sorted(datetime.fromisoformat(i.split("/", 1)[1].replace("Z", "+00:00"))
                   for i in fn.ids())
    assert times == [times[0] + timedelta(seconds=s) for s in range(len(times))]


async def test_connector_ready_is_right_on_a_scrape_without_readyz(tmp_path: Path) -> None:
    """Item 16: Prometheus scrapes /metrics; nobody calls /readyz. A running cron trigger
    reads 1, a RabbitMQ trigger whose broker refuses connections reads 0."""
    down = """  - name: down
    function: fn
    rabbitmq: {url: "amqp://guest:guest@127.0.0.1:9/", queue: nowhere}
"""
    async with RecordingFunction() as fn, \
            BridgeProcess(config(fn.url, tmp_path, 1, down), tmp_path) as bridge:
        await fn.wait_calls(1, timeout=10)
        await asyncio.sleep(0.2)
        assert bridge.metric("bridge_connector_ready", trigger="tick") == 1
        assert bridge.metric("bridge_connector_ready", trigger="down") == 0
        assert 'bridge_connector_ready{trigger="down"} 0.0' in bridge.get("/metrics")
        assert await bridge.terminate() == 0
