"""Config file reload in a running daemon: a ConfigMap-style symlink swap, SIGHUP, and an
invalid file (rejected, the running config stays). Only changed triggers restart."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction


def config(url: str, tmp: Path, triggers: dict[str, str]) -> str:
    lines = "".join(
        f"  - {{name: {name}, function: fn, cron: {{schedule: \"* * * * * *\", data: {data}}}}}\n"
        for name, data in triggers.items()
    )
    return f"""
defaults:
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
{lines}"""


class ConfigMapDir:
    """The layout kubelet gives a mounted ConfigMap: file -> ..data/file, ..data -> ..<ts>."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()
        (root / "config.yaml").symlink_to("..data/config.yaml")

    @property
    def path(self) -> Path:
        return self.root / "config.yaml"

    def publish(self, text: str) -> None:
        self.version += 1
        data = self.root / f"..v{self.version}"
        data.mkdir()
        (data / "config.yaml").write_text(text)
        link = self.root / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, self.root / "..data")  # atomic swap, as kubelet does


def ids_of(fn: RecordingFunction, trigger: str) -> list[str]:
    return [i for i in fn.ids() if i.startswith(f"{trigger}/")]


def events(bridge: BridgeProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in bridge.logs() if e.get("event") == name]


async def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_configmap_swap_restarts_only_changed_triggers(tmp_path: Path) -> None:
    async with RecordingFunction() as fn:
        mounted = ConfigMapDir(tmp_path / "cm")
        mounted.publish(config(fn.url, tmp_path, {"alpha": "1", "beta": "1"}))
        bridge = BridgeProcess("", tmp_path, {"BRIDGE_RELOAD_INTERVAL": "200ms"})
        bridge.config_path = mounted.path
        async with bridge:
            await fn.wait_for(lambda: ids_of(fn, "alpha") and ids_of(fn, "beta"), timeout=10)
            mounted.publish(config(fn.url, tmp_path, {"alpha": "1", "beta": "2", "gamma": "1"}))
            await fn.wait_for(lambda: bool(ids_of(fn, "gamma")), timeout=10)
            [reloaded] = events(bridge, "config reloaded")
            assert reloaded["changed"] == ["beta"]
            assert reloaded["added"] == ["gamma"]
            assert [e["trigger"] for e in events(bridge, "trigger stopped")] == ["beta"]
            await fn.wait_for(lambda: any(c.body == b"2" for c in fn.calls), timeout=5)

            mounted.publish(config(fn.url, tmp_path, {"alpha": "1"}).replace(
                '"* * * * * *"', '"61 * * * *"'))
            await wait(lambda: events(bridge, "config reload rejected; the running config stays"),
                       5)
            rejected = events(bridge, "config reload rejected; the running config stays")
            assert "triggers[0].cron.schedule" in rejected[0]["problem"]
            count = len(fn.calls)
            await fn.wait_for(lambda: len(fn.calls) >= count + 3, timeout=5)  # still running
            assert len(events(bridge, "trigger stopped")) == 1
            assert await bridge.terminate() == 0


async def test_sighup_reloads(tmp_path: Path) -> None:
    async with RecordingFunction() as fn:
        text = config(fn.url, tmp_path, {"alpha": "1", "beta": "1"})
        async with BridgeProcess(text, tmp_path, {"BRIDGE_RELOAD_INTERVAL": "0"}) as bridge:
            await fn.wait_for(lambda: ids_of(fn, "alpha") and ids_of(fn, "beta"), timeout=10)
            bridge.config_path.write_text(config(fn.url, tmp_path, {"alpha": "1"}))
            await asyncio.sleep(1.2)
            assert not events(bridge, "config reloaded")  # polling is off
            assert bridge.process is not None
            bridge.process.send_signal(signal.SIGHUP)
            await wait(lambda: events(bridge, "config reloaded"), 5)
            assert events(bridge, "config reloaded")[0]["removed"] == ["beta"]
            stopped = time.time()
            await asyncio.sleep(1.2)
            assert not [c for c in fn.calls if c.event_id.startswith("beta/")
                        and c.received > stopped + 0.2]
            assert await bridge.terminate() == 0
