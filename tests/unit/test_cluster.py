"""bridge.cluster and bridge.quotas: each replica's share of a cluster-wide quota."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bridge.cluster import Members, share
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.quotas import QuotaLimits


def view(identities: tuple[str, ...], me: str, settled: bool = True) -> Members:
    return Members(me, identities, settled, dict.fromkeys(identities, 0))


@pytest.mark.parametrize("total", [1, 2, 5, 6, 7, 100, 101])
@pytest.mark.parametrize("count", [1, 2, 3, 10])
@pytest.mark.parametrize("key", ["fn", "other", "team/a"])
def test_the_shares_of_one_view_add_up_to_the_total(total: int, count: int, key: str) -> None:
    names = tuple(f"r{i}" for i in range(count))
    shares = [share(total, view(names, me), key) for me in names]
    assert sum(shares) == total
    assert max(shares) - min(shares) <= 1


def test_the_remainder_rotates_with_the_key() -> None:
    names = ("a", "b", "c")
    winners = {next(m for m in names if share(1, view(names, m), f"fn{k}") == 1)
               for k in range(30)}
    assert winners == set(names)


def test_no_share_before_settling_or_when_not_a_member() -> None:
    assert share(6, view(("a", "b"), "a", settled=False)) == 0
    assert share(6, view(("b", "c"), "a")) == 0


def test_agreed_shards_needs_every_member() -> None:
    assert Members("a", ("a", "b"), True, {"a": 8, "b": 8}).agreed_shards() == 8
    assert Members("a", ("a", "b"), True, {"a": 8, "b": 16}).agreed_shards() is None


class FakeCluster:
    def __init__(self, members: Members) -> None:
        self.members = members
        self.callbacks: list[Callable[[Members], None]] = []

    def on_change(self, callback: Callable[[Members], None]) -> None:
        self.callbacks.append(callback)

    def change(self, members: Members) -> None:
        self.members = members
        for callback in self.callbacks:
            callback(members)

    def gone(self, identity: str) -> bool:
        return False

    async def run(self) -> None:
        """Nothing to renew."""

    async def close(self) -> None:
        """Nothing to leave."""


def test_quota_limits_follow_the_members() -> None:
    metrics = Metrics()
    cluster = FakeCluster(view(("a",), "a", settled=False))
    quotas = QuotaLimits(cluster, metrics, get_logger())
    limit = quotas.limit("function", "fn", 6)
    assert limit.capacity == 0  # not settled: waits or overflows
    cluster.change(view(("a", "b", "c"), "a"))
    assert limit.capacity == 2
    assert metrics.value("bridge_quota_share", kind="function", quota="fn") == 2
    cluster.change(view(("a", "b"), "a"))
    assert limit.capacity == 3
    assert quotas.limit("function", "fn", 10) is limit  # resized in place
    assert limit.capacity == 5


def test_without_a_cluster_the_limit_is_the_whole_quota() -> None:
    quotas = QuotaLimits(None, Metrics(), get_logger())
    assert quotas.limit("team", "payments", 7).capacity == 7
