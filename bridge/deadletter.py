"""Dead-letter records (DESIGN section 6) and the sinks that store them.

A :class:`DeadLetter` keeps the original body, key and headers plus the ``bridge-*``
facts (trigger, function, error, attempts, last status, source) and the CloudEvent
attributes: enough to redrive it later. A :class:`Sink` write either completes (the
record is durably stored: fsynced, acked by the broker) or raises; the dispatcher only
settles the source message after a completed write, and retries failed writes.

A sink tells a refusal for good from a passing failure: it raises :class:`SinkRefused`
when no retry can store this record as things are (unknown exchange or topic, record
too large, access refused), anything else when a retry may (broker down, timeout). The
dispatcher then writes to the trigger's ``dead_letter.fallback``, or shows the event
as blocked.

Sinks are shared by the triggers whose sink settings are the same; :func:`sink_key`
tells them apart by their real values, secrets included (never by a masked dump).

The file sink lives here; the Kafka and RabbitMQ sinks live in their connectors and are
found through ``connectors.base``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from pydantic import BaseModel, SecretStr

from bridge.config import FileSinkConfig, ReplyConfig, ResolvedTrigger, SinkConfig
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
    #: Set on a record written to ``dead_letter.fallback``: why the sink refused it.
    refused: str = ""
    #: More ``bridge-*`` facts as (name, JSON text), e.g. a redrive's attempt history
    #: (``bridge-redrive-attempts``, ``bridge-redrive-history``; see bridge.redrive).
    history: tuple[tuple[str, str], ...] = ()

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
            history=event.history,
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
        if self.refused:
            pairs.append(("bridge-sink-refused", self.refused))
        pairs.extend(self.history)
        return [(k, v.replace("\r", " ").replace("\n", " ")) for k, v in pairs]

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = dict(self.bridge_headers())
        record["bridge-attempts"] = self.attempts
        record["bridge-last-status"] = self.last_status
        for name, text in self.history:  # JSON texts as headers, values in a file record
            record[name] = json.loads(text)
        record["cloudevent"] = self.cloudevent
        record["key"] = _b64(self.key)
        record["headers"] = [[name, _b64(value)] for name, value in self.headers]
        record["body"] = _b64(self.body)
        return record


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


class SinkRefused(Exception):
    """The sink refuses this record for good: retrying the same write cannot store it.

    The message is the broker's reason, one line and secret-free.
    """


def sink_key(config: SinkConfig | ReplyConfig, trigger: ResolvedTrigger) -> str:
    """What identifies a sink (or a reply's target): a digest of its real settings
    (secrets revealed) and, for a sink that borrows the trigger's own connection (same
    kind), the source's.

    Two triggers get one sink (one connection) exactly when these are equal: RabbitMQ
    URLs that differ only in host, virtual host or password are different sinks, and a
    rotated password is a new sink. Only the digest is kept; it is never logged.
    """
    inherited = trigger.config.source if config.kind == trigger.config.kind else None
    parts = [config.kind, _revealed(config), None if inherited is None else _revealed(inherited)]
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _revealed(value: Any) -> Any:
    """``value`` as plain data with every secret's real value (never masked)."""
    if isinstance(value, BaseModel):
        return {name: _revealed(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, dict):
        return {str(k): _revealed(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = [_revealed(v) for v in value]
        return sorted(items, key=repr) if isinstance(value, set | frozenset) else items
    return value


class Sink(Protocol):
    """Where dead letters go. ``write`` returns only once the record is stored; it raises
    :class:`SinkRefused` for a refusal for good, any other exception for a failure a
    retry may overcome."""

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
    records. A file replaced while an append waited for the lock (``trigger-bridge
    redrive`` renames its rewrite over the file while holding the lock) is opened
    again, so no record lands in the unlinked old file.
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
            try:
                await asyncio.to_thread(self._append, line)
            except OSError as err:
                if err.errno in _REFUSALS:  # not a full disk or a volume not mounted yet
                    raise SinkRefused(f"cannot write {self.path}: {err.strerror}") from None
                raise

    def _append(self, line: bytes) -> None:
        while True:
            fd, created = _open_for_append(self.path)
            try:
                if self._fsync and (created or not self._dir_synced):
                    _fsync_directory(os.path.dirname(os.path.abspath(self.path)))
                    self._dir_synced = True
                fcntl.flock(fd, fcntl.LOCK_EX)
                if replaced(self.path, fd):
                    continue  # rewritten while we waited for the lock: append to the new file
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
                return
            finally:
                os.close(fd)  # also releases the flock

    async def close(self) -> None:
        """Every write is already on disk."""


#: File errors no retry overcomes until someone changes the path, its permissions or the
#: mount (``ENOENT``, ``ENOSPC``, ``EIO`` may pass: a volume mounted late, space freed).
_REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR,
                       errno.ENAMETOOLONG, errno.EFBIG})


def _open_for_append(path: str) -> tuple[int, bool]:
    """(fd, created): read-write (to see the last byte) and append-only writes."""
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
    try:
        return os.open(path, flags | os.O_EXCL, 0o640), True
    except FileExistsError:
        return os.open(path, flags, 0o640), False


def replaced(path: str, fd: int) -> bool:
    """True when ``path`` no longer names the file open as ``fd``: ``trigger-bridge
    redrive`` swapped in a rewritten file (under this same lock) or it was removed."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return True
    opened = os.fstat(fd)
    return (named.st_ino, named.st_dev) != (opened.st_ino, opened.st_dev)


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


def file_sink(config: SinkConfig, trigger: ResolvedTrigger) -> FileSink:
    """Sink factory for ``dead_letter: {file: {...}}`` (see ``connectors.base.SINKS``)."""
    assert config.file is not None
    return FileSink(config.file)
