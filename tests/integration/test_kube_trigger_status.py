"""bridge.kube.trigger_status against the API emulator over real HTTP: a status write
that takes longer than the writer's interval (an API answering 429 with Retry-After)
still lands, with its Event."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from bridge.kube.client import KubeClient
from bridge.kube.trigger_status import TriggerStatusWriter
from bridge.kube.triggers import TriggerState
from bridge.leadership import AlwaysLeader
from bridge.logs import get_logger
from bridge.settings import Settings
from tests.support.kube_api import KubeApi

TRIGGERS = "triggers.triggerbridge.dev"


class OneTrigger:
    """The watcher's side, for one object."""

    def __init__(self, obj: dict[str, Any], state: TriggerState) -> None:
        self.obj, self.state = obj, state

    def current(self, name: str) -> tuple[dict[str, Any], TriggerState] | None:
        return (self.obj, self.state) if name == self.obj["metadata"]["name"] else None

    def names(self) -> list[str]:
        return [self.obj["metadata"]["name"]]


async def test_a_status_write_slower_than_the_interval_is_not_dropped(tmp_path: Path) -> None:
    """The writer's idle timer (0.3 s here, 2 s by default) used to cut off the write it
    was doing: the API asked for 1 s (429, Retry-After) and the status and Event of
    that change were never written."""
    async with KubeApi() as api:
        obj = api.put(TRIGGERS, {"apiVersion": "triggerbridge.dev/v1alpha1", "kind": "Trigger",
                                 "metadata": {"name": "t"}, "spec": {}})
        kube = KubeClient(Settings(kubeconfig=str(api.kubeconfig(tmp_path))), get_logger())
        state = TriggerState(1, problems=("spec: needs exactly one source",))
        writer = TriggerStatusWriter(kube, OneTrigger(obj, state), AlwaysLeader(),
                                     lambda name: None, get_logger(), interval=0.3)
        api.fail_next(429, retry_after="1")
        writer.changed("t")
        task = asyncio.create_task(writer.run())
        try:
            with contextlib.suppress(TimeoutError):
                await api.wait_for(lambda: bool(api.items("events")), timeout=4)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await kube.close()
        [event] = api.items("events")
        assert (event["type"], event["reason"]) == ("Warning", "InvalidSpec")
        [condition] = (api.get(TRIGGERS, "t") or {})["status"]["conditions"]
        assert (condition["status"], condition["reason"]) == ("False", "InvalidSpec")
