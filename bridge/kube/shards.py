"""Cron sharded across replicas: a fixed number of shard Leases, a fair share each.

With ``BRIDGE_CRON_SHARDS=N`` the cron triggers are spread over ``N`` shard Leases,
``<BRIDGE_LEASE_NAME>-shards-<N>-<i>``: a trigger belongs to shard
``crc32(name) % N`` (stable across processes and versions). Each shard Lease is a
:class:`~bridge.kube.lease.LeaseLeadership` with every rule of the single cron Lease
(a tick fires once; the renew deadline; the handover window; a graceful stop releases
after the drain), and :meth:`ShardedLeadership.for_trigger` is the trigger's shard:
the cron connector asks it, as ``context.leadership``, exactly as it asked the one
Lease before.

Which replica holds which shard follows the members (:mod:`bridge.kube.members`):
every replica computes the same :func:`assign` from the same view -- each member
gets ``N // n`` or ``N // n + 1`` shards, by rendezvous hashing so a join or a leave
moves few shards -- and wants only its own. A shard assigned elsewhere is handed back
in two rounds (stop firing, then release with ``renewTime`` = the moment it stopped),
so the new holder fires the ticks after it: no tick lost, none twice. The Lease
decides in the end: a replica takes a shard only when it is free or expired, so two
replicas whose views differ for a round never both hold it.

Replicas must agree on ``N``: the shard Leases of different counts have different
names, so they cannot protect each other. Every member announces its count on its
member entry; while the live members' counts differ, no replica wants any shard (each
hands back what it holds) and the disagreement is logged as an error. A replica with a
new count sees the old ones in its first view (they are already members), so it never
fires alongside them; the old ones stop within a retry period of seeing it.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from bridge.cluster import Cluster, Members
from bridge.kube.lease import LeaseLeadership
from bridge.logs import Logger


def shard_of(trigger: str, shards: int) -> int:
    """The shard of ``trigger``: a stable hash of its name."""
    return zlib.crc32(trigger.encode()) % shards


def assign(shards: int, members: Sequence[str]) -> list[str]:
    """The owner of each shard: the first ``shards % n`` members (sorted) own one more
    than the others; each shard goes to its highest-ranked member (rendezvous hash of
    member and shard) that still has room."""
    ordered = sorted(members)
    if not ordered:
        return []
    base, extra = divmod(shards, len(ordered))
    room = {m: base + (1 if i < extra else 0) for i, m in enumerate(ordered)}
    owners = []
    for shard in range(shards):
        ranked = sorted(ordered, key=lambda m: zlib.crc32(f"{m}/{shard}".encode()),
                        reverse=True)
        owner = next(m for m in ranked if room[m] > 0)
        room[owner] -= 1
        owners.append(owner)
    return owners


class ShardedLeadership:
    """The cron leadership of one replica over ``count`` shard Leases."""

    def __init__(
        self,
        shards: Sequence[LeaseLeadership],
        cluster: Cluster,
        log: Logger,
    ) -> None:
        self.shards = list(shards)
        self._cluster = cluster
        self._log = log
        self._disagreement: tuple[tuple[str, int], ...] | None = None
        for shard in self.shards:
            shard.set_wanted(False)
        cluster.on_change(self._rebalance)

    @classmethod
    def build(cls, count: int, make: Callable[[str], LeaseLeadership], prefix: str,
              cluster: Cluster, log: Logger) -> ShardedLeadership:
        return cls([make(shard_lease_name(prefix, count, i)) for i in range(count)],
                   cluster, log)

    # --- the Leadership contract (the whole: lifecycle and status) --------------------

    def for_trigger(self, name: str) -> LeaseLeadership:
        return self.shards[shard_of(name, len(self.shards))]

    @property
    def is_leader(self) -> bool:
        """True while this replica fires for at least one shard."""
        return any(shard.is_leader for shard in self.shards)

    @property
    def handover_since(self) -> datetime | None:
        return None  # per shard: ask for_trigger(name)

    @property
    def handover_window(self) -> timedelta:
        return self.shards[0].handover_window

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """``callback`` hears every shard's gains and losses."""
        for shard in self.shards:
            shard.on_change(callback)

    async def wait_leader(self) -> None:
        waits = [asyncio.ensure_future(shard.wait_leader()) for shard in self.shards]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    async def run(self) -> None:
        """Every shard's Lease loop (a shard not assigned here makes no API call)."""
        self._rebalance(self._cluster.members)
        async with asyncio.TaskGroup() as group:
            for shard in self.shards:
                group.create_task(shard.run(), name=f"lease:{shard.name}")

    def stop_leading(self) -> None:
        for shard in self.shards:
            shard.stop_leading()

    def note_unfired(self, scheduled: datetime) -> None:
        """Per shard: the connector notes it on its own shard."""

    async def close(self) -> None:
        await asyncio.gather(*(shard.close() for shard in self.shards))

    # --- assignment -------------------------------------------------------------------

    def _rebalance(self, members: Members) -> None:
        count = len(self.shards)
        agreed = members.agreed_shards()
        if members.index is None:
            wanted: set[int] = set()
        elif agreed != count:
            wanted = set()
            self._disagree(members)
        else:
            if self._disagreement is not None:
                self._log.info("cron shard counts agree again", shards=count)
                self._disagreement = None
            owners = assign(count, members.identities)
            wanted = {i for i, owner in enumerate(owners) if owner == members.me}
        for i, shard in enumerate(self.shards):
            shard.set_wanted(i in wanted)

    def _disagree(self, members: Members) -> None:
        counts = tuple(sorted((m, members.shard_counts.get(m, 0)) for m in members.identities))
        if counts != self._disagreement:
            self._disagreement = counts
            self._log.error(
                "replicas disagree on BRIDGE_CRON_SHARDS: no cron tick fires here until "
                "they agree (finish the rollout, see docs/kubernetes.md)",
                shards=len(self.shards), counts=dict(counts))


def shard_lease_name(prefix: str, count: int, index: int) -> str:
    return f"{prefix}-shards-{count}-{index}"
