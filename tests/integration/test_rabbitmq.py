"""RabbitMQ triggers against the real broker: delivery, CloudEvents, dead letters.

Every test uses its own uuid-named queues and exchanges (other engineers share the
broker) and runs the real daemon as a subprocess (``python -m bridge run``).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from aio_pika.abc import AbstractIncomingMessage
from cloudevents.http import from_http

from connectors.rabbitmq_mapping import message_hash
from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.rabbitmq import (
    BROKER_URL,
    Broker,
    bridge_yaml,
    eventually,
    publish_without_message_id,
    rabbit_trigger,
)

FILE_DL = "dead-letters.jsonl"


def by_number(calls: list[Call]) -> dict[str, Call]:
    return {c.headers["amqp-header-n"]: c for c in calls if "amqp-header-n" in c.headers}


async def test_every_message_reaches_the_function_untouched(tmp_path: Path) -> None:
    bodies = {str(n): f"message {n}".encode() for n in range(300)}
    bodies["empty"] = b""
    bodies["binary"] = bytes(range(256)) + b"\xff\xfe\x00not utf-8\x80"
    bodies["large"] = bytes(range(256)) * (10 * 1024 * 1024 // 256)  # 10 MiB
    async with Broker() as broker, RecordingFunction() as fn:
        queue = await broker.queue()
        for n, body in bodies.items():
            await broker.publish(queue, body, headers={"n": n, "team": "maps", "count": 7},
                                 content_type="application/octet-stream", message_id=f"id-{n}")
        await publish_without_message_id(BROKER_URL, queue, b"anonymous", headers={
            "n": "anonymous", "x-delivery-count": 3, "tags": ["a", 1]})
        bodies["anonymous"] = b"anonymous"
        url = "amqp://${TB_RMQ_USER}:${TB_RMQ_PASSWORD}@127.0.0.1:5672/"
        config = bridge_yaml(fn.url, [rabbit_trigger("deliver", queue, url=url, prefetch=20)],
                             {"file": {"path": str(tmp_path / FILE_DL)}})
        env = {"TB_RMQ_USER": "guest", "TB_RMQ_PASSWORD": "guest"}
        async with BridgeProcess(config, tmp_path, env=env, wait_ready=True) as bridge:
            await fn.wait_for(lambda: len(by_number(fn.calls)) == len(bodies), timeout=60)
            assert bridge.metric("bridge_rabbitmq_settle_failures_total") == 0
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0, "every delivery was acked"
        assert "PRECONDITION_FAILED" not in "\n".join(bridge.log_lines), "acks were valid"
    received = by_number(fn.calls)
    assert {n: c.body for n, c in received.items()} == bodies
    assert len(set(fn.ids())) == len(bodies)
    assert received["7"].event_id == "id-7"
    call = received["anonymous"]
    assert "amqp-header-tags" not in call.headers, "arrays are not sent as HTTP headers"
    assert "amqp-priority" not in call.headers
    assert received["7"].headers["amqp-header-team"] == "maps"
    assert received["7"].headers["amqp-header-count"] == "7"
    assert received["7"].headers["Content-Type"] == "application/octet-stream"
    event = from_http(call.headers, call.body)
    assert event["type"] == "dev.triggerbridge.rabbitmq.message"
    assert event["source"] == f"amqp:///{queue}"
    assert event["amqproutingkey"] == queue
    assert event["amqpexchange"] == ""
    assert event["amqpredelivered"] == "false"
    # No message_id: the id is the documented hash (x-delivery-count left out of it).
    assert event["id"] == message_hash("", queue, {"n": "anonymous", "tags": ["a", 1]},
                                       b"anonymous")
    log = "\n".join(bridge.log_lines)
    assert "guest:guest" not in log
    assert "amqp://guest:***@127.0.0.1:5672/" in log


async def publish_samples(broker: Broker, queue: str) -> None:
    """20 plain messages, one the function refuses, CloudEvents good and malformed."""
    for n in range(20):
        await broker.publish(queue, f"order {n}".encode(), headers={"n": str(n)})
    await broker.publish(queue, b"refused", headers={"n": "bad", "fail": "yes"},
                         message_id="order-bad", content_type="text/plain")
    await broker.publish(queue, b"{}", headers={
        "n": "binary-ce", "cloudEvents:specversion": "1.0", "cloudEvents:id": "ce-1",
        "cloudEvents:source": "/orders", "cloudEvents:type": "com.example.order",
        "cloudEvents:time": "2026-01-02T03:04:05Z", "cloudEvents:tenant": "acme",
    }, content_type="application/json")
    await broker.publish(queue, b"old", headers={
        "n": "legacy-ce", "cloudEvents_specversion": "1.0", "cloudEvents_id": "ce-2",
        "cloudEvents_source": "/legacy", "cloudEvents_type": "com.example.legacy",
    })
    structured = {"specversion": "1.0", "id": "ce-3", "source": "/structured",
                  "type": "com.example.s", "subject": "s-1", "data": {"k": [1, 2]}}
    await broker.publish(queue, json.dumps(structured).encode(), headers={"n": "structured"},
                         content_type="application/cloudevents+json; charset=utf-8")
    await broker.publish(queue, b"x", headers={
        "n": "no-source", "cloudEvents:specversion": "1.0", "cloudEvents:id": "ce-4",
        "cloudEvents:type": "t"})
    await broker.publish(queue, b"y", headers={
        "n": "bad-time", "cloudEvents:specversion": "1.0", "cloudEvents:id": "ce-5",
        "cloudEvents:source": "/s", "cloudEvents:type": "t", "cloudEvents:time": "yesterday"})
    await broker.publish(queue, b"{not json", content_type="application/cloudevents+json")


async def test_permanent_failures_and_malformed_cloudevents_reach_the_dead_letter_exchange(
    tmp_path: Path,
) -> None:
    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(422, body="bad order") if call.headers.get("amqp-header-fail") else Reply()

    async with Broker() as broker, RecordingFunction(behaviour) as fn:
        queue, dlq = await broker.queue(), await broker.queue()
        dlx = await broker.exchange("direct")
        await broker.bind(dlq, dlx, routing_key="dead")
        await publish_samples(broker, queue)
        dead_letter = {"rabbitmq": {"exchange": dlx, "routing_key": "dead"}}
        config = bridge_yaml(fn.url, [rabbit_trigger("orders", queue)], dead_letter)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            dead = await broker.take(dlq, 4, timeout=20)
            await fn.wait_for(lambda: len(by_number(fn.calls)) >= 24)
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0, "originals acked after the confirmed publish"
        assert await broker.count(dlq) == 0, "nothing else was dead-lettered"
    calls = by_number(fn.calls)
    assert "bad" in calls
    assert "no-source" not in calls, "a malformed CloudEvent is never invoked"
    check_cloudevents_kept(calls, queue)
    [refused] = [m for m in dead if m.headers["bridge-error"] == "http_422"]
    check_refused(refused, queue)
    invalid = [m for m in dead if m.headers["bridge-error"] == "invalid_message"]
    details = " | ".join(str(m.headers["bridge-error-detail"]) for m in invalid)
    assert len(invalid) == 3, details
    assert "missing or empty: source" in details
    assert "time 'yesterday' is not an RFC 3339 timestamp" in details
    assert "body is not JSON" in details
    assert all(m.headers["bridge-attempts"] == "0" for m in invalid)
    assert {m.body for m in invalid} == {b"x", b"y", b"{not json"}


def check_cloudevents_kept(calls: dict[str, Call], queue: str) -> None:
    binary = from_http(calls["binary-ce"].headers, calls["binary-ce"].body)
    assert (binary["id"], binary["source"], binary["type"]) == (
        "ce-1", "/orders", "com.example.order")
    assert binary["time"] == "2026-01-02T03:04:05Z"
    assert binary["tenant"] == "acme"
    assert binary["amqproutingkey"] == queue
    legacy = from_http(calls["legacy-ce"].headers, calls["legacy-ce"].body)
    assert (legacy["id"], legacy["source"]) == ("ce-2", "/legacy")
    s_call = calls["structured"]
    s_event = from_http(s_call.headers, s_call.body)
    assert (s_event["id"], s_event["subject"]) == ("ce-3", "s-1")
    assert json.loads(s_call.body) == {"k": [1, 2]}
    assert s_call.headers["Content-Type"] == "application/json"


def check_refused(refused: AbstractIncomingMessage, queue: str) -> None:
    assert refused.body == b"refused"
    assert refused.content_type == "text/plain"
    assert refused.message_id == "order-bad"
    assert refused.delivery_mode == 2
    h = refused.headers
    assert (h["n"], h["fail"]) == ("bad", "yes")
    assert h["bridge-trigger"] == "orders"
    assert h["bridge-function"] == "fn"
    assert h["bridge-attempts"] == "1"
    assert h["bridge-last-status"] == "422"
    assert h["bridge-error-detail"] == "bad order"
    assert h["bridge-source"] == queue
    assert h["cloudEvents:id"] == "order-bad"
    assert h["cloudEvents:source"] == f"amqp:///{queue}"
    assert h["cloudEvents:type"] == "dev.triggerbridge.rabbitmq.message"
    assert h["cloudEvents:amqproutingkey"] == queue


async def test_rabbitmq_sink_serves_a_cron_trigger_and_holds_unroutable_dead_letters(
    tmp_path: Path,
) -> None:
    async with Broker() as broker, RecordingFunction(lambda c, n: Reply(422)) as fn:
        dlx, dlq = await broker.exchange("fanout"), broker.name("q")
        dead_letter = {"rabbitmq": {"exchange": dlx, "url": "amqp://guest:guest@127.0.0.1:5672/"}}
        cron = {"name": "tick", "cron": {"schedule": "* * * * * *", "data": {"n": 1}}}
        config = bridge_yaml(fn.url, [cron], dead_letter)
        # Not wait_ready: a blocked dead letter makes /readyz 503, maybe before it is asked.
        async with BridgeProcess(config, tmp_path) as bridge:
            # No queue is bound yet: the broker returns the dead letter (NO_ROUTE), a
            # refusal: the tick stays unsettled and blocked (shown, retried), not lost.
            await eventually(lambda: bridge.metric("bridge_dead_letter_write_failures_total") > 0,
                             what="a failed (unroutable) dead-letter write")
            await eventually(lambda: bridge.metric("bridge_dead_letter_blocked") > 0,
                             what="the tick shown as blocked")
            assert bridge.get_status("/readyz") == 503
            await broker.queue(name=dlq)
            await broker.bind(dlq, dlx)
            [first, *_] = await broker.take(dlq, 1, timeout=20)
            assert await bridge.terminate() == 0
    assert first.headers["bridge-trigger"] == "tick"
    assert first.headers["bridge-error"] == "http_422"
    assert first.headers["cloudEvents:source"] == "/cron/tick"
    assert first.headers["cloudEvents:id"].startswith("tick/")
    assert first.message_id == first.headers["cloudEvents:id"]
    assert first.content_type == "application/json"
    assert json.loads(first.body) == {"n": 1}
    assert fn.calls


async def test_key_ordering_by_header_keeps_per_key_order(tmp_path: Path) -> None:
    in_flight: dict[str, int] = {}
    overlap: list[str] = []

    async def behaviour(call: Call, attempt: int) -> Reply:
        key = call.headers["amqp-header-customer"]
        in_flight[key] = in_flight.get(key, 0) + 1
        if in_flight[key] > 1:
            overlap.append(key)
        await asyncio.sleep(0.01)
        in_flight[key] -= 1
        return Reply()

    async with Broker() as broker, RecordingFunction(behaviour) as fn:
        queue = await broker.queue()
        for n in range(90):
            await broker.publish(queue, str(n).encode(), headers={"customer": "abc"[n % 3]})
        trigger = rabbit_trigger("ordered", queue, prefetch=30, ordering="key",
                                 ordering_header="customer")
        config = bridge_yaml(fn.url, [trigger], {"file": {"path": str(tmp_path / FILE_DL)}})
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await fn.wait_calls(90, timeout=30)
            assert await bridge.terminate() == 0
    assert overlap == [], "one message at a time per key"
    for key in "abc":
        sequence = [int(c.body) for c in fn.calls if c.headers["amqp-header-customer"] == key]
        assert sequence == sorted(sequence)
        assert len(sequence) == 30
    assert fn.max_in_flight > 1, "different keys ran in parallel"
