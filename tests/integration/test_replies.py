"""Replies through the real daemon (``python -m bridge run``): a function's answer
published as a CloudEvent to a Kafka topic (Tansu) or a RabbitMQ exchange (the real
server) before the source message is committed or acked; refusals dead-lettered as
``reply_failed``; a reply broker that is down pauses the trigger until it is back; a
reply target that does not exist stops the start-up with one line naming it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaProducer

import tests.support.kafka
from tests.support.daemon import BridgeProcess, free_port
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.kafka import (
    KafkaBroker,
    bridge_config,
    start_broker,
    stop_broker,
    wait_until,
)
from tests.support.rabbitmq import Broker, bridge_yaml, rabbit_trigger

kafka_broker = tests.support.kafka.kafka_broker


def answers(call: Call, attempt: int) -> Reply:
    """``plain``: JSON derived attributes; ``own``: the function's own ce-* headers;
    ``quiet``: 204 without a body; ``big``: 100 bytes."""
    if call.body == b"own":
        return Reply(200, body="own answer", headers={
            "Content-Type": "text/plain", "ce-id": "invoice-7",
            "ce-type": "com.example.invoiced", "ce-note": "caf%C3%A9",
        })
    if call.body == b"quiet":
        return Reply(204, body="")
    if call.body == b"big":
        return Reply(200, body="x" * 100)
    return Reply(200, body=json.dumps({"for": call.event_id}),
                 headers={"Content-Type": "application/json"})


def headers_of(record: object) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}  # type: ignore[attr-defined]


async def test_kafka_answers_are_published_to_the_reply_topic_before_the_commit(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic()
    results = kafka_broker.topic(prefix="results")
    sent = await kafka_broker.produce(topic, [
        (b"k1", b"plain", [("traceparent", b"x")]), (b"k2", b"own", []), (b"k3", b"quiet", []),
    ])
    async with RecordingFunction(answers) as fn:
        config = bridge_config(kafka_broker, topic, fn.url) + (
            f"    reply: {{kafka: {{topic: {results}}}}}\n")
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            replies = await kafka_broker.read(results, 2)
            await wait_until(
                lambda: bridge.metric("bridge_events_settled_total", disposition="delivered") == 3,
                20, "all three settled")
            assert bridge.metric("bridge_replies_published_total", trigger="orders") == 2
            assert await bridge.terminate() == 0
    plain, own = sorted(replies, key=lambda r: r.offset)
    first = f"{topic}/{sent[0][0]}/{sent[0][1]}"
    assert plain.value == json.dumps({"for": first}).encode()
    assert plain.key == b"k1"  # the source record's key: replies of a key stay in order
    plain_headers = headers_of(plain)
    assert plain_headers.pop("ce_time")
    assert plain_headers == {
        "ce_specversion": "1.0", "ce_id": f"{first}/reply", "ce_source": "trigger-bridge://orders",
        "ce_type": "dev.triggerbridge.kafka.record.reply",
        "content-type": "application/json; charset=utf-8",
    }
    own_headers = headers_of(own)
    assert (own.value, own.key) == (b"own answer", b"k2")
    assert own_headers["ce_id"] == "invoice-7"
    assert own_headers["ce_type"] == "com.example.invoiced"
    assert own_headers["ce_note"] == "café"
    assert own_headers["ce_source"] == "trigger-bridge://orders"
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert committed == {0: 3}


async def test_rabbitmq_answers_are_published_to_the_reply_exchange_before_the_ack(
    tmp_path: Path,
) -> None:
    async with Broker() as rabbit, RecordingFunction(answers) as fn:
        source, results = await rabbit.queue(), await rabbit.queue()
        exchange = await rabbit.exchange("direct")
        await rabbit.bind(results, exchange, routing_key="done")
        trigger = rabbit_trigger("jobs", source)
        trigger["reply"] = {"rabbitmq": {"exchange": exchange, "routing_key": "done"},
                            "type": "com.example.job.done"}
        config = bridge_yaml(fn.url, [trigger], {"file": {"path": str(tmp_path / "dl.jsonl")}})
        for body in (b"plain", b"quiet"):
            await rabbit.publish(source, body, message_id=f"m-{body.decode()}")
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            [reply] = await rabbit.take(results, 1, timeout=20)
            await wait_until(lambda: bridge.metric(
                "bridge_events_settled_total", disposition="delivered") == 2, 20)
            assert await bridge.terminate() == 0
        assert await rabbit.count(source) == 0  # both acked (unacked ones would be back)
        assert await rabbit.count(results) == 0  # the 204 published nothing
    assert reply.body == json.dumps({"for": "m-plain"}).encode()
    assert reply.message_id == "m-plain/reply"
    assert reply.content_type == "application/json; charset=utf-8"
    assert reply.delivery_mode == 2
    headers = dict(reply.headers)
    assert headers.pop("cloudEvents:time")
    assert headers == {
        "cloudEvents:specversion": "1.0", "cloudEvents:id": "m-plain/reply",
        "cloudEvents:source": "trigger-bridge://jobs", "cloudEvents:type": "com.example.job.done",
    }


async def test_refused_and_oversized_replies_dead_letter_the_event_as_reply_failed(
    tmp_path: Path,
) -> None:
    dead_letters = tmp_path / "dl.jsonl"
    async with Broker() as rabbit, RecordingFunction(answers) as fn:
        source, unrouted_source, results = [await rabbit.queue() for _ in range(3)]
        bound, unbound = await rabbit.exchange("direct"), await rabbit.exchange("direct")
        await rabbit.bind(results, bound, routing_key="done")
        sized = rabbit_trigger("sized", source)
        sized["reply"] = {"rabbitmq": {"exchange": bound, "routing_key": "done"},
                          "max_size": 64}
        unrouted = rabbit_trigger("unrouted", unrouted_source)
        unrouted["reply"] = {"rabbitmq": {"exchange": unbound, "routing_key": "nowhere"}}
        config = bridge_yaml(fn.url, [sized, unrouted], {"file": {"path": str(dead_letters)}})
        await rabbit.publish(source, b"plain", message_id="small")
        await rabbit.publish(source, b"big", message_id="large")
        await rabbit.publish(unrouted_source, b"plain", message_id="lost")
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            [reply] = await rabbit.take(results, 1, timeout=20)
            await wait_until(lambda: dead_letters.exists()
                             and len(dead_letters.read_text().splitlines()) == 2, 20)
            assert bridge.metric("bridge_dead_letters_total", reason="reply_failed") == 2
            assert await bridge.terminate() == 0
        assert [await rabbit.count(q) for q in (source, unrouted_source)] == [0, 0]
    assert reply.message_id == "small/reply"
    records = {r["cloudevent"]["id"]: r for r in map(json.loads, dead_letters.read_text()
                                                       .splitlines())}
    assert set(records) == {"large", "lost"}
    for record in records.values():
        assert record["bridge-error"] == "reply_failed"
        assert record["bridge-last-status"] == 200
    assert "larger than reply.max_size (64 bytes)" in records["large"]["bridge-error-detail"]
    assert "NO_ROUTE" in records["lost"]["bridge-error-detail"]


async def test_a_reply_broker_that_is_down_pauses_the_trigger_until_it_is_back(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Nothing is committed while no reply can be published; once the reply broker
    answers, every reply goes out and the offsets follow."""
    topic = kafka_broker.topic()
    await kafka_broker.produce(topic, [(f"k{i}".encode(), b"plain", []) for i in range(5)])
    reply_port = free_port()
    reply_broker = None
    async with RecordingFunction(answers) as fn:
        reply = f"{{kafka: {{topic: results, bootstrap_servers: 127.0.0.1:{reply_port}}}}}"
        config = bridge_config(kafka_broker, topic, fn.url, kafka_extra="max_unsettled: 5") + (
            f"    reply: {reply}\n")
        try:
            async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
                await fn.wait_calls(5)
                await wait_until(
                    lambda: bridge.metric("bridge_reply_publish_failures_total") >= 2, 20)
                assert bridge.metric("bridge_events_settled_total", disposition="delivered") == 0
                committed = await kafka_broker.committed(f"g-{topic}", topic)
                assert (committed[0] or 0) == 0  # nothing past the first record
                reply_broker = start_broker(tmp_path / "replies.log", port=reply_port)
                await wait_until(lambda: bridge.metric(
                    "bridge_events_settled_total", disposition="delivered") == 5, 40)
                replies = await reply_broker.read("results", 5)
                assert await bridge.terminate() == 0
        finally:
            if reply_broker is not None:
                stop_broker(reply_broker)
    assert len(fn.calls) == 5  # the function was not invoked again meanwhile
    assert sorted(r.key for r in replies) == [f"k{i}".encode() for i in range(5)]
    assert (await kafka_broker.committed(f"g-{topic}", topic)) == {0: 5}
    errors = [line for line in bridge.logs() if line.get("event") ==
              "reply not published; event stays unsettled"]
    assert errors
    assert f"127.0.0.1:{reply_port}" in str(errors[0]["error"])


