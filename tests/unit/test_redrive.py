"""The redrive's pure parts: letters, the event rebuilt, filters, the file journal,
connections from the config, progress and summary."""

from __future__ import annotations

import asyncio
import io
import json
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiokafka.structs import ConsumerRecord

from bridge.config import FileSinkConfig, parse_config
from bridge.deadletter import FileSink
from bridge.events import Disposition, Event
from bridge.logs import get_logger
from bridge.redrive.connections import kafka_connection, rabbitmq_connection
from bridge.redrive.files import FileLetters
from bridge.redrive.letters import (
    HISTORY_KEEP,
    NotALetter,
    NotRedrivable,
    from_fields,
    from_json,
    to_event,
)
from bridge.redrive.report import Report
from bridge.redrive.run import Redrive, RedriveOptions
from bridge.redrive.selection import Selection, parse_moment, selection
from bridge.redrive.sources import Item, SourceError
from connectors.kafka_mapping import record_event
from connectors.kafka_redrive import letter_of, republish_headers
from tests.support.redrive import dead_letter, kafka_event, rabbit_event


async def _no_settle(event: Event, disposition: Disposition) -> None:
    """Not settled in these tests."""


def test_a_file_record_reads_back_into_the_event_it_was() -> None:
    event = kafka_event("orders", 7, b"k1", b'{"n": 7}')
    letter = from_json(dead_letter(event).to_json(), "dead.jsonl:1")
    assert (letter.trigger, letter.function, letter.error) == ("orders", "fn", "http_503")
    assert (letter.attempts, letter.last_status, letter.source) == (3, 503, "orders/0/7")
    assert (letter.body, letter.key, letter.headers) == (b'{"n": 7}', b"k1", (("trace", b"t7"),))
    rebuilt = to_event(letter, "kafka", _no_settle)
    for name in ("trigger", "id", "source", "type", "data", "content_type", "time", "subject",
                 "extensions", "http_headers", "ordering_key", "partition", "origin", "key",
                 "headers"):
        assert getattr(rebuilt, name) == getattr(event, name), name


def test_a_rabbitmq_event_rebuilds_with_its_amqp_headers() -> None:
    event = rabbit_event("jobs", 3, b"x")
    rebuilt = to_event(from_json(dead_letter(event).to_json(), "f:1"), "rabbitmq", _no_settle)
    assert rebuilt.http_headers == {"amqp-header-trace": "t3"}
    assert (rebuilt.id, rebuilt.partition, rebuilt.origin) == ("msg-3", "jobs", "jobs")


def test_http_headers_match_the_kafka_connector() -> None:
    """What the function sees as kafka-header-* is what connectors.kafka_mapping gives."""
    headers = [("Trace", b"a"), ("trace", b"b"), ("bin", b"\xff"), ("bad name", b"x"),
               ("content-type", b"text/plain"), ("ce_x", b"y"), ("tab", b"a\tb")]
    record = ConsumerRecord("t", 0, 5, 0, 0, b"k", b"v", None, 1, 1, headers)
    original = record_event("tr", record, _no_settle)
    letter = from_fields({"bridge-trigger": "tr", "bridge-function": "f", "bridge-error": "e"},
                         original.ce_attributes(), b"v", b"k", headers, position="p")
    assert to_event(letter, "kafka", _no_settle).http_headers == original.http_headers


def test_history_grows_and_keeps_the_newest() -> None:
    letter = from_json(dead_letter(kafka_event("o", 1, None, b"")).to_json(), "f:1")
    history = dict(letter.next_history())
    assert history["bridge-redrive-attempts"] == "1"
    [entry] = json.loads(history["bridge-redrive-history"])
    assert entry == {"error": "http_503", "status": 503, "attempts": 3,
                     "at": entry["at"], "detail": "busy"}
    fields = {"bridge-trigger": "o", "bridge-function": "fn", "bridge-error": "timeout",
              "bridge-redrive-attempts": "12",
              "bridge-redrive-history": json.dumps([{"error": str(n)} for n in range(12)])}
    long = from_fields(fields, {}, b"", None, [], position="p")
    history = dict(long.next_history())
    assert history["bridge-redrive-attempts"] == "13"
    past = json.loads(history["bridge-redrive-history"])
    assert len(past) == HISTORY_KEEP
    assert past[-1]["error"] == "timeout"
    assert past[0]["error"] == "3"


