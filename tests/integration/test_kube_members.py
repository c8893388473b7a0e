"""Membership on the members Lease against the API emulator over real HTTP (in-process
replicas): join and settle, leave at once on a graceful stop, step out when the API
refuses our writes, an expired entry removed, garbage entries ignored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.cluster import Members
from bridge.kube.client import KubeClient
from bridge.kube.members import MEMBER_PREFIX, MemberLeases, member_key
from bridge.logs import get_logger
from bridge.settings import Settings
from tests.support.kube_api import KubeApi

LEASES = "leases.coordination.k8s.io"
DURATION, RENEW, RETRY = 1.5, 1.0, 0.2


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


@pytest.fixture
async def clients(api: KubeApi, tmp_path: Path) -> AsyncIterator[list[KubeClient]]:
    settings = Settings(kubeconfig=str(api.kubeconfig(tmp_path)))
    made = [KubeClient(settings, get_logger()) for _ in range(3)]
    yield made
    for client in made:
        await client.close()


def member(client: KubeClient, identity: str, shards: int = 0) -> MemberLeases:
    return MemberLeases(client, "tb", identity, get_logger(), lease_duration=DURATION,
                        renew_deadline=RENEW, retry_period=RETRY, shard_count=shards)


async def until(predicate: object, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)
    return time.monotonic()


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_join_settle_and_leave(api: KubeApi, clients: list[KubeClient]) -> None:
    a, b = member(clients[0], "a", shards=4), member(clients[1], "b_1", shards=4)
    views: list[Members] = []
    a.on_change(views.append)
    runs = [asyncio.create_task(m.run()) for m in (a, b)]
    try:
        joined = time.monotonic()
        await until(lambda: a.members.identities == ("a", "b_1"), 2)
        assert not a.members.settled  # no share before a lease duration as a member
        settled = await until(lambda: a.members.settled and b.members.settled, 3)
        assert settled - joined >= DURATION
        assert a.members.agreed_shards() == 4
        lease = api.get(LEASES, "tb-members")
        assert lease is not None
        entry = json.loads(lease["metadata"]["annotations"][member_key("b_1")])
        assert entry["holderIdentity"] == "b_1"
        assert entry["shards"] == 4

        await stop(runs[1])
        left = time.monotonic()
        await b.close()  # graceful: the entry goes, the others see it at their next round
        await until(lambda: a.members.identities == ("a",), 2)
        assert time.monotonic() - left < 3 * RETRY
        assert member_key("b_1") not in api.get(LEASES, "tb-members")["metadata"]["annotations"]
    finally:
        for run in runs:
            await stop(run)
    assert views[-1].identities == ("a",)


async def test_a_replica_whose_writes_fail_steps_out_before_the_others_drop_it(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    """a's calls hang (cut off from the API; b still reaches it): a's view stops
    counting itself within the renew deadline, before b (which still sees a's last
    entry) drops a after the lease duration: a never holds a share that b also counts
    as free."""
    a, b = member(clients[0], "a"), member(clients[1], "b")
    runs = [asyncio.create_task(m.run()) for m in (a, b)]
    try:
        await until(lambda: a.members.settled and b.members.identities == ("a", "b"), 4)
        async def hang(annotations: object) -> dict[str, object]:
            await asyncio.sleep(3600)
            return {}

        a._patch = hang  # type: ignore[method-assign]  # this replica's API only
        refused = time.monotonic()
        a_out = await until(lambda: a.members.index is None, 3)
        assert not a.members.settled
        b_drops = await until(lambda: b.members.identities == ("b",), 4)
        assert a_out - refused <= RENEW + RETRY
        assert b_drops - refused >= DURATION - RETRY
        assert a_out < b_drops
        assert b.gone("a")
    finally:
        for run in runs:
            await stop(run)


async def test_an_expired_entry_is_removed_and_garbage_is_ignored(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    api.put(LEASES, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": "tb-members", "annotations": {
                         member_key("dead"): json.dumps({
                             "holderIdentity": "dead", "renewTime": "2026-01-01T00:00:00.000000Z",
                             "leaseDurationSeconds": 1, "shards": 0}),
                         MEMBER_PREFIX + "garbage": "{not json",
                         "unrelated.example.com/x": "kept"}},
                     "spec": {}})
    a = member(clients[0], "a")
    run = asyncio.create_task(a.run())
    try:
        # seen at first as live (first sight: its age is unknown), then expired, removed
        await until(lambda: "dead" in a.members.identities, 2)
        await until(lambda: a.gone("dead") and a.members.identities == ("a",), 3)
        await until(lambda: member_key("dead") not in (
            api.get(LEASES, "tb-members") or {})["metadata"]["annotations"], 4)
        annotations = api.get(LEASES, "tb-members")["metadata"]["annotations"]
        assert annotations["unrelated.example.com/x"] == "kept"
    finally:
        await stop(run)
