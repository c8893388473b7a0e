"""Several replicas as one: who the live replicas are, and each one's share of a quota.

A :class:`Cluster` (the Kubernetes one is :mod:`bridge.kube.members`: an entry per
replica on one Lease) tells each replica the :class:`Members` it sees. From that view
every replica computes, on its own and without talking to the others, its
:func:`share` of every cluster-wide total (a function's ``max_concurrency``, a team
quota): the shares of one view add up to the total exactly, and every replica that
sees the same members computes the same split.

A replica takes a share only once it is *settled*: its own member entry is current
(renewed within the renew deadline) and it has been a member for one lease duration,
so every other live replica has seen it and shrunk its own share before this one
grows. A replica that is not settled has share 0: its invocations wait or overflow
as when a quota is full.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Members:
    """The live replicas as this one sees them (``identities`` sorted)."""

    me: str
    identities: tuple[str, ...] = ()
    #: This replica may take its share (see the module docstring).
    settled: bool = False
    #: Each live replica's announced cron shard count (0: no shards).
    shard_counts: Mapping[str, int] = field(default_factory=dict)

    @property
    def index(self) -> int | None:
        """Our place among the live members, or None when we are not one of them."""
        try:
            return self.identities.index(self.me)
        except ValueError:
            return None

    def agreed_shards(self) -> int | None:
        """The cron shard count every live member announces, or None if they differ."""
        counts = {self.shard_counts.get(m, 0) for m in self.identities}
        return counts.pop() if len(counts) == 1 else None


def share(total: int, members: Members, key: str = "") -> int:
    """This replica's part of ``total``: 0 unless settled; the remainder of the split
    goes to members in an order rotated by ``key`` (a function's name), so with many
    small quotas no replica always gets the extra slot."""
    index = members.index
    if not members.settled or index is None:
        return 0
    count = len(members.identities)
    base, extra = divmod(total, count)
    offset = zlib.crc32(key.encode()) % count
    return base + (1 if (index + offset) % count < extra else 0)


class Cluster(Protocol):
    """The live replicas, kept current by :meth:`run` (under the supervisor)."""

    @property
    def members(self) -> Members:
        """The current view (not settled before the first round)."""

    def on_change(self, callback: Callable[[Members], None]) -> None:
        """Call ``callback(members)`` whenever the view changes."""

    def gone(self, identity: str) -> bool:
        """True when ``identity``'s membership was seen to expire (and it has not come
        back): that replica is dead or cut off, and has stopped acting as a member."""

    async def run(self) -> None:
        """Renew our membership and read the others' until cancelled."""

    async def close(self) -> None:
        """Leave (after :meth:`run` was cancelled and the triggers drained)."""
