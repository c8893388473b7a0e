"""Kafka dead-letter sink and replies: records to a topic, as binary-mode CloudEvents.

``dead_letter: {kafka: {topic: ...}}``. Each record keeps the original body, key and
headers, adds the ``bridge-*`` headers and the CloudEvent attributes as ``ce_*``
headers, and is written with ``acks=all``: :meth:`KafkaSink.write` returns only once the
brokers have it. Refusals no retry overcomes raise
:class:`~bridge.deadletter.SinkRefused` (the dispatcher's fallback or *blocked* path).

``reply: {kafka: {topic: ...}}`` (:class:`KafkaReplies`, :mod:`bridge.replies`) sends
through the same producer code: the reply's data as the value, its attributes as
``ce_*`` headers (``content-type`` for ``datacontenttype``), the source event's key. At
start it checks that the topic exists (a metadata request that names no topic, so no
broker auto-creates it): a missing reply topic is a config problem, named.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors

from bridge.cloudevents import KAFKA_PREFIX
from bridge.config import KafkaConnection, KafkaSinkConfig, ResolvedTrigger, SinkConfig
from bridge.deadletter import DeadLetter, SinkRefused
from bridge.errors import describe
from bridge.logs import Logger, get_logger
from bridge.replies import Reply
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
    return [*kept, *bridge, *cloudevent_headers(record.cloudevent)]


def cloudevent_headers(attributes: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """CloudEvent attributes as Kafka binary-mode headers: ``ce_<name>``, and
    ``content-type`` for ``datacontenttype``."""
    ce = [(f"{KAFKA_PREFIX}{name}", value.encode("utf-8"))
          for name, value in attributes.items() if name != "datacontenttype"]
    content_type = attributes.get("datacontenttype")
    if content_type:
        ce.append(("content-type", content_type.encode("utf-8")))
    return ce


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
        await self.send(record.body, record.key, dead_letter_headers(record))

    async def send(
        self, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
        what: str = "dead letter",
    ) -> None:
        """Produce one record and await the brokers' ack; SinkRefused for a refusal for
        good (``what`` names the record in its message)."""
        await self.start()
        producer = self._producer
        assert producer is not None
        try:
            await producer.send_and_wait(self.topic, value=value, key=key, headers=headers)
        except _REFUSALS as err:
            raise SinkRefused(
                f"topic {self.topic!r} refused the {what}: {describe(err, None)}"[:400]
            ) from None

    async def check_topic(self) -> None:
        """SinkRefused unless the topic exists (asked without naming it: no broker
        auto-creates it for this question)."""
        await self.start()
        producer = self._producer
        assert producer is not None
        cluster = await producer.client.fetch_all_metadata()
        if self.topic not in cluster.topics():
            servers = ",".join(self._connection.bootstrap_servers)
            raise SinkRefused(f"kafka topic {self.topic!r} does not exist at {servers}")

    async def close(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await close_client(producer, self._log)


class KafkaReplies:
    """``reply: {kafka: ...}``: replies to a topic through a :class:`KafkaSink`'s
    producer (a :class:`bridge.replies.ReplySink`)."""

    def __init__(self, sink: KafkaSink) -> None:
        self._sink = sink

    async def start(self) -> None:
        """Connect and check the topic exists (SinkRefused naming it if not)."""
        await self._sink.check_topic()

    async def publish(self, reply: Reply) -> None:
        await self._sink.send(reply.data, reply.key, cloudevent_headers(reply.attributes),
                              "reply")

    async def close(self) -> None:
        await self._sink.close()


def kafka_replies(trigger: ResolvedTrigger) -> KafkaReplies:
    """Reply sink factory for ``reply: {kafka: {...}}`` (``connectors.base.REPLIES``)."""
    reply = trigger.reply
    assert reply is not None
    assert reply.kafka is not None
    config = reply.kafka
    log = get_logger(trigger=trigger.name, reply="kafka", topic=config.topic)
    return KafkaReplies(KafkaSink(config.topic, config.connection(trigger.config.kafka), log,
                                  config.max_request_size))


def kafka_sink(config: SinkConfig, trigger: ResolvedTrigger) -> KafkaSink:
    """Sink factory for ``dead_letter: {kafka: {...}}`` (see ``connectors.base.SINKS``)."""
    sink: KafkaSinkConfig | None = config.kafka
    assert sink is not None
    log = get_logger(trigger=trigger.name, sink="kafka", topic=sink.topic)
    return KafkaSink(sink.topic, sink.connection(trigger.config.kafka), log,
                     sink.max_request_size)
