"""Kafka triggers end to end against a real broker (Tansu), the Runtime in this process.

Records are produced with aiokafka, the bridge consumes them in a consumer group and
invokes a real HTTP function (``RecordingFunction``); dead letters are read back from
the dead-letter topic, commits from the group's committed offsets.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import defaultdict

import pytest
from cloudevents.http import from_http

from tests.support import kafka as kafka_support
from tests.support.functions import Call, RecordingFunction, Reply, always
from tests.support.kafka import KafkaBroker, bridge_config, ready, running_bridge, wait_until

#: The session's Tansu broker (a fixture; bound by assignment so ruff sees no shadowing).
kafka_broker = kafka_support.kafka_broker


def metric(runtime: object, name: str, **labels: str) -> float:
    registry = runtime.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value(name, {"trigger": "orders", **labels})
    return 0.0 if value is None else float(value)


async def test_every_record_reaches_the_function_exactly_once(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.topic(partitions=3)
    records = [(f"k{i % 30}".encode(), f"v{i}".encode(), []) for i in range(300)]
    await kafka_broker.produce(topic, records)
    async with RecordingFunction() as fn:
        config = bridge_config(kafka_broker, topic, fn.url, ordering="none")
        async with running_bridge(config) as runtime:
            runtime.triggers["orders"].connector.probe_interval = 0.2  # type: ignore[attr-defined]
            await ready(runtime)
            await fn.wait_calls(300)
            await asyncio.sleep(0.5)  # nothing more arrives
            await wait_until(lambda: metric(runtime, "bridge_kafka_commits_total") > 0)
            assert metric(runtime, "bridge_events_received_total") == 300
            assert metric(runtime, "bridge_kafka_assigned_partitions") == 3

            def lags() -> list[float]:
                return [metric(runtime, "bridge_kafka_consumer_lag", topic=topic, partition=str(p))
                        for p in range(3)]

            await wait_until(lambda: lags() == [0.0, 0.0, 0.0], what="lag 0 on every partition")
            samples = runtime.metrics.registry.get_sample_value  # the series exist, not defaults
            assert samples("bridge_kafka_consumer_lag",
                           {"trigger": "orders", "topic": topic, "partition": "2"}) == 0.0
    ids = fn.ids()
    assert len(ids) == 300
    assert len(set(ids)) == 300
    assert sorted(c.body for c in fn.calls) == sorted(value for _, value, _ in records)
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert sum(o or 0 for o in committed.values()) == 300  # everything settled is committed


def _sequence(call: Call) -> tuple[str, int]:
    key, _, number = call.body.decode().partition(":")
    return key, int(number)


async def test_key_ordering_keeps_per_key_order_while_keys_run_in_parallel(
    kafka_broker: KafkaBroker,
) -> None:
    topic = kafka_broker.topic(partitions=1)
    keys, per_key = 20, 8
    records = [
        (f"key{k}".encode(), f"key{k}:{n}".encode(), [])
        for n in range(per_key) for k in range(keys)
    ]
    await kafka_broker.produce(topic, records)
    async with RecordingFunction(always(200, delay=0.05)) as fn:
        config = bridge_config(kafka_broker, topic, fn.url, ordering="key", concurrency=20)
        async with running_bridge(config) as runtime:
            await ready(runtime)
            await fn.wait_calls(keys * per_key, timeout=30)
    seen: dict[str, list[int]] = defaultdict(list)
    for call in sorted(fn.calls, key=lambda c: c.received):
        key, number = _sequence(call)
        seen[key].append(number)
    assert seen == {f"key{k}": list(range(per_key)) for k in range(keys)}
    assert fn.max_in_flight >= 10  # different keys ran in parallel on one partition


async def test_partition_ordering_runs_one_record_at_a_time(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.topic(partitions=1)
    await kafka_broker.produce(
        topic, [(f"k{i}".encode(), f"k{i}:{i}".encode(), []) for i in range(20)]
    )
    async with RecordingFunction(always(200, delay=0.02)) as fn:
        config = bridge_config(kafka_broker, topic, fn.url, ordering="partition", concurrency=20)
        async with running_bridge(config) as runtime:
            await ready(runtime)
            await fn.wait_calls(20)
    assert fn.max_in_flight == 1
    assert [_sequence(c)[1] for c in sorted(fn.calls, key=lambda c: c.received)] == list(range(20))


async def test_permanent_failures_go_to_the_dead_letter_topic_and_the_partition_moves_on(
    kafka_broker: KafkaBroker,
) -> None:
    topic = kafka_broker.topic(partitions=2)
    dlq = kafka_broker.topic(partitions=1, prefix="dlq")

    def reject_bad(call: Call, attempt: int) -> Reply:
        return Reply(422, body="cannot use this") if call.body.startswith(b"bad") else Reply(200)

    records = [
        (f"k{i % 4}".encode(), (b"bad-" if i % 5 == 0 else b"ok-") + str(i).encode(),
         [("trace", f"t{i}".encode())])
        for i in range(40)
    ]
    await kafka_broker.produce(topic, records)
    async with RecordingFunction(reject_bad) as fn:
        config = bridge_config(
            kafka_broker, topic, fn.url, dead_letter=f"{{kafka: {{topic: {dlq}}}}}"
        )
        async with running_bridge(config) as runtime:
            await ready(runtime)
            await fn.wait_calls(40)
            dead = await kafka_broker.read(dlq, 8)
            await wait_until(
                lambda: metric(runtime, "bridge_events_settled_total", disposition="delivered")
                == 32
            )
    assert len(dead) == 8
    assert all(r.value.startswith(b"bad-") for r in dead)
    for record in dead:
        headers = dict(record.headers)
        number = int(record.value.split(b"-")[1])
        assert record.key == f"k{number % 4}".encode()
        assert headers["trace"] == f"t{number}".encode()
        assert headers["bridge-trigger"] == b"orders"
        assert headers["bridge-function"] == b"fn"
        assert headers["bridge-error"] == b"http_422"
        assert headers["bridge-error-detail"] == b"cannot use this"
        assert headers["bridge-attempts"] == b"1"
        assert headers["bridge-last-status"] == b"422"
        source = headers["bridge-source"].decode()
        assert source.startswith(f"{topic}/")
        assert headers["ce_id"].decode() == source
        assert headers["ce_type"] == b"dev.triggerbridge.kafka.record"
    assert {c.event_id for c in fn.calls if c.body.startswith(b"ok")}.isdisjoint(
        {dict(r.headers)["ce_id"].decode() for r in dead}
    )
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert sum(o or 0 for o in committed.values()) == 40


# aiohttp warns when a request body over 1 MiB is given as bytes (the invoker does that);
# harmless (the transport buffers it), and ResourceWarning is silent outside tests.
@pytest.mark.filterwarnings("ignore:Sending a large body directly:ResourceWarning")
async def test_what_the_function_receives(kafka_broker: KafkaBroker) -> None:
    """Plain, binary-mode and structured CloudEvents, odd values; malformed ones dead-lettered."""
    topic = kafka_broker.topic(partitions=1)
    dlq = kafka_broker.topic(partitions=1, prefix="dlq")
    huge = bytes(range(256)) * 16 * 1024  # 4 MiB of binary
    binary_ce = [
        ("ce_specversion", b"1.0"), ("ce_id", b"their-id-1"), ("ce_source", b"/shop"),
        ("ce_type", b"com.example.order"), ("ce_tenant", b"acme"),
        ("content-type", b"application/json"), ("trace", b"t-1"),
    ]
    envelope = {"specversion": "1.0", "id": "their-id-2", "source": "/s", "type": "t.s",
                "datacontenttype": "text/plain", "data": "héllo"}
    records = [
        (b"k", b"{definitely not json", [("content-type", b"application/json")]),  # 0
        (b"k", b'{"n":1}', binary_ce),  # 1
        (None, json.dumps(envelope).encode(),
         [("content-type", b"application/cloudevents+json")]),  # 2
        (b"k", b"x", [("ce_specversion", b"1.0"), ("ce_source", b"/s"), ("ce_type", b"t")]),  # 3
        (b"k", b"y", [*binary_ce[:4], ("ce_Bad-Name", b"v")]),  # 4
        (b"\xff\x00", b"", []),  # 5: empty value, binary key
        (None, huge, [("content-type", b"application/octet-stream")]),  # 6
        (b"k", b"{broken", [("content-type", b"application/cloudevents+json")]),  # 7
    ]
    await kafka_broker.produce(topic, records)
    async with RecordingFunction() as fn:
        config = bridge_config(
            kafka_broker, topic, fn.url, dead_letter=f"{{kafka: {{topic: {dlq}}}}}"
        )
        async with running_bridge(config) as runtime:
            await ready(runtime)
            await fn.wait_calls(5)
            dead = await kafka_broker.read(dlq, 3)
    by_id = {c.event_id: c for c in fn.calls}
    assert set(by_id) == {
        f"{topic}/0/0", "their-id-1", "their-id-2", f"{topic}/0/5", f"{topic}/0/6",
    }
    # the official SDK parses every request
    events = {i: from_http(c.headers, c.body) for i, c in by_id.items()}

    invalid_json = by_id[f"{topic}/0/0"]
    assert invalid_json.body == b"{definitely not json"
    assert invalid_json.headers["Content-Type"] == "application/json"

    binary = events["their-id-1"]
    assert binary["source"] == "/shop"
    assert binary["type"] == "com.example.order"
    assert binary["tenant"] == "acme"
    assert binary["kafkatopic"] == topic
    assert binary["kafkaoffset"] == "1"
    assert by_id["their-id-1"].headers["kafka-header-trace"] == "t-1"
    assert by_id["their-id-1"].body == b'{"n":1}'

    structured = by_id["their-id-2"]
    assert structured.body == "héllo".encode()
    assert structured.headers["Content-Type"] == "text/plain"
    assert events["their-id-2"]["source"] == "/s"

    empty = events[f"{topic}/0/5"]
    assert by_id[f"{topic}/0/5"].body == b""
    assert empty["partitionkeyb64"] == base64.b64encode(b"\xff\x00").decode()
    assert empty["source"] == f"kafka://{topic}"
    assert empty["time"]

    assert by_id[f"{topic}/0/6"].body == huge

    assert [r.value for r in dead] == [b"x", b"y", b"{broken"]
    details = [dict(r.headers)["bridge-error-detail"].decode() for r in dead]
    assert "missing the required attribute 'id'" in details[0]
    assert "'Bad-Name' is not a valid CloudEvents attribute name" in details[1]
    assert "not valid JSON" in details[2]
    for record, (key, _, headers) in zip(dead, [records[3], records[4], records[7]], strict=True):
        assert dict(record.headers)["bridge-error"] == b"invalid_message"
        assert record.key == key
        assert list(record.headers[: len(headers)]) == headers  # the originals, untouched
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert committed == {0: 8}


async def test_backpressure_pauses_fetching_at_max_unsettled(kafka_broker: KafkaBroker) -> None:
    topic = kafka_broker.topic(partitions=2)
    await kafka_broker.produce(
        topic, [(f"k{i}".encode(), f"v{i}".encode(), []) for i in range(40)]
    )
    gate = asyncio.Event()

    async def held(call: Call, attempt: int) -> Reply:
        await gate.wait()
        return Reply(200)

    async with RecordingFunction(held) as fn:
        config = bridge_config(
            kafka_broker, topic, fn.url, ordering="none", concurrency=16,
            kafka_extra="max_unsettled: 5",
        )
        async with running_bridge(config) as runtime:
            connector = runtime.triggers["orders"].connector
            connector.keepalive_interval = 0.2  # type: ignore[attr-defined]
            connector.probe_interval = 0.2  # type: ignore[attr-defined]
            await ready(runtime)
            await wait_until(lambda: fn.in_flight == 5, what="5 invocations in flight")
            await wait_until(lambda: metric(runtime, "bridge_source_paused") == 1)

            def lag() -> float:
                return sum(
                    metric(runtime, "bridge_kafka_consumer_lag", topic=topic, partition=str(p))
                    for p in range(2)
                )

            await wait_until(lambda: lag() == 40, what="lag = every record (none settled)")
            await asyncio.sleep(1.0)
            assert fn.in_flight == 5  # no more taken while full
            assert metric(runtime, "bridge_events_received_total") == 5
            gate.set()
            await fn.wait_calls(40)
            await wait_until(lambda: metric(runtime, "bridge_source_paused") == 0)
            await wait_until(lambda: lag() == 0, what="lag back to 0")
            assert metric(runtime, "bridge_kafka_rebalances_total") == 1  # never left the group
    assert fn.max_in_flight == 5
    assert len(set(fn.ids())) == 40
