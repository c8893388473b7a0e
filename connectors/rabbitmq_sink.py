"""Dead-letter sinks of ``dead_letter: {rabbitmq: ...}``: publish to an exchange, or reject.

:func:`rabbit_sink` (found through ``connectors.base.SINKS``) makes either

- :class:`RabbitPublishSink`: publishes the record to an exchange with publisher
  confirms and ``mandatory`` (an unroutable dead letter is an error, not a silent
  drop), persistent, with the bridge-* headers and the CloudEvent attributes as
  ``cloudEvents:`` application properties (:func:`dead_letter_message`). It serves
  Kafka and cron triggers too. What the broker refuses for good -- an exchange that
  does not exist (``NOT_FOUND``), a dead letter no queue takes (returned
  ``NO_ROUTE``), ``ACCESS_REFUSED``, a ``PRECONDITION_FAILED`` (too large), a refused
  login or virtual host -- raises :class:`~bridge.deadletter.SinkRefused`; a broker
  that is down, a timeout or a ``basic.nack`` (queue full) raise a retryable error; or
- :class:`RejectSink` (``reject: true``, RabbitMQ triggers only): the dead letter is the
  connector's ``basic.reject(requeue=false)``, which hands the message to the queue's
  own ``x-dead-letter-exchange``.

``reply: {rabbitmq: ...}`` (:class:`RabbitReplies`, :mod:`bridge.replies`) publishes
through a :class:`RabbitPublishSink` too, with the same confirms, ``mandatory`` and
refusals: the reply's data as the body, its attributes as ``cloudEvents:`` application
properties, ``content_type`` = ``datacontenttype``, ``message_id`` = its id. An
exchange that does not exist is refused at start (a config problem, named).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange

from bridge.closing import close_quietly
from bridge.cloudevents import AMQP_PREFIXES
from bridge.config import (
    RabbitReplyConfig,
    RabbitSinkConfig,
    ResolvedTrigger,
    SinkConfig,
    TlsConfig,
)
from bridge.deadletter import DeadLetter, SinkRefused
from bridge.errors import describe
from bridge.logs import redact_url
from bridge.replies import Reply
from connectors.rabbitmq_connection import (
    CLOSE_TIMEOUT,
    RabbitSetupError,
    connect,
    explain,
    refusal,
    scrub,
)
from connectors.rabbitmq_mapping import VOLATILE_HEADERS

_PUBLISH_TIMEOUT = 30.0


class RejectSink:
    """``reject: true``: the dead-letter "write" is the settle's ``basic.reject``.

    ``write`` stores nothing and returns at once: the dispatcher then settles the event
    ``DEAD_LETTERED`` and the connector rejects the delivery without requeue, so the
    queue's own ``x-dead-letter-exchange`` takes the message (with the broker's
    ``x-death`` header; the bridge-* facts are in the bridge's log line).
    """

    async def start(self) -> None:
        """Nothing to connect."""

    async def write(self, record: DeadLetter) -> None:
        """Intent only; see the class docstring."""

    async def close(self) -> None:
        """Nothing to close."""


class RabbitPublishSink:
    """Publishes dead letters to an exchange; ``write`` returns once the broker confirms.

    One connection and one confirm-mode channel, opened by ``start`` or, after a
    failure, by the next ``write``. Publishes are ``mandatory``: a dead letter no queue
    takes is returned by the broker and the write fails (and is retried) instead of
    vanishing.
    """

    def __init__(
        self, url: str, tls: TlsConfig | None, exchange: str, routing_key: str, name: str,
        *, what: str = "dead letter",
    ) -> None:
        """``what`` names what it publishes in connection names and errors."""
        self._what = what
        self._url = url
        self._tls = tls
        self._exchange_name = exchange
        self._routing_key = routing_key
        self._name = name
        self._lock = asyncio.Lock()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    @property
    def target(self) -> str:
        return f"exchange {self._exchange_name!r} at {redact_url(self._url)}"

    async def start(self) -> None:
        await self._ensure()

    async def _ensure(self) -> AbstractExchange:
        async with self._lock:
            if self._exchange is not None and self._open():
                return self._exchange
            await self.close()
            try:
                connection = await connect(self._url, self._tls, f"{self._name} {self._what}s",
                                           robust=False)
            except RabbitSetupError as err:
                if err.refused:
                    raise SinkRefused(str(err)) from None
                raise
            try:
                channel = await connection.channel(publisher_confirms=True,
                                                   on_return_raises=True)
                exchange = (channel.default_exchange if self._exchange_name == ""
                            else await channel.get_exchange(self._exchange_name, ensure=True))
            except Exception as err:
                await close_quietly(connection.close, timeout=CLOSE_TIMEOUT)
                error = SinkRefused if refusal(err) else RabbitSetupError
                prefix = "dead-letter " if self._what == "dead letter" else ""
                raise error(f"{prefix}{explain(err, self._url)}") from None
            self._connection, self._channel, self._exchange = connection, channel, exchange
            return exchange

    def _open(self) -> bool:
        return not (self._connection is None or self._connection.is_closed
                    or self._channel is None or self._channel.is_closed)

    async def write(self, record: DeadLetter) -> None:
        await self.send(dead_letter_message(record))

    async def send(self, message: aio_pika.Message) -> None:
        """Publish ``message`` and await the broker's confirm (see the class docs)."""
        exchange = await self._ensure()
        try:
            confirmation = await exchange.publish(
                message, routing_key=self._routing_key, mandatory=True,
                timeout=_PUBLISH_TIMEOUT,
            )
        except Exception as err:
            if not self._open():
                await self.close()
            refused = refusal(err) or isinstance(err, amqp_errors.PublishError)
            raise (SinkRefused if refused else RabbitSetupError)(
                f"{self._what} not confirmed by {self.target}: "
                f"{_describe_publish(err, self._url)}"
            ) from None
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise RabbitSetupError(f"{self._what} not confirmed by {self.target}")

    async def close(self) -> None:
        connection = self._connection
        self._connection, self._channel, self._exchange = None, None, None
        if connection is not None:
            await close_quietly(connection.close, timeout=CLOSE_TIMEOUT)


