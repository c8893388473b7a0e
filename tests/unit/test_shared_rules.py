"""Rules that several modules apply, checked at every place that applies them.

Each rule has one home (named per test); these tables make sure every caller agrees
with it, so a change to the rule shows up everywhere at once.
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aio_pika import IncomingMessage
from aiokafka.structs import ConsumerRecord
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader

from bridge import cloudevents
from bridge.closing import close_quietly
from bridge.config import ConfigError, RabbitSource, TlsConfig, parse_config
from bridge.errors import describe
from bridge.events import Event
from bridge.headers import KAFKA_HEADER_PREFIX, is_header_name, is_reserved
from bridge.invoker import build_headers
from bridge.outcome import DEFAULT_RETRYABLE_STATUSES, OutcomeKind, classify_status
from bridge.retry import Backoff, RetryPolicy, backoff
from bridge.tls import ssl_context
from connectors.cron import encode_data
from connectors.kafka_mapping import record_event
from connectors.rabbitmq_mapping import EventMapper

# --- HTTP header names (bridge.headers) ------------------------------------------------

#: name, valid token, written by the bridge itself
HEADER_NAMES = [
    ("X-Token", True, False),
    ("x_custom.v2", True, False),
    ("!#$%&'*+-.^_`|~", True, False),
    ("Authorization", True, False),
    ("bad name", False, False),
    ("bad:name", False, False),
    ("caf\u00e9", False, False),
    ("", False, False),
    ("Content-Type", True, True),
    ("content-length", True, True),
    ("Host", True, True),
    ("Transfer-Encoding", True, True),
    ("Connection", True, True),
    ("Bridge-Trigger", True, True),
    ("bridge-attempt", True, True),
    ("ce-id", True, True),
    ("CE-Custom", True, True),
]


def _config_verdict(name: str) -> str | None:
    """The problem ``validate`` reports for a static header of this name (None: fine)."""
    text = (
        "defaults: {dead_letter: {file: {path: dead.jsonl}}}\n"
        "functions:\n  f:\n    url: http://a/\n    headers:\n"
        f"      {json.dumps(name)}: value\n"
        "triggers:\n  - name: t\n    function: f\n    cron: {schedule: '@hourly'}\n"
    )
    try:
        parse_config(text)
    except ConfigError as err:
        (problem,) = err.problems
        return problem.message
    return None


async def _no_settle(event: Event, disposition: object) -> None:
    return None


def _through_invoker(name: str) -> bool:
    event = Event(trigger="t", id="1", source="s", type="t", data=b"",
                  http_headers={name: "value"})
    headers = build_headers(event, 1)
    return headers.get(name) == "value" and headers.get("bridge-trigger") == "t"


def _through_kafka(name: str) -> bool:
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic="orders", partition=0, offset=1, timestamp=1, timestamp_type=0, key=None,
        value=b"", checksum=None, serialized_key_size=0, serialized_value_size=0,
        headers=[(name, b"value")],
    )
    event = record_event("t", record, _no_settle)
    return event.http_headers.get(KAFKA_HEADER_PREFIX + name.lower()) == "value"


@pytest.mark.parametrize(("name", "valid", "reserved"), HEADER_NAMES)
def test_one_header_name_rule_for_config_invoker_and_kafka(
    name: str, valid: bool, reserved: bool
) -> None:
    assert is_header_name(name) is valid
    assert is_reserved(name) is reserved
    # config: a function's static header
    problem = _config_verdict(name) if name else "empty"
    if not valid:
        assert problem is not None
    elif reserved:
        assert problem == "set by the bridge on every request; it cannot be configured"
    else:
        assert problem is None
    # invoker: a message header passed through to the function
    assert _through_invoker(name) is (valid and not reserved)
    # Kafka: a record header offered as kafka-header-<name> (a valid token, not the
    # record's content type or a ce_ attribute: those are read, not passed on)
    if name.lower() != "content-type":
        assert _through_kafka(name) is valid


def test_config_words_a_bad_header_name() -> None:
    assert _config_verdict("bad name") == "not a valid HTTP header name"


# --- retryable statuses (bridge.outcome) -----------------------------------------------


def test_config_default_retryable_statuses_are_the_outcome_rule() -> None:
    config = parse_config(
        "defaults: {dead_letter: {file: {path: dead.jsonl}}}\n"
        "functions: {f: {url: 'http://a/'}}\n"
        "triggers: [{name: t, function: f, cron: {schedule: '@hourly'}}]\n"
    )
    trigger = config.resolve(config.triggers[0])
    assert trigger.retry.retryable_statuses == DEFAULT_RETRYABLE_STATUSES
    assert {408, 409, 425, 429} == DEFAULT_RETRYABLE_STATUSES
    for status in (408, 409, 425, 429, 500, 503, 599):
        assert classify_status(status) is OutcomeKind.RETRYABLE
    for status in (400, 401, 404, 410, 422):
        assert classify_status(status) is OutcomeKind.PERMANENT


# --- CloudEvents attribute set (bridge.cloudevents) ------------------------------------


def test_core_attributes_are_not_extensions_anywhere() -> None:
    event = Event(trigger="t", id="1", source="s", type="ty", data=b"",
                  extensions=dict.fromkeys(cloudevents.CORE, "x") | {"custom": "c"})
    # neither the request nor the dead letter's attributes take a core name from extensions
    attributes = event.ce_attributes()
    headers = build_headers(event, 1)
    assert attributes == {"specversion": "1.0", "id": "1", "source": "s", "type": "ty",
                          "custom": "c"}
    assert {k for k in headers if k.startswith("ce-")} == {
        "ce-specversion", "ce-id", "ce-source", "ce-type", "ce-custom"}
    assert cloudevents.CloudEvent(
        {**attributes, "subject": "x"}, None, b"", None).extensions == {"custom": "c"}


# --- "is this JSON" (bridge.cloudevents.is_json) ----------------------------------------

JSON_TYPES = [
    ("application/json", True),
    ("text/json", True),
    ("Application/JSON; charset=utf-8", True),
    ("application/problem+json", True),
    ("application/cloudevents+json", True),
    ("application/jsonl", False),
    ("application/x-ndjson", False),
    ("text/plain", False),
    ("json", False),
    ("", False),
]


@pytest.mark.parametrize(("content_type", "is_json"), JSON_TYPES)
def test_one_json_rule_for_structured_data_and_cron_data(
    content_type: str, is_json: bool
) -> None:
    assert cloudevents.is_json(content_type) is is_json
    # a cron trigger's string data: JSON-encoded for a JSON type, as it is otherwise
    assert encode_data("hello", content_type) == (b'"hello"' if is_json else b"hello")
    # a structured CloudEvent's string data: the same
    envelope = {"specversion": "1.0", "id": "1", "source": "s", "type": "t",
                "datacontenttype": content_type, "data": "hello"}
    parsed = cloudevents.parse_structured(json.dumps(envelope).encode())
    assert parsed.data == (b'"hello"' if is_json else b"hello")


# --- describing an error (bridge.errors) -----------------------------------------------


def test_describe_is_type_and_message_on_one_bounded_line() -> None:
    assert describe(ValueError("bad value")) == "ValueError: bad value"
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe(KeyError("k")) == "KeyError: 'k'"
    assert describe(RuntimeError("x" * 1000)) == "RuntimeError: " + "x" * 286
    assert len(describe(RuntimeError("x" * 1000), limit=50)) == 50
    assert describe(RuntimeError("x" * 1000), limit=None) == "RuntimeError: " + "x" * 1000


# --- closing quietly (bridge.closing) --------------------------------------------------


class _Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, object]]] = []

    def warning(self, event: str, **fields: object) -> None:
        self.lines.append((event, fields))


async def test_close_quietly_reports_a_failure_and_returns() -> None:
    async def broken() -> None:
        raise OSError("socket gone")

    log = _Log()
    await close_quietly(broken, timeout=1, log=log, what="sink close")
    assert log.lines == [("sink close failed", {"error": "OSError: socket gone"})]
    await close_quietly(broken, timeout=1)  # no log: silent
    await close_quietly(None, timeout=1)


async def test_close_quietly_is_bounded() -> None:
    async def stuck() -> None:
        await asyncio.sleep(30)

    log = _Log()
    started = asyncio.get_running_loop().time()
    await close_quietly(stuck, timeout=0.05, log=log)
    assert asyncio.get_running_loop().time() - started < 1
    assert log.lines == [("close failed", {"error": "TimeoutError"})]


async def test_close_quietly_swallows_a_cancellation_of_its_own() -> None:
    async def cancels_itself() -> None:  # as aiokafka's stop() with the brokers gone
        raise asyncio.CancelledError

    log = _Log()
    await close_quietly(cancels_itself, timeout=1, log=log)
    assert log.lines == [("close failed", {"error": "CancelledError"})]


async def test_close_quietly_passes_on_a_cancellation_of_its_caller() -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(close_quietly(slow, timeout=10))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- the backoff curve (bridge.retry) --------------------------------------------------


def test_backoff_curve_alone() -> None:
    curve = Backoff(initial=1.0, maximum=30.0, jitter=False)
    assert [curve.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]
    assert curve.delay(1, retry_after=5.0) == 5.0
    jittered = Backoff(initial=1.0, maximum=30.0)
    rand = random.Random(3)
    assert all(1.0 <= jittered.delay(2, rand=rand) <= 2.0 for _ in range(100))


def test_a_retry_policy_waits_along_its_curve() -> None:
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.5, max_backoff=4.0, multiplier=3.0,
                         jitter=False)
    assert policy.curve == Backoff(0.5, 4.0, 3.0, False)
    assert [backoff(policy, n) for n in (1, 2, 3)] == [0.5, 1.5, 4.0]


# --- client TLS (bridge.tls) ----------------------------------------------------------


def test_tls_context_from_the_config() -> None:
    default = ssl_context(TlsConfig())
    assert default.verify_mode == ssl.CERT_REQUIRED
    assert default.check_hostname
    unverified = ssl_context(TlsConfig(verify=False))
    assert unverified.verify_mode == ssl.CERT_NONE
    assert not unverified.check_hostname


def test_tls_context_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(OSError, match="No such file"):
        ssl_context(TlsConfig(ca_file=str(missing)))
    not_a_cert = tmp_path / "cert.pem"
    not_a_cert.write_text("not a certificate")
    with pytest.raises(ssl.SSLError):
        ssl_context(TlsConfig(cert_file=str(not_a_cert), key_file=str(not_a_cert)))


# --- a message that already is a CloudEvent (Event.adopt) ------------------------------

_OWN_EVENT = {
    "specversion": "1.0", "id": "own-1", "source": "/orders", "type": "order.created",
    "subject": "order-7", "datacontenttype": "text/plain", "data": "hello",
    "kafkatopic": "own-topic", "amqpexchange": "own-exchange", "traceparent": "00-ab",
}


def _kafka_event(envelope: dict[str, str]) -> Event:
    record: ConsumerRecord[bytes, bytes] = ConsumerRecord(
        topic="orders", partition=3, offset=42, timestamp=1_700_000_000_123, timestamp_type=0,
        key=b"k1", value=json.dumps(envelope).encode(), checksum=None, serialized_key_size=0,
        serialized_value_size=0, headers=[("content-type", b"application/cloudevents+json")],
    )
    return record_event("t", record, _no_settle)


def _rabbit_event(envelope: dict[str, str]) -> Event:
    body = json.dumps(envelope).encode()
    frame = spec.Basic.Deliver(consumer_tag="c", delivery_tag=1, redelivered=False,
                               exchange="jobs", routing_key="jobs.new")
    properties = spec.Basic.Properties(content_type="application/cloudevents+json",
                                       timestamp=datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    header = ContentHeader(properties=properties, body_size=len(body))
    message = IncomingMessage(DeliveredMessage(delivery=frame, header=header, body=body,
                                               channel=None))  # type: ignore[arg-type]
    source = RabbitSource(url="amqp://u:p@h/", queue="jobs")  # type: ignore[arg-type]
    return EventMapper("t", source, "/")(message, _no_settle)


@pytest.mark.parametrize(
    ("mapping", "transport", "overridden"),
    [
        pytest.param(_kafka_event, {"kafkapartition": "3", "kafkaoffset": "42",
                                    "partitionkey": "k1"}, "kafkatopic", id="kafka"),
        pytest.param(_rabbit_event, {"amqproutingkey": "jobs.new", "amqpredelivered": "false"},
                     "amqpexchange", id="rabbitmq"),
    ],
)
def test_a_cloudevent_keeps_its_own_attributes_in_every_mapping(
    mapping: Callable[[dict[str, str]], Event], transport: dict[str, str], overridden: str
) -> None:
    event = mapping(_OWN_EVENT)
    assert event.defect is None
    assert (event.id, event.source, event.type, event.subject) == (
        "own-1", "/orders", "order.created", "order-7")
    assert (event.data, event.content_type) == (b"hello", "text/plain")
    # the transport's extensions stay, unless the CloudEvent has its own of that name
    for name, value in transport.items():
        assert event.extensions[name] == value
    assert event.extensions[overridden] == _OWN_EVENT[overridden]
    assert event.extensions["traceparent"] == "00-ab"


def test_the_time_rule_is_each_source_s_own() -> None:
    # Kafka: the CloudEvent's own time only; RabbitMQ: else the message's timestamp
    assert _kafka_event(_OWN_EVENT).time is None
    assert _rabbit_event(_OWN_EVENT).time == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    timed = {**_OWN_EVENT, "time": "2026-03-08T09:30:00+02:00"}
    assert _kafka_event(timed).time == datetime.fromisoformat("2026-03-08T09:30:00+02:00")
    rabbit_time = _rabbit_event(timed).time
    assert rabbit_time is not None
    assert rabbit_time.utcoffset() == timedelta(0)
    assert rabbit_time == datetime(2026, 3, 8, 7, 30, tzinfo=UTC)
