"""``trigger-bridge redrive --file``: through the real CLI, a real HTTP function and dead
letters written by the real file sink."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import pty
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from bridge.config import FileSinkConfig
from bridge.deadletter import FileSink
from bridge.events import Event
from tests.support.functions import Behaviour, Call, RecordingFunction, Reply
from tests.support.redrive import (
    BASE_TIME,
    dead_letter,
    environment,
    kafka_event,
    redrive,
    redrive_killed,
    write_all,
)


def config(tmp_path: Path, function_url: str, sink: Path, extra: str = "") -> str:
    path = tmp_path / "bridge.yaml"
    path.write_text(f"""
defaults:
  retry: {{max_attempts: 2, initial_backoff: 20ms, max_backoff: 50ms}}
  dead_letter: {{file: {{path: "{sink}"}}}}
functions:
  fn: {{url: "{function_url}"}}
  other: {{url: "{function_url}other"}}
triggers:
  - name: orders
    function: fn
    kafka: {{bootstrap_servers: "127.0.0.1:9", topics: [orders], group_id: g}}
  - name: payments
    function: fn
    kafka: {{bootstrap_servers: "127.0.0.1:9", topics: [payments], group_id: g}}
{extra}""")
    return str(path)


def refuse(*ids: str) -> Behaviour:
    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(422, body="still wrong") if call.event_id in ids else Reply(200)
    return behaviour


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def write(path: Path, events: list[Event]) -> None:
    await write_all(FileSink(FileSinkConfig(path=str(path))), [dead_letter(e) for e in events])


async def test_redriven_events_keep_their_id_body_headers_and_key_order(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    events = [kafka_event("orders", n, b"k%d" % (n % 2), b'{"n": %d}' % n) for n in range(6)]
    await write(dead, events)

    def behaviour(call: Call, attempt: int) -> Reply:
        if call.event_id == "orders/0/3":
            return Reply(422, body="still wrong")
        return Reply(200, delay=0.3 if call.event_id == "orders/0/0" else 0.0)

    async with RecordingFunction(behaviour) as fn:
        cfg = config(tmp_path, fn.url, dead)
        result = await redrive("--config", cfg, "--file", str(dead))
        calls = {c.event_id: c for c in fn.calls}
    assert result.code == 1, result.err
    assert result.summary == (f"redrive {dead}: 6 read, 5 redriven, 1 failed again "
                              "(1 dead-lettered again), 0 skipped by filter")
    assert sorted(calls) == [f"orders/0/{n}" for n in range(6)]
    for n in range(6):
        call = calls[f"orders/0/{n}"]
        assert call.body == b'{"n": %d}' % n
        assert call.headers["ce-source"] == "kafka://orders"
        assert call.headers["ce-type"] == "dev.triggerbridge.kafka.record"
        assert call.headers["ce-partitionkey"] == f"k{n % 2}"
        assert call.headers["ce-kafkaoffset"] == str(n)
        assert call.headers["kafka-header-trace"] == f"t{n}"
        assert call.headers["Content-Type"] == "application/json"
        assert call.headers["bridge-trigger"] == "orders"
    # per key in order: offset 2 (key k0) waited for the slow offset 0; key k1 did not
    assert calls["orders/0/2"].received >= calls["orders/0/0"].received + 0.3
    assert calls["orders/0/1"].received < calls["orders/0/0"].received + 0.3
    assert "failed: " in result.err
    assert "http_422 422 after 1 attempt(s)" in result.err
    [again] = records(dead)
    assert again["bridge-error"] == "http_422"
    assert again["bridge-error-detail"] == "still wrong"
    assert again["bridge-source"] == "orders/0/3"
    assert again["cloudevent"]["id"] == "orders/0/3"  # type: ignore[index]
    assert again["body"] == base64.b64encode(b'{"n": 3}').decode()
    assert again["key"] == base64.b64encode(b"k1").decode()
    assert again["headers"] == [["trace", base64.b64encode(b"t3").decode()]]
    assert again["bridge-redrive-attempts"] == 1
    [earlier] = again["bridge-redrive-history"]  # type: ignore[misc]
    assert earlier["error"] == "http_503"
    assert earlier["status"] == 503
    assert earlier["attempts"] == 3
    assert earlier["detail"] == "busy"
    assert not (tmp_path / "dead.jsonl.redrive-journal").exists()

    async with RecordingFunction(refuse("orders/0/3")) as fn:  # and once more
        second = await redrive("--config", config(tmp_path, fn.url, dead), "--file", str(dead))
    assert second.code == 1
    [third] = records(dead)
    assert third["bridge-redrive-attempts"] == 2
    history = third["bridge-redrive-history"]
    assert [h["error"] for h in history] == ["http_503", "http_422"]  # type: ignore[attr-defined]


async def test_filters_and_dry_run(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    letters = [
        (kafka_event("orders", 0, None, b"0"), "fn", "http_503", 0),
        (kafka_event("orders", 1, None, b"1"), "fn", "timeout", 1),
        (kafka_event("orders", 2, None, b"2"), "fn", "http_502", 2),
        (kafka_event("payments", 3, None, b"3", trigger="payments"), "fn", "http_503", 3),
        (kafka_event("orders", 4, None, b"4"), "other", "http_503", 4),
        (kafka_event("orders", 5, None, b"5"), "fn", "http_503", 9),
    ]
    await write_all(FileSink(FileSinkConfig(path=str(dead))), [
        dead_letter(event, function=function, reason=reason, at=BASE_TIME + timedelta(hours=h))
        for event, function, reason, h in letters
    ])
    before = dead.read_bytes()
    chosen = ["--trigger", "orders", "--function", "fn", "--reason", "http_5*",
              "--since", "2026-03-01T12:00:00Z", "--until", "2026-03-01T15:00:00"]
    async with RecordingFunction() as fn:
        cfg = config(tmp_path, fn.url, dead)
        dry = await redrive("--config", cfg, "--file", str(dead), "--dry-run", *chosen)
        assert fn.calls == []
        assert dead.read_bytes() == before
        assert not (tmp_path / "dead.jsonl.redrive-journal").exists()
        result = await redrive("--config", cfg, "--file", str(dead), *chosen)
        ids = sorted(fn.ids())
    assert dry.code == 0, dry.err
    assert [line.split()[2] for line in dry.out.splitlines() if line.startswith("would")] == [
        f"{dead}:1", f"{dead}:3"]
    assert dry.summary == (f"redrive {dead}: 6 read, 2 would be redriven, 4 skipped by filter "
                           "(dry run: nothing changed)")
    assert result.code == 0, result.err
    assert result.summary == (f"redrive {dead}: 6 read, 2 redriven, 0 failed again, "
                              "4 skipped by filter")
    assert ids == ["orders/0/0", "orders/0/2"]
    kept = before.splitlines(keepends=True)
    assert dead.read_bytes() == b"".join(kept[i] for i in (1, 3, 4, 5))


async def test_lines_that_are_not_dead_letters_are_named_and_left(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    await write(dead, [kafka_event("orders", n, None, b"%d" % n) for n in range(3)])
    good = dead.read_bytes().splitlines(keepends=True)
    torn = good[1][: len(good[1]) // 2] + b"\n"  # a record cut by a crash
    bad = [torn, b"not json at all\n", b'{"bridge-trigger": "orders"}\n', b"\xff\xfe\n"]
    dead.write_bytes(good[0] + bad[0] + bad[1] + good[2] + bad[2] + bad[3])
    async with RecordingFunction() as fn:
        result = await redrive("--config", config(tmp_path, fn.url, dead), "--file", str(dead))
        assert sorted(fn.ids()) == ["orders/0/0", "orders/0/2"]
    assert result.code == 1
    assert result.summary == (f"redrive {dead}: 6 read, 2 redriven, 0 failed again, "
                              "0 skipped by filter, 4 unreadable (left in place)")
    problems = [line for line in result.err.splitlines() if "left in place" in line]
    assert problems[0].startswith(f"{dead}:2: not a JSON line (truncated? Unterminated string")
    assert problems[0].endswith("); left in place")
    assert problems[1:] == [
        f"{dead}:3: not a JSON line (Expecting value at column 1); left in place",
        f"{dead}:5: not a dead-letter record: no bridge-function, bridge-error; left in place",
        f"{dead}:6: not UTF-8 text; left in place",
    ]
    assert dead.read_bytes() == b"".join(bad)


async def test_a_crash_in_the_middle_loses_nothing_and_repeats_at_most_the_in_flight(
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead.jsonl"
    total = 40
    await write(dead, [kafka_event("orders", n, None, b"%d" % n) for n in range(total)])
    slow = True

    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(200, delay=0.05 if slow else 0.0)

    async with RecordingFunction(behaviour) as fn:
        cfg = config(tmp_path, fn.url, dead)
        await redrive_killed("--config", cfg, "--file", str(dead), "--concurrency", "2",
                             when=lambda: len(fn.calls) >= 12)
        first = len(fn.calls)
        journal = tmp_path / "dead.jsonl.redrive-journal"
        assert journal.exists()
        journaled = len(journal.read_text().splitlines()) - 1
        assert first - 2 <= journaled <= first
        assert len(dead.read_text().splitlines()) == total  # nothing removed yet
        slow = False
        result = await redrive("--config", cfg, "--file", str(dead))
        ids = fn.ids()
    assert result.code == 0, result.err
    assert f"{dead}: {journaled} record(s) redriven by an interrupted run removed" in result.err
    rest = total - journaled
    assert result.summary == (f"redrive {dead}: {rest} read, {rest} redriven, 0 failed again, "
                              "0 skipped by filter")
    assert sorted(set(ids)) == sorted(f"orders/0/{n}" for n in range(total))  # none lost
    assert len(ids) - total <= 2  # repeated: at most what was in flight at the kill
    print(f"REDRIVE file: {total} letters, killed after {first} calls, {journaled} journaled, "
          f"second run {rest}, duplicates {len(ids) - total}")
    assert dead.read_text() == ""
    assert not journal.exists()


async def test_records_appended_during_a_redrive_are_kept(tmp_path: Path) -> None:
    """The daemon's file sink appends while the redrive runs and rewrites the file."""
    dead = tmp_path / "dead.jsonl"
    await write(dead, [kafka_event("orders", n, None, b"%d" % n) for n in range(10)])
    async with RecordingFunction(lambda call, n: Reply(200, delay=0.05)) as fn:
        cfg = config(tmp_path, fn.url, dead)
        running = asyncio.create_task(
            redrive("--config", cfg, "--file", str(dead), "--concurrency", "1"))
        await fn.wait_for(lambda: len(fn.calls) >= 2)
        later = [kafka_event("orders", n, None, b"%d" % n) for n in range(100, 105)]
        await write(dead, later)  # while the redrive runs
        result = await running
    assert result.code == 0, result.err
    assert result.summary.startswith(f"redrive {dead}: 10 read, 10 redriven")
    assert [r["bridge-source"] for r in records(dead)] == [f"orders/0/{n}" for n in range(100, 105)]


