"""The RabbitMQ dead-letter sink serving a Kafka trigger (Tansu broker, real RabbitMQ)."""

from __future__ import annotations

import tests.support.kafka
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.kafka import KafkaBroker, bridge_config, ready, running_bridge
from tests.support.rabbitmq import BROKER_URL, Broker

kafka_broker = tests.support.kafka.kafka_broker


async def test_kafka_dead_letters_are_published_to_a_rabbitmq_exchange(
    kafka_broker: KafkaBroker,
) -> None:
    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(422, body="unprocessable") if call.body == b"bad" else Reply()

    topic = kafka_broker.topic()
    async with Broker() as rabbit, RecordingFunction(behaviour) as fn:
        dlx, dlq = await rabbit.exchange("direct"), await rabbit.queue()
        await rabbit.bind(dlq, dlx, routing_key="kafka-dead")
        dead_letter = (f'{{rabbitmq: {{exchange: {dlx}, routing_key: kafka-dead, '
                       f'url: "{BROKER_URL}"}}}}')
        config = bridge_config(kafka_broker, topic, fn.url, dead_letter=dead_letter)
        await kafka_broker.produce(topic, [
            (b"k1", b"good", [("tenant", b"acme")]),
            (b"k2", b"bad", [("tenant", b"acme"), ("raw", b"\xff\x00")]),
        ])
        async with running_bridge(config) as runtime:
            await ready(runtime)
            [dead] = await rabbit.take(dlq, 1, timeout=30)
            await fn.wait_for(lambda: {c.body for c in fn.calls} == {b"good", b"bad"})
    assert dead.body == b"bad"
    assert dead.delivery_mode == 2
    headers = dead.headers
    assert headers["tenant"] == "acme"
    assert headers["raw"] == bytearray(b"\xff\x00")
    assert headers["bridge-key"] == "k2"
    assert headers["bridge-trigger"] == "orders"
    assert headers["bridge-error"] == "http_422"
    assert headers["bridge-error-detail"] == "unprocessable"
    assert headers["bridge-last-status"] == "422"
    assert headers["bridge-source"] == f"{topic}/0/1"
    assert headers["cloudEvents:id"] == dead.message_id
    assert topic in str(headers["cloudEvents:id"])
