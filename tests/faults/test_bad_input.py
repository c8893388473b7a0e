"""The bad-input catalogue: malformed and hostile messages, one parametrized test per source.

Malformed *configs* are covered by ``tests/unit/test_config_catalogue.py`` (every
mistake through the real ``validate`` CLI, each with its expected line); this module
covers what arrives on the wire. Each case is one message among the others on the same
queue/topic, consumed by one daemon per source (a module fixture), and asserts its own
outcome:

- malformed CloudEvents (bad ``specversion``, empty or missing required attributes, a
  ``time`` that is not RFC 3339, attribute values that are not UTF-8, an attribute given
  twice, structured bodies that are not a JSON object, are Latin-1, or carry bad
  base64): dead-lettered at once with ``invalid_message``, the original kept, the
  function never called;
- odd but valid messages (empty, a Kafka tombstone, non-UTF-8 keys and header values,
  a non-ASCII content type, oversized near the broker's maximum): delivered, body
  byte for byte, what cannot be an HTTP header left out;
- hostile values: CR/LF in header names and values, in CloudEvent extension values and
  ids, in the content type and AMQP properties. None may reach the function as an extra
  header: asserted on the raw request headers the function received (no injected name,
  no CR, LF or NUL in any value), and every delivered request parses with the official
  CloudEvents SDK.

Every message carries a ``case`` header (its index), which reaches the function as
``kafka-header-case`` / ``amqp-header-case`` and stays in the dead letter, so each
outcome is matched to its case whatever id the message ends up with.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from cloudevents.http import from_http

from tests.faults.prober import (
    Arrival,
    DeadEntry,
    KafkaDeadLetters,
    Prober,
    RabbitDeadLetters,
    Report,
    daemon_config,
    kafka_source,
)
from tests.support.daemon import BridgeProcess
from tests.support.kafka import KafkaBroker
from tests.support.rabbitmq import BROKER_URL, Broker

pytestmark = pytest.mark.faults

CRLF = "\r\n"
#: Kafka's default ``message.max.bytes`` is 1,048,588: a record just under it.
KAFKA_NEAR_MAX = 1024 * 1024 - 4096


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes | None
    expect: str  # "delivered" | "dead"
    headers: tuple[tuple[str, Any], ...] = ()
    key: bytes | None = b"k"
    properties: dict[str, Any] = field(default_factory=dict)
    #: The CloudEvent id the function must see (default: the source's own id).
    own_id: str | None = None
    #: The body the function must get (default: ``body``).
    data: bytes | None = None
    #: For dead letters: a phrase of ``bridge-error-detail``.
    reason: str = ""
    #: ``ce-*`` raw header values the function must get (percent-encoded on the wire).
    attrs: dict[str, str] = field(default_factory=dict)
    #: Header names that must not appear at the function.
    injected: tuple[str, ...] = ()


def binary_ce(
    *extra: tuple[str, Any], prefix: str = "ce_", id_: str = "their-id"
) -> tuple[tuple[str, Any], ...]:
    base = (("specversion", "1.0"), ("id", id_), ("source", "/probe"), ("type", "t.probe"))
    return tuple((prefix + k, v.encode() if prefix == "ce_" else v) for k, v in base) + extra


def structured(encoding: str = "utf-8", **attributes: Any) -> bytes:
    envelope = {"specversion": "1.0", "id": "s-id", "source": "/s", "type": "t.s", **attributes}
    return json.dumps(envelope, ensure_ascii=False).encode(encoding)


STRUCTURED = {"content-type": b"application/cloudevents+json"}

KAFKA_CASES = [
    Case("ce specversion 0.3", b"a", "dead", (*binary_ce()[1:], ("ce_specversion", b"0.3")),
         reason="specversion '0.3' is not supported"),
    Case("ce id empty", b"b", "dead", binary_ce(id_=""), reason="required attribute 'id'"),
    Case("ce time not RFC 3339", b"c", "dead", binary_ce(("ce_time", b"yesterday")),
         reason="not an RFC 3339 timestamp"),
    Case("ce value not UTF-8", b"d", "dead", binary_ce(("ce_subject", b"\xff\xfe")),
         reason="is not UTF-8 text"),
    Case("ce attribute twice", b"e", "dead", binary_ce(("ce_type", b"t.other")),
         reason="appears twice"),
    Case("structured: a JSON array", b"[1, 2]", "dead",
         (("content-type", STRUCTURED["content-type"]),), reason="must be a JSON object"),
    Case("structured: Latin-1 bytes", structured("latin-1", subject="é"),
         "dead", (("content-type", STRUCTURED["content-type"]),), reason="not valid JSON"),
    Case("structured: bad base64", structured(data_base64="!!!"), "dead",
         (("content-type", STRUCTURED["content-type"]),), reason="not valid base64"),
    Case("empty value", b"", "delivered"),
    Case("tombstone (null value)", None, "delivered", data=b""),
    Case("non-UTF-8 key", b"f", "delivered", key=b"\xff\xfe\x00"),
    Case("non-UTF-8 header value", b"g", "delivered", (("trace", b"\xff\x00abc"),),
         injected=("kafka-header-trace",)),
    Case("non-ASCII content type", b"h", "delivered",
         (("content-type", "text/plain; charset=é".encode()),)),
    Case("oversized: near Kafka's 1 MiB max", b"\xab" * KAFKA_NEAR_MAX, "delivered"),
    Case("CR/LF in a header value", b"i", "delivered",
         (("x-note", f"a{CRLF}Injected: yes".encode()),),
         injected=("injected", "kafka-header-x-note")),
    Case("CR/LF in a header name", b"j", "delivered",
         ((f"x{CRLF}Injected-Key: yes", b"v"),), injected=("injected-key",)),
    Case("CR/LF in a CloudEvent extension", b"k", "delivered",
         binary_ce(("ce_note", f"a{CRLF}Injected-Ext: yes".encode())),
         own_id="their-id", attrs={"ce-note": "a%0D%0AInjected-Ext:%20yes"},
         injected=("injected-ext",)),
    Case("CR/LF in a structured id and extension", structured(
        id=f"s{CRLF}Injected-Id: 1", note=f"n{CRLF}Injected-S: 1", data="x",
        datacontenttype="text/plain"), "delivered",
         (("content-type", STRUCTURED["content-type"]),), own_id="s%0D%0AInjected-Id:%201",
         data=b"x", attrs={"ce-note": "n%0D%0AInjected-S:%201"},
         injected=("injected-id", "injected-s")),
    Case("CR/LF in the content type", b"l", "delivered",
         (("content-type", f"text/plain{CRLF}Injected-CT: 1".encode()),),
         injected=("injected-ct",)),
    Case("NUL in a header value", b"m", "delivered", (("x-nul", b"a\x00b"),),
         injected=("kafka-header-x-nul",)),
]

RABBIT_CASES = [
    Case("ce specversion 0.3", b"a", "dead",
         (*binary_ce(prefix="cloudEvents:")[1:], ("cloudEvents:specversion", "0.3")),
         reason="0.3"),
    Case("ce prefixes disagree", b"b", "dead", binary_ce(
        ("cloudEvents_type", "t.other"), prefix="cloudEvents:"), reason="disagree"),
    Case("ce time not RFC 3339", b"c", "dead",
         binary_ce(("cloudEvents:time", "yesterday"), prefix="cloudEvents:"), reason="time"),
    Case("ce value not UTF-8 bytes", b"d", "dead",
         binary_ce(("cloudEvents:subject", bytearray(b"\xff\xfe")), prefix="cloudEvents:"),
         reason="subject"),
    Case("structured: Latin-1 bytes", structured("latin-1", subject="é"),
         "dead", properties={"content_type": "application/cloudevents+json"},
         reason="not JSON"),
    Case("structured: data and data_base64", structured(data="x", data_base64="eA=="), "dead",
         properties={"content_type": "application/cloudevents+json"}, reason="both"),
    Case("empty body", b"", "delivered"),
    Case("non-UTF-8 header bytes", b"e", "delivered", (("trace", bytearray(b"\xff\x00abc")),),
         injected=("amqp-header-trace",)),
    Case("non-ASCII content type", b"f", "delivered",
         properties={"content_type": "text/plain; charset=é"}),
    Case("oversized: near the broker's max", b"", "delivered"),  # size set at run time
    Case("CR/LF in a header value", b"g", "delivered",
         (("x-note", f"a{CRLF}Injected: yes"),), injected=("injected", "amqp-header-x-note")),
    Case("CR/LF in a header name", b"h", "delivered",
         ((f"x{CRLF}Injected-Key: yes", "v"),), injected=("injected-key",)),
    Case("CR/LF in a CloudEvent extension", b"i", "delivered",
         binary_ce(("cloudEvents:note", f"a{CRLF}Injected-Ext: yes"), prefix="cloudEvents:"),
         own_id="their-id", attrs={"ce-note": "a%0D%0AInjected-Ext:%20yes"},
         injected=("injected-ext",)),
    Case("CR/LF in message_id and type", b"j", "delivered",
         properties={"message_id": f"m{CRLF}Injected-Id: 1", "type": f"t{CRLF}Injected-T: 1"},
         own_id="m%0D%0AInjected-Id:%201",
         injected=("injected-id", "injected-t", "amqp-message-id", "amqp-type")),
    Case("CR/LF in the content type", b"k", "delivered",
         properties={"content_type": f"text/plain{CRLF}Injected-CT: 1"},
         injected=("injected-ct",)),
]


@dataclass
class Outcomes:
    """What happened to each case: its requests at the function, its dead letters."""

    arrivals: dict[int, list[Arrival]]
    dead: dict[int, list[DeadEntry]]
    bodies: dict[int, bytes]
    report: Report | None = None
    expected_dead: set[str] = field(default_factory=set)


def _case_of_arrival(arrival: Arrival, prefix: str) -> int | None:
    value = arrival.header(f"{prefix}-header-case")
    return int(value) if value is not None else None


async def _collect(
    probe: Prober, dead: Any, cases: list[Case], prefix: str, bodies: dict[int, bytes]
) -> Outcomes:
    """Wait until every case is delivered or dead-lettered (or 40 s), then sort them."""
    deadline = asyncio.get_running_loop().time() + 40
    while True:
        entries = await dead.entries()
        done = {_case_of_arrival(a, prefix) for a in probe.fn.arrivals if a.delivered}
        done |= {int(e.headers["case"]) for e in entries if "case" in e.headers}
        if len(done - {None}) >= len(cases) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    arrivals: dict[int, list[Arrival]] = {}
    for arrival in probe.fn.arrivals:
        index = _case_of_arrival(arrival, prefix)
        if index is not None:
            arrivals.setdefault(index, []).append(arrival)
    letters: dict[int, list[DeadEntry]] = {}
    for entry in entries:
        if "case" in entry.headers:
            letters.setdefault(int(entry.headers["case"]), []).append(entry)
    return Outcomes(arrivals, letters, bodies)


def _expect_ledger(probe: Prober, cases: list[Case], ids: list[str], bodies: dict[int, bytes]
                   ) -> set[str]:
    """Put every case in the prober's ledger; returns the ids expected dead-lettered."""
    dead = set()
    for index, (case, event_id) in enumerate(zip(cases, ids, strict=True)):
        delivered = case.expect == "delivered"
        wire_id = case.own_id if (delivered and case.own_id) else event_id
        data = case.data if (delivered and case.data is not None) else bodies[index]
        probe.sent_event(wire_id, index, data)
        if not delivered:
            dead.add(wire_id)
    return dead


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def kafka_outcomes(
    kafka_broker: KafkaBroker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Outcomes]:
    tmp_path = tmp_path_factory.mktemp("bad-kafka")
    topic = kafka_broker.topic(partitions=1)
    dlq = kafka_broker.topic(partitions=1, prefix="dlq")
    records = [
        (case.key, case.body, [*case.headers, ("case", str(i).encode())])
        for i, case in enumerate(KAFKA_CASES)
    ]
    sent = await kafka_broker.produce(topic, records)
    bodies = {i: case.body or b"" for i, case in enumerate(KAFKA_CASES)}
    async with Prober("bad input: kafka") as probe:
        expected_dead = _expect_ledger(
            probe, KAFKA_CASES, [f"{topic}/{p}/{o}" for p, o in sent], bodies
        )
        config = daemon_config(probe.fn.url, kafka_source(kafka_broker.bootstrap, topic),
                               {"kafka": {"topic": dlq}})
        dead = KafkaDeadLetters(kafka_broker.bootstrap, dlq)
        try:
            async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
                outcomes = await _collect(probe, _ById(dead), KAFKA_CASES, "kafka", bodies)
                assert await bridge.terminate() == 0
            outcomes.report = await probe.report(_ById(dead))
            outcomes.expected_dead = expected_dead
        finally:
            await dead.close()
    yield outcomes