def _describe_publish(err: BaseException, url: str) -> str:
    if isinstance(err, amqp_errors.PublishError):
        return "no queue is bound for its routing key (the broker returned it: NO_ROUTE)"
    if refusal(err):
        return scrub(str(err), url)[:300]
    if isinstance(err, amqp_errors.DeliveryError):
        return "the broker refused it (basic.nack)"
    if isinstance(err, TimeoutError):
        return f"no confirm within {_PUBLISH_TIMEOUT:g}s"
    return scrub(describe(err, None), url)[:300]


def dead_letter_message(record: DeadLetter) -> aio_pika.Message:
    """The AMQP message for a dead letter: original body and headers, bridge-* headers
    (and ``bridge-key``: the original key), CloudEvent attributes as
    ``cloudEvents:<name>`` application properties (AMQP binding), persistent,
    ``message_id`` = the CloudEvent id (a redrive keeps the id)."""
    headers: dict[str, Any] = {}
    for name, value in record.headers:
        if name not in VOLATILE_HEADERS:
            headers[name] = _amqp_value(value)
    headers.update(record.bridge_headers())
    if record.key is not None:  # Kafka record key / AMQP routing key, for a redrive
        headers["bridge-key"] = _amqp_value(record.key)
    for attribute, text in record.cloudevent.items():
        if attribute != "datacontenttype":
            headers[f"{AMQP_PREFIXES[0]}{attribute}"] = text
    return aio_pika.Message(
        body=record.body,
        headers=headers,
        content_type=record.cloudevent.get("datacontenttype"),
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=record.cloudevent.get("id"),
        timestamp=record.time,
    )


def reply_message(reply: Reply) -> aio_pika.Message:
    """The AMQP message for a reply: its data, its attributes as ``cloudEvents:<name>``
    application properties (AMQP binding), persistent, ``message_id`` = its id."""
    headers: dict[str, Any] = {
        f"{AMQP_PREFIXES[0]}{name}": text for name, text in reply.attributes.items()
        if name != "datacontenttype"
    }
    return aio_pika.Message(
        body=reply.data, headers=headers, content_type=reply.content_type,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=reply.id,
    )


class RabbitReplies:
    """``reply: {rabbitmq: ...}``: replies to an exchange through a
    :class:`RabbitPublishSink` (a :class:`bridge.replies.ReplySink`)."""

    def __init__(self, sink: RabbitPublishSink) -> None:
        self._sink = sink

    async def start(self) -> None:
        """Connect and find the exchange (SinkRefused naming it if it does not exist)."""
        await self._sink.start()

    async def publish(self, reply: Reply) -> None:
        await self._sink.send(reply_message(reply))

    async def close(self) -> None:
        await self._sink.close()


def rabbit_replies(trigger: ResolvedTrigger) -> RabbitReplies:
    """Reply sink factory for ``reply: {rabbitmq: {...}}`` (``connectors.base.REPLIES``)."""
    reply = trigger.reply
    assert reply is not None
    assert reply.rabbitmq is not None
    config = reply.rabbitmq
    url, tls = _sink_connection(config, trigger, "reply.rabbitmq.url")
    return RabbitReplies(RabbitPublishSink(url, tls, config.exchange, config.routing_key,
                                           trigger.name, what="reply"))


def _amqp_value(value: bytes) -> str | bytearray:
    """Text headers go back as AMQP strings, other bytes as AMQP byte arrays."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return bytearray(value)


def rabbit_sink(
    config: SinkConfig, trigger: ResolvedTrigger
) -> RejectSink | RabbitPublishSink:
    """Sink factory for ``dead_letter: {rabbitmq: {...}}`` (see ``connectors.base.SINKS``)."""
    sink: RabbitSinkConfig | None = config.rabbitmq
    assert sink is not None
    if sink.reject:
        return RejectSink()
    url, tls = _sink_connection(sink, trigger, "dead_letter.rabbitmq.url")
    assert sink.exchange is not None, "validated: exchange or reject"
    return RabbitPublishSink(url, tls, sink.exchange, sink.routing_key, trigger.name)


def _sink_connection(
    sink: RabbitSinkConfig | RabbitReplyConfig, trigger: ResolvedTrigger, field: str
) -> tuple[str, TlsConfig | None]:
    if sink.url is not None:
        return sink.url.get_secret_value(), sink.tls
    source = trigger.config.rabbitmq
    if source is None:  # config validation reports this first
        raise RabbitSetupError(
            f"trigger {trigger.name!r}: {field} is required for a "
            f"{trigger.config.kind} trigger"
        )
    return source.url.get_secret_value(), source.tls
