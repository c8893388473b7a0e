"""Trigger resources are validated like file triggers and applied per trigger (issue 15,
item 9), over the Kubernetes API emulator.

- Through the real daemon: a cron Trigger whose dead-letter sink is RabbitMQ without a
  URL used to pass validation, be reported ``Applied``, and abort the apply midway (the
  Triggers after it never started). Now it is ``InvalidSpec`` naming
  ``spec.dead_letter.rabbitmq.url``, with a Warning Event, and every other trigger runs.
- In process, with a connector that refuses its settings (a test double for ``cron``,
  the rest real): the trigger is ``Ready=False`` / ``StartFailed`` with a Warning Event
  and the reason without its secret; the file's and the other Triggers' triggers keep
  firing; fixing the spec starts it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bridge.config import ResolvedTrigger, parse_config
from bridge.daemon import Daemon
from bridge.settings import Settings
from connectors import base
from connectors.base import Connector, ConnectorContext
from connectors.cron import CronConnector
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction
from tests.support.kube_api import KubeApi

TRIGGERS = "triggers.triggerbridge.dev"
SECRET = "Sup3rS3cretPw"


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


def trigger(name: str, spec: dict[str, Any], generation: int = 1) -> dict[str, Any]:
    return {"apiVersion": "triggerbridge.dev/v1alpha1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default", "generation": generation},
            "spec": spec}


def ready(api: KubeApi, name: str) -> dict[str, Any]:
    obj = api.get(TRIGGERS, name) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready"), {})


def events_of(api: KubeApi, name: str) -> list[dict[str, Any]]:
    return [e for e in api.items("events") if e["involvedObject"]["name"] == name]


def fired(fn: RecordingFunction, trigger_name: str) -> int:
    return sum(1 for i in fn.ids() if i.startswith(f"{trigger_name}/"))


async def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def file_config(url: str, tmp: Path) -> str:
    return f"""
defaults:
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - {{name: file-tick, function: fn, cron: {{schedule: "* * * * * *"}}}}
"""


async def test_a_trigger_the_file_would_refuse_is_invalid_and_the_rest_runs(
    api: KubeApi, tmp_path: Path
) -> None:
    every_second = {"schedule": "* * * * * *"}
    async with RecordingFunction() as fn:
        api.put(TRIGGERS, trigger("a-no-sink-url", {
            "function": "fn", "cron": every_second,
            "dead_letter": {"rabbitmq": {"exchange": "dlx"}},
        }))
        api.put(TRIGGERS, trigger("b-good", {"function": "fn", "cron": every_second}))
        env = {"BRIDGE_KUBECONFIG": str(api.kubeconfig(tmp_path)),
               "BRIDGE_WATCH_TRIGGERS": "true"}
        async with BridgeProcess(file_config(fn.url, tmp_path), tmp_path, env) as bridge:
            await wait(lambda: ready(api, "a-no-sink-url").get("status") == "False", 10)
            condition = ready(api, "a-no-sink-url")
            assert condition["reason"] == "InvalidSpec"
            assert condition["message"].startswith("spec.dead_letter.rabbitmq.url: required")
            # The status writer posts the Event after the status patch: wait for it too.
            await wait(lambda: events_of(api, "a-no-sink-url"), 10)
            [event] = events_of(api, "a-no-sink-url")
            assert (event["type"], event["reason"]) == ("Warning", "InvalidSpec")

            await wait(lambda: ready(api, "b-good").get("status") == "True", 10)
            await fn.wait_for(lambda: fired(fn, "b-good") >= 2 and fired(fn, "file-tick") >= 2,
                              timeout=10)
            assert fired(fn, "a-no-sink-url") == 0
            await bridge.wait_http("/readyz", timeout=10)
            assert await bridge.terminate() == 0


class Explodes:
    """A ``cron`` connector factory that refuses a trigger whose data is ``explode``, with a
    piece of the function's password in the message (as yarl did with a raw password)."""

    def __init__(self) -> None:
        self.refused = 0

    def __call__(self, trigger: ResolvedTrigger, context: ConnectorContext) -> Connector:
        source = trigger.config.cron
        if source is not None and source.data == "explode":
            self.refused += 1
            raise ValueError(f"invalid literal for int() with base 10: '{SECRET[:7]}'")
        return CronConnector(trigger, context)


EXPLODES = Explodes()


async def test_a_trigger_that_cannot_be_built_is_start_failed_and_the_rest_runs(
    api: KubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(base.SOURCES, "cron", f"{__name__}:EXPLODES")
    every_second = {"schedule": "* * * * * *"}
    async with RecordingFunction() as fn:
        settings = Settings(kubeconfig=str(api.kubeconfig(tmp_path)), watch_triggers=True,
                            admin_port=0, admin_host="127.0.0.1")
        runtime = Daemon(parse_config(file_config(fn.url, tmp_path)), settings).runtime
        await runtime.start()
        try:
            broken = {"function": {"url": f"http://bob:{SECRET}@127.0.0.1:{fn.port}/"},
                      "cron": {**every_second, "data": "explode"}}
            api.put(TRIGGERS, trigger("a-explodes", broken))
            api.put(TRIGGERS, trigger("b-good", {"function": "fn", "cron": every_second}))
            await wait(lambda: ready(api, "a-explodes").get("status") == "False", 10)
            condition = ready(api, "a-explodes")
            assert condition["reason"] == "StartFailed"
            assert condition["message"] == (
                "cannot be started: ValueError: invalid literal for int() with base 10: '***'"
            )
            await wait(lambda: events_of(api, "a-explodes"), 5)
            [event] = events_of(api, "a-explodes")
            assert (event["type"], event["reason"]) == ("Warning", "StartFailed")
            assert SECRET[:4] not in event["message"]
            await wait(lambda: ready(api, "b-good").get("status") == "True", 10)
            await fn.wait_for(lambda: fired(fn, "b-good") >= 2 and fired(fn, "file-tick") >= 2,
                              timeout=10)
            assert runtime.readiness()["a-explodes"] is False

            fixed = {**broken, "cron": every_second}
            api.put(TRIGGERS, trigger("a-explodes", fixed, generation=2))
            await wait(lambda: ready(api, "a-explodes").get("status") == "True", 10)
            assert ready(api, "a-explodes")["observedGeneration"] == 2
            await fn.wait_for(lambda: fired(fn, "a-explodes") >= 1, timeout=10)
            await wait(lambda: len(events_of(api, "a-explodes")) >= 2, 5)
            assert [e["reason"] for e in events_of(api, "a-explodes")] == [
                "StartFailed", "Applied"]
            assert "a-explodes" not in runtime.failures
            before = fired(fn, "file-tick")
            await fn.wait_for(lambda: fired(fn, "file-tick") >= before + 1, timeout=5)
        finally:
            await runtime.shutdown()
