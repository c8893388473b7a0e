"""What a function receives: CloudEvents binary mode headers, and one invocation attempt.

Header values are percent-encoded as the CloudEvents HTTP binding (3.1.3.2) requires.
Note: the official Python SDK (cloudevents 1.x) parses these requests but does not
percent-decode attribute values (nor do sdk-go and sdk-java; sdk-csharp does), so the
tests decode the SDK's value with the spec's rule (one round of UTF-8 percent-decoding).
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from urllib.parse import unquote

import aiohttp
import pytest
from cloudevents.http import from_http

from bridge.events import Event, format_time
from bridge.invoker import USER_AGENT, Invoker, build_headers, percent_encode
from bridge.outcome import OutcomeKind
from bridge.pools import BalancedPool, Target
from tests.support.functions import Call, RecordingFunction, Reply


def spec_decode(value: str) -> str:
    """CloudEvents HTTP binding decoding: one round of strict UTF-8 percent-decoding."""
    return unquote(value, errors="strict")


def event(**fields: object) -> Event:
    base: dict[str, object] = {
        "trigger": "orders", "id": "orders/3/1042", "source": "kafka://cluster/orders",
        "type": "dev.triggerbridge.kafka.record", "data": b'{"n": 1}',
        "content_type": "application/json",
    }
    base.update(fields)
    return Event(**base)  # type: ignore[arg-type]


# --- build_headers and the SDK ----------------------------------------------------------


def test_round_trip_through_the_cloudevents_sdk() -> None:
    moment = datetime(2026, 3, 8, 7, 30, 5, 123000, tzinfo=UTC)
    ev = event(
        time=moment, subject="order-1042",
        extensions={"partitionkey": "customer-7", "kafkatopic": "orders", "kafkaoffset": "1042"},
    )
    headers = build_headers(ev, attempt=1)
    parsed = from_http(headers, ev.data)
    assert parsed["specversion"] == "1.0"
    assert parsed["id"] == "orders/3/1042"
    assert parsed["source"] == "kafka://cluster/orders"
    assert parsed["type"] == "dev.triggerbridge.kafka.record"
    assert parsed["subject"] == "order-1042"
    assert parsed["time"] == "2026-03-08T07:30:05.123000Z"
    assert parsed["datacontenttype"] == "application/json"
    assert parsed["partitionkey"] == "customer-7"
    assert parsed["kafkatopic"] == "orders"
    assert parsed["kafkaoffset"] == "1042"
    assert parsed.data == {"n": 1}
    assert headers["bridge-trigger"] == "orders"
    assert headers["bridge-attempt"] == "1"
    assert "ce-datacontenttype" not in headers
    assert headers["Content-Type"] == "application/json"


def test_time_keeps_a_non_utc_offset() -> None:
    moment = datetime(2026, 3, 9, 2, 30, tzinfo=timezone(timedelta(hours=-4)))
    headers = build_headers(event(time=moment), 1)
    assert headers["ce-time"] == "2026-03-09T02:30:00-04:00"
    assert from_http(headers, b"{}")["time"] == "2026-03-09T02:30:00-04:00"


def test_binary_data_is_untouched() -> None:
    data = bytes(range(256))
    ev = event(data=data, content_type="application/octet-stream")
    parsed = from_http(build_headers(ev, 1), data)
    assert parsed.data == data


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        ("plain-ascii_1.2:3/4?x=y&z", "plain-ascii_1.2:3/4?x=y&z"),
        ("café au lait", "caf%C3%A9%20au%20lait"),
        ('100% "quoted"', "100%25%20%22quoted%22"),
        ("東京", "%E6%9D%B1%E4%BA%AC"),
        ("line1\r\nX-Evil: 1", "line1%0D%0AX-Evil:%201"),
        ("tab\there", "tab%09here"),
        ("emoji 🎉", "emoji%20%F0%9F%8E%89"),
        ("", ""),
    ],
)
def test_percent_encoding(value: str, encoded: str) -> None:
    assert percent_encode(value) == encoded
    assert spec_decode(encoded) == value


def test_encoded_values_parse_and_decode_to_the_original() -> None:
    ev = event(
        id="id with spaces", source="urn:café", subject="Zürich / 東京 100%",
        extensions={"note": "a\r\nX-Injected: yes", "quote": '"q"'},
    )
    headers = build_headers(ev, 1)
    assert all(value.isascii() and value.isprintable() for value in headers.values())
    parsed = from_http(headers, ev.data)
    assert spec_decode(parsed["id"]) == "id with spaces"
    assert spec_decode(parsed["source"]) == "urn:café"
    assert spec_decode(parsed["subject"]) == "Zürich / 東京 100%"
    assert spec_decode(parsed["note"]) == "a\r\nX-Injected: yes"
    assert spec_decode(parsed["quote"]) == '"q"'
    assert "X-Injected" not in headers


def test_undecodable_text_is_replaced_not_fatal() -> None:
    headers = build_headers(event(extensions={"raw": "a\udcffb"}), 1)
    assert headers["ce-raw"] == "a%3Fb"


def test_invalid_extension_names_are_dropped() -> None:
    ev = event(extensions={
        "good1": "x", "Upper": "x", "with-dash": "x", "x\r\ny": "x", "": "x", "sp ace": "x",
    })
    headers = build_headers(ev, 1)
    assert [n for n in headers if n.startswith("ce-") and n != "ce-specversion"] == [
        "ce-id", "ce-source", "ce-type", "ce-good1"
    ]


def test_extensions_cannot_replace_context_attributes() -> None:
    ev = event(
        time=datetime(2026, 1, 1, tzinfo=UTC),
        extensions={"id": "forged", "specversion": "0.3", "source": "forged", "type": "forged",
                    "time": "1999-01-01T00:00:00Z", "datacontenttype": "text/forged",
                    "dataschema": "https://schemas.example/order.json"},
    )
    headers = build_headers(ev, 1)
    parsed = from_http(headers, ev.data)
    assert (parsed["id"], parsed["specversion"], parsed["source"], parsed["type"]) == (
        "orders/3/1042", "1.0", "kafka://cluster/orders", "dev.triggerbridge.kafka.record"
    )
    assert parsed["time"] == "2026-01-01T00:00:00Z"
    assert headers["Content-Type"] == "application/json"
    assert parsed["dataschema"] == "https://schemas.example/order.json"  # not modelled: kept


def test_message_headers_pass_when_safe() -> None:
    ev = event(http_headers={"X-Trace-Id": "abc123", "traceparent": "00-abc-def-01"})
    headers = build_headers(ev, 1)
    assert headers["X-Trace-Id"] == "abc123"
    assert headers["traceparent"] == "00-abc-def-01"


@pytest.mark.parametrize(
    "unsafe",
    [
        {"X-Evil": "a\r\nX-Injected: 1"},
        {"X-Evil": "a\nX-Injected: 1"},
        {"X-Evil": "a\rb"},
        {"X-Evil": "nul\x00byte"},
        {"X-Evil\r\nX-Injected": "1"},
        {"X-Evil\n": "1"},  # a trailing newline must not slip past the token check
        {"X Evil": "1"},
        {"X-Evil:": "1"},
        {"": "1"},
        {"X-Evil": "ünïcode"},
    ],
)
def test_unsafe_message_headers_are_dropped(unsafe: dict[str, str]) -> None:
    headers = build_headers(event(http_headers=unsafe), 1)
    assert not any("evil" in name.lower() for name in headers)
    assert "X-Injected" not in headers
    assert all("\r" not in v and "\n" not in v for v in headers.values())


def test_message_headers_cannot_override_reserved_ones() -> None:
    ev = event(http_headers={
        "ce-id": "forged", "CE-Source": "forged", "Ce-Specversion": "0.3",
        "Content-Type": "text/forged", "content-length": "1", "Host": "evil.example",
        "Transfer-Encoding": "chunked", "Connection": "close",
        "Bridge-Trigger": "forged", "bridge-attempt": "99", "authorization": "forged",
    })
    headers = build_headers(ev, 3, static={"Authorization": "Bearer real"})
    lowered: dict[str, list[str]] = {}
    for name, value in headers.items():
        lowered.setdefault(name.lower(), []).append(value)
    assert all(len(values) == 1 for values in lowered.values()), lowered
    assert lowered["ce-id"] == ["orders/3/1042"]
    assert lowered["ce-source"] == ["kafka://cluster/orders"]
    assert lowered["ce-specversion"] == ["1.0"]
    assert lowered["content-type"] == ["application/json"]
    assert lowered["bridge-trigger"] == ["orders"]
    assert lowered["bridge-attempt"] == ["3"]
    assert lowered["authorization"] == ["Bearer real"]
    for name in ("content-length", "host", "transfer-encoding", "connection"):
        assert name not in lowered


def test_content_type() -> None:
    assert build_headers(event(content_type="text/plain; charset=utf-8"), 1)["Content-Type"] == (
        "text/plain; charset=utf-8"
    )
    assert "Content-Type" not in build_headers(event(content_type=None), 1)
    assert build_headers(event(content_type="text/plain\r\nX-Evil: 1"), 1)["Content-Type"] == (
        "text/plainX-Evil: 1"
    )


# --- Invoker against a real local function ---------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with Invoker.new_session() as client:
        yield client


def target_for(url: str, **kwargs: object) -> Target:
    return Target("fn", BalancedPool([url]), **kwargs)  # type: ignore[arg-type]


async def test_delivered(session: aiohttp.ClientSession) -> None:
    async with RecordingFunction() as fn:
        ev = event(extensions={"partitionkey": "k 1"}, http_headers={"X-Trace": "t1"})
        outcome = await Invoker(session).invoke(target_for(fn.url), ev, 1, timeout=5)
        assert (outcome.kind, outcome.reason, outcome.status) == (OutcomeKind.DELIVERED, "ok", 200)
        assert outcome.duration > 0
        (call,) = fn.calls
        assert call.body == b'{"n": 1}'
        assert call.headers["ce-id"] == "orders/3/1042"
        assert call.headers["ce-partitionkey"] == "k%201"
        assert call.headers["X-Trace"] == "t1"
        parsed = from_http(call.headers, call.body)
        assert parsed["id"] == "orders/3/1042"
        assert spec_decode(parsed["partitionkey"]) == "k 1"


async def test_the_bridge_names_itself_unless_the_function_config_says_otherwise(
    session: aiohttp.ClientSession,
) -> None:
    async with RecordingFunction() as fn:
        await Invoker(session).invoke(target_for(fn.url), event(), 1, timeout=5)
        custom = target_for(fn.url, headers={"user-agent": "platform-x"})
        await Invoker(session).invoke(custom, event(), 1, timeout=5)
    agents = [[v for k, v in call.headers.items() if k.lower() == "user-agent"]
              for call in fn.calls]
    assert agents == [[USER_AGENT], ["platform-x"]]
    assert USER_AGENT.startswith("trigger-bridge/")


async def test_injection_attempts_never_reach_the_function(session: aiohttp.ClientSession) -> None:
    async with RecordingFunction() as fn:
        ev = event(
            subject="s\r\nX-Injected-Subject: 1",
            extensions={"evil": "v\r\nX-Injected-Ext: 1", "bad\r\nx-injected-name": "1"},
            http_headers={"X-A": "v\r\nX-Injected-Header: 1", "X-B\r\nX-Injected-Name": "1"},
        )
        outcome = await Invoker(session).invoke(target_for(fn.url), ev, 1, timeout=5)
        assert outcome.ok
        (call,) = fn.calls
        assert not [name for name in call.headers if "injected" in name.lower()]
        assert "X-A" not in call.headers
        assert spec_decode(call.headers["ce-evil"]) == "v\r\nX-Injected-Ext: 1"


async def test_retryable_with_retry_after(session: aiohttp.ClientSession) -> None:
    reply = Reply(status=503, headers={"Retry-After": "7"}, body="overloaded")
    async with RecordingFunction(lambda call, n: reply) as fn:
        outcome = await Invoker(session).invoke(target_for(fn.url), event(), 1, timeout=5)
    assert (outcome.kind, outcome.reason, outcome.status) == (
        OutcomeKind.RETRYABLE, "http_503", 503
    )
    assert outcome.retry_after == 7.0
    assert outcome.detail == "overloaded"


async def test_permanent_keeps_the_reply_as_detail(session: aiohttp.ClientSession) -> None:
    reply = Reply(status=422, body="field 'n' must be even " + "x" * 2000)
    async with RecordingFunction(lambda call, n: reply) as fn:
        outcome = await Invoker(session).invoke(target_for(fn.url), event(), 1, timeout=5)
    assert (outcome.kind, outcome.reason, outcome.status) == (
        OutcomeKind.PERMANENT, "http_422", 422
    )
    assert outcome.detail.startswith("field 'n' must be even")
    assert len(outcome.detail) <= 512


async def test_custom_retryable_statuses(session: aiohttp.ClientSession) -> None:
    async with RecordingFunction(lambda call, n: Reply(status=404)) as fn:
        outcome = await Invoker(session).invoke(
            target_for(fn.url), event(), 1, timeout=5, retryable={404}
        )
    assert outcome.kind is OutcomeKind.RETRYABLE


async def test_timeout_frees_the_slot(session: aiohttp.ClientSession) -> None:
    def slow_first(call: Call, n: int) -> Reply:
        return Reply(delay=1.5) if call.event_id == "slow" else Reply()

    async with RecordingFunction(slow_first) as fn:
        target = target_for(fn.url, max_concurrency=1)
        invoker = Invoker(session)
        started = time.monotonic()
        outcome = await invoker.invoke(target, event(id="slow"), 1, timeout=0.3)
        assert (outcome.kind, outcome.reason) == (OutcomeKind.RETRYABLE, "timeout")
        assert outcome.detail == "no response within 0.3s"
        assert time.monotonic() - started < 2.0
        # the only quota slot and the endpoint are free again at once
        pool = target.pool
        assert isinstance(pool, BalancedPool)
        assert pool.endpoints[0].outstanding == 0
        outcome = await invoker.invoke(target, event(id="fast"), 1, timeout=2)
        assert outcome.ok
        assert time.monotonic() - started < 3.0


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # the port is closed now: nothing listens there
    outcome = await Invoker(session).invoke(
        target_for(f"http://127.0.0.1:{port}/"), event(), 1, timeout=5
    )
    assert (outcome.kind, outcome.reason, outcome.status) == (
        OutcomeKind.RETRYABLE, "connect_error", None
    )
    assert outcome.detail


async def test_no_ready_endpoint(session: aiohttp.ClientSession) -> None:
    pool = BalancedPool()
    pool.replace({"http://127.0.0.1:9/": False})
    outcome = await Invoker(session).invoke(Target("fn", pool), event(), 1, timeout=1)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.RETRYABLE, "no_endpoints")


async def test_a_request_that_cannot_be_sent_is_permanent(
    session: aiohttp.ClientSession,
) -> None:
    async with RecordingFunction() as fn:
        # the config rejects this header; a Target built another way must not crash the caller
        target = target_for(fn.url, headers={"X-Bad": "a\r\nX-Injected: 1"})
        outcome = await Invoker(session).invoke(target, event(), 1, timeout=5)
        assert (outcome.kind, outcome.reason) == (OutcomeKind.PERMANENT, "invalid_request")
        assert fn.calls == []


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_are_not_followed(session: aiohttp.ClientSession, status: int) -> None:
    """Following 301/302/303 would re-send as a GET without the event and report delivery."""
    async with RecordingFunction() as elsewhere:
        reply = Reply(status=status, headers={"Location": elsewhere.url})
        async with RecordingFunction(lambda call, n: reply) as fn:
            outcome = await Invoker(session).invoke(target_for(fn.url), event(), 1, timeout=5)
        assert (outcome.kind, outcome.reason, outcome.status) == (
            OutcomeKind.PERMANENT, f"http_{status}", status
        )
        assert elsewhere.calls == []


def test_equal_instants_in_other_zones_keep_their_own_offset() -> None:
    noon = datetime(2026, 1, 1, 12, 0, 0, 123000, tzinfo=UTC)
    later = noon.astimezone(timezone(timedelta(hours=1)))
    assert noon == later
    for _ in range(2):  # UTC times are remembered: the other zone's text is its own
        assert format_time(noon) == "2026-01-01T12:00:00.123000Z"
        assert format_time(later) == "2026-01-01T13:00:00.123000+01:00"
