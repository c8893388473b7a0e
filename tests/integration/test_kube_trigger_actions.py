"""Acting on cron Trigger resources through annotations and the status, with two
daemons (``trigger-bridge run``, leader election and the Trigger watch) over the
Kubernetes API emulator: run-now and backfill annotations are acted on once, by the
leader, and recorded in the status; a run that is dead-lettered adds a ``Paused``
condition, and deleting it resumes the trigger."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_kube_leadership import lease_env, spec, wait
from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.kube_api import KubeApi

TRIGGERS = "triggers.triggerbridge.dev"


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


def file_config(url: str, tmp: Path) -> str:
    return f"""
defaults:
  retry: {{max_attempts: 1}}
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
"""


def billing(annotations: dict[str, str], status: dict[str, Any] | None = None
            ) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "triggerbridge.dev/v1alpha1", "kind": "Trigger",
        "metadata": {"name": "billing", "namespace": "default", "generation": 1,
                     "annotations": annotations},
        "spec": {"function": "fn", "cron": {"schedule": "0 3 * * *",
                                            "pause_on_failure": True}},
    }
    if status is not None:
        obj["status"] = status
    return obj


def status_of(api: KubeApi) -> dict[str, Any]:
    return dict((api.get(TRIGGERS, "billing") or {}).get("status") or {})


def condition(api: KubeApi, kind: str) -> dict[str, Any]:
    return next((c for c in status_of(api).get("conditions") or [] if c["type"] == kind), {})


async def test_annotations_act_once_on_the_leader_and_the_status_tells(
    api: KubeApi, tmp_path: Path
) -> None:
    failing = {"on": True}

    def answer(call: Call, attempt: int) -> Reply:
        return Reply(500 if failing["on"] else 200)

    api.put(TRIGGERS, billing({}))
    dirs = [tmp_path / "a", tmp_path / "b"]
    for directory in dirs:
        directory.mkdir()
    envs = [{**lease_env(api, tmp_path, name), "BRIDGE_WATCH_TRIGGERS": "true",
             "BRIDGE_LEASE_RETRY_PERIOD": "300ms"} for name in ("replica-a", "replica-b")]
    async with (
        RecordingFunction(answer) as fn,
        BridgeProcess(file_config(fn.url, tmp_path), dirs[0], envs[0]) as a,
        BridgeProcess(file_config(fn.url, tmp_path), dirs[1], envs[1]) as b,
    ):
        await wait(lambda: condition(api, "Ready").get("status") == "True", 15)
        leader = a if spec(api)["holderIdentity"] == "replica-a" else b

        # run now: once, by the leader; recorded; the failure pauses the trigger
        api.put(TRIGGERS, billing({"triggerbridge.dev/run-now": "first"}))
        await fn.wait_calls(1)
        await wait(lambda: condition(api, "Paused").get("status") == "True", 10)
        run_now = status_of(api)["runNow"]
        assert run_now["value"] == "first"
        assert run_now["eventId"] == fn.calls[0].event_id
        assert fn.calls[0].event_id.startswith("billing/manual/")
        assert condition(api, "Paused")["reason"] == "RunDeadLettered"
        assert fn.calls[0].event_id in condition(api, "Paused")["message"]
        assert condition(api, "Ready")["status"] == "True"
        assert leader.metric("bridge_cron_paused", trigger="billing") == 1

        # the same value again (another annotation changes): nothing runs
        api.put(TRIGGERS, billing({"triggerbridge.dev/run-now": "first", "x": "y"}))
        await asyncio.sleep(2.0)
        assert len(fn.calls) == 1

        # deleting the Paused condition resumes the trigger
        failing["on"] = False
        kept = [c for c in status_of(api)["conditions"] if c["type"] != "Paused"]
        api.put(TRIGGERS, billing({"triggerbridge.dev/run-now": "first", "x": "y"},
                                  {**status_of(api), "conditions": kept}))
        await wait(lambda: leader.metric("bridge_cron_paused", trigger="billing") == 0, 10)
        await asyncio.sleep(2.5)  # the status writer's idle round
        assert condition(api, "Paused") == {}

        # backfill: the 03:00 tick of 2026-01-05, with its own id; progress in the status
        annotations = {"triggerbridge.dev/run-now": "first",
                       "triggerbridge.dev/backfill": "2026-01-05T00:00:00Z/2026-01-05T05:00:00Z"}
        api.put(TRIGGERS, billing(annotations))
        await fn.wait_calls(2)
        await wait(lambda: (status_of(api).get("backfill") or {}).get("state") == "done", 10)
        backfill = status_of(api)["backfill"]
        assert backfill["value"] == annotations["triggerbridge.dev/backfill"]
        assert (backfill["settled"], backfill["delivered"]) == (1, 1)
        assert fn.calls[1].event_id == "billing/2026-01-05T03:00:00Z"

        # a range in the wrong order is refused in the status, nothing runs
        annotations["triggerbridge.dev/backfill"] = "2026-01-06T00:00:00Z/2026-01-05T00:00:00Z"
        api.put(TRIGGERS, billing(annotations))
        await wait(lambda: "error" in (status_of(api).get("backfill") or {}), 10)
        assert "wrong order" in status_of(api)["backfill"]["error"]
        assert set(status_of(api)["backfill"]) == {"value", "error"}  # no stale progress
        await asyncio.sleep(1.0)
        assert len(fn.calls) == 2
        assert await a.terminate() == 0
        assert await b.terminate() == 0