def run_daemon(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bridge.yaml"
    path.write_text(config)
    env = {**os.environ, "BRIDGE_ADMIN_PORT": "0", "BRIDGE_ADMIN_HOST": "127.0.0.1"}
    return subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(path)], env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )


async def test_a_reply_topic_that_does_not_exist_is_one_line_exit_2_and_nothing_is_consumed(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic()
    await kafka_broker.produce(topic, [(b"k", b"plain", [])])
    async with RecordingFunction(answers) as fn:
        config = bridge_config(kafka_broker, topic, fn.url) + (
            "    reply: {kafka: {topic: no-such-results}}\n")
        done = run_daemon(config, tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"triggers[0].reply.kafka.topic: kafka topic 'no-such-results' does not exist at "
        f"{kafka_broker.bootstrap}"
    ]
    assert fn.calls == []
    assert (await kafka_broker.committed(f"g-{topic}", topic))[0] is None
    producer = AIOKafkaProducer(bootstrap_servers=kafka_broker.bootstrap)
    await producer.start()
    try:  # the check did not create the topic (Tansu creates topics a request names)
        cluster = await producer.client.fetch_all_metadata()
        assert "no-such-results" not in cluster.topics()
    finally:
        await producer.stop()


async def test_a_reply_exchange_that_does_not_exist_is_one_line_exit_2(tmp_path: Path) -> None:
    async with Broker() as rabbit, RecordingFunction(answers) as fn:
        source = await rabbit.queue()
        missing = rabbit.name("x")
        await rabbit.publish(source, b"plain", message_id="kept")
        trigger = rabbit_trigger("jobs", source)
        trigger["reply"] = {"rabbitmq": {"exchange": missing}}
        done = run_daemon(
            bridge_yaml(fn.url, [trigger], {"file": {"path": str(tmp_path / "dl")}}), tmp_path)
        assert await rabbit.count(source) == 1  # still there, untouched
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"triggers[0].reply.rabbitmq.exchange: no exchange '{missing}' ")
    assert "guest:guest" not in line
    assert fn.calls == []
