"""``trigger-bridge redrive --kafka-topic``: through the real CLI against Tansu, dead
letters written by the real Kafka sink, a real HTTP function."""

from __future__ import annotations

import json
from pathlib import Path

import tests.support.kafka
from bridge.config import KafkaConnection
from connectors.kafka_mapping import record_event
from connectors.kafka_sink import KafkaSink
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.kafka import KafkaBroker
from tests.support.redrive import (
    dead_letter,
    kafka_event,
    redrive,
    redrive_killed,
    write_all,
)

kafka_broker = tests.support.kafka.kafka_broker
GROUP = "trigger-bridge-redrive"


def config(tmp_path: Path, broker: KafkaBroker, function_url: str, source: str, dlq: str) -> str:
    path = tmp_path / "bridge.yaml"
    path.write_text(f"""
defaults:
  retry: {{max_attempts: 2, initial_backoff: 20ms, max_backoff: 50ms}}
functions:
  fn: {{url: "{function_url}"}}
triggers:
  - name: orders
    function: fn
    kafka: {{bootstrap_servers: "{broker.bootstrap}", topics: [{source}], group_id: g-{source}}}
    dead_letter: {{kafka: {{topic: {dlq}}}}}
""")
    return str(path)


async def store(broker: KafkaBroker, dlq: str, source: str, count: int) -> None:
    sink = KafkaSink(dlq, KafkaConnection(bootstrap_servers=[broker.bootstrap]))
    events = [kafka_event(source, n, b"k%d" % (n % 2), b'{"n": %d}' % n) for n in range(count)]
    await write_all(sink, [dead_letter(e) for e in events])


async def test_redrive_from_a_topic_commits_and_dead_letters_again(
    kafka_broker: KafkaBroker, tmp_path: Path,
) -> None:
    source, dlq = kafka_broker.topic(), kafka_broker.topic(prefix="dlq")
    await store(kafka_broker, dlq, source, 6)
    refused = f"{source}/0/3"

    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(422, body="still wrong") if call.event_id == refused else Reply(200)

    async with RecordingFunction(behaviour) as fn:
        cfg = config(tmp_path, kafka_broker, fn.url, source, dlq)
        dry = await redrive("--config", cfg, "--kafka-topic", dlq, "--dry-run")
        assert fn.calls == []
        assert (await kafka_broker.committed(GROUP, dlq)) == {0: None}
        result = await redrive("--config", cfg, "--kafka-topic", dlq)
        calls = {c.event_id: c for c in fn.calls}
    assert dry.code == 0, dry.err
    assert dry.summary.endswith("6 read, 6 would be redriven, 0 skipped by filter "
                                "(dry run: nothing changed)")
    assert result.code == 1, result.err
    assert result.summary == (f"redrive kafka topic {dlq}: 6 read, 5 redriven, 1 failed again "
                              "(1 dead-lettered again), 0 skipped by filter")
    assert sorted(calls) == [f"{source}/0/{n}" for n in range(6)]
    for n in range(6):
        call = calls[f"{source}/0/{n}"]
        assert call.body == b'{"n": %d}' % n
        assert call.headers["ce-source"] == f"kafka://{source}"
        assert call.headers["ce-partitionkey"] == f"k{n % 2}"
        assert call.headers["kafka-header-trace"] == f"t{n}"
        assert call.headers["Content-Type"] == "application/json"
    # the six are done (committed); the new dead letter (offset 6) waits for the next run
    assert (await kafka_broker.committed(GROUP, dlq)) == {0: 6}
    stored = await kafka_broker.read(dlq, 7)
    again = stored[6]
    headers = {name: value.decode() for name, value in again.headers}
    assert headers["bridge-error"] == "http_422"
    assert headers["bridge-redrive-attempts"] == "1"
    assert [h["error"] for h in json.loads(headers["bridge-redrive-history"])] == ["http_503"]
    assert headers["ce_id"] == refused
    assert (again.key, again.value) == (b"k1", b'{"n": 3}')

    async with RecordingFunction() as fn:  # fixed: the next run takes only the new one
        cfg = config(tmp_path, kafka_broker, fn.url, source, dlq)
        second = await redrive("--config", cfg, "--kafka-topic", dlq)
        assert fn.ids() == [refused]
    assert second.code == 0, second.err
    assert second.summary.endswith("1 read, 1 redriven, 0 failed again, 0 skipped by filter")
    assert (await kafka_broker.committed(GROUP, dlq)) == {0: 7}


async def test_to_source_republishes_the_original_record(
    kafka_broker: KafkaBroker, tmp_path: Path,
) -> None:
    source, dlq = kafka_broker.topic(), kafka_broker.topic(prefix="dlq")
    await store(kafka_broker, dlq, source, 3)
    cfg = config(tmp_path, kafka_broker, "http://127.0.0.1:9/", source, dlq)
    result = await redrive("--config", cfg, "--kafka-topic", dlq, "--to-source")
    assert result.code == 0, result.err
    assert result.summary.endswith("3 read, 3 redriven, 0 failed again, 0 skipped by filter")
    assert f"published to kafka topic {source}" in result.err
    assert (await kafka_broker.committed(GROUP, dlq)) == {0: 3}
    republished = await kafka_broker.read(source, 3)

    async def settle(*_: object) -> None:
        """Not settled here."""

    for n, record in enumerate(republished):
        assert (record.key, record.value) == (b"k%d" % (n % 2), b'{"n": %d}' % n)
        assert ("trace", f"t{n}".encode()) in record.headers
        event = record_event("orders", record, settle)  # as the daemon will read it
        assert event.defect is None
        assert event.id == f"{source}/0/{n}"  # the original id: functions de-duplicate
        assert event.content_type == "application/json"
        assert event.extensions["kafkaoffset"] == str(record.offset)


async def test_a_crash_in_the_middle_loses_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path,
) -> None:
    source, dlq = kafka_broker.topic(), kafka_broker.topic(prefix="dlq")
    total = 30
    await store(kafka_broker, dlq, source, total)
    slow = True

    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(200, delay=0.05 if slow else 0.0)

    async with RecordingFunction(behaviour) as fn:
        cfg = config(tmp_path, kafka_broker, fn.url, source, dlq)
        await redrive_killed("--config", cfg, "--kafka-topic", dlq,
                             when=lambda: len(fn.calls) >= 10)
        calls = len(fn.calls)
        committed = (await kafka_broker.committed(GROUP, dlq))[0] or 0
        assert calls - 2 <= committed <= calls
        slow = False
        result = await redrive("--config", cfg, "--kafka-topic", dlq)
        ids = fn.ids()
    rest = total - committed
    assert result.code == 0, result.err
    assert result.summary.endswith(f"{rest} read, {rest} redriven, 0 failed again, "
                                   "0 skipped by filter")
    assert sorted(set(ids)) == sorted(f"{source}/0/{n}" for n in range(total))
    assert len(ids) - total <= 2
    print(f"REDRIVE kafka: {total} letters, killed after {calls} calls, committed {committed}, "
          f"second run {rest}, duplicates {len(ids) - total}")
    assert (await kafka_broker.committed(GROUP, dlq)) == {0: total}