@pytest.mark.parametrize(("document", "message"), [
    ([1, 2], "a JSON list, not an object"),
    ({"bridge-trigger": "t"}, "no bridge-function, bridge-error"),
    ({"bridge-trigger": "t", "bridge-function": "f", "bridge-error": "e"},
     "'body' is not base64 text"),
    ({"bridge-trigger": "t", "bridge-function": "f", "bridge-error": "e", "body": "@@"},
     "'body' is not base64"),
    ({"bridge-trigger": "t", "bridge-function": "f", "bridge-error": "e", "body": "",
      "bridge-attempts": "many"}, "bridge-attempts is not a number: 'many'"),
    ({"bridge-trigger": "t", "bridge-function": "f", "bridge-error": "e", "body": "",
      "bridge-dead-lettered-at": "noon"}, "bridge-dead-lettered-at is not a time: 'noon'"),
    ({"bridge-trigger": "t", "bridge-function": "f", "bridge-error": "e", "body": "",
      "headers": [["a"]]}, "'headers' is not a list of [name, base64] pairs"),
])
def test_records_that_are_not_dead_letters_say_why(document: object, message: str) -> None:
    with pytest.raises(NotALetter) as caught:
        from_json(document, "f:1")
    assert str(caught.value) == message


def test_letters_that_cannot_be_rebuilt() -> None:
    fields = {"bridge-trigger": "t", "bridge-function": "f", "bridge-error": "invalid_message"}
    with pytest.raises(NotRedrivable, match="--to-source"):
        to_event(from_fields(fields, {"id": "1", "source": "s", "type": "t"}, b"", None, [],
                             position="p"), "kafka", _no_settle)
    fields["bridge-error"] = "http_500"
    with pytest.raises(NotRedrivable, match="no CloudEvent source, type"):
        to_event(from_fields(fields, {"id": "1"}, b"", None, [], position="p"), "kafka",
                 _no_settle)


def test_a_kafka_record_splits_back_into_the_dead_letter() -> None:
    record = dead_letter(kafka_event("orders", 4, b"k", b"v"))
    from connectors.kafka_sink import dead_letter_headers

    stored = ConsumerRecord("dlq", 0, 9, 0, 0, b"k", b"v", None, 1, 1, dead_letter_headers(record))
    letter = letter_of(stored, "dlq/0/9")
    assert letter.headers == (("trace", b"t4"),)
    assert dict(letter.cloudevent) == record.cloudevent
    assert (letter.trigger, letter.error, letter.source) == ("orders", "http_503", "orders/0/4")
    # back to the source: binary-mode CloudEvent without the old place
    headers = dict(republish_headers(letter))
    assert headers["ce_id"] == b"orders/0/4"
    assert headers["content-type"] == b"application/json"
    assert "ce_kafkaoffset" not in headers
    assert headers["trace"] == b"t4"


def test_selection() -> None:
    letter = from_json(dead_letter(kafka_event("orders", 1, None, b""),
                                   at=datetime(2026, 3, 1, 12, tzinfo=UTC)).to_json(), "f:1")
    assert Selection().why_not(letter) is None
    assert Selection(triggers=frozenset({"x"})).why_not(letter) == "trigger"
    assert Selection(functions=frozenset({"x"})).why_not(letter) == "function"
    assert Selection(reasons=("http_5*",)).why_not(letter) is None
    assert Selection(reasons=("timeout", "http_4*")).why_not(letter) == "reason"
    noon = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert Selection(since=noon).why_not(letter) is None  # inclusive
    assert Selection(until=noon).why_not(letter) == "time"  # exclusive
    assert Selection(since=noon + timedelta(seconds=1)).why_not(letter) == "time"


def test_times_on_the_command_line() -> None:
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    assert parse_moment("2026-03-01T10:00", "--since", now) == now - timedelta(hours=2)
    assert parse_moment("2026-03-01T10:00+01:00", "--since", now) == now - timedelta(hours=3)
    assert parse_moment("90m", "--since", now) == now - timedelta(minutes=90)
    assert parse_moment("2d", "--since", now) == now - timedelta(days=2)
    with pytest.raises(ValueError, match="--until: not an ISO 8601 time"):
        parse_moment("soon", "--until", now)
    with pytest.raises(ValueError, match="--since must be before --until"):
        selection(since="1h", until="2h")


# --- the file journal -----------------------------------------------------------------


async def write_letters(path: Path, count: int) -> None:
    sink = FileSink(FileSinkConfig(path=str(path), fsync=False))
    for n in range(count):
        await sink.write(dead_letter(kafka_event("orders", n, None, b"%d" % n)))


async def settle_some(path: Path, lines: set[int], close: bool = True) -> FileLetters:
    letters = FileLetters(str(path))
    await letters.open()
    async for item in letters.items():
        if int(item.position.rsplit(":", 1)[1]) in lines:
            await item.settle(True)
    if close:
        await letters.close()
    return letters