async def test_failures_go_to_the_trigger_sink_or_back_where_they_were(tmp_path: Path) -> None:
    dead, sink = tmp_path / "dead.jsonl", tmp_path / "sink.jsonl"
    await write(dead, [kafka_event("orders", n, None, b"%d" % n) for n in range(2)])
    async with RecordingFunction(refuse("orders/0/0")) as fn:
        cfg = config(tmp_path, fn.url, sink)
        back = await redrive("--config", cfg, "--file", str(dead), "--dead-letter-back")
        assert [r["bridge-error"] for r in records(dead)] == ["http_422"]
        assert not sink.exists()
        again = await redrive("--config", cfg, "--file", str(dead))
    assert "dead-lettered again to " + str(dead) + " (where it was read)" in back.err
    assert f"dead-lettered again to file {sink}" in again.err
    assert dead.read_text() == ""
    [moved] = records(sink)
    assert moved["bridge-redrive-attempts"] == 2


async def test_letters_that_cannot_be_redriven_are_left_with_a_reason(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    unknown = kafka_event("gone", 0, None, b"0", trigger="gone")
    broken = kafka_event("orders", 1, None, b"{")
    await write_all(FileSink(FileSinkConfig(path=str(dead))), [
        dead_letter(unknown),
        dead_letter(kafka_event("orders", 2, None, b"2"), function="removed"),
        dead_letter(broken, reason="invalid_message", status=None),
    ])
    before = dead.read_bytes()
    async with RecordingFunction() as fn:
        result = await redrive("--config", config(tmp_path, fn.url, dead), "--file", str(dead))
        assert fn.calls == []
    assert result.code == 1
    assert "trigger 'gone' is not in " in result.err
    assert "function 'removed' is not in " in result.err
    assert "invalid_message): it can only go back to its source (--to-source)" in result.err
    assert result.summary.endswith("3 not redrivable (left in place)")
    assert dead.read_bytes() == before


async def test_bad_options_and_a_missing_file_are_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = config(tmp_path, "http://127.0.0.1:9/", tmp_path / "dead.jsonl")
    for args, message in [
        (["--file", str(tmp_path / "nope.jsonl")], f"cannot read {tmp_path}/nope.jsonl: "),
        (["--file", "x", "--since", "yesterday"], "--since: not an ISO 8601 time"),
        (["--file", "x", "--limit", "0"], "--limit: must be at least 1"),
        (["--kafka-topic", "dlq"], "no dead-letter sink in the config writes to kafka topic"),
    ]:
        result = await redrive("--config", cfg, *args)
        assert result.code == 2, (args, result.err)
        assert result.err.count("\n") == 1, result.err
        assert message in result.err


def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    """stderr on a TTY: one redrawn bar line, not a line per letter."""
    dead = tmp_path / "dead.jsonl"
    asyncio.run(write(dead, [kafka_event("orders", n, None, b"%d" % n) for n in range(5)]))

    async def run() -> tuple[int, bytes]:
        async with RecordingFunction() as fn:
            leader, follower = pty.openpty()
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "redrive", "--config",
                config(tmp_path, fn.url, dead), "--file", str(dead),
                stdout=subprocess.DEVNULL, stderr=follower, env=environment(),
            )
            os.close(follower)
            code = await asyncio.wait_for(process.wait(), 60)
            output = b""
            while True:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # EIO: the other side is closed
                    break
                if not chunk:
                    break
                output += chunk
            os.close(leader)
            return code, output

    code, output = asyncio.run(run())
    assert code == 0
    text = output.decode()
    assert "\r\x1b[Kredrive [" in text
    assert "5/5  redriven 5  failed 0  skipped 0" in text
    assert "redriven: " not in text  # no line per letter on a terminal


