"""Who may fire cron ticks. Without Kubernetes every process leads.

Queue triggers run on every replica; cron ticks must fire once, so the cron connector
asks a :class:`Leadership` before it fires. The Kubernetes Lease implementation lives
in ``bridge.kube``; this module holds the contract and the single-process default.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol


class Leadership(Protocol):
    @property
    def is_leader(self) -> bool: ...

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(is_leader)`` whenever leadership is gained or lost."""

    async def wait_leader(self) -> None: ...


class AlwaysLeader:
    """The default: a lone process leads from the start."""

    is_leader = True

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Leadership never changes."""

    async def wait_leader(self) -> None:
        await asyncio.sleep(0)
