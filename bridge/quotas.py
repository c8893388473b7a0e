"""Quotas as limits: a function's ``max_concurrency`` and team quotas, per replica.

:class:`QuotaLimits` owns one :class:`~bridge.limits.Limit` per quota (a function's own,
``("function", name)``, and each team quota of the ``quotas:`` section,
``("team", name)``). Alone (no :class:`~bridge.cluster.Cluster`) a limit's capacity is
the quota. With a cluster, it is this replica's :func:`~bridge.cluster.share` of the
quota, re-computed whenever the members change: the shares of the live replicas add up
to the quota, so the bridge as a whole enforces it.
"""

from __future__ import annotations

from bridge.cluster import Cluster, Members, share
from bridge.limits import Limit
from bridge.logs import Logger
from bridge.metrics import Metrics

QuotaKey = tuple[str, str]


class QuotaLimits:
    """Every quota's limit on this replica, kept at its share of the cluster's total."""

    def __init__(self, cluster: Cluster | None, metrics: Metrics, log: Logger) -> None:
        self._cluster = cluster
        self._metrics = metrics
        self._log = log
        self._limits: dict[QuotaKey, tuple[Limit, int]] = {}
        if cluster is not None:
            cluster.on_change(self._rebalance)

    def limit(self, kind: str, name: str, total: int) -> Limit:
        """The limit of quota ``(kind, name)``, created or resized for ``total``."""
        key = (kind, name)
        current = self._limits.get(key)
        capacity = self._capacity(key, total)
        if current is None:
            limit = Limit(capacity)
        else:
            limit = current[0]
            limit.set_capacity(capacity)
        self._limits[key] = (limit, total)
        self._metrics.quota_share.labels(kind=kind, quota=name).set(capacity)
        return limit

    def names(self, kind: str) -> set[str]:
        """The quotas of ``kind`` that have a limit here."""
        return {n for k, n in self._limits if k == kind}

    def drop(self, kind: str, name: str) -> None:
        """Forget a quota no longer in the config (its limit may still drain)."""
        if self._limits.pop((kind, name), None) is not None:
            self._metrics.quota_share.remove(kind, name)

    def _capacity(self, key: QuotaKey, total: int) -> int:
        if self._cluster is None:
            return total
        return share(total, self._cluster.members, f"{key[0]}/{key[1]}")

    def _rebalance(self, members: Members) -> None:
        changed = []
        for key, (limit, total) in self._limits.items():
            capacity = share(total, members, f"{key[0]}/{key[1]}")
            if capacity != limit.capacity:
                changed.append(f"{key[0]}/{key[1]}={capacity}")
                limit.set_capacity(capacity)
                self._metrics.quota_share.labels(kind=key[0], quota=key[1]).set(capacity)
        if changed:
            self._log.info("quota shares rebalanced", members=len(members.identities),
                           settled=members.settled, changed=len(changed),
                           shares=", ".join(sorted(changed)[:20]))
