"""Dead letters in a file sink (JSON lines): read, and remove the redriven ones safely.

The file is never edited while the redrive runs: the daemon may be appending to it
(the file sink holds ``flock`` for each append). Each settled record is written to a
*journal* next to it (``FILE.redrive-journal``: its line number and a digest of the
line, fsynced) the moment its redrive is done. At the end, the file is rewritten
without the journaled lines -- under the file sink's lock, to a temporary file that is
fsynced and renamed over it -- and the journal is removed. An append that waited for
the lock meanwhile goes to the new file (the file sink opens it again).

A crash (SIGKILL, power loss) at any point loses nothing and repeats little:

- before a record's journal entry is fsynced, the record is still in the file: the
  next run sends it again (at-least-once; functions de-duplicate on the CloudEvent id);
- after it, the next run first applies the journal it finds (the records an interrupted
  run settled are removed, and said so), then redrives the rest;
- a crash during the rewrite leaves either the old file and the journal (applied
  again), or the new file and a journal naming the old file (ignored: the journal
  records the file's identity, device and inode, and a rename changes it).

A line is only removed when its digest still matches, so a journal never removes a
record it did not settle. The journal is also the lock: a second redrive of the same
file at the same time is refused. Records appended after the redrive started are left
for the next run. A line that is not a dead letter (truncated by a crash, not JSON) is
reported with its line number and kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from functools import partial
from typing import BinaryIO

from bridge.config import FileSinkConfig
from bridge.deadletter import FileSink, Sink, replaced
from bridge.redrive.letters import NotALetter, from_json
from bridge.redrive.sources import Item, SourceError

JOURNAL_SUFFIX = ".redrive-journal"
_REWRITE_SUFFIX = ".redrive-tmp"
#: Bytes read from the file at a time (a longer line is read whole).
_CHUNK = 4 * 1024 * 1024

Done = tuple[int, str]


class FileLetters:
    """The records of a dead-letter file, present when the redrive opens it."""

    def __init__(self, path: str, dry_run: bool = False) -> None:
        self.path = path
        self.name = path
        self._real = os.path.realpath(path)
        self._journal_path = self._real + JOURNAL_SUFFIX
        self._dry_run = dry_run
        self._journal: int | None = None
        #: Bytes and lines of the file at open: the records of this run.
        self._size = 0
        self._lines = 0
        #: Settled this run (line, digest), and those of an interrupted run (dry run only).
        self._done: set[Done] = set()
        self._earlier: set[Done] = set()
        self._pending: list[bytes] = []
        self._flush = asyncio.Lock()
        #: Records an interrupted run had settled, removed by ``open``.
        self.recovered = 0

    @property
    def total(self) -> int | None:
        return self._lines

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        try:
            if os.path.isdir(self._real):
                raise SourceError(f"{self.path} is a directory, not a dead-letter file")
            identity = _identity(self._real)
        except OSError as err:
            raise SourceError(f"cannot read {self.path}: {err.strerror}") from None
        if self._dry_run:  # change nothing; skip what an interrupted run already settled
            self._earlier = _journaled(self._journal_path, identity)
        else:
            self._journal = _lock(self._journal_path, self.path)
            earlier = _entries(self._journal, identity)
            if earlier:
                self.recovered = _rewrite(self._real, earlier)
            _start_journal(self._journal, self._real)
        with open(self._real, "rb") as file:
            self._size = os.fstat(file.fileno()).st_size
            self._lines = _count_lines(file, self._size)

    async def items(self) -> AsyncIterator[Item]:
        offset, number = 0, 0
        while offset < self._size:
            lines, offset = await asyncio.to_thread(self._read, offset)
            for line in lines:
                number += 1
                if not line.strip():
                    continue
                digest = _digest(line)
                if (number, digest) in self._earlier:
                    continue
                position = f"{self.path}:{number}"
                settle = partial(self._settle, (number, digest))
                yield _item(position, line.rstrip(b"\n"), settle)

    def _read(self, offset: int) -> tuple[list[bytes], int]:
        """Whole lines from ``offset``; at the snapshot's end a line may lack its newline
        (torn by a crash: reported, kept)."""
        want, remaining = _CHUNK, self._size - offset
        with open(self._real, "rb") as file:
            while True:
                file.seek(offset)
                data = file.read(min(want, remaining))
                cut = data.rfind(b"\n") + 1
                if len(data) >= remaining or len(data) < min(want, remaining):
                    cut = len(data)  # the snapshot's end (or the file shrank under us)
                if cut:
                    return _split(data[:cut]), offset + cut
                want *= 2  # one line longer than the chunk

    async def _settle(self, line: Done, done: bool) -> None:
        """Journal a removed record (fsynced with whatever else is pending)."""
        if not done or self._journal is None:
            return
        self._done.add(line)
        self._pending.append(json.dumps({"line": line[0], "sha256": line[1]}).encode() + b"\n")
        async with self._flush:
            if not self._pending:
                return  # an earlier flush wrote ours
            batch, self._pending = self._pending, []
            await asyncio.to_thread(_append, self._journal, b"".join(batch))

    def back_sink(self) -> Sink:
        return FileSink(FileSinkConfig(path=self.path))

    async def close(self) -> None:
        journal, self._journal = self._journal, None
        if journal is None:
            return
        try:
            if self._done:
                await asyncio.to_thread(_rewrite, self._real, self._done)
            with contextlib.suppress(OSError):
                os.unlink(self._journal_path)  # still locked: nobody else uses it
        finally:
            os.close(journal)


def _item(position: str, line: bytes, settle: Callable[[bool], Awaitable[None]]) -> Item:
    try:
        return Item(position, from_json(json.loads(line.decode("utf-8")), position), settle)
    except UnicodeDecodeError:
        return Item(position, None, settle, "not UTF-8 text")
    except json.JSONDecodeError as err:
        text = line.strip()
        truncated = "truncated? " if text.startswith(b"{") and not text.endswith(b"}") else ""
        where = "column" if err.msg.endswith(" at") else "at column"
        return Item(position, None, settle,
                    f"not a JSON line ({truncated}{err.msg} {where} {err.colno})")
    except NotALetter as err:
        return Item(position, None, settle, f"not a dead-letter record: {err}")


# --- the journal ----------------------------------------------------------------------


def _identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _lock(path: str, name: str) -> int:
    """Open and lock the journal (a second redrive of the file is refused)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as err:
            raise SourceError(f"cannot create {path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SourceError(
                f"another redrive is working on {name} ({path} is locked)"
            ) from None
        if not replaced(path, fd):
            return fd
        os.close(fd)  # removed by the run that just ended: take the next one


