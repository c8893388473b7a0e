"""RabbitMQ triggers under faults: broker restart, SIGKILL, replicas, quorum queues,
bad input, TLS. Real broker, real daemon subprocesses, uuid-named queues."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply, always
from tests.support.rabbitmq import (
    Broker,
    bridge_yaml,
    broker_stopped,
    eventually,
    rabbit_trigger,
)


def file_dead_letters(tmp_path: Path) -> dict[str, object]:
    return {"file": {"path": str(tmp_path / "dead-letters.jsonl")}}


def unique(fn: RecordingFunction) -> set[str]:
    return set(fn.ids())


async def ready_status(bridge: BridgeProcess) -> int:
    return await asyncio.to_thread(bridge.get_status, "/readyz")


@pytest.mark.broker_restart
async def test_broker_restart_mid_stream_loses_nothing(tmp_path: Path) -> None:
    bodies = [f"r{n}".encode() for n in range(400)]
    async with Broker() as broker, RecordingFunction(always(200, delay=0.05)) as fn:
        queue = await broker.queue(durable=True)
        await broker.publish_many(queue, bodies)
        trigger = rabbit_trigger("restart", queue, prefetch=5)
        config = bridge_yaml(fn.url, [trigger], file_dead_letters(tmp_path))
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await fn.wait_calls(30, timeout=20)
            async with broker_stopped():
                await eventually(lambda: bridge.get_status("/readyz") == 503, timeout=10,
                                 what="readiness to drop while the broker is down")
                stopped_at = len(unique(fn))
            restarted = time.time()
            await fn.wait_for(lambda: len(unique(fn)) == len(bodies), timeout=60)
            await broker.publish_many(queue, [b"after-1", b"after-2"])
            await fn.wait_for(lambda: {b"after-1", b"after-2"} <= {c.body for c in fn.calls})
            await eventually(lambda: bridge.get_status("/readyz") == 200, what="ready again")
            assert bridge.metric("bridge_rabbitmq_connection_losses_total") >= 1
            assert bridge.metric("bridge_rabbitmq_reconnects_total") >= 1
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0
    assert stopped_at < len(bodies), "the broker went down mid-stream"
    assert {c.body for c in fn.calls} == {*bodies, b"after-1", b"after-2"}
    resumed = {c.body for c in fn.calls if c.received > restarted} & set(bodies)
    assert resumed, "consumption of the original messages resumed after the restart"


async def test_sigkilled_bridge_restarted_loses_nothing(tmp_path: Path) -> None:
    bodies = [f"k{n}".encode() for n in range(400)]
    async with Broker() as broker, RecordingFunction(always(200, delay=0.01)) as fn:
        queue = await broker.queue()
        await broker.publish_many(queue, bodies)
        config = bridge_yaml(fn.url, [rabbit_trigger("killed", queue, prefetch=20)],
                             file_dead_letters(tmp_path))
        first = BridgeProcess(config, tmp_path, wait_ready=True)
        async with first:
            await fn.wait_calls(100, timeout=20)
            await first.kill()
        killed_at = len(fn.calls)
        assert killed_at < len(bodies), "killed mid-stream"
        async with BridgeProcess(config, tmp_path, wait_ready=True) as second:
            await fn.wait_for(lambda: len(unique(fn)) == len(bodies), timeout=60)
            assert await second.terminate() == 0
        assert await broker.count(queue) == 0
    assert {c.body for c in fn.calls} == set(bodies)
    redelivered = [c for c in fn.calls if c.headers.get("ce-amqpredelivered") == "true"]
    assert redelivered, "the deliveries unacked at the kill came back"
    ids_by_body: dict[bytes, set[str]] = {}
    for call in fn.calls:
        ids_by_body.setdefault(call.body, set()).add(call.event_id)
    assert all(len(ids) == 1 for ids in ids_by_body.values()), "a redelivery keeps its id"


async def test_two_replicas_share_one_queue(tmp_path: Path) -> None:
    bodies = [f"s{n}".encode() for n in range(300)]
    async with Broker() as broker, RecordingFunction(always(200, delay=0.01)) as fn:
        queue = await broker.queue()
        config = bridge_yaml(fn.url, [rabbit_trigger("shared", queue, prefetch=5)],
                             file_dead_letters(tmp_path))
        async with BridgeProcess(config, tmp_path, wait_ready=True) as one, \
                BridgeProcess(config, tmp_path, wait_ready=True) as two:
            await broker.publish_many(queue, bodies)
            await fn.wait_for(lambda: len(unique(fn)) == len(bodies), timeout=30)
            counts = [b.metric("bridge_events_settled_total") for b in (one, two)]
            await asyncio.gather(one.terminate(), two.terminate())
    assert sum(counts) == len(bodies)
    assert min(counts) > 0, f"both replicas consumed: {counts}"
    assert len(fn.calls) == len(bodies), "competing consumers: each message once"


async def test_quorum_queue_delivery_limit_and_dlx_with_bridge_retries(tmp_path: Path) -> None:
    """The bridge's own retries do not count as broker redeliveries; after its last
    attempt it rejects (reject mode) and the quorum queue's DLX takes the message. A
    message returned more often than x-delivery-limit (crashing consumers) goes to the
    same DLX by the broker's hand; one returned below the limit is delivered."""

    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(503) if call.body.startswith(b"poison") else Reply()

    async with Broker() as broker, RecordingFunction(behaviour) as fn:
        dlx = await broker.exchange("fanout")
        dlq = await broker.queue()
        await broker.bind(dlq, dlx)
        queue = broker.name("q")
        arguments = {"x-queue-type": "quorum", "x-dead-letter-exchange": dlx,
                     "x-delivery-limit": 2}
        await broker.queue(durable=True, arguments=arguments, name=queue)
        await broker.publish(queue, b"worn")
        await broker.requeue(queue, b"worn", times=3)  # over the limit: the broker's DLX
        await broker.publish(queue, b"crashed")
        await broker.requeue(queue, b"crashed", times=1)
        await broker.publish_many(queue, [*(f"ok{n}".encode() for n in range(20)), b"poison"])
        trigger = rabbit_trigger("quorum", queue, declare={"durable": True,
                                                          "arguments": arguments})
        config = bridge_yaml(fn.url, [trigger], {"rabbitmq": {"reject": True}})
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            dead = await broker.take(dlq, 2, timeout=20)
            await fn.wait_for(lambda: len({c.body for c in fn.calls}) == 22)
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0
    assert sorted(m.body for m in dead) == [b"poison", b"worn"]
    poison = next(m for m in dead if m.body == b"poison")
    assert poison.headers["x-death"][0]["reason"] == "rejected"
    poison_calls = [c for c in fn.calls if c.body == b"poison"]
    assert len(poison_calls) == 3, "three bridge attempts, one broker delivery"
    assert {c.headers["ce-amqpredelivered"] for c in poison_calls} == {"false"}
    assert len({c.event_id for c in poison_calls}) == 1
    crashed = [c for c in fn.calls if c.body == b"crashed"]
    assert [c.headers["ce-amqpredelivered"] for c in crashed] == ["true"]
    assert b"worn" not in {c.body for c in fn.calls}


