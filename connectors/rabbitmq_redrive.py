"""``trigger-bridge redrive`` on RabbitMQ: dead letters read back from a queue, and the
original messages republished to the exchange they came through (``--to-source``).

**Reading** (:class:`RabbitLetters`). The queue bound to the dead-letter exchange is
read with ``basic.get`` and manual acks, at most as many messages as it held at start
(so the dead letters this run writes back into it wait for the next run). A message is
acked once its redrive is done; every other one stays unacked until the end and is
then handed back (``basic.nack`` with requeue), so a filtered run, a dry run or a
crash (the broker requeues what a lost connection held) leaves them in the queue.

A message is split back into the dead letter's parts (:func:`letter_of`): ``bridge-*``
headers, ``bridge-key`` (the original key), the CloudEvent (``cloudEvents:*``
application properties, ``content_type``, ``message_id``) and the original headers.

**Republishing** (:class:`RabbitRepublisher`). The message goes back through the
trigger's connection to the exchange and routing key it was consumed from (the
``amqpexchange`` / ``amqproutingkey`` extensions; the default exchange and the queue
without them), with publisher confirms and ``mandatory`` (an unroutable message is an
error, not a silent drop), with its headers, ``message_id`` = the CloudEvent id and
the CloudEvent as ``cloudEvents:*`` properties (binary mode), so the daemon invokes it
with the same id. An ``invalid_message`` goes back as the sink stored it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Mapping
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)

from bridge.closing import close_quietly
from bridge.cloudevents import AMQP_PREFIXES
from bridge.config import ResolvedTrigger, TlsConfig
from bridge.deadletter import Sink
from bridge.logs import Logger, get_logger
from bridge.redrive.letters import INVALID_MESSAGE, Letter, NotALetter, NotRedrivable, from_fields
from bridge.redrive.sources import Item, SourceError
from connectors.rabbitmq_connection import CLOSE_TIMEOUT, RabbitSetupError, connect, explain
from connectors.rabbitmq_mapping import VOLATILE_HEADERS
from connectors.rabbitmq_sink import RabbitPublishSink, _amqp_value

#: Extensions the daemon derives from the delivery; a republished message gets new ones.
_PLACE_EXTENSIONS = frozenset({"amqpexchange", "amqproutingkey", "amqpredelivered"})
_GET_TIMEOUT = 10.0
_PUBLISH_TIMEOUT = 30.0


class RabbitLetters:
    """The dead letters in ``queue``, as many as it held at ``open``."""

    def __init__(
        self, *, queue: str, url: str, tls: TlsConfig | None = None, dry_run: bool = False,
        log: Logger | None = None,
    ) -> None:
        self.queue = queue
        self.name = f"rabbitmq queue {queue}"
        self.recovered = 0  # the group commit / the unacked messages keep the place
        self._url = url
        self._tls = tls
        self._log = log or get_logger(redrive=self.name)
        self._connection: AbstractConnection | None = None
        self._queue: AbstractQueue | None = None
        self._total = 0
        #: Taken and not acked, by delivery tag: handed back at the end.
        self._held: dict[int, AbstractIncomingMessage] = {}

    @property
    def total(self) -> int | None:
        return self._total

    async def open(self) -> None:
        try:
            connection = await connect(self._url, self._tls, "redrive", robust=False)
        except RabbitSetupError as err:
            raise SourceError(str(err)) from None
        try:
            channel = await connection.channel(publisher_confirms=False)
            queue = await channel.declare_queue(self.queue, passive=True)
        except Exception as err:
            await close_quietly(connection.close, timeout=CLOSE_TIMEOUT)
            raise SourceError(explain(err, self._url)) from None
        self._connection, self._queue = connection, queue
        self._total = int(queue.declaration_result.message_count or 0)

    async def items(self) -> AsyncIterator[Item]:
        queue = self._queue
        assert queue is not None, "open() first"
        for number in range(1, self._total + 1):
            message = await queue.get(no_ack=False, fail=False, timeout=_GET_TIMEOUT)
            if message is None:
                return  # taken by someone else meanwhile
            tag = message.delivery_tag
            assert tag is not None
            self._held[tag] = message
            position = f"{self.name} #{number}"
            settle = partial(self._settle, tag)
            try:
                item = Item(position, letter_of(message, position), settle)
            except NotALetter as err:
                item = Item(position, None, settle, f"not a dead-letter record: {err}")
            yield item

    async def _settle(self, tag: int, done: bool) -> None:
        if done:
            message = self._held.pop(tag)
            await message.ack()

    def back_sink(self) -> Sink:
        return RabbitPublishSink(self._url, self._tls, "", self.queue, "redrive")

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        held, self._held = list(self._held.values()), {}
        if connection is None:
            return
        with contextlib.suppress(Exception):
            for message in held:  # back in the queue (a closing channel would do it too)
                await message.nack(requeue=True)
        await close_quietly(connection.close, timeout=CLOSE_TIMEOUT)


def letter_of(message: AbstractIncomingMessage, position: str) -> Letter:
    """A dead letter from a message the RabbitMQ sink published; raises NotALetter."""
    fields: dict[str, str] = {}
    cloudevent: dict[str, str] = {}
    headers: list[tuple[str, bytes]] = []
    key: bytes | None = None
    for name, value in (message.headers or {}).items():
        if name == "bridge-key":
            key = _bytes(value)
        elif name.startswith("bridge-"):
            fields[name] = _bytes(value).decode("utf-8", "replace")
        elif name.startswith(AMQP_PREFIXES):
            prefix = next(p for p in AMQP_PREFIXES if name.startswith(p))
            cloudevent[name[len(prefix):]] = _bytes(value).decode("utf-8", "replace")
        elif name not in VOLATILE_HEADERS:
            headers.append((name, _bytes(value)))
    if message.content_type:
        cloudevent["datacontenttype"] = message.content_type
    if "id" not in cloudevent and message.message_id:
        cloudevent["id"] = message.message_id
    return from_fields(fields, cloudevent, message.body, key, headers, position=position)


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    return str(value).encode("utf-8")


# --- --to-source -----------------------------------------------------------------------


class RabbitRepublisher:
    """Publishes letters back to their source exchanges, one connection per trigger."""

    def __init__(self, log: Logger | None = None) -> None:
        self._channels: dict[str, tuple[AbstractConnection, AbstractChannel]] = {}
        self._lock = asyncio.Lock()
        self._log = log or get_logger(redrive="rabbitmq")

    def describe(self, letter: Letter, trigger: ResolvedTrigger) -> str:
        exchange, routing_key = _destination(letter, trigger)
        return f"rabbitmq exchange {exchange!r} routing key {routing_key!r}"

    async def send(self, letter: Letter, trigger: ResolvedTrigger) -> Awaitable[None]:
        exchange_name, routing_key = _destination(letter, trigger)
        channel = await self._channel(trigger)
        exchange = (channel.default_exchange if exchange_name == ""
                    else await channel.get_exchange(exchange_name, ensure=False))
        await exchange.publish(republish_message(letter), routing_key=routing_key,
                               mandatory=True, timeout=_PUBLISH_TIMEOUT)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def _channel(self, trigger: ResolvedTrigger) -> AbstractChannel:
        async with self._lock:
            opened = self._channels.get(trigger.name)
            if opened is not None and not opened[0].is_closed and not opened[1].is_closed:
                return opened[1]
            if opened is not None:
                await close_quietly(opened[0].close, timeout=CLOSE_TIMEOUT)
            source = trigger.config.rabbitmq
            assert source is not None
            url = source.url.get_secret_value()
            connection = await connect(url, source.tls, f"{trigger.name} redrive", robust=False)
            try:
                channel = await connection.channel(publisher_confirms=True,
                                                   on_return_raises=True)
            except Exception as err:
                await close_quietly(connection.close, timeout=CLOSE_TIMEOUT)
                raise RabbitSetupError(explain(err, url)) from None
            self._channels[trigger.name] = (connection, channel)
            return channel

    async def close(self) -> None:
        opened, self._channels = list(self._channels.values()), {}
        await asyncio.gather(*(close_quietly(connection.close, timeout=CLOSE_TIMEOUT)
                               for connection, _ in opened))


def _destination(letter: Letter, trigger: ResolvedTrigger) -> tuple[str, str]:
    source = trigger.config.rabbitmq
    assert source is not None, "a rabbitmq trigger"
    if letter.source and letter.source != source.queue:
        raise NotRedrivable(f"it came from queue {letter.source!r}, not trigger "
                            f"{trigger.name!r}'s queue {source.queue!r}")
    exchange = letter.cloudevent.get("amqpexchange")
    if exchange is None:
        return "", source.queue
    return exchange, letter.cloudevent.get("amqproutingkey", "")


def republish_message(letter: Letter) -> aio_pika.Message:
    """The original message: body, headers, ``message_id`` and the CloudEvent."""
    headers: dict[str, Any] = {name: _amqp_value(value) for name, value in letter.headers}
    attributes: Mapping[str, str] = {}
    if letter.error != INVALID_MESSAGE:
        attributes = {k: v for k, v in letter.cloudevent.items()
                      if k not in _PLACE_EXTENSIONS and k != "datacontenttype"}
        headers = {k: v for k, v in headers.items() if not k.startswith(AMQP_PREFIXES)}
        headers.update({f"{AMQP_PREFIXES[0]}{k}": v for k, v in attributes.items()})
    return aio_pika.Message(
        body=letter.body,
        headers=headers,
        content_type=letter.cloudevent.get("datacontenttype"),
        message_id=letter.id or None,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
    )