class _ById:
    """Dead letters keyed by the id the event had (``bridge-source`` = topic/part/offset)."""

    def __init__(self, dead: KafkaDeadLetters) -> None:
        self._dead = dead

    async def entries(self) -> list[DeadEntry]:
        return [
            DeadEntry(e.source, e.body, e.error, e.at, e.source, e.detail, e.headers)
            for e in await self._dead.entries()
        ]

    async def close(self) -> None:
        await self._dead.close()


def _broker_max_message_size() -> int:
    done = subprocess.run(
        ["rabbitmqctl", "eval", "application:get_env(rabbit, max_message_size)."],
        capture_output=True, text=True, timeout=60, check=True,
    )
    return int(done.stdout.strip().removeprefix("{ok,").removesuffix("}"))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rabbit_outcomes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Outcomes]:
    tmp_path = tmp_path_factory.mktemp("bad-rabbit")
    near_max = await asyncio.to_thread(_broker_max_message_size) - 64 * 1024
    bodies = {
        i: b"\xab" * near_max if case.name.startswith("oversized") else case.body or b""
        for i, case in enumerate(RABBIT_CASES)
    }
    async with Broker() as broker, Prober("bad input: rabbitmq") as probe:
        queue, dlq = await broker.queue(durable=True), await broker.queue(durable=True)
        dlx = await broker.exchange()
        await broker.bind(dlq, dlx, "dead")
        ids = []
        for i, case in enumerate(RABBIT_CASES):
            properties = {"message_id": f"{probe.run}-{i}", **case.properties}
            ids.append(properties["message_id"])
            headers = {**dict(case.headers), "case": str(i)}
            await broker.publish(queue, bodies[i], headers=headers, **properties)
        expected_dead = _expect_ledger(probe, RABBIT_CASES, ids, bodies)
        trigger = {"rabbitmq": {"url": BROKER_URL, "queue": queue}}
        config = daemon_config(probe.fn.url, trigger,
                               {"rabbitmq": {"exchange": dlx, "routing_key": "dead"}})
        dead = RabbitDeadLetters(broker, dlq)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            outcomes = await _collect(probe, dead, RABBIT_CASES, "amqp", bodies)
            assert await bridge.terminate() == 0
        outcomes.report = await probe.report(dead, near_max=near_max)
        outcomes.expected_dead = expected_dead
    yield outcomes


