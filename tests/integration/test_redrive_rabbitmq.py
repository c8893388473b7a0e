"""``trigger-bridge redrive --rabbitmq-queue``: through the real CLI against the real
RabbitMQ, dead letters published by the real RabbitMQ sink, a real HTTP function."""

from __future__ import annotations

import json
from pathlib import Path

from connectors.rabbitmq_sink import RabbitPublishSink
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.rabbitmq import BROKER_URL, Broker, eventually
from tests.support.redrive import dead_letter, rabbit_event, redrive, redrive_killed, write_all


async def topology(broker: Broker) -> tuple[str, str, str]:
    """(source queue, dead-letter exchange, dead-letter queue bound with key 'dl')."""
    source, exchange, dlq = await broker.queue(), await broker.exchange(), await broker.queue()
    await broker.bind(dlq, exchange, "dl")
    return source, exchange, dlq


def config(tmp_path: Path, function_url: str, source: str, exchange: str) -> str:
    path = tmp_path / "bridge.yaml"
    path.write_text(f"""
defaults:
  retry: {{max_attempts: 2, initial_backoff: 20ms, max_backoff: 50ms}}
functions:
  fn: {{url: "{function_url}"}}
triggers:
  - name: jobs
    function: fn
    rabbitmq: {{url: "{BROKER_URL}", queue: {source}}}
    dead_letter: {{rabbitmq: {{exchange: {exchange}, routing_key: dl}}}}
""")
    return str(path)


async def store(source: str, exchange: str, count: int) -> None:
    sink = RabbitPublishSink(BROKER_URL, None, exchange, "dl", "test")
    events = [rabbit_event(source, n, b'{"n": %d}' % n) for n in range(count)]
    await write_all(sink, [dead_letter(e) for e in events])


async def test_redrive_from_a_queue_acks_and_dead_letters_again(tmp_path: Path) -> None:
    async with Broker() as broker:
        source, exchange, dlq = await topology(broker)
        await store(source, exchange, 5)

        def behaviour(call: Call, attempt: int) -> Reply:
            return Reply(422, body="still wrong") if call.event_id == "msg-2" else Reply(200)

        async with RecordingFunction(behaviour) as fn:
            cfg = config(tmp_path, fn.url, source, exchange)
            skipped = await redrive("--config", cfg, "--rabbitmq-queue", dlq, "--reason", "x*")
            dry = await redrive("--config", cfg, "--rabbitmq-queue", dlq, "--dry-run")
            assert fn.calls == []
            assert await broker.count(dlq) == 5  # both left every message in the queue
            result = await redrive("--config", cfg, "--rabbitmq-queue", dlq)
            calls = {c.event_id: c for c in fn.calls}
        assert skipped.code == 0
        assert skipped.summary.endswith("5 read, 0 redriven, "
                                                              "0 failed again, 5 skipped by filter")
        assert dry.code == 0
        assert "5 would be redriven" in dry.summary
        assert result.code == 1, result.err
        assert result.summary == (f"redrive rabbitmq queue {dlq}: 5 read, 4 redriven, "
                                  "1 failed again (1 dead-lettered again), 0 skipped by filter")
        assert sorted(calls) == [f"msg-{n}" for n in range(5)]
        for n in range(5):
            call = calls[f"msg-{n}"]
            assert call.body == b'{"n": %d}' % n
            assert call.headers["ce-source"] == f"amqp:///{source}"
            assert call.headers["ce-amqproutingkey"] == source
            assert call.headers["amqp-header-trace"] == f"t{n}"
        [again] = await broker.take(dlq, 1)  # back through the trigger's sink
        assert await broker.count(dlq) == 0
        headers = again.headers or {}
        assert headers["bridge-error"] == "http_422"
        assert headers["bridge-redrive-attempts"] == "1"
        history = json.loads(str(headers["bridge-redrive-history"]))
        assert [h["error"] for h in history] == ["http_503"]
        assert (again.message_id, again.body) == ("msg-2", b'{"n": 2}')


async def test_to_source_publishes_to_the_exchange_it_came_through(tmp_path: Path) -> None:
    async with Broker() as broker:
        source, exchange, dlq = await topology(broker)
        await store(source, exchange, 3)
        cfg = config(tmp_path, "http://127.0.0.1:9/", source, exchange)
        result = await redrive("--config", cfg, "--rabbitmq-queue", dlq, "--to-source")
        assert result.code == 0, result.err
        assert result.summary.endswith("3 read, 3 redriven, 0 failed again, 0 skipped by filter")
        assert await broker.count(dlq) == 0
        messages = await broker.take(source, 3)
    for n, message in enumerate(messages):
        headers = message.headers or {}
        assert message.body == b'{"n": %d}' % n
        assert message.message_id == f"msg-{n}"  # the same id for the function
        assert message.content_type == "application/json"
        assert headers["trace"] == f"t{n}"
        assert headers["cloudEvents:id"] == f"msg-{n}"
        assert not any(name.startswith("bridge-") for name in headers)


async def test_a_crash_in_the_middle_loses_nothing(tmp_path: Path) -> None:
    total = 30
    async with Broker() as broker:
        source, exchange, dlq = await topology(broker)
        await store(source, exchange, total)
        slow = True

        def behaviour(call: Call, attempt: int) -> Reply:
            return Reply(200, delay=0.05 if slow else 0.0)

        async with RecordingFunction(behaviour) as fn:
            cfg = config(tmp_path, fn.url, source, exchange)
            await redrive_killed("--config", cfg, "--rabbitmq-queue", dlq, "--concurrency", "2",
                                 when=lambda: len(fn.calls) >= 10)
            calls = len(fn.calls)

            async def handed_back() -> bool:  # once the broker saw the connection go
                return await broker.count(dlq) >= total - calls

            await eventually(handed_back, what="the unacked messages back in the queue")
            left = await broker.count(dlq)
            assert calls - 2 <= total - left <= calls
            slow = False
            result = await redrive("--config", cfg, "--rabbitmq-queue", dlq)
            ids = fn.ids()
        assert result.code == 0, result.err
        assert result.summary.endswith(f"{left} read, {left} redriven, 0 failed again, "
                                       "0 skipped by filter")
        assert sorted(set(ids)) == sorted(f"msg-{n}" for n in range(total))
        assert len(ids) - total <= 2
        print(f"REDRIVE rabbitmq: {total} letters, killed after {calls} calls, "
              f"{total - left} acked, second run {left}, duplicates {len(ids) - total}")
        assert await broker.count(dlq) == 0
