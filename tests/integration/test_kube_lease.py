"""Lease leadership against the API emulator over real HTTP (in-process replicas)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import structlog
from kubernetes_asyncio.client import CoordinationV1Api

from bridge.kube.client import LEASES as LEASES_RESOURCE
from bridge.kube.client import KubeClient
from bridge.kube.errors import KubeError
from bridge.kube.lease import LeaseLeadership, parse_time
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.settings import Settings
from tests.support.kube_api import KubeApi

LEASES = "leases.coordination.k8s.io"


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


@pytest.fixture
async def clients(api: KubeApi, tmp_path: Path) -> AsyncIterator[list[KubeClient]]:
    settings = Settings(kubeconfig=str(api.kubeconfig(tmp_path)))
    made = [KubeClient(settings, get_logger()) for _ in range(2)]
    yield made
    for client in made:
        await client.close()


def start(lease: LeaseLeadership) -> asyncio.Task[None]:
    """The Lease loop run as the daemon's supervisor runs it."""
    return asyncio.create_task(lease.run(), name=f"lease:{lease.identity}")


async def stop(lease: LeaseLeadership, run: asyncio.Task[None]) -> None:
    """The daemon's stop: no tick fires from now on, the loop ends, then the release."""
    lease.stop_leading()
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await lease.close()


def replica(client: KubeClient, identity: str) -> LeaseLeadership:
    return LeaseLeadership(client, "bridge", identity, get_logger(), lease_duration=2.0,
                           renew_deadline=1.2, retry_period=0.2)


