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
from bridge.config import RabbitSinkConfig, ResolvedTrigger, SinkConfig, TlsConfig
from bridge.deadletter import DeadLetter, SinkRefused
from bridge.errors import describe
from bridge.logs import redact_url
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
        self, url: str, tls: TlsConfig | None, exchange: str, routing_key: str, name: str
    ) -> None:
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
                connection = await connect(self._url, self._tls, f"{self._name} dead letters",
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
                raise error(f"dead-letter {explain(err, self._url)}") from None
            self._connection, self._channel, self._exchange = connection, channel, exchange
            return exchange

    def _open(self) -> bool:
        return not (self._connection is None or self._connection.is_closed
                    or self._channel is None or self._channel.is_closed)

    async def write(self, record: DeadLetter) -> None:
        exchange = await self._ensure()
        try:
            confirmation = await exchange.publish(
                dead_letter_message(record), routing_key=self._routing_key,
                mandatory=True, timeout=_PUBLISH_TIMEOUT,
            )
        except Exception as err:
            if not self._open():
                await self.close()
            refused = refusal(err) or isinstance(err, amqp_errors.PublishError)
            raise (SinkRefused if refused else RabbitSetupError)(
                f"dead letter not confirmed by {self.target}: {_describe_publish(err, self._url)}"
            ) from None
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise RabbitSetupError(f"dead letter not confirmed by {self.target}")

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
    url, tls = _sink_connection(sink, trigger)
    assert sink.exchange is not None, "validated: exchange or reject"
    return RabbitPublishSink(url, tls, sink.exchange, sink.routing_key, trigger.name)


def _sink_connection(
    sink: RabbitSinkConfig, trigger: ResolvedTrigger
) -> tuple[str, TlsConfig | None]:
    if sink.url is not None:
        return sink.url.get_secret_value(), sink.tls
    source = trigger.config.rabbitmq
    if source is None:  # config validation reports this first
        raise RabbitSetupError(
            f"trigger {trigger.name!r}: dead_letter.rabbitmq.url is required for a "
            f"{trigger.config.kind} trigger"
        )
    return source.url.get_secret_value(), source.tls
