"""Batch invocations (bridge/batches.py): the encoding, the answer contract, and the
dispatcher with ``batch:`` against a real local function over TCP (real Invoker).

The daemon-level proofs (Kafka and RabbitMQ, crash mid-batch) are in
tests/integration/test_batches_daemon.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import operator
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import aiohttp
import pytest
from cloudevents.http import CloudEvent, from_http

from bridge.batches import (
    BAD_ANSWER,
    BATCH_CONTENT_TYPE,
    FAILED_IN_BATCH,
    answer_bound,
    read_answer,
    structured,
)
from bridge.config import ResolvedTrigger, parse_config
from bridge.dispatcher import Dispatcher, Ordering
from bridge.events import Disposition, Event
from bridge.invoker import Invoker
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.pools import BalancedPool, Target
from tests.support.functions import Call, RecordingFunction, Reply
from tests.unit.test_dispatcher import MemorySink, Settlements, until

# --- the encoding --------------------------------------------------------------------


def _event(data: bytes, content_type: str | None, **fields: Any) -> Event:
    return Event(trigger="t", id="e1", source="kafka://orders", type="dev.example", data=data,
                 content_type=content_type, **fields)


def sdk(member: object) -> CloudEvent:
    """One member of a batch as the official SDK reads a structured event."""
    text = json.dumps(member)
    return from_http({"content-type": "application/cloudevents+json"}, text)


def _decoded(event: Event) -> dict[str, Any]:
    member = json.loads(structured(event))
    assert isinstance(member, dict)
    return member


def test_binary_data_travels_as_data_base64_and_parses_with_the_sdk() -> None:
    payload = bytes(range(256))
    event = _event(payload, "application/octet-stream",
                   extensions={"kafkaoffset": "7", "partitionkey": "k1"}, subject="s")
    member = _decoded(event)
    assert base64.b64decode(member["data_base64"]) == payload
    assert "data" not in member
    assert (member["specversion"], member["id"], member["kafkaoffset"]) == ("1.0", "e1", "7")
    parsed = sdk(member)  # the official SDK reads it as one structured event
    assert parsed.get_data() == payload
    assert parsed["partitionkey"] == "k1"
    assert parsed["subject"] == "s"


def test_json_data_is_embedded_unchanged() -> None:
    raw = b'{"amount": 12.50, "big": 12345678901234567890123, "n": [1, 2]}'
    text = structured(_event(raw, "application/cloudevents+json; charset=utf-8")).decode()
    # The data's own JSON text (digits and spacing as sent), not a re-serialization.
    assert text.endswith(',"data":' + raw.decode() + "}")
    member = json.loads(text)
    assert member["data"]["n"] == [1, 2]
    assert sdk(member).get_data() == member["data"]


@pytest.mark.parametrize("raw", [b"{not json", b"NaN", b"\xff\xfe{}", b'\xef\xbb\xbf{"a":1}'])
def test_invalid_json_data_travels_as_base64(raw: bytes) -> None:
    member = _decoded(_event(raw, "application/json"))
    assert base64.b64decode(member["data_base64"]) == raw
    assert "data" not in member


def test_text_data_is_a_string_unless_it_is_not_utf8() -> None:
    assert _decoded(_event("héllo".encode(), "text/plain"))["data"] == "héllo"
    member = _decoded(_event(b"\xff", "text/plain"))
    assert base64.b64decode(member["data_base64"]) == b"\xff"


def test_empty_data_has_no_data_member_and_no_content_type_is_binary() -> None:
    assert not {"data", "data_base64"} & _decoded(_event(b"", None)).keys()
    assert _decoded(_event(b"{}", None))["data_base64"] == base64.b64encode(b"{}").decode()


def test_message_headers_travel_as_one_string_extension() -> None:
    event = _event(b"x", None, http_headers={"kafka-header-trace": "abc\r\nX: y"},
                   extensions={"data": "shadow"})
    member = _decoded(event)
    assert json.loads(member["bridgeheaders"]) == {"kafka-header-trace": "abc\r\nX: y"}
    assert "data" not in member  # an extension named 'data' cannot be written in JSON


# --- the answer ------------------------------------------------------------------------

IDS = ["a", "b", "c"]


@pytest.mark.parametrize(("answer", "failed"), [
    (b"", frozenset()), (b"  \n", frozenset()), (b'{"failed": []}', frozenset()),
    (b'{"failed": ["b"]}', frozenset({"b"})),
    (b'{"failed": ["a", "c"], "note": "extra members are ignored"}', frozenset({"a", "c"})),
])
def test_answers_that_name_the_failed_events(answer: bytes, failed: frozenset[str]) -> None:
    assert read_answer(answer, IDS) == failed


@pytest.mark.parametrize(("answer", "problem"), [
    (b"ok", "not JSON"),
    (b"[]", "must be empty or"),
    (b'{"failed": "a"}', "must be empty or"),
    (b'{"status": "ok"}', "must be empty or"),
    (b'{"failed": [1]}', "must list CloudEvent ids"),
    (b'{"failed": ["a", "zz"]}', "not in the batch: 'zz'"),
    (b'{"failed": ["a", "a", "b", "c"]}', "names 4 events; the batch has 3"),
    (None, "longer than"),
])
def test_answers_that_cannot_be_read(answer: bytes | None, problem: str) -> None:
    result = read_answer(answer, IDS)
    assert isinstance(result, str)
    assert problem in result


def test_the_answer_bound_leaves_room_for_every_id() -> None:
    ids = [f"orders/0/{n}" for n in range(10_000)]
    answer = json.dumps({"failed": ids}).encode()
    assert len(answer) <= answer_bound(ids)
    assert read_answer(answer, ids) == frozenset(ids)


# --- the dispatcher with batches -------------------------------------------------------


def resolved(
    url: str, *, max_events: int = 5, max_wait: str = "50ms", max_bytes: int = 1024 * 1024,
    attempts: int = 3, concurrency: int = 4, window: int = 100,
) -> ResolvedTrigger:
    config = parse_config(
        "defaults: {dead_letter: {file: {path: /unused}}}\n"
        f"functions: {{fn: {{url: '{url}'}}}}\n"
        f"triggers: [{{name: orders, function: fn, concurrency: {concurrency}, "
        f"batch: {{max_events: {max_events}, max_wait: {max_wait}, max_bytes: {max_bytes}}}, "
        "kafka: {bootstrap_servers: '127.0.0.1:9', topics: [t], group_id: g, "
        f"max_unsettled: {window}}}, "
        f"retry: {{max_attempts: {attempts}, initial_backoff: 10ms, jitter: false}}}}]\n",
        env={},
    )
    return config.resolve(config.triggers[0])


def batch_ids(call: Call) -> list[str]:
    assert call.headers["Content-Type"] == BATCH_CONTENT_TYPE
    return [member["id"] for member in json.loads(call.body)]


@dataclass
class BatchRig:
    fn: RecordingFunction
    session: aiohttp.ClientSession
    metrics: Metrics = field(default_factory=Metrics)
    settlements: Settlements = field(default_factory=Settlements)
    sink: MemorySink = field(default_factory=MemorySink)

    def dispatcher(self, trigger: ResolvedTrigger, ordering: Ordering = "none") -> Dispatcher:
        return Dispatcher(
            trigger, target=Target("fn", BalancedPool([self.fn.url])),
            invoker=Invoker(self.session), sink=self.sink, metrics=self.metrics,
            log=get_logger(test=True), ordering=ordering, max_unsettled=100,
        )

    def event(self, event_id: str, key: str | None = None) -> Event:
        return Event(
            trigger="orders", id=event_id, source="test", type="test.event",
            data=event_id.encode(), content_type="text/plain", ordering_key=key,
            partition="p0", origin=f"test/{event_id}", settler=self.settlements.settler,
        )

    def requests(self) -> list[list[str]]:
        return [batch_ids(call) for call in self.fn.calls]

    def sent(self) -> list[str]:
        return [i for ids in self.requests() for i in ids]


@pytest.fixture
async def rig() -> AsyncIterator[BatchRig]:
    # A batch function answers 2xx with no body when every event was handled.
    async with RecordingFunction(lambda call, n: Reply(body="")) as fn, \
            Invoker.new_session() as session:
        yield BatchRig(fn, session)


def answer(failing: set[str], times: int = 1) -> Any:
    """A function naming ``failing`` ids as failed in their first ``times`` batches."""
    seen: dict[str, int] = {}

    def behaviour(call: Call, n: int) -> Reply:
        failed = []
        for i in batch_ids(call):
            seen[i] = seen.get(i, 0) + 1
            if i in failing and seen[i] <= times:
                failed.append(i)
        return Reply(body=json.dumps({"failed": failed}) if failed else "")
    return behaviour


async def test_full_batches_go_as_one_request_each(rig: BatchRig) -> None:
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=5, max_wait="10s"))
    for n in range(10):
        await dispatcher.submit(rig.event(f"e{n}"))
    await rig.settlements.wait(10)
    assert sorted(len(ids) for ids in rig.requests()) == [5, 5]
    assert sorted(rig.sent()) == sorted(f"e{n}" for n in range(10))
    body = json.loads(rig.fn.calls[0].body)
    assert sdk(body[0]).get_data() == body[0]["data"]  # text/plain -> a string
    assert all(v == [Disposition.DELIVERED] for v in rig.settlements.by_id.values())
    assert rig.metrics.registry.get_sample_value(
        "bridge_invocations_total", {"trigger": "orders", "function": "fn",
                                     "outcome": "delivered"}) == 10
    assert await dispatcher.drain(1)


async def test_max_bytes_closes_a_batch(rig: BatchRig) -> None:
    one = len(structured(rig.event("e00"))) + 1  # every id below has 3 characters
    dispatcher = rig.dispatcher(
        resolved(rig.fn.url, max_events=100, max_wait="10s", max_bytes=1024))
    for n in range(30):
        await dispatcher.submit(rig.event(f"e{n:02}"))
    calls = await rig.fn.wait_calls(1, timeout=5)  # would wait 10 s if not closed by size
    assert len(batch_ids(calls[0])) == (1024 - 1) // one
    assert len(calls[0].body) <= 1024
    await dispatcher.drain(1)


async def test_max_wait_sends_a_partial_batch(rig: BatchRig) -> None:
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=50, max_wait="100ms"))
    await dispatcher.submit(rig.event("lonely"))
    await rig.settlements.wait(1, timeout=5)
    assert rig.requests() == [["lonely"]]
    assert await dispatcher.drain(1)


async def test_failed_items_are_retried_alone_and_the_rest_settled_at_once(
    rig: BatchRig,
) -> None:
    rig.fn.behaviour = answer({"e2", "e4"})
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=5, max_wait="10s"))
    for n in range(5):
        await dispatcher.submit(rig.event(f"e{n}"))
    await rig.settlements.wait(5)
    first, *retries = rig.requests()
    assert sorted(first) == [f"e{n}" for n in range(5)]
    assert sorted(retries) == [["e2"], ["e4"]]  # each failed event alone
    assert all(v == [Disposition.DELIVERED] for v in rig.settlements.by_id.values())
    assert rig.sink.records == []
    assert await dispatcher.drain(1)


async def test_an_event_failing_every_time_is_dead_lettered_with_its_own_reason(
    rig: BatchRig,
) -> None:
    rig.fn.behaviour = answer({"bad"}, times=99)
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=3, max_wait="10s", attempts=3))
    for name in ("a", "bad", "c"):
        await dispatcher.submit(rig.event(name))
    await rig.settlements.wait(3)
    assert rig.settlements.by_id["bad"] == [Disposition.DEAD_LETTERED]
    assert rig.settlements.by_id["a"] == rig.settlements.by_id["c"] == [Disposition.DELIVERED]
    (record,) = rig.sink.records
    assert (record.error, record.attempts, record.last_status) == (FAILED_IN_BATCH, 3, 200)
    assert record.body == b"bad"
    assert record.source == "test/bad"
    assert rig.sent().count("bad") == 3
    assert rig.sent().count("a") == 1


async def test_a_failed_request_fails_the_batch_and_each_event_retries_alone(
    rig: BatchRig,
) -> None:
    rig.fn.behaviour = lambda call, n: Reply(status=503 if len(rig.fn.calls) == 0 else 200,
                                             body="")
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=3, max_wait="10s"))
    for n in range(3):
        await dispatcher.submit(rig.event(f"e{n}"))
    await rig.settlements.wait(3)
    first, *retries = rig.requests()
    assert len(first) == 3
    assert sorted(retries) == [["e0"], ["e1"], ["e2"]]
    assert all(v == [Disposition.DELIVERED] for v in rig.settlements.by_id.values())


@pytest.mark.parametrize("bad", [
    "ok",                                        # not JSON
    '{"failed": ["e0", "not-in-this-batch"]}',   # an id that was not in the batch
    '{"failed": ["e0", "e0", "e1", "e1"]}',      # larger than the batch
])
async def test_an_answer_that_cannot_be_read_fails_the_whole_batch(
    rig: BatchRig, bad: str,
) -> None:
    rig.fn.behaviour = lambda call, n: Reply(body=bad if len(rig.fn.calls) == 0 else "")
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=3, max_wait="10s"))
    for n in range(3):
        await dispatcher.submit(rig.event(f"e{n}"))
    await rig.settlements.wait(3)
    first, *retries = rig.requests()
    assert len(first) == 3
    assert sorted(retries) == [["e0"], ["e1"], ["e2"]]
    assert all(v == [Disposition.DELIVERED] for v in rig.settlements.by_id.values())
    assert rig.metrics.registry.get_sample_value(
        "bridge_invocations_total", {"trigger": "orders", "function": "fn",
                                     "outcome": "retryable"}) == 3


async def test_an_answer_that_is_never_readable_dead_letters_each_event(rig: BatchRig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(body="done")
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=2, max_wait="10s", attempts=2))
    for n in range(2):
        await dispatcher.submit(rig.event(f"e{n}"))
    await rig.settlements.wait(2)
    assert sorted(r.error for r in rig.sink.records) == [BAD_ANSWER, BAD_ANSWER]
    assert "not JSON" in rig.sink.records[0].error_detail


async def test_key_order_a_failed_event_holds_back_the_later_events_of_its_key(
    rig: BatchRig,
) -> None:
    """The rule: no event is sent before the earlier event of its key was delivered or
    dead-lettered; a failed event holds its key back (other keys go on)."""
    delivered_at: dict[str, int] = {}

    def behaviour(call: Call, n: int) -> Reply:
        ids = batch_ids(call)
        failed = ["a1"] if "a1" in ids and "a1" not in rig.sent() else []
        for i in ids:
            if i not in failed:
                delivered_at[i] = len(rig.fn.calls)
        return Reply(body=json.dumps({"failed": failed}) if failed else "")

    rig.fn.behaviour = behaviour
    dispatcher = rig.dispatcher(
        resolved(rig.fn.url, max_events=4, max_wait="30ms"), ordering="key")
    for name, key in [("a1", "a"), ("b1", "b"), ("a2", "a"), ("b2", "b"), ("a3", "a")]:
        await dispatcher.submit(rig.event(name, key))
    await rig.settlements.wait(5)
    requests = rig.requests()
    assert all(len({i[0] for i in ids}) == len(ids) for ids in requests)  # one per key
    first_a2 = next(n for n, ids in enumerate(requests) if "a2" in ids)
    assert delivered_at["a1"] < first_a2 < next(n for n, ids in enumerate(requests)
                                                if "a3" in ids)
    assert rig.sent().count("a1") == 2  # failed once, delivered alone on the retry
    assert delivered_at["b1"] < delivered_at["b2"]


async def test_key_order_a_dead_lettered_event_releases_its_key(rig: BatchRig) -> None:
    rig.fn.behaviour = answer({"a1"}, times=99)
    dispatcher = rig.dispatcher(
        resolved(rig.fn.url, max_events=4, max_wait="30ms", attempts=2), ordering="key")
    for name in ("a1", "a2"):
        await dispatcher.submit(rig.event(name, "a"))
    await rig.settlements.wait(2)
    assert rig.sent() == ["a1", "a1", "a2"]
    assert rig.settlements.by_id["a1"] == [Disposition.DEAD_LETTERED]
    assert rig.settlements.by_id["a2"] == [Disposition.DELIVERED]


async def test_drain_sends_the_open_batch_without_events_that_had_not_started(
    rig: BatchRig,
) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=0.3, body="")
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=3, max_wait="60s",
                                         concurrency=1))
    for n in range(3):  # one full batch, in flight for 0.3 s
        await dispatcher.submit(rig.event(f"e{n}"))
    await until(lambda: len(rig.fn.calls) + rig.fn.in_flight == 1)
    await dispatcher.submit(rig.event("late"))  # opens a batch that would wait 60 s
    assert await dispatcher.drain(5)
    assert sorted(rig.sent()) == ["e0", "e1", "e2"]
    assert "late" not in rig.settlements.by_id  # left unsettled for redelivery
    assert dispatcher.unsettled == 0


async def test_batches_keep_filling_while_the_slots_are_busy(rig: BatchRig) -> None:
    gate = asyncio.Event()

    async def behaviour(call: Call, n: int) -> Reply:
        await gate.wait()
        return Reply(body="")

    rig.fn.behaviour = behaviour
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=50, max_wait="0s",
                                         concurrency=1))
    await dispatcher.submit(rig.event("first"))  # max_wait 0: goes at once, holds the slot
    await until(lambda: rig.fn.in_flight == 1)
    for n in range(20):
        await dispatcher.submit(rig.event(f"e{n}"))
    gate.set()
    await rig.settlements.wait(21)
    assert [len(ids) for ids in rig.requests()] == [1, 20]


async def test_a_defect_is_dead_lettered_at_once_and_never_sent(rig: BatchRig) -> None:
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=3, max_wait="10s"))
    bad = rig.event("bad")
    bad.defect = "structured CloudEvent is not valid JSON"
    for event in (rig.event("a"), bad, rig.event("b"), rig.event("c")):
        await dispatcher.submit(event)
    await rig.settlements.wait(4)
    assert rig.requests() == [["a", "b", "c"]]
    assert rig.settlements.by_id["bad"] == [Disposition.DEAD_LETTERED]
    (record,) = rig.sink.records
    assert (record.error, record.attempts) == ("invalid_message", 0)


async def test_an_event_its_source_took_back_is_withdrawn_not_sent(rig: BatchRig) -> None:
    gone = {"b"}
    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=2, max_wait="10s"))
    for name in ("a", "b", "c"):
        event = rig.event(name)
        event.stale = partial(operator.contains, gone, name)
        await dispatcher.submit(event)
    await rig.settlements.wait(2)
    assert rig.requests() == [["a", "c"]]
    assert "b" not in rig.settlements.by_id
    assert dispatcher.unsettled == 0
    assert rig.metrics.registry.get_sample_value(
        "bridge_events_withdrawn_total", {"trigger": "orders"}) == 1


async def test_settles_that_suspend_are_coalesced_like_rabbitmq_acks(rig: BatchRig) -> None:
    """A settler that waits one loop pass and then flushes what was settled meanwhile
    (the RabbitMQ ack batcher's way) gets the whole batch in one flush."""
    flushes: list[list[str]] = []
    pending: list[str] = []

    async def settler(event: Event, disposition: Disposition) -> None:
        pending.append(event.id)
        if len(pending) > 1:
            return
        await asyncio.sleep(0)
        flushes.append(list(pending))
        pending.clear()

    dispatcher = rig.dispatcher(resolved(rig.fn.url, max_events=5, max_wait="10s"))
    for n in range(5):
        event = rig.event(f"e{n}")
        event.settler = settler
        await dispatcher.submit(event)
    await until(lambda: sum(len(f) for f in flushes) == 5)
    assert flushes == [[f"e{n}" for n in range(5)]]
    assert await dispatcher.drain(1)
    assert dispatcher.unsettled == 0
