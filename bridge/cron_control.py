"""Acting on a cron trigger from outside its schedule: run now, backfill, pause, resume.

The seam between the engine (the admin server's control endpoints, Trigger-resource
annotations) and the cron connector, which implements :class:`ScheduleControl` and
does every action on the replica that leads the trigger (its ``context.leadership``),
so the cron Lease -- or the trigger's shard Lease -- decides who acts.

What a trigger must remember across a restart or a leader change (a paused trigger, a
backfill's progress) is kept in a :class:`CronStateStore`, one small JSON document per
trigger: :class:`MemoryStateStore` (a single process without ``BRIDGE_STATE_FILE``: no
durability), :class:`FileStateStore` (``BRIDGE_STATE_FILE``: one process that restarts)
or, with leader election, annotations on a Lease every replica reads
(:mod:`bridge.kube.cron_state`).
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Protocol

#: A backfill refused above this many ticks (the count and a hint are in the refusal).
MAX_BACKFILL_TICKS = 1_000_000

BackfillPolicy = Literal["BufferAll", "Allow"]
BACKFILL_POLICIES: tuple[str, ...] = ("BufferAll", "Allow")


class ControlError(Exception):
    """An action refused; ``status`` is the HTTP status the control endpoint answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ManualRun:
    """A run-now accepted: the event id it fires with and the request time (ce-time)."""

    trigger: str
    event_id: str
    time: str


@dataclass(slots=True)
class BackfillProgress:
    """A backfill of ``[start, end]``: what it fired and settled so far.

    Durable as it goes (see :class:`CronStateStore`): ``done_until`` is the scheduled
    time up to which every tick is settled; ``done_after`` the ticks settled beyond it
    (out of order, with ``Allow``). A resumed backfill fires every tick after
    ``done_until`` that is not in ``done_after``, so nothing settled fires twice.
    """

    trigger: str
    start: str
    end: str
    policy: str = "BufferAll"
    total: int = 0
    #: True when ``total`` was counted tick by tick; else an estimate from the density.
    exact: bool = True
    settled: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    state: Literal["running", "done", "cancelled"] = "running"
    done_until: str | None = None
    done_after: list[str] = field(default_factory=list)
    started_at: str = ""
    finished_at: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BackfillProgress:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    @property
    def summary(self) -> str:
        total = f"{self.total}" if self.exact else f"~{self.total}"
        return (f"backfill {self.start} .. {self.end} ({self.policy}): {self.state}, "
                f"{self.settled}/{total} settled ({self.delivered} delivered, "
                f"{self.dead_lettered} dead-lettered)")


class ScheduleControl(Protocol):
    """What can be done to a running cron trigger (on the replica leading it).

    Each method raises :class:`ControlError` when refused: 409 when this replica does
    not lead the trigger (another one does: ask it), 400 for a bad request.
    """

    @property
    def leads(self) -> bool:
        """True while the trigger runs and this replica leads it (may act)."""

    def run_now(self, requested: datetime) -> ManualRun:
        """Fire once now with the trigger's data (id ``<trigger>/manual/<time>``)."""

    async def backfill(
        self, start: datetime, end: datetime, policy: BackfillPolicy = "BufferAll"
    ) -> BackfillProgress:
        """Fire every tick scheduled in ``[start, end]`` with its own time and id."""

    @property
    def backfill_progress(self) -> BackfillProgress | None:
        """The current (or last) backfill, if any."""

    async def cancel_backfill(self) -> BackfillProgress | None:
        """Stop releasing the running backfill's ticks (None if none runs)."""

    async def resume(self) -> bool:
        """Resume a trigger paused after a failure; False if it was not paused."""

    @property
    def paused(self) -> str | None:
        """Why the trigger is paused (the dead-lettered event), or None."""


class CronStateStore(Protocol):
    """One JSON document per trigger that outlives the process (see the module doc)."""

    @property
    def durable(self) -> bool:
        """False when nothing survives a restart (the log says so at a backfill)."""

    async def load(self, trigger: str) -> dict[str, Any]:
        """The trigger's document ({} if none)."""

    async def save(self, trigger: str, state: dict[str, Any]) -> None:
        """Replace the trigger's document ({} removes it); raises OSError or the
        store's error when it could not be written."""


class MemoryStateStore:
    """Kept in the process only."""

    durable = False

    def __init__(self) -> None:
        self._states: dict[str, dict[str, Any]] = {}

    async def load(self, trigger: str) -> dict[str, Any]:
        return dict(self._states.get(trigger, {}))

    async def save(self, trigger: str, state: dict[str, Any]) -> None:
        if state:
            self._states[trigger] = dict(state)
        else:
            self._states.pop(trigger, None)


class FileStateStore:
    """A JSON file ``{trigger: document}``, replaced atomically on each save (a write
    to a temporary file, fsync, rename): a crash leaves the old or the new file. The
    process is its only writer: it is read once, then served from memory."""

    durable = True

    def __init__(self, path: str) -> None:
        self._path = Path(path)
        self._lock = asyncio.Lock()
        self._data: dict[str, Any] | None = None

    async def load(self, trigger: str) -> dict[str, Any]:
        async with self._lock:
            data = await self._loaded()
        return dict(data.get(trigger, {}))

    async def save(self, trigger: str, state: dict[str, Any]) -> None:
        async with self._lock:
            data = dict(await self._loaded())
            if state:
                data[trigger] = state
            else:
                data.pop(trigger, None)
            await asyncio.to_thread(self._write, data)
            self._data = data

    async def _loaded(self) -> dict[str, Any]:
        if self._data is None:
            self._data = await asyncio.to_thread(self._read)
        return self._data

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            raise OSError(f"{self._path}: not a JSON document") from None
        return data if isinstance(data, dict) else {}

    def _write(self, data: dict[str, Any]) -> None:
        temporary = self._path.with_name(f".{self._path.name}.tmp")
        with temporary.open("w", encoding="utf-8") as out:
            json.dump(data, out, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        temporary.replace(self._path)
