"""Who may fire cron ticks. Without Kubernetes every process leads.

Queue triggers run on every replica; cron ticks must fire once, so the cron connector
asks a :class:`Leadership` before it fires: the one :meth:`Leadership.for_trigger`
gives for its trigger (its ``context.leadership``). One Lease decides for all
triggers, or (cron shards) each trigger's shard Lease decides for it. The Kubernetes
Lease implementation lives in ``bridge.kube``; this module holds the contract and the
single-process default.

Lifecycle, driven by the runtime: ``run()`` under its supervisor (task ``leadership``)
from when the triggers are started; ``stop_leading()`` when a stop begins (intake
stops: no tick fires any more, but a Lease stays held and renewed so no other replica
starts a run while ours drain); then, after the triggers drained, the ``run()`` task is
cancelled and ``close()`` releases the Lease.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool:
        """True while this process may fire cron ticks."""

    @property
    def handover_since(self) -> datetime | None:
        """From when the previous leader may have stopped firing, on the last gain of
        leadership: its last Lease renewal (or, after a graceful stop, the moment it
        stopped firing). None when nothing is known (a new Lease, a single process)."""

    @property
    def handover_window(self) -> timedelta:
        """How long before a gain of leadership the previous leader can have stopped
        firing unnoticed in a handover: lease duration + renew deadline + retry period.
        A tick older than this is no handover's, whatever ``handover_since`` says (a
        Lease left behind days ago): it follows the restart rule instead."""

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(is_leader)`` whenever leadership is gained or lost."""

    def for_trigger(self, name: str) -> Leadership:
        """The leadership that decides for trigger ``name``: this one, or (cron shards)
        the Lease of the trigger's shard. Connectors get it as ``context.leadership``."""

    async def wait_leader(self) -> None: ...

    async def run(self) -> None:
        """Keep leadership current (renew a Lease) until cancelled."""

    def stop_leading(self) -> None:
        """Fire nothing more from now on; keep any Lease until :meth:`stop`."""

    def note_unfired(self, scheduled: datetime) -> None:
        """A tick due at ``scheduled`` was not fired here because we did not lead (a
        stop may hand it to the next leader)."""

    async def close(self) -> None:
        """Give leadership up for good (release the Lease); after ``run`` was cancelled."""


class AlwaysLeader:
    """The default: a lone process leads from the start until it stops."""

    handover_since: datetime | None = None
    handover_window = timedelta(0)

    def __init__(self) -> None:
        self.is_leader = True

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Leadership changes only at the stop, when nothing listens any more."""

    def for_trigger(self, name: str) -> AlwaysLeader:
        return self

    async def wait_leader(self) -> None:
        await asyncio.sleep(0)

    async def run(self) -> None:
        """Nothing to renew: waits until cancelled."""
        await asyncio.Event().wait()

    def stop_leading(self) -> None:
        self.is_leader = False

    def note_unfired(self, scheduled: datetime) -> None:
        """No other process takes over."""

    async def close(self) -> None:
        self.is_leader = False
