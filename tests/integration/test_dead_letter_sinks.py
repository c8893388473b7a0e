"""Dead-letter sinks through the real daemon (issue 15, items 5-7).

- A sink is its real connection: two triggers whose sink URLs differ only in the virtual
  host publish to their own virtual host; a rotated password takes effect on reload and
  the old connection is closed.
- A dead letter the sink refuses for good goes to ``dead_letter.fallback``; without one
  the event is blocked loudly (gauge, ``/readyz``, an error line per try with the
  broker's reason) and goes through once the sink is fixed or a fallback is added.
- The file sink never leaves a record glued to a torn line.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from tests.support import kafka as kafka_support
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction, always
from tests.support.kafka import KafkaBroker, bridge_config
from tests.support.rabbitmq import (
    Broker,
    bridge_yaml,
    connections,
    eventually,
    rabbit_trigger,
    rabbitmqctl,
    vhost,
)

kafka_broker = kafka_support.kafka_broker

EVERY_SECOND = {"schedule": "* * * * * *"}
BLOCKED = "dead letter refused for good; event blocked until the sink takes it " \
          "(fix the sink, or set dead_letter.fallback)"


def readyz(bridge: BridgeProcess) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{bridge.admin_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as err:
        return int(err.code), json.loads(err.read())


def file_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def body(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["body"])


# --- item 5: a sink is its real connection --------------------------------------------------


async def test_sinks_whose_urls_differ_only_in_the_virtual_host_publish_to_their_own(
    tmp_path: Path,
) -> None:
    async with vhost() as first, vhost() as second, RecordingFunction(always(422)) as fn:
        urls = {name: f"amqp://guest:guest@127.0.0.1:5672/{v}"
                for name, v in (("a", first), ("b", second))}
        async with Broker(urls["a"]) as broker_a, Broker(urls["b"]) as broker_b:
            exchange = f"tb-test-x-{uuid.uuid4().hex[:12]}"  # the same name in both
            queues = {}
            for name, broker in (("a", broker_a), ("b", broker_b)):
                await broker.exchange("fanout", name=exchange)
                queues[name] = await broker.queue()
                await broker.bind(queues[name], exchange)
            triggers = [
                {"name": name, "cron": EVERY_SECOND,
                 "dead_letter": {"rabbitmq": {"exchange": exchange, "url": urls[name]}}}
                for name in ("a", "b")
            ]
            config = bridge_yaml(fn.url, triggers, {"file": {"path": str(tmp_path / "x")}})
            async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
                in_a = await broker_a.take(queues["a"], 2, timeout=20)
                in_b = await broker_b.take(queues["b"], 2, timeout=20)
                assert await bridge.terminate() == 0
                await asyncio.sleep(0.3)  # whatever was on its way has landed
            in_a += await broker_a.take(queues["a"], await broker_a.count(queues["a"]))
            in_b += await broker_b.take(queues["b"], await broker_b.count(queues["b"]))
    assert {m.headers["bridge-trigger"] for m in in_a} == {"a"}
    assert {m.headers["bridge-trigger"] for m in in_b} == {"b"}


async def test_a_rotated_password_takes_effect_on_reload_and_the_old_connection_closes(
    tmp_path: Path,
) -> None:
    user = f"tb-test-u-{uuid.uuid4().hex[:8]}"
    async with vhost(user, "first-Pw") as v, RecordingFunction(always(422)) as fn, \
            Broker(f"amqp://guest:guest@127.0.0.1:5672/{v}") as broker:
        exchange = await broker.exchange("fanout")
        queue = await broker.queue()
        await broker.bind(queue, exchange)

        def config(password: str) -> str:
            url = f"amqp://{user}:{password}@127.0.0.1:5672/{v}"
            trigger = {"name": "t", "cron": EVERY_SECOND,
                       "dead_letter": {"rabbitmq": {"exchange": exchange, "url": url}}}
            return bridge_yaml(fn.url, [trigger], {"file": {"path": str(tmp_path / "x")}})

        env = {"BRIDGE_RELOAD_INTERVAL": "0"}  # reload on SIGHUP only
        async with BridgeProcess(config("first-Pw"), tmp_path, env, wait_ready=True) as bridge:
            await broker.take(queue, 1, timeout=20)
            [old] = await asyncio.to_thread(connections, user)
            await asyncio.to_thread(rabbitmqctl, "change_password", user, "second-Pw")
            bridge.config_path.write_text(config("second-Pw"))
            assert bridge.process is not None
            bridge.process.send_signal(signal.SIGHUP)
            await eventually(
                lambda: any(line.get("event") == "dead-letter sink closed: no trigger uses it"
                            for line in bridge.logs()),
                what="the old sink closed on reload")

            async def replaced() -> bool:
                ports = [c["peer_port"] for c in await asyncio.to_thread(connections, user)]
                return ports not in ([], [old["peer_port"]])

            await eventually(replaced, what="a new connection")
            now = await asyncio.to_thread(connections, user)
            assert old["peer_port"] not in [c["peer_port"] for c in now]
            assert len(now) == 1
            # The broker drops it: the sink reconnects, with the new password.
            await asyncio.to_thread(rabbitmqctl, "close_all_user_connections", user, "test")
            drained = await broker.count(queue)
            await broker.take(queue, drained + 2, timeout=20)
            assert await bridge.terminate() == 0
    text = "\n".join(bridge.log_lines)
    assert "first-Pw" not in text
    assert "second-Pw" not in text


# --- item 6: refused for good -----------------------------------------------------------------


async def test_an_exchange_that_does_not_exist_blocks_loudly_until_it_is_created(
    tmp_path: Path,
) -> None:
    async with Broker() as broker, RecordingFunction(always(422)) as fn:
        queue = await broker.queue(durable=True)
        for n in range(5):
            await broker.publish(queue, f"m{n}".encode(), message_id=f"m{n}")
        missing = broker.name("x")  # deleted at the end; not declared yet
        config = bridge_yaml(fn.url, [rabbit_trigger("jobs", queue, prefetch=5)],
                             {"rabbitmq": {"exchange": missing}})
        async with BridgeProcess(config, tmp_path) as bridge:
            await eventually(lambda: bridge.metric("bridge_dead_letter_blocked",
                                                   trigger="jobs") == 5,
                             timeout=30, what="5 blocked dead letters")
            status, ready = readyz(bridge)
            assert status == 503
            assert ready["triggers"]["dead_letter:jobs"] is False
            assert ready["triggers"]["jobs"] is True  # the source itself is fine
            lines = [line for line in bridge.logs() if line.get("event") == BLOCKED]
            assert {line["event_id"] for line in lines} == {f"m{n}" for n in range(5)}
            assert all(f"no exchange '{missing}'" in str(line["error"]) for line in lines)
            assert all(line["trigger"] == "jobs" for line in lines)
            assert bridge.metric("bridge_events_settled_total", trigger="jobs",
                                 disposition="dead_lettered") == 0
            # The operator creates the exchange and a queue behind it.
            await broker.exchange("fanout", name=missing)
            dead = await broker.queue()
            await broker.bind(dead, missing)
            taken = await broker.take(dead, 5, timeout=40)
            await eventually(lambda: bridge.metric("bridge_dead_letter_blocked",
                                                   trigger="jobs") == 0, what="unblocked")
            assert readyz(bridge)[0] == 200
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0  # all acked after the confirmed dead letters
    assert sorted(m.message_id or "" for m in taken) == [f"m{n}" for n in range(5)]
    assert {m.headers["bridge-error"] for m in taken} == {"http_422"}


async def test_refused_dead_letters_go_to_the_fallback_missing_exchange(tmp_path: Path) -> None:
    await refused_to_the_fallback(tmp_path, declared=False, reason="no exchange")


async def test_refused_dead_letters_go_to_the_fallback_no_queue_bound(tmp_path: Path) -> None:
    await refused_to_the_fallback(tmp_path, declared=True, reason="NO_ROUTE")


async def refused_to_the_fallback(tmp_path: Path, declared: bool, reason: str) -> None:
    fallback = tmp_path / "refused.jsonl"
    async with Broker() as broker, RecordingFunction(always(422)) as fn:
        queue = await broker.queue(durable=True)
        for n in range(3):
            await broker.publish(queue, f"m{n}".encode(), message_id=f"m{n}")
        exchange = await broker.exchange("direct") if declared else broker.name("x")
        dead_letter = {"rabbitmq": {"exchange": exchange},
                       "fallback": {"file": {"path": str(fallback)}}}
        config = bridge_yaml(fn.url, [rabbit_trigger("jobs", queue, prefetch=5)], dead_letter)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await eventually(lambda: len(file_records(fallback)) == 3, what="3 in the fallback")
            await eventually(lambda: bridge.metric("bridge_events_settled_total", trigger="jobs",
                                                   disposition="dead_lettered") == 3)
            assert bridge.metric("bridge_dead_letter_fallbacks_total", trigger="jobs") == 3
            assert bridge.metric("bridge_dead_letter_blocked", trigger="jobs") == 0
            assert readyz(bridge)[0] == 200
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0
    records = file_records(fallback)
    assert sorted(body(r) for r in records) == [b"m0", b"m1", b"m2"]
    assert all(reason in r["bridge-sink-refused"] for r in records)
    assert {r["bridge-error"] for r in records} == {"http_422"}


async def test_a_record_too_large_for_the_dead_letter_topic_blocks_until_a_fallback_is_added(
    kafka_broker: KafkaBroker, tmp_path: Path,
) -> None:
    topic = kafka_broker.topic()
    dlq = kafka_broker.topic(prefix="dlq")
    large = b"L" * 8192
    await kafka_broker.produce(topic, [(b"k1", b"small", []), (b"k2", large, [])])
    fallback = tmp_path / "refused.jsonl"
    sink = f"{{kafka: {{topic: {dlq}, max_request_size: 4096}}"
    async with RecordingFunction(always(422)) as fn:
        config = bridge_config(kafka_broker, topic, fn.url, dead_letter=sink + "}")
        env = {"BRIDGE_RELOAD_INTERVAL": "0"}
        async with BridgeProcess(config, tmp_path, env) as bridge:
            [small] = await kafka_broker.read(dlq, 1, timeout=30)
            await eventually(lambda: bridge.metric("bridge_dead_letter_blocked",
                                                   trigger="orders") == 1, timeout=30)
            status, ready = readyz(bridge)
            assert (status, ready["triggers"]["dead_letter:orders"]) == (503, False)
            [line, *_] = [line for line in bridge.logs() if line.get("event") == BLOCKED]
            assert line["event_id"] == f"{topic}/0/1"
            assert "MessageSizeTooLargeError" in str(line["error"])
            # The operator adds a fallback and reloads: the trigger restarts, Kafka
            # redelivers the uncommitted record, the topic refuses it, the file takes it.
            with_fallback = f"{sink}, fallback: {{file: {{path: '{fallback}'}}}}}}"
            bridge.config_path.write_text(
                bridge_config(kafka_broker, topic, fn.url, dead_letter=with_fallback))
            assert bridge.process is not None
            bridge.process.send_signal(signal.SIGHUP)
            await eventually(lambda: len(file_records(fallback)) == 1, timeout=40,
                             what="the large record in the fallback")
            await eventually(lambda: readyz(bridge)[0] == 200, timeout=20)
            assert bridge.metric("bridge_dead_letter_blocked", trigger="orders") == 0
            assert await bridge.terminate() == 0
    [record] = file_records(fallback)
    assert body(record) == large
    assert "MessageSizeTooLargeError" in record["bridge-sink-refused"]
    assert small.value == b"small"
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert committed == {0: 2}


# --- item 7: the file sink in the daemon ------------------------------------------------------


async def test_the_first_record_after_a_torn_line_starts_a_line_of_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dead.jsonl"
    torn = '{"bridge-trigger": "t", "body": "dG9y'  # a writer died mid-record
    path.write_text(torn)
    async with RecordingFunction(always(422)) as fn:
        config = bridge_yaml(fn.url, [{"name": "t", "cron": EVERY_SECOND}],
                             {"file": {"path": str(path)}})
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await eventually(lambda: len(path.read_text().splitlines()) >= 3, what="2 records")
            assert await bridge.terminate() == 0
    first, *rest = path.read_text().split("\n")
    assert first == torn
    assert rest[-1] == ""
    records = [json.loads(line) for line in rest[:-1]]
    assert {r["bridge-trigger"] for r in records} == {"t"}
