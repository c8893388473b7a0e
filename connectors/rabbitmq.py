"""RabbitMQ triggers on aio-pika: acknowledged delivery, dead-letter exchanges, reconnects.

**Consuming.** :class:`RabbitConnector` opens one robust connection
(``aio_pika.connect_robust``) per trigger, sets ``basic.qos(prefetch)`` on one channel,
declares the topology in ``declare`` (or checks that the queue exists) and consumes
with manual acknowledgements. Deliveries go into a small inbox that
:meth:`~RabbitConnector.events` turns into :class:`~bridge.events.Event`; the dispatcher
admits at most ``prefetch`` unsettled events (``max_unsettled``), which is also what the
broker allows in flight. Several replicas on one queue are ordinary competing consumers.

**Acknowledging.** Each event's settler acks the delivery after a 2xx (``DELIVERED``) or
a confirmed dead-letter publish (``DEAD_LETTERED``). With ``dead_letter: {rabbitmq:
{reject: true}}`` a dead letter is instead ``basic.reject(requeue=false)``, which hands
the message to the queue's own ``x-dead-letter-exchange``; the sink's ``write`` then
stores nothing (:class:`RejectSink`), the reject *is* the dead-letter write. Acks are
coalesced per event-loop iteration (:class:`AckBatcher`): a run of settled deliveries
goes as one ``basic.ack(multiple=true)``, which halves the ack frames under load (the
profile of the benchmark showed per-message acks as the largest cost the bridge could
remove). An ack or reject for a delivery whose channel died (reconnect) cannot be sent:
it is logged and counted, and the broker redelivers the message with the same
CloudEvent id.

**Reconnecting.** aio-pika's robust connection reconnects after a broker restart or a
dropped connection and restores the channel, qos, declarations and the consumer.
:class:`_BackoffConnection` makes its fixed retry pause grow with the outage. While the
connection or the consumer is down, :attr:`~RabbitConnector.ready` is False. Deliveries
of the dead channel still waiting in the inbox are dropped (the broker has requeued
them); those already being invoked finish, and their ack is the one that is lost.

**CloudEvents** (DESIGN section 4, details in docs/rabbitmq.md): ``id`` is the
``message_id`` or :func:`message_hash`; a message that already is a CloudEvent (AMQP
binary mode ``cloudEvents:``/``cloudEvents_`` application properties, or a structured
``application/cloudevents+json`` body, read and checked by :mod:`bridge.cloudevents`)
keeps its attributes; a malformed CloudEvent makes the event ``defect`` (dead-lettered
at once, the rest keeps flowing); some defects keep RabbitMQ's own words (``_WORDING``).

**Dead-letter sink.** :func:`rabbit_sink` publishes the record to an exchange with
publisher confirms and ``mandatory`` (an unroutable dead letter is an error, not a
silent drop), persistent, with the bridge-* headers and the CloudEvent attributes as
``cloudEvents:`` application properties. It serves Kafka and cron triggers too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import quote

import aio_pika
import aiormq
import aiormq.exceptions as amqp_errors
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from bridge import cloudevents
from bridge.cloudevents import STRUCTURED, CloudEvent, CloudEventError, Problem
from bridge.config import (
    DeadLetterConfig,
    RabbitSinkConfig,
    RabbitSource,
    ResolvedTrigger,
    TlsConfig,
)
from bridge.deadletter import DeadLetter
from bridge.events import Disposition, Event, format_time
from bridge.logs import redact_url
from connectors.base import ConnectorContext

EVENT_TYPE = "dev.triggerbridge.rabbitmq.message"
#: Message headers reach the function as HTTP headers with this prefix.
HEADER_PREFIX = "amqp-header-"
CE_PREFIXES = ("cloudEvents:", "cloudEvents_")
#: Headers the broker adds or rewrites between deliveries of one message: left out of
#: the id hash (a redelivery keeps its id) and of republished dead letters.
VOLATILE_HEADERS = frozenset({
    "x-delivery-count", "x-death", "x-first-death-exchange", "x-first-death-queue",
    "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
    "x-last-death-reason",
})
#: AMQP properties passed to the function as ``amqp-<name>`` HTTP headers.
_PROPERTY_HEADERS = (
    ("message_id", "amqp-message-id"), ("correlation_id", "amqp-correlation-id"),
    ("reply_to", "amqp-reply-to"), ("app_id", "amqp-app-id"), ("user_id", "amqp-user-id"),
    ("type", "amqp-type"), ("content_encoding", "amqp-content-encoding"),
    ("priority", "amqp-priority"),
)
_CONNECT_TIMEOUT = 10.0
_RECONNECT_INITIAL = 1.0
_RECONNECT_MAX = 30.0
_PUBLISH_TIMEOUT = 30.0


class RabbitSetupError(Exception):
    """The connector could not start consuming; the message says why (no secrets)."""


# --- CloudEvents mapping ------------------------------------------------------------


def message_hash(exchange: str, routing_key: str, headers: Mapping[str, Any], body: bytes) -> str:
    """The id of a message without ``message_id``: stable across redeliveries.

    sha256 (hex) over four fields, each preceded by its length as 8 bytes big-endian:
    the exchange name (UTF-8), the routing key (UTF-8), the headers and the body. The
    headers are those not in :data:`VOLATILE_HEADERS`, as compact JSON of
    ``[[name, value], ...]`` sorted by name, values tagged by AMQP type
    (:func:`_canonical`). Identical messages published twice share an id: publishers
    that need them told apart set ``message_id``.
    """
    table = sorted((k, _canonical(v)) for k, v in headers.items() if k not in VOLATILE_HEADERS)
    digest = hashlib.sha256()
    for part in (
        exchange.encode(), routing_key.encode(),
        json.dumps(table, separators=(",", ":"), ensure_ascii=False).encode(), body,
    ):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def _canonical(value: Any) -> Any:
    """A header value as JSON that keeps its AMQP type apart (1 vs "1" vs true)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, bytes | bytearray):
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, Decimal):
        return {"decimal": str(value)}
    if isinstance(value, datetime):
        return {"time": value.isoformat()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {"table": sorted((str(k), _canonical(v)) for k, v in value.items())}
    return {"other": repr(value)}


def _text(value: Any) -> str | None:
    """A scalar header value as text, or None for tables, arrays and binary.

    Strings, numbers and booleans as CloudEvents attributes write them
    (:func:`bridge.cloudevents.scalar_text`), decimals, timestamps in RFC 3339, byte
    arrays that are UTF-8.
    """
    text = cloudevents.scalar_text(value)
    if text is not None:
        return text
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return format_time(_utc(value))
    if isinstance(value, bytes | bytearray):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _raw(value: Any) -> bytes:
    """A header value as bytes for dead-letter records (text, or JSON for composites)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = _text(value)
    if text is not None:
        return text.encode()
    return json.dumps(_canonical(value), separators=(",", ":"), ensure_ascii=False).encode()


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


#: How RabbitMQ words these defects in ``bridge-error-detail`` (tests and users match
#: on them); the others read as :mod:`bridge.cloudevents` words them.
_WORDING: Mapping[Problem, str] = {
    Problem.NOT_JSON: f"{STRUCTURED} body is not JSON: {{error}}",
    Problem.NOT_OBJECT: f"{STRUCTURED} body is not a JSON object",
    Problem.BAD_BASE64: "'data_base64' is not base64",
    Problem.NO_SPECVERSION: "CloudEvents specversion must be '1.0', got None",
    Problem.BAD_SPECVERSION: "CloudEvents specversion must be '1.0', got {version!r}",
    Problem.MISSING: "CloudEvents attribute(s) missing or empty: {names}",
    Problem.NO_OFFSET: "CloudEvents time {text!r} has no time zone offset",
}


def binary_attributes(headers: Mapping[str, Any]) -> dict[str, str] | None:
    """Attributes from ``cloudEvents:``/``cloudEvents_`` application properties, if any."""
    found: dict[str, Any] = {}
    for name, value in headers.items():
        prefix = next((p for p in CE_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            continue
        attr = name[len(prefix):]
        if attr in found and found[attr] != value:
            raise CloudEventError(f"{CE_PREFIXES[0]}{attr} and {CE_PREFIXES[1]}{attr} disagree")
        found[attr] = value
    return {name: _property_text(name, value) for name, value in found.items()} or None


def _property_text(name: str, value: Any) -> str:
    """An attribute's application property value as text (timestamps in RFC 3339)."""
    if not cloudevents.is_attribute_name(name):
        raise CloudEventError(
            f"invalid CloudEvents application property name {name!r} (lower-case a-z0-9 only)"
        )
    text = _text(value)
    if text is None:
        raise CloudEventError(
            f"CloudEvents application property {name!r} has a value that is not text"
        )
    return text


def source_uri(vhost: str, queue: str) -> str:
    """``amqp://<vhost>/<queue>``, each part percent-encoded; the default vhost ``/`` is
    written empty (``amqp:///jobs``) so the common case carries no ``%`` (HTTP header
    values with ``%`` must be percent-encoded, which not every receiver decodes)."""
    host = "" if vhost == "/" else quote(vhost, safe="")
    return f"amqp://{host}/{quote(queue, safe='')}"


class EventMapper:
    """Turns deliveries of one trigger's queue into Events (CloudEvents mapping)."""

    def __init__(self, trigger: str, source: RabbitSource, vhost: str) -> None:
        self.trigger = trigger
        self.queue = source.queue
        self.source = source_uri(vhost, source.queue)
        self._ordering_header = source.ordering_header if source.ordering == "key" else None
        self._keyed = source.ordering == "key"

    def __call__(self, message: AbstractIncomingMessage, settler: Any) -> Event:
        """Never raises: an unmappable message becomes a ``defect`` event."""
        headers: Mapping[str, Any] = message.headers or {}
        event = Event(
            trigger=self.trigger, id="", source=self.source, type=EVENT_TYPE, data=message.body,
            content_type=message.content_type, partition=self.queue, origin=self.queue,
            key=(message.routing_key or "").encode(), settler=settler,
        )
        try:
            self._fill(event, message, headers)
        except CloudEventError as err:
            event.defect = f"malformed CloudEvent: {err.reason(_WORDING)}"
        except Exception as err:
            event.defect = f"cannot map message: {type(err).__name__}: {err}"[:300]
        if not event.id:
            event.id = self._id(message, headers)
        return event

    def _fill(self, event: Event, message: AbstractIncomingMessage,
              headers: Mapping[str, Any]) -> None:
        if headers:
            event.headers = tuple((k, _raw(v)) for k, v in headers.items())
        event.http_headers = self._http_headers(message, headers)
        if self._keyed:
            event.ordering_key = self._ordering_key(message, headers)
        event.id = self._id(message, headers)
        if message.timestamp is not None:
            event.time = _utc(message.timestamp)
        extensions = {
            "amqpexchange": message.exchange or "",
            "amqproutingkey": message.routing_key or "",
            "amqpredelivered": "true" if message.redelivered else "false",
        }
        cloudevent = self._cloudevent(message, headers)
        if cloudevent is not None:
            _apply(event, cloudevent)
            extensions = {**extensions, **cloudevent.extensions}
        event.extensions = extensions

    @staticmethod
    def _cloudevent(
        message: AbstractIncomingMessage, headers: Mapping[str, Any]
    ) -> CloudEvent | None:
        """The CloudEvent the message already is (structured or binary mode), if any."""
        if cloudevents.is_structured(message.content_type):
            return cloudevents.parse_structured(message.body)
        attributes = binary_attributes(headers) if headers else None
        if attributes is None:
            return None
        return cloudevents.from_binary(attributes, message.body, message.content_type)

    @staticmethod
    def _id(message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> str:
        if message.message_id:
            return message.message_id
        return message_hash(
            message.exchange or "", message.routing_key or "", headers, message.body
        )

    def _ordering_key(self, message: AbstractIncomingMessage, headers: Mapping[str, Any]) -> str:
        if self._ordering_header is not None:
            value = _text(headers.get(self._ordering_header))
            if value is not None:
                return value
        return message.routing_key or ""

    @staticmethod
    def _http_headers(
        message: AbstractIncomingMessage, headers: Mapping[str, Any]
    ) -> dict[str, str]:
        result: dict[str, str] = {}
        for name, value in headers.items():
            if name.startswith(CE_PREFIXES):
                continue
            text = _text(value)
            if text is not None and _header_safe(text):
                result[HEADER_PREFIX + name] = text
        for attribute, header in _PROPERTY_HEADERS:
            value = getattr(message, attribute, None)
            if not value:
                continue  # unset (priority 0 is AMQP's "none"; aio-pika always reports it)
            text = value if isinstance(value, str) else _text(value)
            if text and _header_safe(text):
                result[header] = text
        return result


def _header_safe(text: str) -> bool:
    """Printable ASCII only: anything else stays out of the request (not the dead letter)."""
    return text.isascii() and text.isprintable()


def _apply(event: Event, cloudevent: CloudEvent) -> None:
    """The message's own attributes and data; without ``time`` it keeps the timestamp."""
    attributes = cloudevent.attributes
    event.id = attributes["id"]
    event.source = attributes["source"]
    event.type = attributes["type"]
    event.subject = attributes.get("subject")
    if cloudevent.time is not None:
        event.time = _utc(cloudevent.time)
    event.data = cloudevent.data
    event.content_type = cloudevent.content_type


# --- connections --------------------------------------------------------------------


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names (as aiormq reads it)."""
    path = URL(url).path
    return "/" if path in ("", "/") else path[1:].replace("%2F", "/")


def ssl_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """A client TLS context from the config's CA / client cert files, or None (defaults)."""
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        context.load_cert_chain(tls.cert_file, tls.key_file, password=password)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _BackoffConnection(RobustConnection):
    """``connect_robust``'s connection with a pause between reconnect attempts that grows.

    aio-pika retries every ``reconnect_interval``; here that pause is half the time the
    connection has been down, kept within [1 s, 30 s]: attempts about 1, 2, 3, 4.5,
    6.75 ... s after the loss (x1.5 each time), back to 1 s once connected again.
    """

    _initial = _RECONNECT_INITIAL
    _lost_at: float | None = None

    @property
    def reconnect_interval(self) -> float:
        if self._lost_at is None:
            return self._initial
        down = time.monotonic() - self._lost_at
        return min(_RECONNECT_MAX, max(self._initial, down / 2))

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._initial = float(value)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._lost_at = None


async def connect(
    url: str, tls: TlsConfig | None, name: str, robust: bool = True
) -> AbstractConnection:
    """Open a connection (robust: reconnects by itself later); RabbitSetupError if not."""
    options: dict[str, Any] = {
        "timeout": _CONNECT_TIMEOUT,
        "ssl_context": ssl_context(tls),
        "client_properties": {"connection_name": f"trigger-bridge {name}"},
    }
    try:
        if robust:
            connection: AbstractConnection = await aio_pika.connect_robust(
                url, connection_class=_BackoffConnection,
                reconnect_interval=_RECONNECT_INITIAL, **options,
            )
        else:
            connection = await aio_pika.connect(url, **options)
    except Exception as err:
        raise RabbitSetupError(explain(err, url)) from None
    return connection


def explain(err: BaseException, url: str, queue: str | None = None) -> str:
    """A one-line, secret-free reason for a failed connect / declare / consume."""
    where = redact_url(url)
    vhost = vhost_of(url)
    text = _scrub(str(err) or type(err).__name__, url)
    if isinstance(err, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError):
        reason = f"RabbitMQ at {where} refused the login: wrong user name or password ({text})"
    elif isinstance(err, amqp_errors.ConnectionNotAllowed) or (
        isinstance(err, amqp_errors.InvalidFrameError) and "Connection.Close" in text
    ):
        reason = (f"RabbitMQ at {where} refused virtual host {vhost!r}: it does not exist or "
                  f"the user may not use it")
    elif isinstance(err, amqp_errors.ChannelNotFoundEntity):
        reason = (f"{_reply(text)} at {where}: create it, or add a 'declare' section to the "
                  f"trigger" if queue else f"{_reply(text)} at {where}")
    elif isinstance(err, amqp_errors.ChannelPreconditionFailed):
        reason = f"the broker rejected the declared settings at {where}: {_reply(text)}"
    elif isinstance(err, amqp_errors.ChannelAccessRefused):
        reason = f"access refused at {where}: {_reply(text)}"
    elif isinstance(err, ssl.SSLError | ssl.CertificateError) or "[SSL" in text:
        reason = f"TLS handshake with {where} failed: {text}"
    elif isinstance(err, OSError | TimeoutError | ConnectionError):
        reason = f"cannot connect to RabbitMQ at {where}: {type(err).__name__}: {text}"
    else:
        reason = f"RabbitMQ error at {where}: {type(err).__name__}: {text}"
    return reason[:500]


def _reply(text: str) -> str:
    """``... "NOT_FOUND - no queue 'x' in vhost '/'"`` -> ``no queue 'x' in vhost '/'``."""
    match = re.search(r'"?[A-Z_]+ - ([^"]*)"?', text)
    return match.group(1) if match else text


def _scrub(text: str, url: str) -> str:
    password = URL(url).password
    return text.replace(password, "***") if password else text


# --- the connector ------------------------------------------------------------------


class AckBatcher:
    """The acknowledgements of one AMQP channel, coalesced.

    Acks settled during one event-loop iteration are sent together by the first of
    them, after one ``sleep(0)``: the run of deliveries settled from the oldest one
    unacked goes as a single ``basic.ack(multiple=true)`` carrying the highest pending
    tag; later ones are acked one by one in the same flush. Nothing waits longer than
    that iteration, so a slow or retrying delivery never delays the acks of the
    others. Rejects go out at once. A channel's delivery tags are 1, 2, 3, ... in
    delivery order, which is what lets the run be computed from ``_through`` alone.
    One flush at a time (a lock), so a multiple ack never overtakes an earlier frame:
    its own tag is always still unacked (the broker closes the channel otherwise).
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        #: Every tag <= this is settled and acknowledged (or rejected).
        self._through = 0
        #: Settled tags above ``_through``.
        self._settled: set[int] = set()
        #: Positive acks not sent yet.
        self._pending: set[int] = set()
        self._lock = asyncio.Lock()
        self._flushing = False

    async def ack(self, tag: int) -> None:
        """Queue an ack; the first caller in a loop iteration sends the batch and
        raises if it could not be sent (the other callers have returned already)."""
        self._pending.add(tag)
        if self._flushing:
            return
        self._flushing = True
        try:
            await asyncio.sleep(0)  # let the other settles of this iteration join
        finally:
            self._flushing = False
        await self.flush()

    async def reject(self, tag: int, requeue: bool) -> None:
        async with self._lock:
            await self.channel.basic_reject(delivery_tag=tag, requeue=requeue)
            self._settled.add(tag)

    async def flush(self) -> None:
        """Send the pending acks (also called by ``stop`` for what is left)."""
        async with self._lock:
            pending, self._pending = self._pending, set()
            if not pending:
                return
            self._settled |= pending
            while self._through + 1 in self._settled:
                self._through += 1
                self._settled.discard(self._through)
            try:
                covered = [tag for tag in pending if tag <= self._through]
                if covered:
                    await self.channel.basic_ack(delivery_tag=max(covered), multiple=True)
                for tag in sorted(tag for tag in pending if tag > self._through):
                    await self.channel.basic_ack(delivery_tag=tag)
            except Exception as err:
                raise AckError(len(pending), err) from err


class AckError(Exception):
    def __init__(self, count: int, cause: BaseException) -> None:
        super().__init__(f"{count} ack(s) not sent: {type(cause).__name__}: {cause}")
        self.count = count


def _rejects(dead_letter: DeadLetterConfig | None) -> bool:
    return bool(dead_letter and dead_letter.rabbitmq and dead_letter.rabbitmq.reject)


class RabbitConnector:
    """One RabbitMQ trigger: a queue consumed with manual acks."""

    def __init__(self, trigger: ResolvedTrigger, context: ConnectorContext) -> None:
        source = trigger.config.rabbitmq
        assert source is not None
        self._name = trigger.name
        self._source = source
        self._url = source.url.get_secret_value()
        self._reject_dead = _rejects(trigger.dead_letter)
        self._map = EventMapper(trigger.name, source, vhost_of(self._url))
        self._log = context.log.bind(trigger=self._name, queue=source.queue)
        m = context.metrics
        self._m_lost = m.rabbitmq_connection_losses.labels(self._name)
        self._m_reconnects = m.rabbitmq_reconnects.labels(self._name)
        self._m_settle_failures = m.rabbitmq_settle_failures.labels(self._name)
        self._m_stale = m.rabbitmq_stale_deliveries.labels(self._name)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._consumer_tag: str | None = None
        self._up = False
        self._acks: AckBatcher | None = None
        self._inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    @property
    def ready(self) -> bool:
        """Connected, channel open and the consumer registered on it."""
        connection, channel = self._connection, self._channel
        if connection is None or channel is None or not connection.connected.is_set():
            return False
        try:  # the current aiormq channel (a new one after a reopen)
            underlay: Any = channel.channel  # type: ignore[attr-defined]
        except Exception:
            return False
        return not underlay.is_closed and self._consumer_tag in underlay.consumers

    @property
    def max_unsettled(self) -> int:
        return self._source.prefetch

    async def start(self) -> None:
        if self._connection is not None:
            return
        self._drop_inbox()
        connection = await connect(self._url, self._source.tls, self._name)
        assert isinstance(connection, AbstractRobustConnection)
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self._source.prefetch)
            queue = await self._queue(channel)
            self._consumer_tag = await queue.consume(self._on_message, no_ack=False)
        except (Exception, asyncio.CancelledError) as err:
            await _close(connection)
            if isinstance(err, asyncio.CancelledError):
                raise
            raise RabbitSetupError(explain(err, self._url, self._source.queue)) from None
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._connection, self._channel, self._up = connection, channel, True
        if self._reject_dead and "x-dead-letter-exchange" not in self._declared_arguments():
            self._log.warning("dead_letter reject mode: make sure the queue has a dead-letter "
                              "exchange (queue argument or policy), or rejected messages are lost")
        self._log.info("consuming", url=redact_url(self._url), prefetch=self._source.prefetch)

    def _declared_arguments(self) -> dict[str, Any]:
        declare = self._source.declare
        return {} if declare is None else dict(declare.arguments)

    async def _queue(self, channel: AbstractChannel) -> AbstractQueue:
        declare, name = self._source.declare, self._source.queue
        if declare is None:
            return await channel.declare_queue(name, passive=True)
        queue = await channel.declare_queue(
            name, durable=declare.durable, arguments=declare.arguments or None
        )
        if declare.exchange is not None:
            exchange = await channel.declare_exchange(
                declare.exchange, type=declare.exchange_type, durable=declare.durable
            )
            await queue.bind(exchange, routing_key=declare.routing_key or name)
        return queue

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    def _on_lost(self, _connection: object, error: BaseException | None = None) -> None:
        # Also called for each failed reconnect attempt: report the loss once.
        if self._connection is None or not self._up:
            return  # our own close, or already reported
        self._up = False
        self._m_lost.inc()
        self._log.warning("rabbitmq connection lost; reconnecting",
                          error=_scrub(str(error) or type(error).__name__, self._url)[:300])

    def _on_reconnected(self, _connection: object) -> None:
        self._up = True
        self._m_reconnects.inc()
        self._log.info("rabbitmq connection restored; consuming again")

    async def events(self) -> AsyncIterator[Event]:
        while True:
            message = await self._inbox.get()
            acks = self._acks_for(message)
            if acks is None or message.delivery_tag is None:
                self._m_stale.inc()  # its channel died: the broker has requeued it
                continue
            yield self._map(message, partial(self._settle, acks, message.delivery_tag))

    def _acks_for(self, message: AbstractIncomingMessage) -> AckBatcher | None:
        """The batcher of the delivery's channel, or None when that channel is closed."""
        try:
            channel = message.channel  # raises once the channel is closed
        except Exception:
            return None
        if channel.is_closed:
            return None
        if self._acks is None or self._acks.channel is not channel:
            self._acks = AckBatcher(channel)  # a new channel (reconnect): tags restart at 1
        return self._acks

    async def _settle(
        self, acks: AckBatcher, tag: int, event: Event, disposition: Disposition
    ) -> None:
        try:
            if disposition is Disposition.DEAD_LETTERED and self._reject_dead:
                await acks.reject(tag, requeue=False)
            elif disposition is Disposition.ABANDONED:
                await acks.reject(tag, requeue=True)
            else:
                await acks.ack(tag)
        except Exception as err:
            self._settle_failed(err, disposition, event_id=event.id)

    def _settle_failed(self, err: BaseException, disposition: Disposition | None = None,
                       **context: str) -> None:
        count = err.count if isinstance(err, AckError) else 1
        self._m_settle_failures.inc(count)
        self._log.warning(
            "acknowledgement not sent; the broker will redeliver", count=count,
            disposition=None if disposition is None else disposition.value,
            error=f"{type(err).__name__}: {err}"[:300], **context,
        )

    async def stop(self) -> None:
        connection, self._connection = self._connection, None
        self._channel, self._consumer_tag = None, None
        self._drop_inbox()
        acks, self._acks = self._acks, None
        if acks is not None:
            try:
                await acks.flush()
            except Exception as err:
                self._settle_failed(err)
        if connection is not None:
            await _close(connection)
            self._log.info("rabbitmq connection closed")

    def _drop_inbox(self) -> None:
        """Deliveries not yet taken: unacked, so the broker requeues them on close."""
        while not self._inbox.empty():
            self._inbox.get_nowait()


async def _close(connection: AbstractConnection) -> None:
    """Close, whatever state it is in: nothing is left to save on a broken connection."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(10):
            await connection.close()


# --- dead-letter sinks --------------------------------------------------------------


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
            connection = await connect(self._url, self._tls, f"{self._name} dead letters",
                                       robust=False)
            try:
                channel = await connection.channel(publisher_confirms=True,
                                                   on_return_raises=True)
                exchange = (channel.default_exchange if self._exchange_name == ""
                            else await channel.get_exchange(self._exchange_name, ensure=True))
            except Exception as err:
                await _close(connection)
                raise RabbitSetupError(f"dead-letter {explain(err, self._url)}") from None
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
            raise RabbitSetupError(
                f"dead letter not confirmed by {self.target}: {_describe_publish(err)}"
            ) from None
        if not isinstance(confirmation, aiormq.spec.Basic.Ack):
            raise RabbitSetupError(f"dead letter not confirmed by {self.target}")

    async def close(self) -> None:
        connection = self._connection
        self._connection, self._channel, self._exchange = None, None, None
        if connection is not None:
            await _close(connection)


def _describe_publish(err: BaseException) -> str:
    if isinstance(err, amqp_errors.PublishError):
        return "no queue is bound for its routing key (the broker returned it)"
    if isinstance(err, amqp_errors.DeliveryError):
        return "the broker refused it (basic.nack)"
    if isinstance(err, TimeoutError):
        return f"no confirm within {_PUBLISH_TIMEOUT:g}s"
    return f"{type(err).__name__}: {err}"[:300]


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
            headers[f"{CE_PREFIXES[0]}{attribute}"] = text
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
    config: DeadLetterConfig, trigger: ResolvedTrigger
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
