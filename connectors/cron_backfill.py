"""A backfill's bookkeeping: which ticks of the range to fire next, and what is settled.

Ticks are released in calendar order, at most ``window`` unsettled at a time (1 for
``BufferAll``: one after another; the trigger's concurrency for ``Allow``). Progress is
a watermark -- every tick up to ``done_until`` is settled -- plus the few ticks settled
beyond it while an earlier one still runs (``done_after``, at most ``window``). That is
what the state store keeps, so a resumed backfill releases exactly the ticks that were
not settled: nothing settled fires twice, and a tick in flight when the process died
fires again (with its usual id, which the function can de-duplicate).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

from bridge.cron_control import BackfillProgress
from bridge.events import Disposition, format_time
from bridge.schedule import Calendar


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Backfill:
    """One backfill of a trigger (see the module doc)."""

    def __init__(self, progress: BackfillProgress, calendar: Calendar, window: int) -> None:
        self.progress = progress
        self.window = 1 if progress.policy == "BufferAll" else max(1, window)
        self.in_flight: set[datetime] = set()
        self._done_after = {parse_time(t) for t in progress.done_after}
        done_until = None if progress.done_until is None else parse_time(progress.done_until)
        start = parse_time(progress.start)
        if done_until is not None:
            start = max(start, done_until + timedelta(microseconds=1))
        self._ticks: Iterator[datetime] | None = calendar.ticks(start, parse_time(progress.end))

    @property
    def running(self) -> bool:
        return self.progress.state == "running"

    def release(self) -> list[datetime]:
        """The next ticks to fire (none while ``window`` are unsettled)."""
        released: list[datetime] = []
        while self._ticks is not None and len(self.in_flight) < self.window:
            tick = next(self._ticks, None)
            if tick is None:
                self._ticks = None
                break
            if tick.astimezone(UTC) in self._done_after:
                continue  # settled before a restart, beyond the watermark
            self.in_flight.add(tick)
            released.append(tick)
        self._finish_if_done()
        return released

    def settled(self, tick: datetime, disposition: Disposition) -> None:
        """``tick`` settled: count it and move the watermark."""
        self.in_flight.discard(tick)
        progress = self.progress
        progress.settled += 1
        if disposition is Disposition.DELIVERED:
            progress.delivered += 1
        elif disposition is Disposition.DEAD_LETTERED:
            progress.dead_lettered += 1
        self._done_after.add(tick.astimezone(UTC))
        floor = min(self.in_flight) if self.in_flight else None
        below = sorted(t for t in self._done_after if floor is None or t < floor)
        if below:
            progress.done_until = format_time(below[-1])
            self._done_after.difference_update(below)
        progress.done_after = sorted(format_time(t) for t in self._done_after)
        self._finish_if_done()

    def cancel(self) -> None:
        self._ticks = None
        self.progress.state = "cancelled"
        self.progress.finished_at = format_time(datetime.now(UTC).replace(microsecond=0))

    def _finish_if_done(self) -> None:
        if self._ticks is None and not self.in_flight and self.running:
            self.progress.state = "done"
            self.progress.finished_at = format_time(datetime.now(UTC).replace(microsecond=0))
