"""Dead-letter records (DESIGN section 6) and the file sink."""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import os
import stat
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.config import DeadLetterConfig, FileSinkConfig, parse_config
from bridge.deadletter import DeadLetter, FileSink, SinkRefused, file_sink
from bridge.events import Event
from bridge.outcome import Outcome, OutcomeKind


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sample_event(body: bytes = b'{"order": 1042}') -> Event:
    return Event(
        trigger="orders", id="orders/3/1042", source="kafka://cluster/orders",
        type="dev.triggerbridge.kafka.record", data=body, content_type="application/json",
        time=datetime(2026, 3, 8, 7, 30, tzinfo=UTC), subject="order-1042",
        extensions={"partitionkey": "customer-7"}, origin="orders/3/1042",
        key=b"customer-7", headers=(("trace", b"abc"), ("raw", b"\xff\x00\xfe")),
    )


def sample_record(body: bytes = b'{"order": 1042}') -> DeadLetter:
    outcome = Outcome(OutcomeKind.PERMANENT, "http_422", status=422, detail="bad\r\norder")
    return DeadLetter.of(sample_event(body), "billing", outcome, attempts=1)


def test_record_from_event_and_outcome() -> None:
    record = sample_record()
    assert (record.trigger, record.function, record.error) == ("orders", "billing", "http_422")
    assert (record.attempts, record.last_status, record.source) == (1, 422, "orders/3/1042")
    assert record.body == b'{"order": 1042}'
    assert record.key == b"customer-7"
    assert record.headers == (("trace", b"abc"), ("raw", b"\xff\x00\xfe"))
    assert record.cloudevent == {
        "specversion": "1.0", "id": "orders/3/1042", "source": "kafka://cluster/orders",
        "type": "dev.triggerbridge.kafka.record", "time": "2026-03-08T07:30:00Z",
        "subject": "order-1042", "datacontenttype": "application/json",
        "partitionkey": "customer-7",
    }


def test_bridge_headers_are_single_line() -> None:
    headers = dict(sample_record().bridge_headers())
    assert headers["bridge-trigger"] == "orders"
    assert headers["bridge-function"] == "billing"
    assert headers["bridge-error"] == "http_422"
    assert headers["bridge-error-detail"] == "bad  order"
    assert headers["bridge-attempts"] == "1"
    assert headers["bridge-last-status"] == "422"
    assert headers["bridge-source"] == "orders/3/1042"
    assert headers["bridge-dead-lettered-at"].endswith("Z")


def test_no_status_is_an_empty_header_and_null_in_json() -> None:
    outcome = Outcome(OutcomeKind.RETRYABLE, "timeout", detail="no response within 1s")
    record = DeadLetter.of(sample_event(), "billing", outcome, attempts=5)
    assert dict(record.bridge_headers())["bridge-last-status"] == ""
    assert record.to_json()["bridge-last-status"] is None
    assert record.to_json()["bridge-attempts"] == 5


async def test_file_sink_writes_one_json_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    sink = FileSink(FileSinkConfig(path=str(path)))
    await sink.start()
    await sink.write(sample_record())
    await sink.write(sample_record(body=b"\x00\x01binary"))
    await sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {
        "bridge-trigger", "bridge-function", "bridge-error", "bridge-error-detail",
        "bridge-attempts", "bridge-last-status", "bridge-source", "bridge-dead-lettered-at",
        "cloudevent", "key", "headers", "body",
    }
    assert first["bridge-trigger"] == "orders"
    assert first["bridge-function"] == "billing"
    assert first["bridge-error"] == "http_422"
    assert first["bridge-error-detail"] == "bad  order"
    assert first["bridge-attempts"] == 1
    assert first["bridge-last-status"] == 422
    assert first["bridge-source"] == "orders/3/1042"
    assert first["cloudevent"]["id"] == "orders/3/1042"
    assert first["body"] == b64(b'{"order": 1042}')
    assert first["key"] == b64(b"customer-7")
    assert first["headers"] == [["trace", b64(b"abc")], ["raw", b64(b"\xff\x00\xfe")]]
    assert base64.b64decode(second["body"]) == b"\x00\x01binary"
    datetime.fromisoformat(first["bridge-dead-lettered-at"])


