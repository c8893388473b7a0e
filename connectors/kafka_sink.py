"""Kafka dead-letter sink: dead letters to a topic, as binary-mode CloudEvents.

``dead_letter: {kafka: {topic: ...}}``. Each record keeps the original body, key and
headers, adds the ``bridge-*`` headers and the CloudEvent attributes as ``ce_*``
headers, and is written with ``acks=all``: :meth:`KafkaSink.write` returns only once the
brokers have it. Refusals no retry overcomes raise
:class:`~bridge.deadletter.SinkRefused` (the dispatcher's fallback or *blocked* path).
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors

from bridge.cloudevents import KAFKA_PREFIX
from bridge.config import KafkaConnection, KafkaSinkConfig, ResolvedTrigger, SinkConfig
from bridge.deadletter import DeadLetter, SinkRefused
from bridge.errors import describe
from bridge.logs import Logger, get_logger
from connectors.kafka_connection import (
    AUTH_ERRORS,
    REQUEST_TIMEOUT,
    KafkaSourceError,
    client_options,
    close_client,
    connect_failure,
)


def dead_letter_headers(record: DeadLetter) -> list[tuple[str, bytes]]:
    """Original headers + ``bridge-*`` + the CloudEvent as ``ce_*`` (Kafka binary mode).

    The result is itself a binary-mode CloudEvent with the same attributes, so a redrive
    reproduces the original invocation (same ``id``); a structured-mode original is
    written in binary mode. A malformed message (``invalid_message``) keeps its original
    headers exactly: it is not a CloudEvent and is not made into one.
    """
    bridge = [(name, value.encode("utf-8")) for name, value in record.bridge_headers()]
    if record.error == "invalid_message":
        return [*record.headers, *bridge]
    kept = [
        (name, value) for name, value in record.headers
        if not name.lower().startswith(KAFKA_PREFIX) and name.lower() != "content-type"
    ]
    attributes = dict(record.cloudevent)
    content_type = attributes.pop("datacontenttype", None)
    ce = [(f"{KAFKA_PREFIX}{name}", value.encode("utf-8")) for name, value in attributes.items()]
    if content_type:
        ce.append(("content-type", content_type.encode("utf-8")))
    return [*kept, *bridge, *ce]


#: Produce errors no retry overcomes while the topic and the settings stay as they are:
#: a record above ``max_request_size`` or the topic's ``max.message.bytes``, a topic that
#: does not exist (after aiokafka waited a request timeout for it to appear in the
#: metadata) or that this client may not write, a login the brokers refuse.
_REFUSALS: tuple[type[Exception], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.RecordTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.UnknownTopicOrPartitionError,
    kafka_errors.TopicAuthorizationFailedError,
    kafka_errors.ClusterAuthorizationFailedError,
    kafka_errors.PolicyViolationError,
    *AUTH_ERRORS,
)


class KafkaSink:
    """Dead letters to a topic: ``acks=all``, and ``write`` awaits the broker's ack.

    ``start`` may fail (brokers down): ``write`` then connects first, so the dispatcher's
    write retries double as reconnects. A refusal for good (:data:`_REFUSALS`) raises
    :class:`~bridge.deadletter.SinkRefused`; everything else (brokers unreachable, a
    request timeout) is retryable.
    """

    def __init__(
        self, topic: str, connection: KafkaConnection, log: Logger | None = None,
        max_request_size: int = 64 * 1024 * 1024,
    ) -> None:
        self.topic = topic
        self._connection = connection
        self._max_request_size = max_request_size
        self._log = log or get_logger(sink="kafka", topic=topic)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(
                **client_options(self._connection),
                acks="all",
                max_request_size=self._max_request_size,
                request_timeout_ms=int(REQUEST_TIMEOUT * 3 * 1000),
            )
            try:
                await producer.start()
            except BaseException as err:
                await close_client(producer, self._log)
                if isinstance(err, Exception):
                    message = await connect_failure(err, self._connection)
                    error = SinkRefused if isinstance(err, _REFUSALS) else KafkaSourceError
                    raise error(message) from None
                raise
            self._producer = producer

    async def write(self, record: DeadLetter) -> None:
        await self.start()
        producer = self._producer
        assert producer is not None
        try:
            await producer.send_and_wait(
                self.topic, value=record.body, key=record.key,
                headers=dead_letter_headers(record),
            )
        except _REFUSALS as err:
            raise SinkRefused(
                f"topic {self.topic!r} refused the dead letter: {describe(err, None)}"[:400]
            ) from None

    async def close(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await close_client(producer, self._log)


def kafka_sink(config: SinkConfig, trigger: ResolvedTrigger) -> KafkaSink:
    """Sink factory for ``dead_letter: {kafka: {...}}`` (see ``connectors.base.SINKS``)."""
    sink: KafkaSinkConfig | None = config.kafka
    assert sink is not None
    log = get_logger(trigger=trigger.name, sink="kafka", topic=sink.topic)
    return KafkaSink(sink.topic, sink.connection(trigger.config.kafka), log,
                     sink.max_request_size)
