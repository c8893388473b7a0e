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
    """JSON lines, appended and (by default) fsynced before ``write`` returns."""

    def __init__(self, config: FileSinkConfig) -> None:
        self.path = config.path
        self._fsync = config.fsync
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Nothing to connect; a missing directory is reported on the first write."""

    async def write(self, record: DeadLetter) -> None:
        line = (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        async with self._lock:
            await asyncio.to_thread(self._append, line)

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view) :]
            if self._fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    async def close(self) -> None:
        """Every write is already on disk."""


def file_sink(config: DeadLetterConfig, trigger: ResolvedTrigger) -> FileSink:
    """Sink factory for ``dead_letter: {file: {...}}`` (see ``connectors.base.SINKS``)."""
    assert config.file is not None
    return FileSink(config.file)