async def test_record_without_key_or_headers(tmp_path: Path) -> None:
    event = Event(trigger="nightly", id="nightly/2026-03-08T02:00:00Z", source="cron", type="t",
                  data=b"", origin="0 2 * * *")
    record = DeadLetter.of(event, "report", Outcome(OutcomeKind.PERMANENT, "http_400", 400), 1)
    path = tmp_path / "dead.jsonl"
    await FileSink(FileSinkConfig(path=str(path), fsync=False)).write(record)
    line = json.loads(path.read_text())
    assert (line["key"], line["headers"], line["body"]) == (None, [], "")
    assert line["bridge-source"] == "0 2 * * *"


async def test_file_sink_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    path.write_text('{"earlier": true}\n')
    await FileSink(FileSinkConfig(path=str(path))).write(sample_record())
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": True}
    assert json.loads(lines[1])["bridge-trigger"] == "orders"


async def test_concurrent_writes_do_not_interleave(tmp_path: Path) -> None:
    """Many writers, large records, two sinks on one file (two triggers sharing defaults)."""
    path = tmp_path / "dead.jsonl"
    sinks = [FileSink(FileSinkConfig(path=str(path), fsync=False)) for _ in range(2)]
    bodies = [bytes([i % 251]) * (20_000 + i) for i in range(60)]
    writes = [sinks[i % 2].write(sample_record(body)) for i, body in enumerate(bodies)]
    await asyncio.gather(*writes)

    def more(offset: int) -> None:  # plain threads too: O_APPEND keeps each line whole
        sink = FileSink(FileSinkConfig(path=str(path), fsync=False))
        for i in range(10):
            asyncio.run(sink.write(sample_record(bytes([offset]) * (30_000 + i))))

    threads = [threading.Thread(target=more, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]
    assert len(records) == 60 + 30
    written = sorted(len(base64.b64decode(r["body"])) for r in records)
    expected = sorted([len(b) for b in bodies] + [30_000 + i for i in range(10)] * 3)
    assert written == expected


@pytest.mark.parametrize("where", ["missing-dir", "is-a-directory"])
async def test_unwritable_path_raises(tmp_path: Path, where: str) -> None:
    path = tmp_path / "no" / "such" / "dir" / "dead.jsonl" if where == "missing-dir" else tmp_path
    sink = FileSink(FileSinkConfig(path=str(path)))
    await sink.start()  # does not fail: the first write reports the problem
    # A missing directory may be a volume mounted late (retried); a directory in the
    # file's place is a refusal for good (the dispatcher's fallback or blocked state).
    expected = OSError if where == "missing-dir" else SinkRefused
    with pytest.raises(expected) as caught:
        await sink.write(sample_record())
    if where == "is-a-directory":
        assert str(caught.value) == f"cannot write {tmp_path}: Is a directory"
    # the sink is still usable once the path works (the dispatcher retries the write)
    if where == "missing-dir":
        path.parent.mkdir(parents=True)
        await sink.write(sample_record())
        assert len(path.read_text().splitlines()) == 1


def test_factory_builds_a_file_sink_from_config() -> None:
    config = parse_config(
        "defaults: {dead_letter: {file: {path: /tmp/x.jsonl, fsync: false}}}\n"
        "functions: {f: {url: 'http://a/'}}\n"
        "triggers: [{name: t, function: f, cron: {schedule: '@daily'}}]\n",
        env={},
    )
    resolved = config.resolve(config.triggers[0])
    assert resolved.dead_letter is not None
    sink = file_sink(resolved.dead_letter, resolved)
    assert isinstance(sink, FileSink)
    assert sink.path == "/tmp/x.jsonl"
    assert DeadLetterConfig(file=FileSinkConfig(path="p")).kind == "file"


# --- durability and whole lines (issue 15, item 7) ---------------------------------------


def _fsync_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Record every fsync as (path, is-a-directory); the real fsync still runs."""
    synced: list[tuple[str, bool]] = []
    real = os.fsync

    def spy(fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((path, stat.S_ISDIR(os.fstat(fd).st_mode)))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return synced


async def test_a_new_file_is_fsynced_with_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _fsync_spy(monkeypatch)
    path = tmp_path / "dead.jsonl"
    await FileSink(FileSinkConfig(path=str(path))).write(sample_record())
    assert (str(tmp_path), True) in synced, "the new file's directory entry is on disk"
    assert (str(path), False) in synced
    assert synced.index((str(tmp_path), True)) < synced.index((str(path), False))


async def test_without_fsync_nothing_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _fsync_spy(monkeypatch)
    await FileSink(FileSinkConfig(path=str(tmp_path / "d.jsonl"), fsync=False)).write(
        sample_record())
    assert synced == []


async def test_a_short_write_then_enospc_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dead.jsonl"
    sink = FileSink(FileSinkConfig(path=str(path)))
    await sink.write(sample_record(b"first"))
    before = path.read_bytes()
    real_write = os.write
    calls = 0

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        nonlocal calls
        calls += 1
        if calls == 1:
            return real_write(fd, bytes(data)[: len(data) // 2])  # a short write ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(os, "write", short_then_full)
    with pytest.raises(OSError, match="No space left"):
        await sink.write(sample_record(b"x" * 10_000))
    monkeypatch.setattr(os, "write", real_write)
    assert calls == 2
    assert path.read_bytes() == before, "the half record was taken back"
    await sink.write(sample_record(b"third"))  # the retry
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [base64.b64decode(r["body"]) for r in records] == [b"first", b"third"]


async def test_a_failed_fsync_takes_the_record_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dead.jsonl"
    sink = FileSink(FileSinkConfig(path=str(path)))
    await sink.write(sample_record(b"first"))
    before = path.read_bytes()

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output"):
        await sink.write(sample_record(b"second"))
    assert path.read_bytes() == before  # not stored, so not left behind to be duplicated


async def test_a_torn_last_line_gets_the_next_record_on_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dead.jsonl"
    path.write_bytes(b'{"earlier": true}\n{"bridge-trigger": "orders", "bo')  # crash mid-write
    await FileSink(FileSinkConfig(path=str(path))).write(sample_record(b"after"))
    lines = path.read_text().split("\n")
    assert lines[0] == '{"earlier": true}'
    assert lines[1] == '{"bridge-trigger": "orders", "bo'
    assert base64.b64decode(json.loads(lines[2])["body"]) == b"after"
    assert lines[3:] == [""]


async def test_an_append_waiting_for_the_lock_goes_to_the_file_that_replaced_it(
    tmp_path: Path,
) -> None:
    """``trigger-bridge redrive`` rewrites a dead-letter file and renames the rewrite over
    it while holding the file's flock: an append that opened the old file and waited for
    the lock must land in the new file, not in the unlinked old one (lost)."""
    import fcntl

    path = tmp_path / "dead.jsonl"
    path.write_text('{"old": 1}\n')
    holder = os.open(path, os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    write = asyncio.create_task(FileSink(FileSinkConfig(path=str(path))).write(sample_record()))
    await asyncio.sleep(0.2)  # the append has opened the old file and waits for the lock
    assert not write.done()
    rewrite = tmp_path / "dead.jsonl.tmp"
    rewrite.write_text('{"kept": 1}\n')
    os.rename(rewrite, path)
    os.close(holder)  # releases the lock
    await asyncio.wait_for(write, 5)
    lines = path.read_text().splitlines()
    assert lines[0] == '{"kept": 1}'
    assert [json.loads(line)["bridge-trigger"] for line in lines[1:]] == ["orders"]


def test_history_goes_into_headers_as_text_and_into_a_file_record_as_values() -> None:
    event = sample_event()
    event.history = (("bridge-redrive-attempts", "2"),
                     ("bridge-redrive-history", '[{"error":"http_503"}]'))
    outcome = Outcome(OutcomeKind.PERMANENT, "http_422", status=422)
    record = DeadLetter.of(event, "billing", outcome, attempts=1)
    headers = dict(record.bridge_headers())
    assert headers["bridge-redrive-attempts"] == "2"
    assert headers["bridge-redrive-history"] == '[{"error":"http_503"}]'
    document = record.to_json()
    assert document["bridge-redrive-attempts"] == 2
    assert document["bridge-redrive-history"] == [{"error": "http_503"}]
