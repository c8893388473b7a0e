"""Two daemons (``trigger-bridge run`` subprocesses) sharing a Lease in the API emulator,
and Trigger resources applied live to a running daemon."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.kube.lease import parse_time
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction
from tests.support.kube_api import KubeApi

LEASES = "leases.coordination.k8s.io"
TRIGGERS = "triggers.triggerbridge.dev"


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


def cron_config(url: str, tmp: Path) -> str:
    return f"""
defaults:
  retry: {{max_attempts: 3, initial_backoff: 50ms}}
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - name: tick
    function: fn
    cron: {{schedule: "* * * * * *", starting_deadline: 10s}}
"""


def kube_env(api: KubeApi, tmp: Path, **extra: str) -> dict[str, str]:
    return {"BRIDGE_KUBECONFIG": str(api.kubeconfig(tmp)), **extra}


def tick_times(fn: RecordingFunction) -> list[datetime]:
    return [datetime.fromisoformat(i.split("/", 1)[1].replace("Z", "+00:00")) for i in fn.ids()]


def holder(api: KubeApi) -> str | None:
    lease = api.get(LEASES, "trigger-bridge")
    return None if lease is None else lease["spec"].get("holderIdentity")


async def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_cron_fires_once_across_replicas_and_survives_sigkill_of_the_leader(
    api: KubeApi, tmp_path: Path
) -> None:
    lease = {"BRIDGE_LEADER_ELECTION": "true", "BRIDGE_LEASE_DURATION": "3s",
             "BRIDGE_LEASE_RENEW_DEADLINE": "2s", "BRIDGE_LEASE_RETRY_PERIOD": "500ms"}
    async with RecordingFunction() as fn:
        config = cron_config(fn.url, tmp_path)
        async with BridgeProcess(config, tmp_path, kube_env(api, tmp_path, **lease,
                                 BRIDGE_INSTANCE="replica-a")) as a, \
                BridgeProcess(config, tmp_path, kube_env(api, tmp_path, **lease,
                              BRIDGE_INSTANCE="replica-b")) as b:
            await wait(lambda: holder(api) is not None, 10)
            await fn.wait_for(lambda: len(fn.calls) >= 4, timeout=10)
            steady = Counter(fn.ids())
            assert max(steady.values()) == 1, steady  # two replicas, each tick once

            leader, survivor = (a, b) if holder(api) == "replica-a" else (b, a)
            await leader.kill()
            killed = time.monotonic()
            killed_wall = datetime.now().astimezone()
            await wait(lambda: holder(api) not in (None, f"replica-{'a' if leader is a else 'b'}"),
                       3 + 0.5 + 1.5)
            handover = time.monotonic() - killed
            assert handover <= 3 + 0.5 + 1.0, handover  # lease duration + retry period + slack
            await asyncio.sleep(2.5)
            assert await survivor.terminate() == 0

    times = tick_times(fn)
    first, last = min(times), max(times)
    span = int((last - first).total_seconds())
    expected = {first + timedelta(seconds=s) for s in range(span + 1)}
    assert set(times) == expected, sorted(expected - set(times))  # no tick lost
    repeats = [t for t, n in Counter(times).items() if n > 1]
    # A tick may repeat only when the dead leader fired it after its last renewal.
    assert len(repeats) <= 1, repeats
    assert all(abs((t - killed_wall).total_seconds()) < 1.5 for t in repeats)
    assert handover < 5


def trigger(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "triggerbridge.dev/v1alpha1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def ready_condition(api: KubeApi, name: str) -> dict[str, Any] | None:
    obj = api.get(TRIGGERS, name) or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == "Ready"), None)


async def test_trigger_resources_are_applied_live(api: KubeApi, tmp_path: Path) -> None:
    config = f"""
defaults:
  dead_letter: {{file: {{path: "{tmp_path / 'dl.jsonl'}"}}}}
functions:
  shared: {{url: "http://127.0.0.1:9/"}}
triggers: []
"""
    async with RecordingFunction() as first, RecordingFunction() as second, \
            BridgeProcess(config, tmp_path, kube_env(api, tmp_path, BRIDGE_WATCH_TRIGGERS="true"),
                          wait_ready=True) as bridge:
        every_second = {"schedule": "* * * * * *"}
        api.put(TRIGGERS, trigger("live", {"function": {"url": first.url}, "cron": every_second}))
        await first.wait_for(lambda: len(first.calls) >= 2, timeout=10)
        assert all(i.startswith("live/") for i in first.ids())
        await wait(lambda: (ready_condition(api, "live") or {}).get("status") == "True", 5)
        condition = ready_condition(api, "live")
        assert condition is not None
        assert condition["observedGeneration"] == 1
        await wait(lambda: "lastScheduleTime" in api.get(TRIGGERS, "live")["status"], 6)
        assert parse_time(api.get(TRIGGERS, "live")["status"]["lastScheduleTime"])

        changed = trigger("live", {"function": {"url": second.url}, "cron": every_second})
        api.put(TRIGGERS, changed)
        await second.wait_for(lambda: len(second.calls) >= 2, timeout=10)
        moved = time.time()
        await asyncio.sleep(1.2)
        assert not [c for c in first.calls if c.received > moved + 0.2]
        await wait(lambda: ready_condition(api, "live")["observedGeneration"] == 2, 5)

        api.put(TRIGGERS, trigger("broken", {"function": "shared",
                                             "cron": {"schedule": "61 * * * *"}}))
        await wait(lambda: ready_condition(api, "broken") is not None, 5)
        broken = ready_condition(api, "broken")
        assert broken is not None
        assert broken["status"] == "False"
        assert broken["reason"] == "InvalidSpec"
        assert "spec.cron.schedule" in broken["message"]
        events = [e for e in api.items("events") if e["involvedObject"]["name"] == "broken"]
        assert events
        assert events[0]["type"] == "Warning"
        assert events[0]["reason"] == "InvalidSpec"
        assert bridge.get_status("/healthz") == 200

        api.delete(TRIGGERS, "live")
        deleted = time.time()
        await asyncio.sleep(1.5)
        assert not [c for c in second.calls if c.received > deleted + 0.3]
        assert bridge.get_status("/readyz") == 200
        assert await bridge.terminate() == 0


async def test_missing_rbac_makes_the_daemon_unready_until_granted(
    api: KubeApi, tmp_path: Path
) -> None:
    api.forbid("watch", TRIGGERS)
    config = f"""
defaults:
  dead_letter: {{file: {{path: "{tmp_path / 'dl.jsonl'}"}}}}
functions: {{}}
triggers: []
"""
    env = kube_env(api, tmp_path, BRIDGE_WATCH_TRIGGERS="true")
    async with BridgeProcess(config, tmp_path, env) as bridge:
        await wait(lambda: any(e.get("verb") == "watch" for e in bridge.logs()), 10)
        denied = next(e for e in bridge.logs() if e.get("verb") == "watch")
        assert denied["level"] == "error"
        assert "may not 'watch' triggers.triggerbridge.dev" in denied["event"]
        assert bridge.get_status("/readyz") == 503
        api.allow("watch", TRIGGERS)
        await bridge.wait_http("/readyz", timeout=40)  # retried with backoff
        assert await bridge.terminate() == 0