def check(case: Case, index: int, outcomes: Outcomes) -> None:
    arrivals = outcomes.arrivals.get(index, [])
    letters = outcomes.dead.get(index, [])
    body = outcomes.bodies[index]
    if case.expect == "dead":
        assert not arrivals, "a malformed message never reaches the function"
        assert len(letters) == 1, f"dead-lettered once, got {len(letters)}"
        assert letters[0].error == "invalid_message"
        assert case.reason in letters[0].detail
        assert letters[0].body == body, "the original body is kept"
        return
    assert not letters, f"delivered, not dead-lettered: {letters[:1]}"
    assert len(arrivals) == 1
    arrival = arrivals[0]
    assert arrival.delivered
    assert arrival.body == (case.data if case.data is not None else body)
    names = {name.decode("latin-1").lower() for name, _ in arrival.raw_headers}
    for name in case.injected:
        assert name.lower() not in names, f"{name!r} reached the function"
    for raw_name, raw_value in arrival.raw_headers:
        assert not set(raw_value) & {0x0D, 0x0A, 0x00}, f"{raw_name!r}: {raw_value!r}"
    for attribute, encoded in case.attrs.items():
        assert arrival.header(attribute) == encoded
    if case.own_id is not None:
        assert arrival.event_id == case.own_id
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in arrival.raw_headers}
    event = from_http(headers, arrival.body)  # the official SDK parses it
    assert event["specversion"] == "1.0"


@pytest.mark.parametrize("index", range(len(KAFKA_CASES)),
                         ids=[c.name for c in KAFKA_CASES])
def test_kafka_message(index: int, kafka_outcomes: Outcomes) -> None:
    check(KAFKA_CASES[index], index, kafka_outcomes)


@pytest.mark.parametrize("index", range(len(RABBIT_CASES)),
                         ids=[c.name for c in RABBIT_CASES])
def test_rabbitmq_message(index: int, rabbit_outcomes: Outcomes) -> None:
    check(RABBIT_CASES[index], index, rabbit_outcomes)



def test_kafka_catalogue_accounts_for_every_message(kafka_outcomes: Outcomes) -> None:
    assert kafka_outcomes.report is not None
    kafka_outcomes.report.check(dead_lettered=kafka_outcomes.expected_dead)


def test_rabbitmq_catalogue_accounts_for_every_message(rabbit_outcomes: Outcomes) -> None:
    assert rabbit_outcomes.report is not None
    rabbit_outcomes.report.check(dead_lettered=rabbit_outcomes.expected_dead)
