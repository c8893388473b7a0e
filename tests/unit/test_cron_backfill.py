"""A backfill's bookkeeping (connectors/cron_backfill.py) and the file state store: what
is released, the watermark, and what a resumed backfill fires."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from bridge.cron_control import BackfillProgress, FileStateStore
from bridge.events import Disposition
from bridge.schedule import Calendar, parse_schedule
from connectors.cron_backfill import Backfill

HOURLY = Calendar(parse_schedule("0 * * * *"))


def hour(h: int) -> datetime:
    return datetime(2026, 1, 1, h, tzinfo=UTC)


def progress(policy: str = "BufferAll") -> BackfillProgress:
    return BackfillProgress("t", "2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z", policy=policy,
                            total=6)


def test_buffer_all_releases_one_tick_after_another() -> None:
    backfill = Backfill(progress(), HOURLY, window=10)
    assert backfill.release() == [hour(0)]
    assert backfill.release() == []  # the first is not settled yet
    backfill.settled(hour(0), Disposition.DELIVERED)
    assert backfill.progress.done_until == "2026-01-01T00:00:00Z"
    assert backfill.release() == [hour(1)]


def test_allow_keeps_the_ticks_settled_beyond_the_watermark() -> None:
    backfill = Backfill(progress("Allow"), HOURLY, window=3)
    assert backfill.release() == [hour(0), hour(1), hour(2)]
    backfill.settled(hour(2), Disposition.DELIVERED)
    backfill.settled(hour(1), Disposition.DEAD_LETTERED)
    assert backfill.progress.done_until is None  # hour 0 still runs
    assert backfill.progress.done_after == ["2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z"]
    # a restart now: the resumed backfill fires hour 0 (in flight) and 3.., not 1 or 2
    resumed = Backfill(BackfillProgress.from_json(backfill.progress.to_json()), HOURLY, 3)
    assert resumed.release() == [hour(0), hour(3), hour(4)]
    backfill.settled(hour(0), Disposition.DELIVERED)
    assert backfill.progress.done_until == "2026-01-01T02:00:00Z"
    assert backfill.progress.done_after == []
    assert (backfill.progress.settled, backfill.progress.delivered,
            backfill.progress.dead_lettered) == (3, 2, 1)


def test_a_backfill_is_done_when_every_tick_settled() -> None:
    backfill = Backfill(progress(), HOURLY, window=1)
    for h in range(6):
        assert backfill.release() == [hour(h)]
        backfill.settled(hour(h), Disposition.DELIVERED)
    assert backfill.running
    assert backfill.release() == []
    assert backfill.progress.state == "done"
    assert backfill.progress.finished_at is not None


async def test_file_state_store_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStateStore(str(path))
    assert await store.load("a") == {}
    await store.save("a", {"paused": {"event_id": "a/x"}})
    await store.save("b", {"backfill": {"state": "running"}})
    assert json.loads(path.read_text()) == {"a": {"paused": {"event_id": "a/x"}},
                                            "b": {"backfill": {"state": "running"}}}
    await store.save("a", {})
    again = FileStateStore(str(path))  # a new process reads what the last one wrote
    assert await again.load("a") == {}
    assert await again.load("b") == {"backfill": {"state": "running"}}
    assert not (tmp_path / ".state.json.tmp").exists()
