"""The test harness itself: a daemon that does not come up in time is never left behind.

A stray daemon keeps invoking its function's port every second (a cron trigger), and a
later test's function may get that port: its calls then count as the later test's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction
from tests.support.rabbitmq import Broker, bridge_yaml, rabbit_trigger


async def test_a_daemon_that_is_not_ready_in_time_is_killed(tmp_path: Path) -> None:
    async with Broker() as broker, RecordingFunction() as fn:
        missing = broker.name("q")  # never declared: the source is never ready
        config = bridge_yaml(fn.url, [rabbit_trigger("never-ready", missing)],
                             {"file": {"path": str(tmp_path / "dl.jsonl")}})
        bridge = BridgeProcess(config, tmp_path, wait_ready=True)

        async def enter() -> None:
            async with bridge:
                pytest.fail("it never gets ready")

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(enter(), 3)
    assert bridge.process is not None
    assert bridge.process.returncode is not None, "the daemon was left running"