async def test_bad_input_is_reported_retried_and_recovers(tmp_path: Path) -> None:
    async with Broker() as broker, RecordingFunction() as fn:
        good, missing = await broker.queue(), broker.name("q")
        triggers = [
            rabbit_trigger("good", good),
            rabbit_trigger("missing-queue", missing),
            rabbit_trigger("bad-login", good,
                           url="amqp://guest:wrong-secret-4711@127.0.0.1:5672/"),
            rabbit_trigger("bad-vhost", good, url="amqp://guest:guest@127.0.0.1:5672/nowhere"),
        ]
        config = bridge_yaml(fn.url, triggers, file_dead_letters(tmp_path))
        async with BridgeProcess(config, tmp_path) as bridge:
            def failed(trigger: str) -> list[str]:
                return [str(e.get("error")) for e in bridge.logs()
                        if e.get("event") == "source failed" and e.get("trigger") == trigger]

            await eventually(lambda: all(failed(t) for t in ("missing-queue", "bad-login",
                                                             "bad-vhost")), what="errors")
            assert await ready_status(bridge) == 503
            assert f"no queue '{missing}'" in failed("missing-queue")[0]
            assert "add a 'declare' section" in failed("missing-queue")[0]
            assert "refused the login" in failed("bad-login")[0]
            assert "guest:***@" in failed("bad-login")[0]
            assert "refused virtual host 'nowhere'" in failed("bad-vhost")[0]
            assert bridge.metric("bridge_connector_ready", trigger="good") == 1
            assert bridge.metric("bridge_connector_ready", trigger="missing-queue") == 0
            await broker.queue(name=missing)
            await broker.publish(missing, b"late")
            await fn.wait_for(lambda: b"late" in {c.body for c in fn.calls}, timeout=30)
            await asyncio.sleep(3)  # let the bad triggers retry at least once more
            assert len(failed("bad-login")) >= 2, "retried"
            await bridge.terminate()
    assert "wrong-secret-4711" not in "\n".join(bridge.log_lines)
