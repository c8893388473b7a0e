"""Kafka record -> CloudEvent mapping, including records that already are CloudEvents."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from aiokafka.structs import ConsumerRecord
from cloudevents.http import from_http

from bridge.deadletter import DeadLetter
from bridge.events import Event
from bridge.invoker import build_headers
from bridge.outcome import Outcome, OutcomeKind
from connectors.kafka_mapping import EVENT_TYPE, record_event
from connectors.kafka_sink import dead_letter_headers

STAMP = 1_700_000_000_123


def record(
    value: bytes | None = b"hello",
    key: bytes | None = b"k1",
    headers: list[tuple[str, bytes]] | None = None,
    offset: int = 42,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="orders", partition=3, offset=offset, timestamp=STAMP, timestamp_type=0,
        key=key, value=value, checksum=None, serialized_key_size=0,
        serialized_value_size=0, headers=headers or [],
    )


async def _no_settle(event: Event, disposition: object) -> None:
    return None


def event_of(rec: ConsumerRecord[bytes, bytes]) -> Event:
    return record_event("orders-trigger", rec, _no_settle)


def parsed(event: Event) -> object:
    """What a function using the official SDK sees."""
    return from_http(build_headers(event, 1), event.data)


def test_plain_record() -> None:
    event = event_of(record(headers=[("content-type", b"text/plain"), ("trace", b"abc")]))
    assert event.id == "orders/3/42"
    assert event.source == "kafka://orders"
    assert event.type == EVENT_TYPE
    assert event.time == datetime.fromtimestamp(STAMP / 1000, UTC)
    assert event.content_type == "text/plain"
    assert event.data == b"hello"
    assert event.extensions == {
        "kafkatopic": "orders", "kafkapartition": "3", "kafkaoffset": "42", "partitionkey": "k1",
    }
    assert event.http_headers == {"kafka-header-trace": "abc"}
    assert event.ordering_key == "k1"
    assert event.partition == "orders/3"
    assert event.origin == "orders/3/42"
    assert event.key == b"k1"
    assert event.headers == (("content-type", b"text/plain"), ("trace", b"abc"))
    assert event.defect is None
    ce = parsed(event)
    assert ce["id"] == "orders/3/42"  # type: ignore[index]
    assert ce["partitionkey"] == "k1"  # type: ignore[index]


def test_binary_key_goes_base64_and_orders_by_its_bytes() -> None:
    key = bytes([0xFF, 0x00, 0x80])
    event = event_of(record(key=key))
    assert "partitionkey" not in event.extensions
    assert event.extensions["partitionkeyb64"] == base64.b64encode(key).decode()
    assert event.ordering_key is not None
    assert event.ordering_key.encode("latin-1") == key
    assert event_of(record(key=bytes([0xFF, 0x00, 0x81]))).ordering_key != event.ordering_key


def test_no_key_orders_by_partition() -> None:
    event = event_of(record(key=None))
    assert event.ordering_key is None
    assert "partitionkey" not in event.extensions


def test_null_value_is_an_empty_body() -> None:
    assert event_of(record(value=None)).data == b""


def test_value_invalid_for_its_content_type_is_untouched() -> None:
    body = b"{not json\xff"
    event = event_of(record(value=body, headers=[("content-type", b"application/json")]))
    assert event.data == body
    assert event.content_type == "application/json"
    assert event.defect is None


def test_unsafe_headers_are_not_forwarded() -> None:
    event = event_of(record(headers=[
        ("ok", b"fine"), ("bad name", b"x"), ("binary", b"\x00\x01"), ("crlf", b"a\r\nb"),
        ("ok", b"again"), ("utf8", "é".encode()),
    ]))
    assert event.http_headers == {"kafka-header-ok": "fine, again"}
    assert len(event.headers) == 6  # all kept for dead letters


def binary_ce(**overrides: bytes | None) -> list[tuple[str, bytes]]:
    headers = {
        "ce_specversion": b"1.0", "ce_id": b"order-1", "ce_source": b"/shop",
        "ce_type": b"com.example.order", "ce_time": b"2024-05-01T10:00:00Z",
        "ce_tenant": b"acme", "content-type": b"application/json", "trace": b"t1",
    }
    headers.update(overrides)  # type: ignore[arg-type]
    return [(k, v) for k, v in headers.items() if v is not None]


def test_binary_cloudevent_keeps_its_own_attributes() -> None:
    event = event_of(record(value=b'{"n":1}', headers=binary_ce()))
    assert event.defect is None
    assert event.id == "order-1"
    assert event.source == "/shop"
    assert event.type == "com.example.order"
    assert event.time == datetime(2024, 5, 1, 10, tzinfo=UTC)
    assert event.content_type == "application/json"
    assert event.extensions["tenant"] == "acme"
    assert event.extensions["kafkaoffset"] == "42"
    assert event.http_headers == {"kafka-header-trace": "t1"}
    assert event.data == b'{"n":1}'
    assert event.origin == "orders/3/42"
    ce = parsed(event)
    assert ce["id"] == "order-1"  # type: ignore[index]
    assert ce["tenant"] == "acme"  # type: ignore[index]


def test_own_extension_wins_over_the_kafka_one() -> None:
    event = event_of(record(headers=binary_ce(ce_partitionkey=b"theirs")))
    assert event.extensions["partitionkey"] == "theirs"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"ce_id": None}, "missing the required attribute 'id'"),
        ({"ce_source": b""}, "missing the required attribute 'source'"),
        ({"ce_type": None}, "missing the required attribute 'type'"),
        ({"ce_specversion": b"0.3"}, "specversion '0.3' is not supported"),
        ({"ce_Bad-Name": b"x"}, "'Bad-Name' is not a valid CloudEvents attribute name"),
        ({"ce_time": b"yesterday"}, "is not an RFC 3339 timestamp"),
        ({"ce_time": b"2024-05-01T10:00:00"}, "has no UTC offset"),
        ({"ce_tenant": b"\xff\xfe"}, "'ce_tenant' is not UTF-8"),
    ],
)
def test_malformed_binary_cloudevent_is_a_defect(
    overrides: dict[str, bytes | None], reason: str
) -> None:
    headers = binary_ce(**overrides)
    event = event_of(record(value=b"v", headers=headers))
    assert event.defect is not None
    assert reason in event.defect
    # the record stays exactly as it came, for the dead letter
    assert event.id == "orders/3/42"
    assert event.data == b"v"
    assert event.headers == tuple(headers)


def structured(envelope: object) -> ConsumerRecord[bytes, bytes]:
    value = envelope if isinstance(envelope, bytes) else json.dumps(envelope).encode()
    return record(value=value, headers=[
        ("content-type", b"application/cloudevents+json; charset=utf-8"), ("trace", b"t"),
    ])


def test_structured_cloudevent_with_json_data() -> None:
    event = event_of(structured({
        "specversion": "1.0", "id": "s-1", "source": "/s", "type": "t.s",
        "subject": "sub", "priority": 3, "urgent": True, "data": {"a": [1, 2]},
    }))
    assert event.defect is None
    assert (event.id, event.source, event.type, event.subject) == ("s-1", "/s", "t.s", "sub")
    assert event.content_type == "application/json"
    assert json.loads(event.data) == {"a": [1, 2]}
    assert event.extensions["priority"] == "3"
    assert event.extensions["urgent"] == "true"
    assert event.time is None
    assert parsed(event)["id"] == "s-1"  # type: ignore[index]


def test_structured_cloudevent_with_base64_and_text_data() -> None:
    raw = bytes(range(256))
    event = event_of(structured({
        "specversion": "1.0", "id": "b", "source": "/s", "type": "t",
        "datacontenttype": "application/octet-stream",
        "data_base64": base64.b64encode(raw).decode(),
    }))
    assert event.data == raw
    assert event.content_type == "application/octet-stream"
    text = event_of(structured({
        "specversion": "1.0", "id": "c", "source": "/s", "type": "t",
        "datacontenttype": "text/plain", "data": "héllo",
    }))
    assert text.data == "héllo".encode()


@pytest.mark.parametrize(
    ("envelope", "reason"),
    [
        (b"{broken", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        ({"specversion": "1.0", "source": "/s", "type": "t"}, "'id'"),
        ({"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "Bad": "1"},
         "'Bad' is not a valid"),
        ({"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "ext": {"a": 1}},
         "must be a string, number or boolean"),
        ({"specversion": "1.0", "id": "x", "source": "/s", "type": "t", "data_base64": "%%"},
         "not valid base64"),
    ],
)
def test_malformed_structured_cloudevent_is_a_defect(envelope: object, reason: str) -> None:
    rec = structured(envelope)
    event = event_of(rec)
    assert event.defect is not None
    assert reason in event.defect
    assert event.data == rec.value
    assert event.id == "orders/3/42"


def dead_letter(event: Event, error: str = "http_422") -> DeadLetter:
    outcome = Outcome(OutcomeKind.PERMANENT, error, status=422, detail="nope")
    return DeadLetter.of(event, "fn", outcome, attempts=1)


def test_dead_letter_headers_make_a_binary_cloudevent() -> None:
    event = event_of(record(headers=[("content-type", b"text/plain"), ("trace", b"abc")]))
    headers = dead_letter_headers(dead_letter(event))
    names = [name for name, _ in headers]
    values = dict(headers)
    assert values["trace"] == b"abc"
    assert values["bridge-trigger"] == b"orders-trigger"
    assert values["bridge-error"] == b"http_422"
    assert values["bridge-last-status"] == b"422"
    assert values["bridge-source"] == b"orders/3/42"
    assert values["ce_id"] == b"orders/3/42"
    assert values["ce_specversion"] == b"1.0"
    assert values["content-type"] == b"text/plain"
    assert "ce_datacontenttype" not in values
    assert names.count("content-type") == 1
    # read back through the mapping, it is the same CloudEvent
    again = event_of(record(headers=headers))
    assert again.defect is None
    assert again.id == "orders/3/42"
    assert again.source == "kafka://orders"


def test_dead_letter_of_a_malformed_message_keeps_its_headers() -> None:
    headers = binary_ce(ce_id=None)
    event = event_of(record(headers=headers))
    assert event.defect is not None
    written = dead_letter_headers(dead_letter(event, "invalid_message"))
    assert written[: len(headers)] == headers
    assert [n for n, _ in written[len(headers):]] == [
        n for n, _ in dead_letter(event, "invalid_message").bridge_headers()
    ]


def test_the_value_is_the_body_without_a_copy() -> None:
    value = bytes(4096)
    assert event_of(record(value=value)).data is value