def _entries(fd: int, identity: tuple[int, int]) -> set[Done]:
    """The settled records a journal lists, if it is about the file as it is now."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return _parse_journal(b"".join(chunks), identity)


def _journaled(path: str, identity: tuple[int, int]) -> set[Done]:
    try:
        with open(path, "rb") as file:
            return _parse_journal(file.read(), identity)
    except FileNotFoundError:
        return set()


def _parse_journal(data: bytes, identity: tuple[int, int]) -> set[Done]:
    lines = data.split(b"\n")
    try:
        header = json.loads(lines[0])
        if (header["dev"], header["ino"]) != identity:
            return set()  # about a file since replaced (the rewrite was done)
    except (ValueError, KeyError, TypeError):
        return set()
    done: set[Done] = set()
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            done.add((int(entry["line"]), str(entry["sha256"])))
        except (ValueError, KeyError, TypeError):
            continue  # torn by a crash: that record is sent again (at-least-once)
    return done


def _start_journal(fd: int, path: str) -> None:
    dev, ino = _identity(path)
    os.ftruncate(fd, 0)
    _append(fd, json.dumps({"file": path, "dev": dev, "ino": ino}).encode() + b"\n")
    _fsync_directory(os.path.dirname(path))


def _append(fd: int, data: bytes) -> None:
    os.lseek(fd, 0, os.SEEK_END)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


# --- the file ---------------------------------------------------------------------------


def _rewrite(path: str, done: Collection[Done]) -> int:
    """Rewrite ``path`` without the ``done`` lines (under the file sink's lock, atomically
    by rename); returns how many were removed."""
    while True:
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if replaced(path, fd):
                continue
            data = _read_all(fd)
            lines = _split(data)
            kept = [line for n, line in enumerate(lines, 1) if (n, _digest(line)) not in done]
            removed = len(lines) - len(kept)
            if removed:
                _replace(path, b"".join(kept), os.fstat(fd).st_mode)
            return removed
        finally:
            os.close(fd)


def _replace(path: str, content: bytes, mode: int) -> None:
    temporary = path + _REWRITE_SUFFIX
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode & 0o7777)
    try:
        os.fchmod(fd, mode & 0o7777)
        _append(fd, content)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    _fsync_directory(os.path.dirname(path))


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _split(data: bytes) -> list[bytes]:
    """Lines with their newline (only ``\\n`` ends a line); a last one may lack it."""
    parts = data.split(b"\n")
    lines = [part + b"\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _digest(line: bytes) -> str:
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def _count_lines(file: BinaryIO, size: int) -> int:
    count, read, last = 0, 0, b"\n"
    while read < size:
        chunk = file.read(min(1 << 20, size - read))
        if not chunk:
            break
        count += chunk.count(b"\n")
        read += len(chunk)
        last = chunk[-1:]
    return count + (last != b"\n")


def _fsync_directory(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