async def test_one_leader_then_takeover_within_the_lease_duration(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    a, b = replica(clients[0], "a"), replica(clients[1], "b")
    changes: list[tuple[str, bool]] = []
    a.on_change(lambda leader: changes.append(("a", leader)))
    b.on_change(lambda leader: changes.append(("b", leader)))
    a_run = start(a)
    await asyncio.wait_for(a.wait_leader(), 3)
    b_run = start(b)
    await asyncio.sleep(1.0)
    assert a.is_leader
    assert not b.is_leader
    lease = api.get(LEASES, "bridge")
    assert lease is not None
    spec = lease["spec"]
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 2
    assert spec["leaseTransitions"] == 0
    assert parse_time(spec["acquireTime"]) is not None

    # a dies without releasing (its task is cancelled, the Lease left as it is).
    a_run.cancel()
    died = time.monotonic()
    await asyncio.sleep(0.1)  # a write of a's already sent still lands
    last_renew = parse_time(api.get(LEASES, "bridge")["spec"]["renewTime"])  # type: ignore[index]
    await asyncio.wait_for(b.wait_leader(), 4)
    assert time.monotonic() - died <= 2.0 + 0.2 + 0.5
    spec = api.get(LEASES, "bridge")["spec"]  # type: ignore[index]
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1
    assert b.handover_since == last_renew
    # a's loop is gone, but its own clock stepped it down at its renew deadline, before
    # b could take over: never two leaders.
    assert changes == [("a", True), ("a", False), ("b", True)]
    await stop(b, b_run)
    assert api.get(LEASES, "bridge")["spec"]["holderIdentity"] is None  # type: ignore[index]
    await stop(a, a_run)


async def test_release_on_stop_hands_over_at_once(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    a, b = replica(clients[0], "a"), replica(clients[1], "b")
    a_run = start(a)
    await asyncio.wait_for(a.wait_leader(), 3)
    b_run = start(b)
    await asyncio.sleep(0.3)
    stopped = time.monotonic()
    await stop(a, a_run)
    assert not a.is_leader
    await asyncio.wait_for(b.wait_leader(), 2)
    assert time.monotonic() - stopped < 1.0  # not the 2 s lease duration
    await stop(b, b_run)


async def test_conflicting_update_means_someone_else_won(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    a = replica(clients[0], "a")
    api.put(LEASES, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "bridge"},
        "spec": {"holderIdentity": "old", "leaseDurationSeconds": 1,
                 "renewTime": "2020-01-01T00:00:00.000000Z"},
    })
    # Between a's read and its write, another replica takes the lease: a's update carries
    # a stale resourceVersion and gets 409.
    original = clients[0].call

    async def racing(verb: str, *args: object, **kwargs: object) -> dict[str, object]:
        if verb == "update":
            current = api.get(LEASES, "bridge")
            assert current is not None
            current["spec"]["holderIdentity"] = "winner"
            api.put(LEASES, current)
        return await original(verb, *args, **kwargs)  # type: ignore[arg-type]

    clients[0].call = racing  # type: ignore[method-assign]
    assert await a._try_acquire_or_renew() is None  # first sight of "old": not expired yet
    assert not any(r.verb == "update" for r in api.requests)
    await asyncio.sleep(1.1)  # now expired on a's clock: a writes, and loses the race
    assert await a._try_acquire_or_renew() is None
    assert await a._try_acquire_or_renew() is None  # winner's record is fresh
    assert api.get(LEASES, "bridge")["spec"]["holderIdentity"] == "winner"  # type: ignore[index]
    assert any(r.verb == "update" for r in api.requests)


async def test_forbidden_lease_update_is_logged_and_not_ready(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    api.forbid("create", LEASES)
    a = replica(clients[0], "a")
    with structlog.testing.capture_logs() as logs:
        a_run = start(a)
        await asyncio.sleep(0.5)
        assert not a.ready
        assert not a.is_leader
        denied = [e for e in logs if e.get("verb") == "create"]
        assert denied
        assert "leases.coordination.k8s.io" in denied[0]["event"]
        api.allow("create", LEASES)
        await asyncio.wait_for(a.wait_leader(), 2)
        assert a.ready
    await stop(a, a_run)


async def test_requests_retry_429_and_5xx_honouring_retry_after(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    api.put(LEASES, {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": "x"}, "spec": {}})
    api.fail_next(429, retry_after="1")
    api.fail_next(503)
    started = time.monotonic()
    read = CoordinationV1Api.read_namespaced_lease
    lease = await clients[0].call("get", LEASES_RESOURCE, read, name="x", namespace="default")
    assert lease["metadata"]["name"] == "x"
    assert time.monotonic() - started >= 1.0
    api.fail_next(500, count=4)
    with pytest.raises(KubeError) as caught:
        await clients[0].call("get", LEASES_RESOURCE, read, name="x", namespace="default")
    assert caught.value.kind == "retryable"
    with pytest.raises(KubeError) as missing:
        await clients[0].call("get", LEASES_RESOURCE, read, name="absent", namespace="default")
    assert missing.value.kind == "not_found"


async def test_stop_keeps_the_lease_until_released_and_hands_over_from_the_last_fired_tick(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    a, b = replica(clients[0], "a"), replica(clients[1], "b")
    a_run = start(a)
    await asyncio.wait_for(a.wait_leader(), 3)
    b_run = start(b)
    a.stop_leading()  # SIGTERM: no tick fires any more, the Lease stays a's while it drains
    assert not a.is_leader
    stopped_firing = a._fired_until
    assert stopped_firing is not None
    late_tick = stopped_firing.replace(microsecond=0)  # due before, its clock callback late
    a.note_unfired(late_tick)
    a.note_unfired(stopped_firing + timedelta(seconds=1))  # due after: the next leader's
    renewed = api.get(LEASES, "bridge")["spec"]["renewTime"]  # type: ignore[index]
    await asyncio.sleep(2.5)  # longer than the lease duration: still a's, renewed
    spec = api.get(LEASES, "bridge")["spec"]  # type: ignore[index]
    assert spec["holderIdentity"] == "a"
    assert spec["renewTime"] != renewed
    assert not b.is_leader
    await stop(a, a_run)
    await asyncio.wait_for(b.wait_leader(), 2)
    assert b.handover_since == late_tick - timedelta(microseconds=1)
    await stop(b, b_run)


async def test_a_stopping_replica_never_takes_the_lease(
    api: KubeApi, clients: list[KubeClient]
) -> None:
    a = replica(clients[0], "a")
    a.stop_leading()
    a_run = start(a)
    await asyncio.sleep(0.6)
    assert api.get(LEASES, "bridge") is None
    assert not a.is_leader
    await stop(a, a_run)


async def test_a_kubeconfig_that_cannot_be_loaded_is_one_line_counted_and_unready(
    tmp_path: Path,
) -> None:
    """No traceback for a user error: it used to be counted as ``internal`` and logged
    with one, every retry period."""
    metrics = Metrics()
    kube = KubeClient(Settings(kubeconfig=str(tmp_path / "absent")), get_logger())
    a = LeaseLeadership(kube, "bridge", "a", get_logger(), lease_duration=2.0,
                        renew_deadline=1.2, retry_period=0.2, metrics=metrics)
    with structlog.testing.capture_logs() as logs:
        a_run = start(a)
        await asyncio.sleep(0.5)
        await stop(a, a_run)
    assert not a.ready
    failed = [e for e in logs if e.get("during") == "acquire"]
    assert len(failed) >= 2  # retried every retry period
    assert {e["event"] for e in failed} == {"kubernetes config cannot be used"}
    assert not any(e.get("exc_info") for e in failed)
    assert failed[0]["error"].startswith(
        f"KubeConfigError: cannot load the kubeconfig {tmp_path / 'absent'} (BRIDGE_KUBECONFIG)")
    assert metrics.value("bridge_lease_failures_total", lease="bridge", kind="config") == len(
        failed)
