"""The AMQP -> CloudEvents mapping and the dead-letter message, on real aio-pika
message objects built from protocol frames (no broker needed)."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from aio_pika import DeliveryMode, IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from bridge.config import RabbitSource
from bridge.deadletter import DeadLetter
from bridge.events import Event
from connectors.rabbitmq_connection import vhost_of
from connectors.rabbitmq_mapping import EVENT_TYPE, EventMapper, message_hash, source_uri
from connectors.rabbitmq_sink import dead_letter_message


def delivery(
    body: bytes = b"payload", routing_key: str = "jobs.new", exchange: str = "jobs",
    redelivered: bool = False, **properties: Any,
) -> IncomingMessage:
    frame = spec.Basic.Deliver(consumer_tag="ctag", delivery_tag=7, redelivered=redelivered,
                               exchange=exchange, routing_key=routing_key)
    header = ContentHeader(properties=spec.Basic.Properties(**properties), body_size=len(body))
    return IncomingMessage(DeliveredMessage(delivery=frame, header=header, body=body,
                                            channel=None))  # type: ignore[arg-type]


def source(**options: Any) -> RabbitSource:
    return RabbitSource(url="amqp://u:p@h/", queue="jobs", **options)  # type: ignore[arg-type]


async def no_settle(event: Event, disposition: object) -> None:
    """Unit tests never settle."""


def mapped(message: IncomingMessage, **options: Any) -> Event:
    return EventMapper("t", source(**options), "/")(message, no_settle)


def test_message_id_is_the_id_and_the_rest_maps_to_attributes() -> None:
    stamp = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    event = mapped(delivery(message_id="m-1", content_type="text/plain", timestamp=stamp,
                            correlation_id="c-9", headers={"tenant": "acme"}))
    assert event.id == "m-1"
    assert event.source == "amqp:///jobs"
    assert event.type == EVENT_TYPE
    assert event.time == stamp
    assert event.content_type == "text/plain"
    assert event.data == b"payload"
    assert event.partition == "jobs"
    assert event.origin == "jobs"
    assert event.key == b"jobs.new"
    assert event.ordering_key is None, "ordering none: no key lanes"
    assert event.defect is None
    assert event.extensions == {"amqpexchange": "jobs", "amqproutingkey": "jobs.new",
                                "amqpredelivered": "false"}
    assert event.http_headers == {"amqp-header-tenant": "acme", "amqp-message-id": "m-1",
                                  "amqp-correlation-id": "c-9"}
    assert event.headers == (("tenant", b"acme"),)


def test_id_without_message_id_is_the_documented_hash() -> None:
    headers = {"b": 1, "a": "x", "x-delivery-count": 4}
    first = mapped(delivery(headers=headers))
    again = mapped(delivery(headers={"a": "x", "b": 1, "x-delivery-count": 5},
                            redelivered=True))
    assert first.id == again.id == message_hash("jobs", "jobs.new", {"a": "x", "b": 1},
                                                b"payload")
    assert len(first.id) == 64
    assert again.extensions["amqpredelivered"] == "true"


def test_hash_follows_its_definition_and_keeps_types_apart() -> None:
    import hashlib

    def field(data: bytes) -> bytes:
        return len(data).to_bytes(8, "big") + data

    table = json.dumps([["n", 1]], separators=(",", ":")).encode()
    expected = hashlib.sha256(field(b"ex") + field(b"rk") + field(table) + field(b"body"))
    assert message_hash("ex", "rk", {"n": 1}, b"body") == expected.hexdigest()
    variants = {
        message_hash("ex", "rk", {"n": 1}, b"body"),
        message_hash("ex", "rk", {"n": "1"}, b"body"),
        message_hash("ex", "rk", {"n": True}, b"body"),
        message_hash("ex", "rk", {"n": 1}, b"body2"),
        message_hash("ex", "rk2", {"n": 1}, b"body"),
        message_hash("ex2", "rk", {"n": 1}, b"body"),
        message_hash("e", "xrk", {"n": 1}, b"body"),
        message_hash("ex", "rk", {"n": bytearray(b"1")}, b"body"),
    }
    assert len(variants) == 8
    assert message_hash("", "", {"x-death": [{"count": 1}]}, b"") == message_hash("", "", {}, b"")


def test_http_headers_carry_safe_values_only() -> None:
    event = mapped(delivery(headers={
        "plain": "ok", "number": 2.5, "flag": False, "crlf": "a\r\nInjected: 1",
        "unicode": "café", "binary": bytearray(b"\xff\x00"), "text-bytes": bytearray(b"abc"),
        "table": {"k": 1}, "list": [1], "cloudEvents:id": "x",
        "when": datetime(2026, 1, 1, tzinfo=UTC),
    }, priority=0))
    assert event.http_headers == {
        "amqp-header-plain": "ok", "amqp-header-number": "2.5", "amqp-header-flag": "false",
        "amqp-header-text-bytes": "abc", "amqp-header-when": "2026-01-01T00:00:00Z",
    }
    raw = dict(event.headers)
    assert raw["binary"] == b"\xff\x00"
    assert raw["crlf"] == b"a\r\nInjected: 1", "dead letters keep the original"
    assert json.loads(raw["table"]) == {"table": [["k", 1]]}


def test_key_ordering_uses_the_header_then_the_routing_key() -> None:
    keyed = {"ordering": "key", "ordering_header": "customer"}
    assert mapped(delivery(headers={"customer": 42}), **keyed).ordering_key == "42"
    assert mapped(delivery(), **keyed).ordering_key == "jobs.new"
    assert mapped(delivery(), ordering="key").ordering_key == "jobs.new"


def binary_ce(**overrides: Any) -> dict[str, Any]:
    headers = {"cloudEvents:specversion": "1.0", "cloudEvents:id": "e-1",
               "cloudEvents:source": "/src", "cloudEvents:type": "com.example"}
    headers.update(overrides)
    return {k: v for k, v in headers.items() if v is not None}


def test_binary_cloudevent_keeps_its_attributes() -> None:
    event = mapped(delivery(message_id="m-1", content_type="application/json", headers=binary_ce(
        **{"cloudEvents:subject": "s", "cloudEvents:time": "2026-01-02T03:04:05.5+01:00",
           "cloudEvents:traceparent": "00-ab", "cloudEvents:count": 3,
           "cloudEvents:amqpexchange": "theirs", "other": "h"})))
    assert (event.id, event.source, event.type, event.subject) == ("e-1", "/src", "com.example",
                                                                  "s")
    assert event.time == datetime(2026, 1, 2, 2, 4, 5, 500000, tzinfo=UTC)
    assert event.content_type == "application/json"
    assert event.extensions["traceparent"] == "00-ab"
    assert event.extensions["count"] == "3"
    assert event.extensions["amqpexchange"] == "theirs", "the event's own attributes win"
    assert event.extensions["amqproutingkey"] == "jobs.new"
    assert "amqp-header-cloudEvents:id" not in event.http_headers
    assert event.http_headers["amqp-header-other"] == "h"


def test_legacy_prefix_and_amqp_timestamp_time() -> None:
    moment = datetime(2026, 5, 5, 5, 5, 5)  # AMQP timestamps decode naive, in UTC
    headers = {k.replace("cloudEvents:", "cloudEvents_"): v for k, v in binary_ce().items()}
    event = mapped(delivery(headers={**headers, "cloudEvents_time": moment}))
    assert event.id == "e-1"
    assert event.time == moment.replace(tzinfo=UTC)


@pytest.mark.parametrize(("headers", "reason"), [
    (binary_ce(**{"cloudEvents:specversion": "0.3"}), "specversion must be '1.0'"),
    (binary_ce(**{"cloudEvents:specversion": None}), "specversion must be '1.0'"),
    (binary_ce(**{"cloudEvents:source": ""}), "missing or empty: source"),
    (binary_ce(**{"cloudEvents:id": None, "cloudEvents:type": None}), "missing or empty: id, type"),
    (binary_ce(**{"cloudEvents:time": "tomorrow"}), "is not an RFC 3339 timestamp"),
    (binary_ce(**{"cloudEvents:time": "2026-01-01T00:00:00"}), "has no time zone offset"),
    (binary_ce(**{"cloudEvents:Bad-Name": "x"}), "invalid CloudEvents application property name"),
    (binary_ce(**{"cloudEvents:ext": [1, 2]}), "has a value that is not text"),
    (binary_ce(**{"cloudEvents_id": "e-2"}), "disagree"),
])
def test_malformed_cloudevent_properties_make_a_defect(
    headers: dict[str, Any], reason: str
) -> None:
    event = mapped(delivery(body=b"\x00keep", headers=headers))
    assert event.defect is not None
    assert reason in event.defect
    assert event.data == b"\x00keep"
    assert event.id, "a defect event still has an id for its dead-letter record"


def structured(envelope: Any, content_type: str = "application/cloudevents+json") -> Event:
    body = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    return mapped(delivery(body=body, content_type=content_type))


def test_structured_cloudevent_data_forms() -> None:
    base = {"specversion": "1.0", "id": "s-1", "source": "/s", "type": "t", "ext": "v"}
    as_json = structured({**base, "data": {"a": [1, "é"]}},
                         "application/cloudevents+json; charset=utf-8")
    assert (as_json.id, as_json.source, as_json.type) == ("s-1", "/s", "t")
    assert as_json.data == '{"a":[1,"é"]}'.encode()
    assert as_json.content_type == "application/json"
    assert as_json.extensions["ext"] == "v"
    text = structured({**base, "datacontenttype": "text/plain", "data": "hello"})
    assert (text.data, text.content_type) == (b"hello", "text/plain")
    binary = structured({**base, "datacontenttype": "image/png",
                         "data_base64": base64.b64encode(b"\x89PNG").decode()})
    assert (binary.data, binary.content_type) == (b"\x89PNG", "image/png")
    empty = structured(base)
    assert empty.data == b""
    assert empty.defect is None


@pytest.mark.parametrize(("body", "reason"), [
    (b"{broken", "body is not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b"\xff\xfe", "body is not JSON"),
    (json.dumps({"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "data": 1,
                 "data_base64": "AA=="}).encode(), "both 'data' and 'data_base64'"),
    (json.dumps({"specversion": "1.0", "id": "x", "source": "/s", "type": "t",
                 "data_base64": "%%%"}).encode(), "not base64"),
    (json.dumps({"specversion": "1.0", "id": "x", "type": "t"}).encode(), "source"),
])
def test_malformed_structured_cloudevents(body: bytes, reason: str) -> None:
    event = structured(body)
    assert event.defect is not None
    assert reason in event.defect
    assert event.data == body, "the original bytes go to the dead letter"


def test_source_and_vhost() -> None:
    assert vhost_of("amqp://u:p@h:5672/") == "/"
    assert vhost_of("amqp://u:p@h:5672") == "/"
    assert vhost_of("amqp://u:p@h/prod") == "prod"
    assert vhost_of("amqp://u:p@h/%2Fteam") == "/team"
    assert source_uri("/", "jobs") == "amqp:///jobs"
    assert source_uri("prod", "a b/c") == "amqp://prod/a%20b%2Fc"
    assert source_uri("/team", "q") == "amqp://%2Fteam/q"


def test_dead_letter_message() -> None:
    record = DeadLetter(
        trigger="t", function="f", error="http_422", error_detail="no\nway", attempts=1,
        last_status=422, source="jobs", body=b"\xffbody", key=b"jobs.new",
        headers=(("tenant", b"acme"), ("blob", b"\xff\x00"), ("x-death", b"[]"),
                 ("bridge-trigger", b"spoofed")),
        cloudevent={"specversion": "1.0", "id": "e-1", "source": "/s", "type": "t",
                    "datacontenttype": "text/plain", "amqproutingkey": "jobs.new"},
    )
    message = dead_letter_message(record)
    assert message.body == b"\xffbody"
    assert message.content_type == "text/plain"
    assert message.delivery_mode == DeliveryMode.PERSISTENT
    assert message.message_id == "e-1"
    headers = message.headers
    assert headers["tenant"] == "acme"
    assert headers["blob"] == bytearray(b"\xff\x00")
    assert "x-death" not in headers, "broker bookkeeping is not republished"
    assert headers["bridge-trigger"] == "t", "bridge facts win over look-alike headers"
    assert headers["bridge-error-detail"] == "no way"
    assert headers["bridge-attempts"] == "1"
    assert headers["bridge-last-status"] == "422"
    assert headers["bridge-source"] == "jobs"
    assert headers["bridge-key"] == "jobs.new"
    assert headers["cloudEvents:id"] == "e-1"
    assert headers["cloudEvents:amqproutingkey"] == "jobs.new"
    assert "cloudEvents:datacontenttype" not in headers, "it is the content-type property"
    assert message.properties.headers == headers  # encodable as an AMQP field table
    binary_key = dead_letter_message(DeadLetter(
        trigger="t", function="f", error="e", error_detail="", attempts=1, last_status=None,
        source="s", body=b"", key=b"\x00\xff"))
    assert binary_key.headers["bridge-key"] == bytearray(b"\x00\xff")
    assert binary_key.headers["bridge-last-status"] == ""
    assert "bridge-key" not in dead_letter_message(DeadLetter(
        trigger="t", function="f", error="e", error_detail="", attempts=1, last_status=None,
        source="s", body=b"")).headers


def test_the_body_is_the_data_without_a_copy() -> None:
    message = delivery(body=bytes(4096))
    assert mapped(message).data is message.body