async def test_the_journal_of_an_interrupted_run_is_applied_first(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    await write_letters(path, 5)
    lines = path.read_text().splitlines()
    interrupted = await settle_some(path, {1, 3}, close=False)  # "killed": no close
    assert path.read_text().splitlines() == lines
    os.close(interrupted._journal)  # type: ignore[arg-type]  # the process is gone
    again = FileLetters(str(path))
    await again.open()
    assert again.recovered == 2
    assert path.read_text().splitlines() == [lines[1], lines[3], lines[4]]
    assert [i.position async for i in again.items()] == [f"{path}:{n}" for n in (1, 2, 3)]
    await again.close()
    assert not (tmp_path / "dead.jsonl.redrive-journal").exists()


async def test_a_journal_about_a_replaced_file_is_ignored(tmp_path: Path) -> None:
    """A crash after the rewrite's rename, before the journal is removed."""
    path = tmp_path / "dead.jsonl"
    await write_letters(path, 3)
    interrupted = await settle_some(path, {1}, close=False)
    os.close(interrupted._journal)  # type: ignore[arg-type]
    content = path.read_bytes()
    rewrite = tmp_path / "rewrite"
    rewrite.write_bytes(content)  # the same lines in a new file (inode), renamed over it
    os.rename(rewrite, path)
    again = FileLetters(str(path))
    await again.open()
    assert again.recovered == 0
    assert path.read_bytes() == content
    await again.close()


async def test_a_line_that_changed_is_not_removed(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    await write_letters(path, 2)
    letters = await settle_some(path, {1, 2}, close=False)
    lines = path.read_bytes().splitlines(keepends=True)
    data = bytearray(path.read_bytes())  # someone edits line 2 in place (same length)
    data[len(lines[0]) + 2] = ord("X")
    path.write_bytes(bytes(data))
    changed = path.read_bytes().splitlines(keepends=True)[1]
    await letters.close()
    assert path.read_bytes() == changed


async def test_a_second_redrive_of_the_same_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    await write_letters(path, 1)
    first = FileLetters(str(path))
    await first.open()
    with pytest.raises(SourceError, match=r"another redrive is working on .*dead\.jsonl"):
        await FileLetters(str(path)).open()
    await first.close()
    second = FileLetters(str(path))
    await second.open()  # free again
    await second.close()


async def test_a_dry_run_skips_what_an_interrupted_run_settled_and_changes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dead.jsonl"
    await write_letters(path, 3)
    interrupted = await settle_some(path, {2}, close=False)
    os.close(interrupted._journal)  # type: ignore[arg-type]
    before = path.read_bytes()
    journal_path = tmp_path / "dead.jsonl.redrive-journal"
    journal = journal_path.read_bytes()
    dry = FileLetters(str(path), dry_run=True)
    await dry.open()
    assert [i.position async for i in dry.items()] == [f"{path}:1", f"{path}:3"]
    await dry.close()
    assert path.read_bytes() == before
    assert journal_path.read_bytes() == journal


async def test_a_torn_last_line_is_read_as_a_line(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    await write_letters(path, 1)
    path.write_bytes(path.read_bytes() + b'{"bridge-trigger": "or')
    letters = FileLetters(str(path))
    await letters.open()
    items = [i async for i in letters.items()]
    assert letters.total == 2
    assert [i.letter is not None for i in items] == [True, False]
    assert items[1].problem.startswith("not a JSON line (truncated? ")
    await letters.close()


# --- connections from the config ----------------------------------------------------------


CONNECTIONS = """
functions: {fn: {url: "http://127.0.0.1:9/"}}
defaults: {dead_letter: {kafka: {topic: dlq, bootstrap_servers: "k1:9092"}}}
triggers:
  - {name: a, function: fn, kafka: {bootstrap_servers: "k0:9092", topics: [a], group_id: g}}
  - name: b
    function: fn
    kafka: {bootstrap_servers: "k2:9092", topics: [b], group_id: g}
    dead_letter: {kafka: {topic: dlq}}
  - name: c
    function: fn
    rabbitmq: {url: "amqp://u:secret@r1/", queue: q}
    dead_letter: {rabbitmq: {reject: true}}
  - name: d
    function: fn
    cron: {schedule: "@hourly"}
    dead_letter:
      rabbitmq: {exchange: x, url: "amqp://u:other@r2/"}
      fallback: {kafka: {topic: fb, bootstrap_servers: "k1:9092"}}
"""


def test_connections_come_from_the_sinks() -> None:
    config = parse_config(CONNECTIONS)
    everyone: frozenset[str] = frozenset()
    with pytest.raises(SourceError, match=r"2 different connections \(triggers a, defaults; b\)"):
        kafka_connection(config, "dlq", everyone)
    assert kafka_connection(config, "dlq", frozenset({"a"})).bootstrap_servers == ["k1:9092"]
    assert kafka_connection(config, "dlq", frozenset({"b"})).bootstrap_servers == ["k2:9092"]
    assert kafka_connection(config, "fb", everyone).bootstrap_servers == ["k1:9092"]
    assert kafka_connection(config, "zz", everyone, "h:1").bootstrap_servers == ["h:1"]
    with pytest.raises(SourceError, match="writes to kafka topic 'zz': pass --bootstrap-servers"):
        kafka_connection(config, "zz", everyone)
    with pytest.raises(SourceError, match="--bootstrap-servers: the port must be a number"):
        kafka_connection(config, "zz", everyone, "h:99999")
    with pytest.raises(SourceError, match=r"different connections \(triggers c; d\)"):
        rabbitmq_connection(config, everyone)
    assert rabbitmq_connection(config, frozenset({"c"})) == ("amqp://u:secret@r1/", None)
    assert rabbitmq_connection(config, frozenset({"d"}))[0] == "amqp://u:other@r2/"
    with pytest.raises(SourceError, match="no RabbitMQ dead-letter sink of trigger a"):
        rabbitmq_connection(config, frozenset({"a"}))
    # deploy/base: no trigger in the file (Trigger resources), the defaults' sink
    base = parse_config('defaults: {dead_letter: {rabbitmq: {exchange: x, url: "amqp://r/"}}}')
    assert rabbitmq_connection(base, everyone) == ("amqp://r/", None)


# --- output ---------------------------------------------------------------------------------


def test_plain_lines_and_a_summary_that_adds_up() -> None:
    err, out = io.StringIO(), io.StringIO()
    report = Report(err, out, tty=False)
    report.begin("dead.jsonl", 6)
    c = report.counts
    c.read, c.redriven, c.dead_lettered, c.failed, c.skipped, c.unreadable = 6, 1, 1, 1, 1, 1
    report.redriven("dead.jsonl:1 ...")
    report.failed("dead.jsonl:2 ...")
    report.finish(interrupted=True)
    assert err.getvalue().splitlines() == [
        "redriving dead.jsonl (6 record(s))", "redriven: dead.jsonl:1 ...",
        "failed: dead.jsonl:2 ...",
    ]
    assert out.getvalue() == (
        "redrive dead.jsonl: 6 read, 1 redriven, 2 failed again (1 dead-lettered again, "
        "1 left in place), 1 skipped by filter, 1 unreadable (left in place), "
        "1 interrupted (left in place)\n")
    assert not c.clean


def test_a_terminal_gets_one_bar_line_with_problems_above_it() -> None:
    err, out = io.StringIO(), io.StringIO()
    report = Report(err, out, tty=True)
    report.begin("dead.jsonl", 4)
    report.counts.read, report.counts.redriven = 2, 2
    report.redriven("dead.jsonl:1")
    report.problem("dead.jsonl:3: not a JSON line; left in place")
    report.finish()
    text = err.getvalue()
    assert "redriven: " not in text
    assert "\r\x1b[Kdead.jsonl:3: not a JSON line; left in place\n" in text
    assert text.endswith("\r\x1b[Kredrive [###############...............] 2/4  "
                         "redriven 2  failed 0  skipped 0\n")


class _Breaking:
    """A source whose broker goes away after two records."""

    name = "queue q"
    total = 5
    recovered = 0

    def __init__(self) -> None:
        self.settled: list[tuple[str, bool]] = []

    async def open(self) -> None:
        """Nothing to open."""

    async def items(self) -> AsyncIterator[Item]:
        for n in (1, 2):
            async def settle(done: bool, n: int = n) -> None:
                self.settled.append((f"#{n}", done))

            yield Item(f"#{n}", None, settle, "not a dead-letter record: no bridge-trigger")
        raise ConnectionError("connection reset by peer")

    def back_sink(self) -> FileSink:
        raise AssertionError("not used")

    async def close(self) -> None:
        """Nothing to close."""


async def test_a_source_failing_midway_ends_the_run_with_a_line() -> None:
    source = _Breaking()
    err, out = io.StringIO(), io.StringIO()
    report = Report(err, out, tty=False)
    redrive = Redrive(parse_config(CONNECTIONS), source, RedriveOptions(), report,
                      get_logger())
    counts = await redrive.run(asyncio.Event())
    assert source.settled == [("#1", False), ("#2", False)]
    assert "reading queue q failed: ConnectionError: connection reset by peer; what was not " \
           "read stays where it is" in err.getvalue()
    assert out.getvalue().endswith("2 unreadable (left in place), reading stopped early "
                                   "(the rest was not read)\n")
    assert not counts.clean