async def test_limit_and_a_signal_leave_the_rest_for_the_next_run(tmp_path: Path) -> None:
    dead = tmp_path / "dead.jsonl"
    await write(dead, [kafka_event("orders", n, None, b"%d" % n) for n in range(20)])
    async with RecordingFunction(lambda call, n: Reply(200, delay=0.05)) as fn:
        cfg = config(tmp_path, fn.url, dead)
        limited = await redrive("--config", cfg, "--file", str(dead), "--limit", "3")
        assert limited.code == 0, limited.err
        assert limited.summary.endswith("3 read, 3 redriven, 0 failed again, 0 skipped by filter")
        assert len(dead.read_text().splitlines()) == 17

        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", "redrive", "--config", cfg, "--file", str(dead),
            "--concurrency", "1", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=environment(),
        )
        await fn.wait_for(lambda: len(fn.calls) >= 6)
        process.terminate()
        out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 1, err.decode()
    assert "interrupted: finishing the attempts in flight" in err.decode()
    summary = out.decode().strip()
    redriven = int(summary.split(" read, ")[1].split(" redriven")[0])
    read = int(summary.split(": ")[1].split(" read")[0])
    assert summary.endswith(f"{read - redriven} interrupted (left in place)")
    assert len(dead.read_text().splitlines()) == 17 - redriven  # the rest, still there
    assert len(set(fn.ids())) == 3 + redriven
    assert not (tmp_path / "dead.jsonl.redrive-journal").exists()
