"""AMQP message -> :class:`~bridge.events.Event` (CloudEvents, DESIGN section 4).

Details and examples: docs/rabbitmq.md. A plain message becomes a CloudEvent with

- ``id`` = its ``message_id``, else :func:`message_hash` (the same on redeliveries),
- ``source`` = ``amqp://<vhost>/<queue>`` (:func:`source_uri`),
  ``type`` = ``dev.triggerbridge.rabbitmq.message``,
- ``time`` = the ``timestamp`` property (UTC), ``datacontenttype`` = ``content_type``,
- extensions ``amqpexchange``, ``amqproutingkey`` and ``amqpredelivered``,
- its headers as HTTP headers ``amqp-header-<name>`` and some properties as
  ``amqp-<name>`` (scalar values that are printable ASCII only; everything stays in
  dead letters),
- the body as the data, bytes untouched.

A message that already is a CloudEvent keeps its attributes (its own ``id``!): AMQP
binary mode (``cloudEvents:<attr>`` or ``cloudEvents_<attr>`` application properties,
read here; ``content_type`` = datacontenttype, the body is the data) or structured mode
(``content_type: application/cloudevents+json``: the body is the JSON envelope).
:mod:`bridge.cloudevents` reads the envelope and checks the attributes. The ``amqp*``
extensions are added unless the event has its own of that name. A malformed CloudEvent
makes the event ``defect`` (dead-lettered at once, the rest keeps flowing); some
defects keep RabbitMQ's own words (``_WORDING``).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from aio_pika.abc import AbstractIncomingMessage

from bridge import cloudevents
from bridge.cloudevents import AMQP_PREFIXES, STRUCTURED, CloudEvent, CloudEventError, Problem
from bridge.config import RabbitSource
from bridge.errors import describe
from bridge.events import Event, format_time
from bridge.headers import AMQP_HEADER_PREFIX

EVENT_TYPE = "dev.triggerbridge.rabbitmq.message"
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


def _value_text(value: Any) -> str | None:
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


def _value_bytes(value: Any) -> bytes:
    """A header value as bytes for dead-letter records (text, or JSON for composites)."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    text = _value_text(value)
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
        prefix = next((p for p in AMQP_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            continue
        attr = name[len(prefix):]
        if attr in found and found[attr] != value:
            raise CloudEventError(f"{AMQP_PREFIXES[0]}{attr} and {AMQP_PREFIXES[1]}{attr} disagree")
        found[attr] = value
    return {name: _property_text(name, value) for name, value in found.items()} or None


def _property_text(name: str, value: Any) -> str:
    """An attribute's application property value as text (timestamps in RFC 3339)."""
    if not cloudevents.is_attribute_name(name):
        raise CloudEventError(
            f"invalid CloudEvents application property name {name!r} (lower-case a-z0-9 only)"
        )
    text = _value_text(value)
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
            event.defect = f"cannot map message: {describe(err, None)}"[:300]
        if not event.id:
            event.id = self._id(message, headers)
        return event

    def _fill(self, event: Event, message: AbstractIncomingMessage,
              headers: Mapping[str, Any]) -> None:
        if headers:
            event.headers = tuple((k, _value_bytes(v)) for k, v in headers.items())
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
        if cloudevent is None:
            event.extensions = extensions
            return
        # without a time of its own, the event keeps the message's timestamp
        time = event.time if cloudevent.time is None else _utc(cloudevent.time)
        event.adopt(cloudevent, extensions, time)

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
            value = _value_text(headers.get(self._ordering_header))
            if value is not None:
                return value
        return message.routing_key or ""

    @staticmethod
    def _http_headers(
        message: AbstractIncomingMessage, headers: Mapping[str, Any]
    ) -> dict[str, str]:
        result: dict[str, str] = {}
        for name, value in headers.items():
            if name.startswith(AMQP_PREFIXES):
                continue
            text = _value_text(value)
            if text is not None and _header_safe(text):
                result[AMQP_HEADER_PREFIX + name] = text
        for attribute, header in _PROPERTY_HEADERS:
            value = getattr(message, attribute, None)
            if not value:
                continue  # unset (priority 0 is AMQP's "none"; aio-pika always reports it)
            text = value if isinstance(value, str) else _value_text(value)
            if text and _header_safe(text):
                result[header] = text
        return result


def _header_safe(text: str) -> bool:
    """Printable ASCII only: anything else stays out of the request (not the dead letter)."""
    return text.isascii() and text.isprintable()
