"""Batch invocations through the real daemon (``python -m bridge run``) against real
Tansu and RabbitMQ: partial failure, per-key order across batches, the max_wait flush
at a low rate, and a crash mid-batch that loses nothing.

The function is a real HTTP server in the test's loop that reads each batch as the
JSON array it is and answers ``{"failed": [...]}`` as told.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tests.support import kafka as kafka_support
from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.kafka import KafkaBroker, bridge_config, wait_until
from tests.support.rabbitmq import Broker, bridge_yaml, eventually, rabbit_trigger

kafka_broker = kafka_support.kafka_broker

BATCH = "application/cloudevents-batch+json"


@dataclass
class BatchFunction:
    """Decides each batch's answer and keeps what it saw, in arrival order.

    ``fail(id, sent_before)`` says whether to name an event as failed (``sent_before``:
    how often it arrived before). ``sends`` lists (arrival number, id) of every event
    received; ``handled`` the ids answered as handled.
    """

    fail: Callable[[str, int], bool] = lambda event_id, before: False
    delay: float = 0.0
    sends: list[tuple[int, str]] = field(default_factory=list)
    handled: dict[str, int] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, call: Call, n: int) -> Reply:
        assert call.headers["Content-Type"] == BATCH
        members = json.loads(call.body)
        arrival = len(self.sizes)
        self.sizes.append(len(members))
        self.arrivals.append(time.time())
        failed = []
        for member in members:
            event_id = member["id"]
            before = sum(1 for _, i in self.sends if i == event_id)
            self.sends.append((arrival, event_id))
            self.bodies.append(member)
            if self.fail(event_id, before):
                failed.append(event_id)
            else:
                self.handled.setdefault(event_id, arrival)
        return Reply(delay=self.delay, body=json.dumps({"failed": failed}) if failed else "")


def dead_letters(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_key_order(sends: list[tuple[int, str]], keys: dict[str, str],
                     order: dict[str, int]) -> None:
    """The rule: an event is first sent only after every send of the earlier events of
    its key (the last of which delivered it or preceded its dead letter)."""
    last_send: dict[str, int] = {}
    first_send: dict[str, int] = {}
    for arrival, event_id in sends:
        last_send[event_id] = arrival
        first_send.setdefault(event_id, arrival)
    by_key: dict[str, list[str]] = {}
    for event_id in sorted(first_send, key=lambda i: order[i]):
        by_key.setdefault(keys[event_id], []).append(event_id)
    for ids in by_key.values():
        for earlier, later in itertools.pairwise(ids):
            assert last_send[earlier] < first_send[later], (earlier, later)


# --- Kafka -------------------------------------------------------------------------------


async def test_kafka_partial_failure_and_key_order_across_batches(
    kafka_broker: KafkaBroker, tmp_path: Path,
) -> None:
    topic = kafka_broker.topic(partitions=2)
    sent = await kafka_broker.produce(
        topic, [(f"k{i % 6}".encode(), f"v{i}".encode(), []) for i in range(120)]
    )
    ids = [f"{topic}/{p}/{o}" for p, o in sent]
    keys = {i: f"k{n % 6}" for n, i in enumerate(ids)}
    order = {i: n for n, i in enumerate(ids)}
    flaky = set(ids[5::11])          # named as failed the first time
    poison = ids[40]                 # named as failed every time: dead-lettered
    fn = BatchFunction(fail=lambda i, before: i == poison or (i in flaky and before == 0))
    letters = tmp_path / "dead.jsonl"
    async with RecordingFunction(fn) as function:
        config = bridge_config(
            kafka_broker, topic, function.url, concurrency=2,
            dead_letter=f'{{file: {{path: "{letters}"}}}}',
            retry="{max_attempts: 3, initial_backoff: 50ms, max_backoff: 200ms}",
        ) + "    batch: {max_events: 10, max_wait: 50ms}\n"
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await wait_until(lambda: set(fn.handled) | {poison} == set(ids)
                             and len(dead_letters(letters)) == 1, 60, "all settled")
            await wait_until(lambda: bridge.metric("bridge_kafka_commits_total") > 0, 10)
            assert await bridge.terminate() == 0
    assert max(fn.sizes) > 1  # they really went in batches
    assert all(len({keys[i] for i in batch}) == len(batch)
               for batch in _batches(fn.sends))  # one event per key per batch
    assert_key_order(fn.sends, keys, order)
    counts = {i: sum(1 for _, s in fn.sends if s == i) for i in ids}
    assert {i for i, c in counts.items() if c == 2} == flaky - {poison}
    assert counts[poison] == 3
    assert all(counts[i] == 1 for i in ids if i not in flaky and i != poison)
    (letter,) = dead_letters(letters)
    assert letter["bridge-error"] == "failed_in_batch"
    assert letter["bridge-attempts"] == 3
    assert letter["bridge-last-status"] == 200
    assert letter["cloudevent"]["id"] == poison
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert sum(o or 0 for o in committed.values()) == len(ids)


def _at_least(seen: list[int], count: int) -> bool:
    return len(seen) >= count


def _batches(sends: list[tuple[int, str]]) -> list[list[str]]:
    grouped: dict[int, list[str]] = {}
    for arrival, event_id in sends:
        grouped.setdefault(arrival, []).append(event_id)
    return list(grouped.values())


async def test_kafka_max_wait_sends_a_partial_batch_at_a_low_rate(
    kafka_broker: KafkaBroker, tmp_path: Path,
) -> None:
    topic = kafka_broker.topic(partitions=1)
    fn = BatchFunction()
    async with RecordingFunction(fn) as function:
        config = bridge_config(kafka_broker, topic, function.url) + \
            "    batch: {max_events: 100, max_wait: 400ms}\n"
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            for n in range(3):  # one record at a time: a batch never fills
                produced = time.time()
                await kafka_broker.produce(topic, [(b"k", f"v{n}".encode(), [])])
                await wait_until(partial(_at_least, fn.sizes, n + 1), 15, "the batch")
                waited = fn.arrivals[-1] - produced
                assert 0.35 <= waited < 10, waited  # sent by max_wait, not by filling
            assert await bridge.terminate() == 0
    assert fn.sizes == [1, 1, 1]
    assert [m["kafkaoffset"] for m in fn.bodies] == ["0", "1", "2"]


async def test_kafka_crash_mid_batch_loses_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path,
) -> None:
    topic = kafka_broker.topic(partitions=2)
    sent = await kafka_broker.produce(
        topic, [(f"k{i % 30}".encode(), f"v{i}".encode(), []) for i in range(300)]
    )
    expected = {f"{topic}/{p}/{o}" for p, o in sent}
    fn = BatchFunction(delay=0.3)
    async with RecordingFunction(fn) as function:
        config = bridge_config(kafka_broker, topic, function.url, concurrency=2) + \
            "    batch: {max_events: 20, max_wait: 50ms}\n"
        async with BridgeProcess(config, tmp_path, wait_ready=True) as first:
            await wait_until(lambda: function.in_flight > 0 and len(fn.sizes) >= 3, 30,
                             "batches in flight")
            await first.kill()  # SIGKILL with batches in flight
        assert len(fn.handled) < len(expected)
        fn.delay = 0.0
        async with BridgeProcess(config, tmp_path, wait_ready=True) as second:
            await wait_until(lambda: expected <= set(fn.handled), 60, "every record")
            assert await second.terminate() == 0
    assert set(fn.handled) == expected
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert sum(o or 0 for o in committed.values()) == len(expected)


# --- RabbitMQ ----------------------------------------------------------------------------


async def test_rabbitmq_partial_failure_acks_each_message_and_dead_letters_one(
    tmp_path: Path,
) -> None:
    async with Broker() as broker:
        queue = await broker.queue()
        letters = tmp_path / "dead.jsonl"
        ids = [f"m{n}" for n in range(60)]
        flaky, poison = set(ids[3::7]), "m25"
        fn = BatchFunction(fail=lambda i, before: i == poison or (i in flaky and before == 0))
        async with RecordingFunction(fn) as function:
            config = bridge_yaml(
                function.url,
                [{**rabbit_trigger("jobs", queue, prefetch=200),
                  "batch": {"max_events": 25, "max_wait": "50ms"}}],
                {"file": {"path": str(letters)}},
            )
            async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
                for message_id in ids:
                    await broker.publish(queue, message_id.encode(), message_id=message_id)
                await wait_until(lambda: set(fn.handled) | {poison} == set(ids)
                                 and len(dead_letters(letters)) == 1, 30, "all settled")
                await eventually(lambda: _empty(broker, queue), what="queue empty")
                assert await bridge.terminate() == 0
            # Everything was acked: nothing comes back after the daemon closed.
            assert await broker.count(queue) == 0
    assert max(fn.sizes) > 1
    counts = {i: sum(1 for _, s in fn.sends if s == i) for i in ids}
    assert {i for i, c in counts.items() if c == 2} == flaky - {poison}
    assert counts[poison] == 3  # FAST_RETRY: 3 attempts
    (letter,) = dead_letters(letters)
    assert (letter["bridge-error"], letter["cloudevent"]["id"]) == ("failed_in_batch", poison)


async def test_rabbitmq_crash_mid_batch_loses_nothing(tmp_path: Path) -> None:
    async with Broker() as broker:
        queue = await broker.queue(durable=True)
        ids = [f"c{n}" for n in range(200)]
        await broker.publish_many(queue, [i.encode() for i in ids])
        fn = BatchFunction(delay=0.3)
        async with RecordingFunction(fn) as function:
            config = bridge_yaml(
                function.url,
                [{**rabbit_trigger("jobs", queue, prefetch=100), "concurrency": 2,
                  "batch": {"max_events": 20, "max_wait": "50ms"}}],
                {"file": {"path": str(tmp_path / "dead.jsonl")}},
            )
            async with BridgeProcess(config, tmp_path, wait_ready=True) as first:
                await wait_until(lambda: function.in_flight > 0 and len(fn.sizes) >= 3, 30,
                                 "batches in flight")
                await first.kill()
            handled_before = {_body(m) for m in fn.bodies if m["id"] in fn.handled}
            assert len(handled_before) < len(ids)
            fn.delay = 0.0
            async with BridgeProcess(config, tmp_path, wait_ready=True) as second:
                await wait_until(
                    lambda: {_body(m) for m in fn.bodies if m["id"] in fn.handled} >= set(ids),
                    60, "every message")
                await eventually(lambda: _empty(broker, queue), what="queue empty")
                assert await second.terminate() == 0
            assert await broker.count(queue) == 0


async def _empty(broker: Broker, queue: str) -> bool:
    return await broker.count(queue) == 0


def _body(member: dict[str, Any]) -> str:
    return base64.b64decode(member["data_base64"]).decode() if "data_base64" in member \
        else str(member.get("data", ""))
