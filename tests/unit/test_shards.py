"""bridge.kube.shards: the trigger -> shard hash, the shard -> replica assignment, and
which shard Leases a replica wants for a given view of the members."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from bridge.cluster import Members
from bridge.kube.client import KubeClient
from bridge.kube.lease import LeaseLeadership
from bridge.kube.shards import ShardedLeadership, assign, shard_lease_name, shard_of
from bridge.logs import get_logger
from bridge.settings import Settings


def test_a_triggers_shard_is_a_stable_hash_of_its_name() -> None:
    # crc32, not hash(): the same in every process and Python version
    assert [shard_of(f"t{n}", 16) for n in range(5)] == [
        shard_of(f"t{n}", 16) for n in range(5)]
    assert shard_of("nightly-report", 16) == 0  # crc32(b"nightly-report") % 16
    spread = Counter(shard_of(f"trigger-{n}", 16) for n in range(16_000))
    assert max(spread.values()) < 1.1 * 1_000


@pytest.mark.parametrize("shards", [1, 7, 12, 16, 64])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 10])
def test_every_member_gets_a_fair_share(shards: int, count: int) -> None:
    members = [f"replica-{i}" for i in range(count)]
    owners = assign(shards, members)
    assert len(owners) == shards
    loads = Counter(owners)
    assert sum(loads.values()) == shards
    assert max(loads.values()) - min(loads[m] for m in members) <= 1
    assert assign(shards, list(reversed(members))) == owners  # order of the view is moot


def test_a_leaving_member_moves_little_more_than_its_own_shards() -> None:
    members = [f"replica-{i}" for i in range(10)]
    before = assign(64, members)
    after = assign(64, members[:-1])
    moved = sum(1 for b, a in zip(before, after, strict=True) if b != a)
    own = before.count("replica-9")
    assert moved < 3 * own, (moved, own)


class FakeCluster:
    def __init__(self) -> None:
        self.members = Members("a")
        self.callbacks: list[Callable[[Members], None]] = []

    def on_change(self, callback: Callable[[Members], None]) -> None:
        self.callbacks.append(callback)

    def gone(self, identity: str) -> bool:
        return False

    def change(self, members: Members) -> None:
        self.members = members
        for callback in self.callbacks:
            callback(members)

    async def run(self) -> None:
        """Nothing to renew."""

    async def close(self) -> None:
        """Nothing to leave."""


def sharded(count: int) -> tuple[ShardedLeadership, FakeCluster]:
    cluster = FakeCluster()
    kube = KubeClient(Settings(), get_logger())

    def lease(name: str) -> LeaseLeadership:
        return LeaseLeadership(kube, name, "a", get_logger(), lease_duration=3,
                               renew_deadline=2, retry_period=0.5)

    return ShardedLeadership.build(count, lease, "tb", cluster, get_logger()), cluster


def wanted(leadership: ShardedLeadership) -> set[int]:
    return {i for i, shard in enumerate(leadership.shards) if shard._wanted}


def test_names_and_the_trigger_lookup() -> None:
    leadership, _ = sharded(8)
    assert [s.name for s in leadership.shards[:2]] == ["tb-shards-8-0", "tb-shards-8-1"]
    assert shard_lease_name("tb", 8, 7) == "tb-shards-8-7"
    assert leadership.for_trigger("nightly") is leadership.shards[shard_of("nightly", 8)]


def test_a_replica_wants_its_assigned_shards_only_while_the_counts_agree() -> None:
    leadership, cluster = sharded(6)
    assert wanted(leadership) == set()  # no view yet
    cluster.change(Members("a", ("a", "b"), True, {"a": 6, "b": 6}))
    owners = assign(6, ["a", "b"])
    assert wanted(leadership) == {i for i, o in enumerate(owners) if o == "a"}
    assert len(wanted(leadership)) == 3
    with capture_logs() as logs:
        cluster.change(Members("a", ("a", "b", "c"), True, {"a": 6, "b": 6, "c": 8}))
        cluster.change(Members("a", ("a", "b", "c"), True, {"a": 6, "b": 6, "c": 8}))
    assert wanted(leadership) == set()
    errors = [e for e in logs if e["event"].startswith("replicas disagree")]
    assert len(errors) == 1  # once per disagreement, not per round
    assert errors[0]["counts"] == {"a": 6, "b": 6, "c": 8}
    cluster.change(Members("a", ("a", "b"), True, {"a": 6, "b": 6}))
    assert len(wanted(leadership)) == 3
    cluster.change(Members("a", ("b",), True, {"b": 6}))  # our membership lapsed
    assert wanted(leadership) == set()
