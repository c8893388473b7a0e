"""Run-now and backfill with leader election: two daemons (``trigger-bridge run``)
sharing the cron Lease in the Kubernetes API emulator. Each action happens once, on the
leader; a backfill survives a leader change (its progress is in the state Lease)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.test_cron_control import cli, control_env, logged, tick_of
from tests.integration.test_kube_leadership import LEASES, lease_env, spec, wait
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction, always
from tests.support.kube_api import KubeApi


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


def config(url: str, tmp: Path) -> str:
    return f"""
defaults:
  retry: {{max_attempts: 1}}
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - name: hourly
    function: fn
    cron: {{schedule: "0 * * * *", data: {{job: hourly}}}}
"""


def env(api: KubeApi, tmp: Path, instance: str) -> dict[str, str]:
    return {**lease_env(api, tmp, instance), **control_env(tmp)}


async def test_run_now_sent_to_both_replicas_runs_once_on_the_leader(
    api: KubeApi, tmp_path: Path
) -> None:
    cfg_a, cfg_b = tmp_path / "a", tmp_path / "b"
    cfg_a.mkdir()
    cfg_b.mkdir()
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(fn.url, tmp_path), cfg_a, env(api, tmp_path, "replica-a")) as a,
    ):
        await wait(lambda: spec(api).get("holderIdentity") == "replica-a", 10)
        async with BridgeProcess(config(fn.url, tmp_path), cfg_b,
                                 env(api, tmp_path, "replica-b")) as b:
            await asyncio.sleep(1.0)
            on_a, on_b = await asyncio.gather(cli(a, "run-now", "hourly"),
                                              cli(b, "run-now", "hourly"))
            await fn.wait_calls(1)
            await asyncio.sleep(1.0)
            assert await b.terminate() == 0
        assert await a.terminate() == 0
    assert on_a[0] == 0
    assert on_b == (2, "", "hourly: refused (409): this replica does not lead trigger "
                           "'hourly': ask the replica holding its cron Lease\n")
    assert len(fn.calls) == 1
    assert fn.calls[0].event_id == on_a[1].split(" as ")[1].strip()


async def test_backfill_runs_once_and_survives_a_leader_change(
    api: KubeApi, tmp_path: Path
) -> None:
    cfg_a, cfg_b = tmp_path / "a", tmp_path / "b"
    cfg_a.mkdir()
    cfg_b.mkdir()
    async with (
        RecordingFunction(always(200, delay=0.25)) as fn,
        BridgeProcess(config(fn.url, tmp_path), cfg_a, env(api, tmp_path, "replica-a")) as a,
        BridgeProcess(config(fn.url, tmp_path), cfg_b, env(api, tmp_path, "replica-b")) as b,
    ):
        await wait(lambda: spec(api).get("holderIdentity") in ("replica-a", "replica-b"), 10)
        leader, follower = (a, b) if spec(api)["holderIdentity"] == "replica-a" else (b, a)
        refused = await cli(follower, "backfill", "hourly", "--from", "2026-01-05T00:00:00Z",
                            "--to", "2026-01-05T23:00:00Z")
        started = await cli(leader, "backfill", "hourly", "--from", "2026-01-05T00:00:00Z",
                            "--to", "2026-01-05T23:00:00Z")
        assert started[0] == 0
        await fn.wait_calls(6)
        assert await leader.terminate() == 0  # a leader change in the middle of it
        settled_before = len(fn.calls)
        await fn.wait_calls(24, timeout=40)
        await asyncio.sleep(0.5)
        status = await cli(follower, "backfill", "hourly", "--status")
        state = api.get(LEASES, "trigger-bridge-state")
        assert await follower.terminate() == 0
    assert refused[0] == 2
    assert "does not lead trigger 'hourly'" in refused[2]
    counts = Counter(fn.ids())
    assert max(counts.values()) == 1, "a tick fired twice"
    assert sorted(tick_of(i) for i in counts) == [
        datetime(2026, 1, 5, h, tzinfo=UTC) for h in range(24)]
    assert 6 <= settled_before < 24
    assert status[1].strip().endswith("done, 24/24 settled (24 delivered, 0 dead-lettered)")
    resumed = logged(follower, "backfill resumed")
    assert resumed
    assert state is not None
    document = json.loads(state["metadata"]["annotations"]["cron.triggerbridge.dev/hourly"])
    assert document["backfill"]["state"] == "done"


async def test_with_cron_shards_each_trigger_is_acted_on_by_its_shard_holder_once(
    api: KubeApi, tmp_path: Path
) -> None:
    """BRIDGE_CRON_SHARDS: run-now and backfill follow the trigger's own shard Lease
    (context.leadership), so with triggers spread over two replicas each request is
    accepted by exactly one of them, whichever holds that trigger's shard."""
    names = [f"job-{n}" for n in range(6)]
    triggers = "\n".join(f'  - {{name: {n}, function: fn, cron: {{schedule: "0 * * * *"}}}}'
                         for n in names)
    cfg = f"""
defaults:
  retry: {{max_attempts: 1}}
  dead_letter: {{file: {{path: "{tmp_path / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "URL"}}
triggers:
{triggers}
"""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for directory in dirs:
        directory.mkdir()

    def shard_env(instance: str) -> dict[str, str]:
        return {**control_env(tmp_path), "BRIDGE_KUBECONFIG": str(api.kubeconfig(tmp_path)),
                "BRIDGE_INSTANCE": instance, "BRIDGE_CRON_SHARDS": "4",
                "BRIDGE_LEASE_DURATION": "3s", "BRIDGE_LEASE_RENEW_DEADLINE": "2s",
                "BRIDGE_LEASE_RETRY_PERIOD": "500ms"}

    async with (
        RecordingFunction() as fn,
        BridgeProcess(cfg.replace("URL", fn.url), dirs[0], shard_env("replica-a")) as a,
        BridgeProcess(cfg.replace("URL", fn.url), dirs[1], shard_env("replica-b")) as b,
    ):
        await wait(lambda: round(a.metric("bridge_cron_leader"))
                   + round(b.metric("bridge_cron_leader")) == 4
                   and min(round(a.metric("bridge_cron_leader")),
                           round(b.metric("bridge_cron_leader"))) >= 1, 30)
        accepted: Counter[str] = Counter()
        for name in names:
            answers = await asyncio.gather(cli(a, "run-now", name), cli(b, "run-now", name),
                                           cli(a, "backfill", name, "--from",
                                               "2026-01-05T00:00:00Z", "--to",
                                               "2026-01-05T01:00:00Z"),
                                           cli(b, "backfill", name, "--from",
                                               "2026-01-05T00:00:00Z", "--to",
                                               "2026-01-05T01:00:00Z"))
            codes = [answer[0] for answer in answers]
            assert sorted(codes[:2]) == [0, 2], answers
            assert sorted(codes[2:]) == [0, 2], answers
            assert codes[0] == codes[2], "run-now and backfill went to different replicas"
            accepted["a" if codes[0] == 0 else "b"] += 1
        await fn.wait_calls(3 * len(names), timeout=30)
        await asyncio.sleep(1.0)
        assert await a.terminate() == 0
        assert await b.terminate() == 0
    assert set(accepted) == {"a", "b"}  # the triggers are spread over both replicas
    counts = Counter(fn.ids())
    assert max(counts.values()) == 1
    for name in names:
        assert counts[f"{name}/2026-01-05T00:00:00Z"] == 1
        assert counts[f"{name}/2026-01-05T01:00:00Z"] == 1
        assert sum(1 for i in counts if i.startswith(f"{name}/manual/")) == 1
