"""The clock: cron ticks across a daemon restart and across a frozen process.

A per-second schedule (``* * * * * *``) with a ``starting_deadline``; the prober's
"sender" is the schedule itself: the ids that must arrive are the scheduled times the
daemon was up for, computed from wall-clock marks taken by the test (with 0.5 s of
slack at each edge, where a tick may or may not have fired).

- **Restart** (SIGTERM, ~5 s down, start again): the ticks due during the downtime
  do not fire, except the most recent one still inside the starting deadline, which
  fires right after the start (``connectors/cron.py`` ``_catch_up``: the CronJob rule,
  only the latest missed schedule runs). The ones that do not fire are counted by the
  prober (``skipped``); the new process has no record of the old one's last tick, so
  it cannot count them itself (with leader election, the Lease supplies that record).
- **Freeze** (SIGSTOP for ~4.5 s, SIGCONT: a paused VM, a stalled node): on waking,
  the latest tick runs, and every tick it supersedes is counted by the daemon in
  ``bridge_cron_ticks_skipped_total`` (``missed_deadline`` past the deadline,
  ``superseded`` within it): delivered + counted = every tick of the run.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.faults.prober import FileDeadLetters, Prober, daemon_config
from tests.support.daemon import BridgeProcess

pytestmark = pytest.mark.faults

DEADLINE_S = 3
EDGE = 0.5


def cron_config(probe: Prober, tmp_path: Path, deadline: float) -> str:
    trigger = {"cron": {"schedule": "* * * * * *", "starting_deadline": f"{deadline}s",
                        "data": {"probe": probe.run}}}
    return daemon_config(probe.fn.url, trigger, {"file": {"path": str(tmp_path / "dl.jsonl")}})


def tick_id(second: int) -> str:
    return f"probe/{datetime.fromtimestamp(second, UTC).isoformat()[:-6]}Z"


def second_of(event_id: str) -> int:
    return int(datetime.fromisoformat(event_id.split("/", 1)[1].replace("Z", "+00:00"))
               .timestamp())


def ticks(after: float, before: float) -> list[int]:
    """Whole seconds strictly inside (after, before)."""
    return list(range(math.floor(after) + 1, math.ceil(before)))


def scheduled_at(bridge: BridgeProcess) -> float:
    """Wall time of the daemon's ``cron trigger scheduled`` line (its start())."""
    line = next(e for e in bridge.logs() if e.get("event") == "cron trigger scheduled")
    return datetime.fromisoformat(str(line["timestamp"]).replace("Z", "+00:00")).timestamp()


def expect(probe: Prober, seconds: list[int]) -> None:
    body = json.dumps({"probe": probe.run}).encode()
    for second in seconds:
        if tick_id(second) not in probe.sent:
            probe.sent_event(tick_id(second), second, body)


async def wait_ticks(probe: Prober, count: int) -> None:
    await probe.wait_deliveries(len(probe.fn.delivered_ids()) + count, timeout=count + 10)


async def test_ticks_across_a_restart(tmp_path: Path) -> None:
    async with Prober("cron: restart (5 s down)") as probe:
        config = cron_config(probe, tmp_path, DEADLINE_S)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as first:
            await wait_ticks(probe, 3)
            probe.fault_began("sigterm, down 5 s")
            stopped = time.time()
            assert await first.terminate() == 0
            a_start = scheduled_at(first)
        await asyncio.sleep(5)
        probe.fault_ended()
        async with BridgeProcess(config, tmp_path, wait_ready=True) as second:
            await wait_ticks(probe, 3)
            daemon_skipped = second.metric("bridge_cron_ticks_skipped_total")
            b_stop = time.time()
            assert await second.terminate() == 0
            b_start = scheduled_at(second)
        catch_up = math.floor(b_start)  # the latest tick at start-up, inside the deadline
        # every start catches up its latest tick inside the deadline, the first one too
        expect(probe, [math.floor(a_start), *ticks(a_start, stopped - EDGE)])
        expect(probe, [catch_up, *ticks(b_start, b_stop - EDGE)])
        delivered = {second_of(i) for i in probe.fn.delivered_ids()}
        edges = {*ticks(stopped - EDGE, stopped + EDGE), catch_up - 1,
                 *ticks(b_stop - EDGE, b_stop + EDGE)}
        expect(probe, sorted(delivered & edges))  # an edge tick that fired is fine
        skipped = ticks(stopped + EDGE, catch_up - 1)
        report = await probe.report(
            FileDeadLetters(tmp_path / "dl.jsonl"), skipped=len(skipped),
            daemon_skipped=daemon_skipped,
        )
    report.check()
    assert len(skipped) >= 5 - DEADLINE_S, "ticks older than the deadline were skipped"
    assert not delivered & set(skipped)
    first_after = min(a.at for a in probe.fn.arrivals if second_of(a.event_id) >= catch_up)
    assert second_of(next(a.event_id for a in probe.fn.arrivals if a.at == first_after)) in (
        catch_up - 1, catch_up,
    ), "the catch-up tick is the first thing the new process fires"


async def test_ticks_across_a_frozen_process(tmp_path: Path) -> None:
    deadline = 2
    async with Prober("cron: process frozen 4.5 s") as probe:
        config = cron_config(probe, tmp_path, deadline)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            assert bridge.process is not None
            await wait_ticks(probe, 2)
            probe.fault_began("SIGSTOP 4.5 s")
            bridge.process.send_signal(signal.SIGSTOP)
            frozen = time.time()
            try:
                await asyncio.sleep(4.5)
            finally:
                bridge.process.send_signal(signal.SIGCONT)
            woke = time.time()
            probe.fault_ended()
            await wait_ticks(probe, 2)
            skipped: dict[str, Any] = {
                reason: bridge.metric("bridge_cron_ticks_skipped_total", reason=reason)
                for reason in ("missed_deadline", "superseded")
            }
            stop = time.time()
            assert await bridge.terminate() == 0
            started = scheduled_at(bridge)
        delivered = sorted(second_of(i) for i in probe.fn.delivered_ids())
        every = list(range(delivered[0], delivered[-1] + 1))
        gap = ticks(frozen + EDGE, math.floor(woke) - 1)  # due while frozen, superseded
        expect(probe, [math.floor(started), *ticks(started, frozen - EDGE)])
        expect(probe, [math.floor(woke), *ticks(woke, stop - EDGE)])
        expect(probe, sorted(set(delivered) - set(gap)))  # edge ticks that fired
        report = await probe.report(
            FileDeadLetters(tmp_path / "dl.jsonl"), skipped=len(every) - len(delivered),
            daemon_skipped=sum(skipped.values()), **skipped,
        )
    report.check()
    assert not set(delivered) & set(gap), "ticks due while frozen did not all run"
    assert sum(skipped.values()) == len(every) - len(delivered), (
        "every tick of the run is delivered or counted as skipped"
    )
    assert skipped["missed_deadline"] >= 4.5 - deadline - 1
