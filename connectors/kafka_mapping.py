"""Kafka record -> :class:`~bridge.events.Event` (CloudEvents, DESIGN section 4).

A plain record becomes a CloudEvent with

- ``id`` = ``topic/partition/offset`` (deterministic: redeliveries keep it),
- ``source`` = ``kafka://<topic>``, ``type`` = ``dev.triggerbridge.kafka.record``,
- ``time`` = the record timestamp, ``datacontenttype`` = its ``content-type`` header,
- extensions ``kafkatopic``, ``kafkapartition``, ``kafkaoffset`` and the key as
  ``partitionkey`` (when it is UTF-8 text) or ``partitionkeyb64`` (base64, otherwise),
- the other record headers as HTTP headers ``kafka-header-<name>`` (only names that are
  HTTP tokens and values that are printable ASCII; everything stays in dead letters),
- the value as the body, bytes untouched: it is never parsed, whatever its content type.

A record that already is a CloudEvent keeps its own attributes (its own ``id``!), per
the CloudEvents Kafka protocol binding: *binary* mode (a ``ce_specversion`` header;
``ce_<attr>`` headers, ``content-type`` = datacontenttype, the value is the data) or
*structured* mode (``content-type: application/cloudevents+json``: the value is the
JSON envelope; ``data`` or ``data_base64`` is the data). :mod:`bridge.cloudevents`
reads the envelope and checks the attributes (required ones, ``specversion`` 1.0,
``time`` with an offset). The ``kafka*`` extensions are added unless the event has its
own of that name. A malformed CloudEvent does not stop
the partition: the event carries ``defect`` (the reason) and the dispatcher
dead-letters it at once, with the original value, key and headers.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from aiokafka.structs import ConsumerRecord

from bridge import cloudevents
from bridge.cloudevents import KAFKA_PREFIX, CloudEventError, Problem
from bridge.events import Event, Settler
from bridge.headers import KAFKA_HEADER_PREFIX, is_header_name

EVENT_TYPE = "dev.triggerbridge.kafka.record"

_PRINTABLE = re.compile(rb"^[\x20-\x7e\t]*\Z")

Headers = tuple[tuple[str, bytes], ...]


def record_event(trigger: str, record: ConsumerRecord[bytes, bytes], settler: Settler) -> Event:
    """The event for one record; never raises (a malformed CloudEvent sets ``defect``)."""
    topic, partition, offset = record.topic, record.partition, record.offset
    origin = f"{topic}/{partition}/{offset}"
    key = record.key
    headers: Headers = tuple((name, value or b"") for name, value in record.headers)
    data = record.value or b""
    kafka = _kafka_extensions(topic, partition, offset, key)
    event = Event(
        trigger=trigger,
        id=origin,
        source=f"kafka://{topic}",
        type=EVENT_TYPE,
        data=data,
        content_type=_content_type(headers),
        time=_timestamp(record.timestamp),
        extensions=kafka,
        http_headers=_http_headers(headers) if headers else {},
        ordering_key=None if key is None else key.decode("latin-1"),
        partition=f"{topic}/{partition}",
        origin=origin,
        key=key,
        headers=headers,
        settler=settler,
    )
    if not headers:
        return event
    try:
        _apply_cloudevent(event, kafka)
    except CloudEventError as err:
        event.defect = str(err)
    return event


def _kafka_extensions(topic: str, partition: int, offset: int, key: bytes | None) -> dict[str, str]:
    extensions = {"kafkatopic": topic, "kafkapartition": str(partition), "kafkaoffset": str(offset)}
    if key is not None:
        try:
            extensions["partitionkey"] = key.decode("utf-8")
        except UnicodeDecodeError:
            extensions["partitionkeyb64"] = base64.b64encode(key).decode("ascii")
    return extensions


def _timestamp(millis: int | None) -> datetime | None:
    if millis is None or millis < 0:
        return None
    return datetime.fromtimestamp(millis / 1000, UTC)


def _content_type(headers: Headers) -> str | None:
    for name, value in headers:
        if name.lower() == "content-type":
            try:
                text = value.decode("ascii").strip()
            except UnicodeDecodeError:
                return None
            return text if text and _PRINTABLE.match(value) else None
    return None


def _http_headers(headers: Headers) -> dict[str, str]:
    """Record headers the function may see: token names, printable ASCII values."""
    out: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower == "content-type" or lower.startswith(KAFKA_PREFIX) or not is_header_name(name):
            continue
        if not _PRINTABLE.match(value):
            continue
        http_name = KAFKA_HEADER_PREFIX + lower
        text = value.decode("ascii")
        out[http_name] = f"{out[http_name]}, {text}" if http_name in out else text
    return out


# --- records that already are CloudEvents --------------------------------------------


def _apply_cloudevent(event: Event, kafka: dict[str, str]) -> None:
    """Replace the event's attributes with the record's own, if it is a CloudEvent.

    Nothing is changed unless the whole CloudEvent is valid (a defect keeps the record
    as it came, for the dead letter).
    """
    if cloudevents.is_structured(event.content_type):
        cloudevent = cloudevents.parse_structured(event.data)
    elif any(name.lower() == KAFKA_PREFIX + "specversion" for name, _ in event.headers):
        binary = _binary_attributes(event.headers)
        cloudevent = cloudevents.from_binary(binary, event.data, event.content_type)
    else:
        return
    event.adopt(cloudevent, kafka, cloudevent.time)


def _binary_attributes(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for name, value in headers:
        if not name.lower().startswith(KAFKA_PREFIX):
            continue
        attribute = name[len(KAFKA_PREFIX):]
        if not cloudevents.is_attribute_name(attribute) or attribute == "data":
            bad_name = Problem.BAD_NAME.text(name=attribute)
            raise CloudEventError(f"header {name!r}: {bad_name}")
        if attribute in attributes:
            raise CloudEventError(f"header {name!r} appears twice")
        try:
            attributes[attribute] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise CloudEventError(f"header {name!r} is not UTF-8 text") from None
    return attributes
