"""Dead-letter records (DESIGN section 6) and the sinks that store them.

A :class:`DeadLetter` keeps the original body, key and headers plus the ``bridge-*``
facts (trigger, function, error, attempts, last status, source) and the CloudEvent
attributes: enough to redrive it later. A :class:`Sink` write either completes (the
record is durably stored: fsynced, acked by the broker) or raises; the dispatcher only
settles the source message after a completed write, and retries failed writes.

The file sink lives here; the Kafka and RabbitMQ sinks live in their connectors and are
found through ``connectors.base``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from bridge.config import DeadLetterConfig, FileSinkConfig, ResolvedTrigger
from bridge.events import Event, format_time
from bridge.outcome import Outcome


@dataclass(frozen=True, slots=True)
class DeadLetter:
    trigger: str
    function: str
    error: str
    error_detail: str
    attempts: int
    last_status: int | None
    source: str
    body: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    cloudevent: dict[str, str] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    @classmethod
    def of(cls, event: Event, function: str, outcome: Outcome, attempts: int) -> DeadLetter:
        return cls(
            trigger=event.trigger,
            function=function,
            error=outcome.reason,
            error_detail=outcome.detail,
            attempts=attempts,
            last_status=outcome.status,
            source=event.origin,
            body=event.data,
            key=event.key,
            headers=event.headers,
            cloudevent=event.ce_attributes(),
        )

    def bridge_headers(self) -> list[tuple[str, str]]:
        """The ``bridge-*`` headers, values made single-line for any transport."""
        pairs = [
            ("bridge-trigger", self.trigger),
            ("bridge-function", self.function),
            ("bridge-error", self.error),
            ("bridge-error-detail", self.error_detail),
            ("bridge-attempts", str(self.attempts)),
            ("bridge-last-status", "" if self.last_status is None else str(self.last_status)),
            ("bridge-source", self.source),
            ("bridge-dead-lettered-at", format_time(self.time)),
        ]
        return [(k, v.replace("\r", " ").replace("\n", " ")) for k, v in pairs]

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = dict(self.bridge_headers())
        record["bridge-attempts"] = self.attempts
        record["bridge-last-status"] = self.last_status
        record["cloudevent"] = self.cloudevent
        record["key"] = _b64(self.key)
        record["headers"] = [[name, _b64(value)] for name, value in self.headers]
        record["body"] = _b64(self.body)
        return record


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


class Sink(Protocol):
    """Where dead letters go. ``write`` returns only once the record is stored."""

    async def start(self) -> None: ...

    async def write(self, record: DeadLetter) -> None: ...

    async def close(self) -> None: ...


class FileSink:
    """JSON lines, appended and (by default) fsynced before ``write`` returns.

    Durable and whole: the file and, when this sink created it, its directory entry
    are fsynced before ``write`` returns (a new file's name survives a power loss too).
    A failed or partial write (``ENOSPC`` after half a record, a failed fsync) is
    truncated back to the size before it, so no torn line stays behind for a reader or
    the next record; a file that does not end in a newline (a record torn by a crash)
    gets the next record on a new line. Appends hold ``flock`` on the file, so writers
    in other threads or processes never see each other's half-written or taken-back
    records.
    """

    def __init__(self, config: FileSinkConfig) -> None:
        self.path = config.path
        self._fsync = config.fsync
        self._lock = asyncio.Lock()
        #: The directory is fsynced once per sink (and whenever this sink creates the file).
        self._dir_synced = False

    async def start(self) -> None:
        """Nothing to connect; a missing directory is reported on the first write."""

    async def write(self, record: DeadLetter) -> None:
        line = (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: bytes) -> None:
        fd, created = _open_for_append(self.path)
        try:
            if self._fsync and (created or not self._dir_synced):
                _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
                self._dir_synced = True
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a record torn by a crash before: start a new line
            try:
                _write_all(fd, line)
                if self._fsync:
                    os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # take the partial record back
                raise
        finally:
            os.close(fd)  # also releases the flock

    async def close(self) -> None:
        """Every write is already on disk."""


def _open_for_append(path: str) -> tuple[int, bool]:
    """(fd, created): read-write (to see the last byte) and append-only writes."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        return os.open(path, flags | os.O_EXCL, 0o640), True
    except FileExistsError:
        return os.open(path, flags, 0o640), False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sink(config: DeadLetterConfig, trigger: ResolvedTrigger) -> FileSink:
    """Sink factory for ``dead_letter: {file: {...}}`` (see ``connectors.base.SINKS``)."""
    assert config.file is not None
    return FileSink(config.file)
