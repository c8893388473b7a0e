"""Cron leadership at its edges, through real daemons (``trigger-bridge run``
subprocesses) sharing a Lease in the API emulator: an old Lease, a hanging or garbled
API, a SIGTERM with a run in flight, and the stop budget."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.kube.lease import micro_time, parse_time
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction, always
from tests.support.kube_api import KubeApi

LEASES = "leases.coordination.k8s.io"
LEASE = "trigger-bridge"


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


def config(url: str, tmp: Path, cron: str = '{schedule: "* * * * * *"}') -> str:
    return f"""
defaults:
  retry: {{max_attempts: 2, initial_backoff: 50ms}}
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}", timeout: 60s}}
triggers:
  - name: tick
    function: fn
    cron: {cron}
"""


def lease_env(api: KubeApi, tmp: Path, instance: str, *, duration: str = "3s",
              renew: str = "2s", retry: str = "500ms") -> dict[str, str]:
    return {
        "BRIDGE_KUBECONFIG": str(api.kubeconfig(tmp)), "BRIDGE_INSTANCE": instance,
        "BRIDGE_LEADER_ELECTION": "true", "BRIDGE_LEASE_DURATION": duration,
        "BRIDGE_LEASE_RENEW_DEADLINE": renew, "BRIDGE_LEASE_RETRY_PERIOD": retry,
    }


def tick_time(event_id: str) -> datetime:
    return datetime.fromisoformat(event_id.split("/", 1)[1].replace("Z", "+00:00"))


def spec(api: KubeApi) -> dict[str, Any]:
    lease = api.get(LEASES, LEASE)
    return {} if lease is None else dict(lease["spec"])


async def wait(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


def logged(bridge: BridgeProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in bridge.logs() if e.get("event") == event]


async def test_a_lease_released_days_ago_brings_no_backlog(api: KubeApi, tmp_path: Path) -> None:
    """Item 1: every replica was down for 3 days. The new leader fires the ticks of the
    handover window only (lease 3 s + renew deadline 2 s + retry 1 s = 6 s: exactly 6
    ticks of a per-second schedule), not the 259,200 since the last renewal."""
    released = datetime.now(UTC) - timedelta(days=3)
    api.put(LEASES, {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": LEASE},
        "spec": {"holderIdentity": None, "leaseDurationSeconds": 1, "leaseTransitions": 4,
                 "acquireTime": micro_time(released), "renewTime": micro_time(released)},
    })
    env = lease_env(api, tmp_path, "replica-a", retry="1s")
    async with RecordingFunction() as fn, \
            BridgeProcess(config(fn.url, tmp_path), tmp_path, env) as bridge:
        await wait(lambda: spec(api).get("holderIdentity") == "replica-a", 10)
        acquired = parse_time(spec(api)["acquireTime"])
        assert acquired is not None
        await fn.wait_for(lambda: len(fn.calls) >= 9, timeout=15)
        assert await bridge.terminate() == 0
    times = [tick_time(i) for i in fn.ids()]
    assert max(Counter(times).values()) == 1  # each tick once
    assert min(times) > acquired - timedelta(seconds=6), (min(times), acquired)
    assert len([t for t in times if t <= acquired]) in (5, 6)  # the 6th may be just after
    handover = logged(bridge, "cron leadership gained: firing missed ticks")
    assert len(handover) == 1
    assert handover[0]["count"] == 6
    first, last = tick_time("x/" + handover[0]["first"]), tick_time("x/" + handover[0]["last"])
    assert last - first == timedelta(seconds=5)
    assert sorted(times)[:6] == [first + timedelta(seconds=s) for s in range(6)]
    # then the clock's own ticks, contiguous: nothing lost at the seam
    assert sorted(times) == [first + timedelta(seconds=s) for s in range(len(times))]


async def test_a_leader_whose_api_hangs_stops_firing_within_its_renew_deadline(
    api: KubeApi, tmp_path: Path
) -> None:
    """Item 2: the API hangs 6 s. Every lease call is cut off before the renew deadline
    (2 s) and the leader steps down on its own clock: no tick is fired from 2 s after
    the hang began until the API answers again; then it leads again."""
    async with RecordingFunction() as fn, \
            BridgeProcess(config(fn.url, tmp_path), tmp_path,
                          lease_env(api, tmp_path, "replica-a")) as bridge:
        await wait(lambda: spec(api).get("holderIdentity") == "replica-a", 10)
        await fn.wait_for(lambda: len(fn.calls) >= 3, timeout=10)
        api.hang()
        hung = time.time()
        await asyncio.sleep(3)
        assert bridge.metric("bridge_cron_leader", lease=LEASE) == 0
        await asyncio.sleep(3)
        fired_while_hung = [c for c in fn.calls if c.received > hung + 2.0 + 0.4]
        api.resume()
        resumed = time.time()
        assert fired_while_hung == [], [c.event_id for c in fired_while_hung]
        assert api.held >= 2  # the daemon kept trying, each call cut off
        await fn.wait_for(lambda: any(c.received > resumed + 0.5 for c in fn.calls), 10)
        assert bridge.metric("bridge_cron_leader", lease=LEASE) == 1
        lease_log = [(e.get("timestamp"), e.get("event"), e.get("reason"), e.get("during"))
                     for e in bridge.logs() if "lease" in str(e.get("event"))]
        assert bridge.metric("bridge_lease_failures_total", kind="renew_deadline") == 1, (
            lease_log, hung, resumed)
        assert bridge.metric("bridge_lease_failures_total", kind="timeout") >= 2
        assert await bridge.terminate() == 0
    stepped = logged(bridge, "lease not renewed within the renew deadline; stepping down")
    assert len(stepped) == 1
    assert max(Counter(fn.ids()).values()) == 1


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        (b'{"kind": "Lease", "spec": {', "JSONDecodeError"),
        (b'{"kind": "Lease", "metadata": {"name": "trigger-bridge"},'
         b' "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": "soon"}}',
         "MalformedLease"),
    ],
    ids=["broken-json", "malformed-lease"],
)
async def test_a_garbled_lease_answer_is_logged_counted_and_the_loop_goes_on(
    api: KubeApi, tmp_path: Path, body: bytes, cause: str
) -> None:
    """Item 2: a bad answer from the API does not kill the lease loop (it used to, with
    the replica left firing as 'leader' while nobody renewed its Lease)."""
    async with RecordingFunction() as fn, \
            BridgeProcess(config(fn.url, tmp_path), tmp_path,
                          lease_env(api, tmp_path, "replica-a")) as bridge:
        await wait(lambda: spec(api).get("holderIdentity") == "replica-a", 10)
        await fn.wait_for(lambda: len(fn.calls) >= 2, timeout=10)
        api.garble_next(body, resource=LEASES)
        await wait(lambda: not api._garbage, 5)
        garbled = time.time()
        renewed = spec(api)["renewTime"]
        await asyncio.sleep(1.5)
        assert spec(api)["renewTime"] != renewed  # the loop lives: still renewing
        assert spec(api)["holderIdentity"] == "replica-a"
        await fn.wait_for(lambda: any(c.received > garbled + 1.0 for c in fn.calls), 5)
        assert bridge.metric("bridge_lease_failures_total", kind="malformed") == 1
        assert bridge.metric("bridge_cron_leader", lease=LEASE) == 1
        assert await bridge.terminate() == 0
    failed = logged(bridge, "lease round failed; going on as a follower")
    assert len(failed) == 1
    assert failed[0]["level"] == "error"
    assert failed[0]["kind"] == "malformed"
    assert str(failed[0]["error"]).startswith(cause)
    assert max(Counter(fn.ids()).values()) == 1


async def test_sigterm_releases_the_lease_only_after_cron_drained(
    api: KubeApi, tmp_path: Path
) -> None:
    """Item 3: a Forbid trigger's run is in flight on the leader at SIGTERM. The Lease is
    released after that run finished, so the next leader's run never overlaps it; the
    ticks due during the drain are fired by the next leader, not lost."""
    cron = '{schedule: "* * * * * *", concurrency_policy: Forbid}'
    async with RecordingFunction(always(200, delay=2.5)) as fn:
        cfg = config(fn.url, tmp_path, cron)
        async with BridgeProcess(cfg, tmp_path, lease_env(api, tmp_path, "replica-a")) as a:
            await wait(lambda: spec(api).get("holderIdentity") == "replica-a", 10)
            async with BridgeProcess(cfg, tmp_path, lease_env(api, tmp_path, "replica-b")) as b:
                await wait(lambda: fn.in_flight == 0, 10)
                await wait(lambda: fn.in_flight == 1, 10)  # a run just started
                await asyncio.sleep(0.3)
                signalled = time.time()
                assert await a.terminate() == 0
                exited = time.time()
                assert exited - signalled >= 1.5  # it waited for its run
                await wait(lambda: spec(api).get("holderIdentity") == "replica-b", 3)
                await fn.wait_for(lambda: len(fn.calls) >= 3, timeout=15)
                assert await b.terminate() == 0
    assert fn.max_in_flight == 1
    by_time = sorted(fn.calls, key=lambda c: c.received)
    draining = max((c for c in by_time if c.received < signalled), key=lambda c: c.received)
    first_of_b = by_time[by_time.index(draining) + 1]
    assert first_of_b.received >= draining.received + 2.5  # no overlap
    # b's first run is a tick due while a drained, handed over through the release
    due = tick_time(first_of_b.event_id).timestamp()
    assert signalled - 1 < due < draining.received + 2.5, (signalled, due, draining.received)
    released = logged(a, "lease released")
    assert len(released) == 1
    assert max(Counter(fn.ids()).values()) == 1


async def test_the_whole_stop_fits_in_the_drain_timeout_plus_5s(
    api: KubeApi, tmp_path: Path
) -> None:
    """Item 17: at SIGTERM a run (8 s) outlasts the 2 s drain and the API hangs (the Lease
    release cannot get an answer, and may wait up to its 15 s renew deadline). The
    process still exits 0 within BRIDGE_DRAIN_TIMEOUT + 5 s."""
    env = lease_env(api, tmp_path, "replica-a", duration="20s", renew="15s", retry="500ms")
    env["BRIDGE_DRAIN_TIMEOUT"] = "2s"
    async with RecordingFunction(always(200, delay=8)) as fn, \
            BridgeProcess(config(fn.url, tmp_path), tmp_path, env) as bridge:
        await wait(lambda: spec(api).get("holderIdentity") == "replica-a", 10)
        await wait(lambda: fn.in_flight >= 1, 10)
        api.hang()
        started = time.monotonic()
        assert await bridge.terminate(timeout=30) == 0
        took = time.monotonic() - started
    assert took <= 2 + 5, took
    assert took >= 2  # the drain had its time
    stopped = logged(bridge, "stopped")
    assert stopped
    assert stopped[0]["drained"] is False
    cut = logged(bridge, "stop step cut off at the stop budget")
    assert [e["step"] for e in cut] == ["release the Lease"]
