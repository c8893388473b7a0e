"""The daemon runs on uvloop when it is installed, on asyncio's loop with
``BRIDGE_UVLOOP=false``; either way it delivers and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction


def config(url: str, dead_letters: Path) -> str:
    return f"""
defaults:
  dead_letter: {{file: {{path: "{dead_letters}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - name: tick
    function: fn
    cron: {{schedule: "* * * * * *"}}
"""


@pytest.mark.parametrize("setting", ["true", "false"])
async def test_the_loop_the_daemon_runs_on(tmp_path: Path, setting: str) -> None:
    expected = "asyncio" if setting == "false" else "uvloop"
    if expected == "uvloop":
        pytest.importorskip("uvloop")
    async with RecordingFunction() as fn:
        bridge = BridgeProcess(config(fn.url, tmp_path / "dl.jsonl"), tmp_path,
                               env={"BRIDGE_UVLOOP": setting})
        async with bridge:
            await fn.wait_for(lambda: len(fn.calls) >= 2, timeout=15)
            assert await bridge.terminate() == 0
    [started] = [line for line in bridge.logs() if line.get("event") == "trigger-bridge started"]
    assert started["event_loop"] == expected
