"""Replies (bridge.replies): the attributes of a reply, and the dispatcher publishing it
before the settle, with a real Invoker and a real local function over TCP.

Only the reply target is in memory here (so failures can be injected); the Kafka and
RabbitMQ targets are tested through the daemon (tests/integration/test_replies.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import pytest

from bridge.cloudevents import CloudEventError
from bridge.config import ResolvedTrigger, parse_config
from bridge.deadletter import SinkRefused
from bridge.dispatcher import Dispatcher
from bridge.events import Disposition, Event
from bridge.invoker import Invoker
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.outcome import Answer
from bridge.pools import BalancedPool, Target
from bridge.replies import Reply, reply_of
from tests.support.functions import Call, RecordingFunction
from tests.support.functions import Reply as Answered
from tests.unit.test_dispatcher import MemorySink, Settlements, until

NOW = datetime(2026, 3, 8, 7, 30, tzinfo=UTC)


def source_event(**fields: object) -> Event:
    values: dict[str, object] = {
        "trigger": "orders", "id": "orders/0/42", "source": "kafka://orders",
        "type": "dev.triggerbridge.kafka.record", "data": b"{}", "key": b"customer-7",
    }
    values.update(fields)
    return Event(**values)  # type: ignore[arg-type]


# --- the attributes -------------------------------------------------------------------------


def test_what_the_function_leaves_out_is_derived() -> None:
    answer = Answer(b'{"total": 3}', {"content-type": "application/json"})
    reply = reply_of(source_event(subject="order-42"), answer, "orders", now=NOW)
    assert dict(reply.attributes) == {
        "specversion": "1.0", "id": "orders/0/42/reply", "source": "trigger-bridge://orders",
        "type": "dev.triggerbridge.kafka.record.reply", "time": "2026-03-08T07:30:00Z",
        "subject": "order-42", "datacontenttype": "application/json",
    }
    assert (reply.data, reply.key) == (b'{"total": 3}', b"customer-7")


def test_a_configured_type_replaces_the_derived_one() -> None:
    reply = reply_of(source_event(), Answer(b"x", {}), "orders", "com.example.priced", now=NOW)
    assert reply.attributes["type"] == "com.example.priced"
    assert "datacontenttype" not in reply.attributes


def test_the_functions_own_ce_headers_win_one_by_one() -> None:
    answer = Answer(b"ok", {
        "content-type": "text/plain", "ce-id": "invoice-7", "ce-type": "com.example.invoiced",
        "ce-note": "caf%C3%A9%20au%20lait", "ce-not_a_name": "ignored",
    })
    reply = reply_of(source_event(), answer, "orders", "com.example.priced", now=NOW)
    assert reply.attributes["id"] == "invoice-7"
    assert reply.attributes["type"] == "com.example.invoiced"  # over the configured one too
    assert reply.attributes["source"] == "trigger-bridge://orders"  # not given: derived
    assert reply.attributes["note"] == "café au lait"  # percent-decoded (HTTP binding)
    assert "not_a_name" not in reply.attributes


def test_a_structured_answer_keeps_its_own_attributes() -> None:
    body = (b'{"specversion": "1.0", "id": "s-1", "source": "/billing", "type": "t.s",'
            b' "datacontenttype": "text/plain", "data": "hello"}')
    answer = Answer(body, {"content-type": "application/cloudevents+json"})
    reply = reply_of(source_event(), answer, "orders", now=NOW)
    assert reply.data == b"hello"
    assert reply.content_type == "text/plain"
    assert (reply.attributes["id"], reply.attributes["source"]) == ("s-1", "/billing")
    assert reply.attributes["time"] == "2026-03-08T07:30:00Z"  # not given: derived


@pytest.mark.parametrize(("headers", "problem"), [
    ({"ce-specversion": "0.3"}, "specversion '0.3' is not supported"),
    ({"ce-time": "yesterday"}, "'yesterday' is not an RFC 3339 timestamp"),
    ({"ce-id": ""}, "missing the required attribute 'id'"),
])
def test_invalid_attributes_of_the_function_are_an_error(
    headers: dict[str, str], problem: str
) -> None:
    with pytest.raises(CloudEventError, match=problem):
        reply_of(source_event(), Answer(b"x", headers), "orders", now=NOW)


# --- published before the settle -----------------------------------------------------------


@dataclass
class MemoryReplies:
    """A reply target: the first ``fail_first`` publishes raise (broker down), then
    ``refuse`` ones are refused for good; ``log`` interleaves publishes and settles."""

    log: list[str]
    fail_first: int = 0
    refuse: bool = False
    attempts: int = 0
    replies: list[Reply] = field(default_factory=list)

    async def start(self) -> None:
        """Nothing to connect."""

    async def publish(self, reply: Reply) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise ConnectionError("broker down")
        if self.refuse:
            raise SinkRefused("exchange 'results' at amqp://h/: no queue is bound (NO_ROUTE)")
        self.replies.append(reply)
        self.log.append(f"publish {reply.id}")

    async def close(self) -> None:
        """Nothing to close."""


def replying(url: str, max_size: int = 1024) -> ResolvedTrigger:
    config = parse_config(
        "defaults: {dead_letter: {file: {path: /unused}}}\n"
        f"functions: {{fn: {{url: '{url}'}}}}\n"
        "triggers: [{name: orders, function: fn, cron: {schedule: '@daily'},"
        " retry: {max_attempts: 2, initial_backoff: 10ms},"
        " reply: {rabbitmq: {exchange: results, url: 'amqp://h/'},"
        f" max_size: {max_size}}}}}]\n",
        env={},
    )
    return config.resolve(config.triggers[0])


@dataclass
class ReplyRig:
    fn: RecordingFunction
    session: aiohttp.ClientSession
    log: list[str] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    settlements: Settlements = field(default_factory=Settlements)
    sink: MemorySink = field(default_factory=MemorySink)

    def dispatcher(self, replies: MemoryReplies, max_size: int = 1024) -> Dispatcher:
        return Dispatcher(
            replying(self.fn.url, max_size), target=Target("fn", BalancedPool([self.fn.url])),
            invoker=Invoker(self.session), sink=self.sink, metrics=self.metrics,
            log=get_logger(test=True), replies=replies,
        )

    def event(self, event_id: str) -> Event:
        async def settler(event: Event, disposition: Disposition) -> None:
            self.log.append(f"settle {event.id} {disposition.value}")
            await self.settlements.settler(event, disposition)

        return source_event(id=event_id, data=event_id.encode(), settler=settler)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def rig() -> AsyncIterator[ReplyRig]:
    async with RecordingFunction() as fn, Invoker.new_session() as session:
        yield ReplyRig(fn, session)


def answer_with_body(call: Call, attempt: int) -> Answered:
    """``e-empty``: 200 without a body; else a JSON answer naming the event."""
    if call.body == b"e-empty":
        return Answered(200, body="")
    return Answered(200, body=f'{{"for": "{call.body.decode()}"}}',
                    headers={"Content-Type": "application/json"})


async def test_the_answer_is_published_before_the_event_is_settled(rig: ReplyRig) -> None:
    rig.fn.behaviour = answer_with_body
    replies = MemoryReplies(rig.log)
    dispatcher = rig.dispatcher(replies)
    for event_id in ("e1", "e-empty"):
        await dispatcher.submit(rig.event(event_id))
    await rig.settlements.wait(2)
    assert rig.log.index("publish e1/reply") < rig.log.index("settle e1 delivered")
    assert "settle e-empty delivered" in rig.log  # no body: nothing published
    [reply] = replies.replies
    assert reply.data == b'{"for": "e1"}'
    assert reply.content_type == "application/json; charset=utf-8"  # as the function said
    assert rig.metric("bridge_replies_published_total", trigger="orders", function="fn") == 1
    assert await dispatcher.drain(1)


async def test_a_broker_that_is_down_keeps_the_event_unsettled_until_published(
    rig: ReplyRig,
) -> None:
    rig.fn.behaviour = answer_with_body
    replies = MemoryReplies(rig.log, fail_first=2)
    dispatcher = rig.dispatcher(replies)
    await dispatcher.submit(rig.event("e1"))
    await until(lambda: replies.attempts >= 2)
    assert rig.settlements.count() == 0
    await rig.settlements.wait(1, timeout=10)
    assert rig.log == ["publish e1/reply", "settle e1 delivered"]
    assert rig.fn.attempts["e1"] == 1  # the function is not invoked again
    assert rig.metric("bridge_reply_publish_failures_total", trigger="orders") == 2
    assert rig.sink.records == []


async def test_a_refused_reply_dead_letters_the_event_as_reply_failed(rig: ReplyRig) -> None:
    rig.fn.behaviour = answer_with_body
    dispatcher = rig.dispatcher(MemoryReplies(rig.log, refuse=True))
    await dispatcher.submit(rig.event("e1"))
    await rig.settlements.wait(1)
    assert rig.settlements.by_id["e1"] == [Disposition.DEAD_LETTERED]
    [record] = rig.sink.records
    assert (record.error, record.last_status, record.attempts) == ("reply_failed", 200, 1)
    assert "NO_ROUTE" in record.error_detail
    assert record.body == b"e1"  # the source event, so a redrive invokes the function again
    assert rig.metric("bridge_dead_letters_total", trigger="orders", function="fn",
                      reason="reply_failed") == 1


async def test_an_answer_above_max_size_dead_letters_the_event(rig: ReplyRig) -> None:
    rig.fn.behaviour = lambda call, n: Answered(200, body="x" * 100)
    replies = MemoryReplies(rig.log)
    dispatcher = rig.dispatcher(replies, max_size=99)
    await dispatcher.submit(rig.event("e1"))
    await rig.settlements.wait(1)
    [record] = rig.sink.records
    assert record.error == "reply_failed"
    assert "larger than reply.max_size (99 bytes)" in record.error_detail
    assert replies.attempts == 0


async def test_an_answer_of_exactly_max_size_is_published(rig: ReplyRig) -> None:
    rig.fn.behaviour = lambda call, n: Answered(200, body="x" * 100)
    replies = MemoryReplies(rig.log)
    await rig.dispatcher(replies, max_size=100).submit(rig.event("e1"))
    await rig.settlements.wait(1)
    assert [r.data for r in replies.replies] == [b"x" * 100]


async def test_drain_leaves_an_event_whose_reply_cannot_be_published_unsettled(
    rig: ReplyRig,
) -> None:
    rig.fn.behaviour = answer_with_body
    replies = MemoryReplies(rig.log, fail_first=1000)
    dispatcher = rig.dispatcher(replies)
    await dispatcher.submit(rig.event("e1"))
    await until(lambda: replies.attempts >= 1)
    assert await dispatcher.drain(2)
    assert rig.settlements.count() == 0  # the source redelivers it: the reply is not lost
