"""A trigger that cannot be built is not ready on a scrape (issue 15 leftover).

``bridge_connector_ready`` is what dashboards and the ``TriggerBridgeTriggerNotReady``
alert read. A trigger the runtime could not build on a reload (file or Trigger
resource: ``StartFailed``) used to have no series at all, so nothing showed it; it now
scrapes as 0 until it runs, and its series go when it leaves the config.

Through the real daemon (``trigger-bridge run`` via the CLI's ``main``, the config
reloaded when the file changes, ``/metrics`` scraped); the refusing connector is a test double
registered for ``cron`` (``explode-*`` triggers raise in the constructor), the rest is
real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.config import ResolvedTrigger
from connectors.base import Connector, ConnectorContext
from connectors.cron import CronConnector
from tests.support.daemon import BridgeProcess

READY = "bridge_connector_ready"
FACTORY = f"{__name__}:connector_or_refuse"
LAUNCHER = (
    "-c",
    "import sys; from connectors import base; "
    f"base.SOURCES['cron'] = {FACTORY!r}; "
    "from bridge.cli import main; sys.exit(main(sys.argv[1:]))",
)


def connector_or_refuse(trigger: ResolvedTrigger, context: ConnectorContext) -> Connector:
    if trigger.name.startswith("explode"):
        raise ValueError("this connector refuses its settings")
    return CronConnector(trigger, context)


def config(tmp: Path, *names: str) -> str:
    triggers = "".join(
        f'  - {{name: {name}, function: fn, cron: {{schedule: "@hourly"}}}}\n' for name in names
    )
    return f"""
defaults:
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "http://127.0.0.1:9/"}}
triggers:
{triggers}"""


def series(bridge: BridgeProcess, name: str) -> dict[str, float]:
    """``trigger`` label -> value of every sample of ``name``."""
    found = {}
    for line in bridge.get("/metrics").splitlines():
        head, _, value = line.rpartition(" ")
        if head.startswith(name + "{"):
            trigger = head.split('trigger="', 1)[1].split('"', 1)[0]
            found[trigger] = float(value)
    return found


async def reload(bridge: BridgeProcess, text: str) -> dict[str, object]:
    """Write the config (the daemon watches it) and wait for its "config reloaded" line."""
    seen = len([e for e in bridge.logs() if e.get("event") == "config reloaded"])
    bridge.config_path.write_text(text)
    for _ in range(200):
        reloaded = [e for e in bridge.logs() if e.get("event") == "config reloaded"]
        if len(reloaded) > seen:
            return reloaded[-1]
        await asyncio.sleep(0.05)
    raise AssertionError("no reload:\n" + "\n".join(bridge.log_lines[-20:]))


async def test_a_trigger_that_failed_to_build_scrapes_as_not_ready(tmp_path: Path) -> None:
    async with BridgeProcess(config(tmp_path, "a"), tmp_path,
                             {"BRIDGE_RELOAD_INTERVAL": "100ms"}, launcher=LAUNCHER,
                             wait_ready=True) as bridge:
        assert series(bridge, READY) == {"a": 1.0}

        done = await reload(bridge, config(tmp_path, "a", "explode-1", "b"))
        assert done["failed"] == ["explode-1"]
        assert series(bridge, READY) == {"a": 1.0, "explode-1": 0.0, "b": 1.0}
        assert bridge.get_status("/readyz") == 503  # the same verdict as /readyz

        done = await reload(bridge, config(tmp_path, "a", "b"))
        assert done["removed"] == ["explode-1"]
        assert series(bridge, READY) == {"a": 1.0, "b": 1.0}  # its series went with it
        assert bridge.get_status("/readyz") == 200
        assert await bridge.terminate() == 0
