"""Bad input and broken brokers: clear errors naming the trigger, readiness false, retries.

Also the Kafka dead-letter sink on its own: used by a non-Kafka trigger, and a sink
whose start failed connecting on its first write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bridge.config import DeadLetterConfig, parse_config
from bridge.deadletter import DeadLetter
from bridge.events import Event
from bridge.leadership import AlwaysLeader
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.outcome import Outcome, OutcomeKind
from connectors.base import ConnectorContext
from connectors.kafka import KafkaConnector
from connectors.kafka_connection import KafkaSourceError
from connectors.kafka_sink import kafka_sink
from tests.support import kafka as kafka_support
from tests.support.daemon import free_port
from tests.support.kafka import (
    KafkaBroker,
    bridge_config,
    running_bridge,
    start_broker,
    stop_broker,
    wait_until,
)

kafka_broker = kafka_support.kafka_broker


def connector(text: str) -> KafkaConnector:
    config = parse_config(text)
    context = ConnectorContext(metrics=Metrics(), log=get_logger(), leadership=AlwaysLeader())
    return KafkaConnector(config.resolve(config.triggers[0]), context)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[KafkaBroker]:
    """A broker this test may stop."""
    broker = start_broker(tmp_path / "tansu.log")
    try:
        yield broker
    finally:
        stop_broker(broker)


async def test_unknown_topic_is_reported_then_picked_up_once_created(
    kafka_broker: KafkaBroker,
) -> None:
    topic = "missing-" + kafka_broker.topic()  # a name no one created
    with capture_logs() as logs:
        async with running_bridge(bridge_config(kafka_broker, topic, "http://127.0.0.1:9/")) as rt:
            await wait_until(lambda: any(e["event"] == "source failed" for e in logs))
            assert rt.readiness() == {"orders": False}
            kafka_broker.create_topic(topic)
            await wait_until(lambda: rt.readiness() == {"orders": True}, 20, "ready")
    failure = next(e for e in logs if e["event"] == "source failed")
    assert failure["trigger"] == "orders"
    assert f"topic(s) {topic} not found on {kafka_broker.bootstrap}" in failure["error"]


async def test_unreachable_brokers_fail_start_with_a_clear_error() -> None:
    port = free_port()
    source = connector(bridge_config_text(f"127.0.0.1:{port}"))
    with pytest.raises(KafkaSourceError, match=f"Kafka brokers 127.0.0.1:{port} unreachable"):
        await source.start()
    assert not source.ready
    await source.stop()  # safe after a failed start, and repeatable
    await source.stop()


async def test_authentication_failure_is_named_and_the_password_is_not(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "auth.log", "--authentication")
    try:
        source = connector(bridge_config_text(
            broker.bootstrap,
            "security_protocol: SASL_PLAINTEXT\n"
            "      sasl: {mechanism: SCRAM-SHA-512, username: bridge, password: hunter2}",
        ))
        with pytest.raises(KafkaSourceError) as caught:
            await source.start()
        message = str(caught.value)
        assert message.startswith(
            f"authentication with Kafka brokers {broker.bootstrap} failed (SCRAM-SHA-512)"
        )
        assert "hunter2" not in message
        assert not source.ready
    finally:
        stop_broker(broker)


async def test_readiness_drops_when_the_brokers_go_away(own_broker: KafkaBroker) -> None:
    topic = own_broker.topic()
    with capture_logs() as logs:
        source = connector(bridge_config(own_broker, topic, "http://127.0.0.1:9/"))
        source.probe_interval = 0.3
        await source.start()

        async def pump() -> None:
            async for _ in source.events():
                pass

        task = asyncio.create_task(pump())
        try:
            await wait_until(lambda: source.ready, 20, "joined")
            stop_broker(own_broker)
            started = time.monotonic()
            await wait_until(lambda: not source.ready, 15, "not ready")
            assert time.monotonic() - started < 8
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await source.stop()
    down = next(e for e in logs if e["event"] == "kafka brokers not responding")
    assert down["trigger"] == "orders"


def bridge_config_text(servers: str, extra: str = "") -> str:
    return f"""
defaults: {{dead_letter: {{file: {{path: /tmp/unused-dl.jsonl}}}}}}
functions: {{fn: {{url: "http://127.0.0.1:9/"}}}}
triggers:
  - name: orders
    function: fn
    kafka:
      bootstrap_servers: {servers}
      topics: [t]
      group_id: g
      {extra}
"""


def cron_trigger_with_kafka_sink(servers: str, topic: str) -> tuple[DeadLetterConfig, object]:
    config = parse_config(f"""
functions: {{fn: {{url: "http://127.0.0.1:9/"}}}}
triggers:
  - name: nightly
    function: fn
    dead_letter: {{kafka: {{topic: {topic}, bootstrap_servers: "{servers}"}}}}
    cron: {{schedule: "0 2 * * *"}}
""")
    trigger = config.resolve(config.triggers[0])
    assert trigger.dead_letter is not None
    return trigger.dead_letter, trigger


def letter() -> DeadLetter:
    event = Event(
        trigger="nightly", id="nightly/2026-01-01T02:00:00Z", source="/cron/nightly",
        type="dev.triggerbridge.cron.tick", data=b'{"report":"daily"}',
        content_type="application/json", origin="schedule 0 2 * * * (UTC)",
    )
    outcome = Outcome(OutcomeKind.RETRYABLE, "http_503", status=503, detail="busy")
    return DeadLetter.of(event, "fn", outcome, attempts=5)


async def test_kafka_sink_serves_a_cron_trigger_and_connects_on_first_write(
    tmp_path: Path,
) -> None:
    port = free_port()
    dead_letter, trigger = cron_trigger_with_kafka_sink(f"127.0.0.1:{port}", "cron-dlq")
    sink = kafka_sink(dead_letter, trigger)  # type: ignore[arg-type]
    with pytest.raises(KafkaSourceError, match="unreachable"):
        await sink.start()  # nothing listens yet
    broker = start_broker(tmp_path / "late.log", port=port)
    try:
        broker.create_topic("cron-dlq")
        await sink.write(letter())  # connects now
        await sink.close()
        [record] = await broker.read("cron-dlq", 1)
    finally:
        stop_broker(broker)
    headers = dict(record.headers)
    assert record.value == b'{"report":"daily"}'
    assert record.key is None
    assert headers["bridge-trigger"] == b"nightly"
    assert headers["bridge-error"] == b"http_503"
    assert headers["bridge-attempts"] == b"5"
    assert headers["bridge-source"] == b"schedule 0 2 * * * (UTC)"
    assert headers["ce_id"] == b"nightly/2026-01-01T02:00:00Z"
    assert headers["ce_source"] == b"/cron/nightly"
    assert headers["content-type"] == b"application/json"
