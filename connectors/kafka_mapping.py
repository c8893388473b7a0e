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
JSON envelope; ``data`` or ``data_base64`` is the data). The ``kafka*`` extensions are
added unless the event has its own of that name. A malformed CloudEvent does not stop
the partition: the event carries ``defect`` (the reason) and the dispatcher
dead-letters it at once, with the original value, key and headers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from aiokafka.structs import ConsumerRecord

from bridge.events import Event, Settler

EVENT_TYPE = "dev.triggerbridge.kafka.record"
HEADER_PREFIX = "kafka-header-"
STRUCTURED = "application/cloudevents+json"

_NAME = re.compile(r"^[a-z0-9]+$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_PRINTABLE = re.compile(rb"^[\x20-\x7e\t]*$")
#: Context attributes with a place of their own in an Event (the rest are extensions).
_CORE = frozenset({"specversion", "id", "source", "type", "time", "subject", "datacontenttype"})
_JSON_TYPE = re.compile(r"^(application|text)/([a-z0-9.+-]*\+)?json\s*(;.*)?$", re.I)


class CloudEventError(ValueError):
    """The record claims to be a CloudEvent but is not a valid one."""


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
        if lower == "content-type" or lower.startswith("ce_") or not _TOKEN.match(name):
            continue
        if not _PRINTABLE.match(value):
            continue
        http_name = HEADER_PREFIX + lower
        text = value.decode("ascii")
        out[http_name] = f"{out[http_name]}, {text}" if http_name in out else text
    return out


# --- records that already are CloudEvents --------------------------------------------


def _apply_cloudevent(event: Event, kafka: dict[str, str]) -> None:
    """Replace the event's attributes with the record's own, if it is a CloudEvent.

    Nothing is changed unless the whole CloudEvent is valid (a defect keeps the record
    as it came, for the dead letter).
    """
    content_type = event.content_type
    data = event.data
    if (content_type or "").split(";", 1)[0].strip().lower() == STRUCTURED:
        attributes, data, content_type = _structured(event.data)
    elif any(name.lower() == "ce_specversion" for name, _ in event.headers):
        attributes = _binary_attributes(event.headers)
        content_type = content_type or attributes.get("datacontenttype")
    else:
        return
    _check_required(attributes)
    moment = _parse_time(attributes["time"]) if "time" in attributes else None
    own = {k: v for k, v in attributes.items() if k not in _CORE}
    event.id = attributes["id"]
    event.source = attributes["source"]
    event.type = attributes["type"]
    event.subject = attributes.get("subject")
    event.time = moment
    event.data = data
    event.content_type = content_type
    event.extensions = {**{k: v for k, v in kafka.items() if k not in own}, **own}


def _binary_attributes(headers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for name, value in headers:
        if not name.lower().startswith("ce_"):
            continue
        attribute = name[3:]
        if not _NAME.match(attribute) or attribute == "data":
            raise CloudEventError(
                f"header {name!r}: {attribute!r} is not a valid CloudEvents attribute name "
                "(lower-case letters and digits only)"
            )
        if attribute in attributes:
            raise CloudEventError(f"header {name!r} appears twice")
        try:
            attributes[attribute] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise CloudEventError(f"header {name!r} is not UTF-8 text") from None
    return attributes


def _structured(value: bytes) -> tuple[dict[str, str], bytes, str | None]:
    """Parse a structured-mode envelope: (attributes, data bytes, data content type)."""
    try:
        envelope = json.loads(value)
    except (ValueError, UnicodeDecodeError) as err:
        raise CloudEventError(f"structured CloudEvent is not valid JSON: {err}") from None
    if not isinstance(envelope, dict):
        raise CloudEventError("structured CloudEvent must be a JSON object")
    attributes: dict[str, str] = {}
    for name, raw in envelope.items():
        if name in ("data", "data_base64") or raw is None:
            continue
        if not _NAME.match(name):
            raise CloudEventError(
                f"{name!r} is not a valid CloudEvents attribute name "
                "(lower-case letters and digits only)"
            )
        attributes[name] = _attribute_text(name, raw)
    data_type = attributes.get("datacontenttype")
    data, data_type = _structured_data(envelope, data_type)
    return attributes, data, data_type


def _attribute_text(name: str, raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        return raw
    if isinstance(raw, int | float):
        return str(raw)
    raise CloudEventError(f"attribute {name!r} must be a string, number or boolean")


def _structured_data(envelope: dict[str, Any], data_type: str | None) -> tuple[bytes, str | None]:
    if "data_base64" in envelope and envelope["data_base64"] is not None:
        if envelope.get("data") is not None:
            raise CloudEventError("structured CloudEvent has both 'data' and 'data_base64'")
        encoded = envelope["data_base64"]
        if not isinstance(encoded, str):
            raise CloudEventError("'data_base64' must be a string")
        try:
            return base64.b64decode(encoded, validate=True), data_type
        except (binascii.Error, ValueError):
            raise CloudEventError("'data_base64' is not valid base64") from None
    if envelope.get("data") is None:
        return b"", data_type
    data = envelope["data"]
    if data_type is None:
        data_type = "application/json"
    if isinstance(data, str) and not _JSON_TYPE.match(data_type):
        return data.encode("utf-8"), data_type
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), data_type


def _check_required(attributes: dict[str, str]) -> None:
    version = attributes.get("specversion")
    if version is None:
        raise CloudEventError("CloudEvent has no 'specversion'")
    if version != "1.0":
        raise CloudEventError(f"CloudEvents specversion {version!r} is not supported (only 1.0)")
    for name in ("id", "source", "type"):
        if not attributes.get(name):
            raise CloudEventError(f"CloudEvent is missing the required attribute {name!r}")


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CloudEventError(f"CloudEvent 'time' {text!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise CloudEventError(f"CloudEvent 'time' {text!r} has no UTC offset")
    return moment
