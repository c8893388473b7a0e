"""RabbitMQ connector pieces without a broker: settling, error messages, reconnect
backoff, config checks and the sink factory."""

from __future__ import annotations

import asyncio
import ssl
import time

import aiormq.exceptions as amqp_errors
import pytest
from aio_pika import IncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.header import ContentHeader
from yarl import URL

from bridge.config import ConfigError, parse_config
from bridge.events import Disposition, Event
from bridge.leadership import AlwaysLeader
from bridge.logs import get_logger
from bridge.metrics import Metrics
from connectors.base import ConnectorContext
from connectors.rabbitmq import RabbitConnector
from connectors.rabbitmq_connection import _BackoffConnection, explain
from connectors.rabbitmq_sink import RabbitPublishSink, RejectSink, rabbit_sink

URL_ = "amqp://bridge:s3cret-pw@rabbit:5672/prod"


class RecordingChannel:
    """Stands in for an aiormq channel: records the frames it is asked to send."""

    def __init__(self, closed: bool = False, failing: bool = False) -> None:
        self.is_closed = closed
        self.failing = failing
        self.sent: list[tuple[str, int, bool]] = []
        #: Frames whose write the sender waited for (each costs a loop pass or more).
        self.writes_waited = 0

    async def basic_ack(self, delivery_tag: int, multiple: bool = False,
                        wait: bool = True) -> None:
        if self.failing:
            raise amqp_errors.ChannelInvalidStateError("closed")
        self.sent.append(("ack", delivery_tag, multiple))
        if wait:  # as aiormq: the connection's writer task writes it on a later pass
            self.writes_waited += 1
            await asyncio.sleep(0)

    async def basic_reject(self, delivery_tag: int, requeue: bool = True) -> None:
        self.sent.append(("reject" if not requeue else "requeue", delivery_tag, False))


def message_on(channel: RecordingChannel, tag: int = 9) -> IncomingMessage:
    frame = spec.Basic.Deliver(consumer_tag="c", delivery_tag=tag, exchange="", routing_key="q")
    header = ContentHeader(properties=spec.Basic.Properties(), body_size=1)
    return IncomingMessage(DeliveredMessage(delivery=frame, header=header, body=b"x",
                                            channel=channel))  # type: ignore[arg-type]


def config_text(dead_letter: str, source: str | None = None) -> str:
    source = source or f'rabbitmq: {{url: "{URL_}", queue: q, prefetch: 7}}'
    return f"""
functions: {{f: {{url: "http://127.0.0.1:1/"}}}}
triggers:
  - name: t
    function: f
    {source}
    dead_letter: {dead_letter}
"""


def connector(dead_letter: str = "{file: {path: /tmp/x}}") -> tuple[RabbitConnector, Metrics]:
    config = parse_config(config_text(dead_letter))
    metrics = Metrics()
    context = ConnectorContext(metrics=metrics, log=get_logger(), leadership=AlwaysLeader())
    return RabbitConnector(config.resolve(config.triggers[0]), context), metrics


def sample(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name, {"trigger": "t"}) or 0.0


async def take(rabbit: RabbitConnector, messages: list[IncomingMessage]) -> list[Event]:
    for message in messages:
        await rabbit._on_message(message)
    events = rabbit.events()
    taken = [await anext(events) for _ in messages]
    await events.aclose()
    return taken


@pytest.mark.parametrize(("dead_letter", "disposition", "expected"), [
    ("{file: {path: /tmp/x}}", Disposition.DELIVERED, ("ack", 1, True)),
    ("{file: {path: /tmp/x}}", Disposition.DEAD_LETTERED, ("ack", 1, True)),
    ("{rabbitmq: {reject: true}}", Disposition.DELIVERED, ("ack", 1, True)),
    ("{rabbitmq: {reject: true}}", Disposition.DEAD_LETTERED, ("reject", 1, False)),
    ("{file: {path: /tmp/x}}", Disposition.ABANDONED, ("requeue", 1, False)),
])
async def test_settle_acks_or_rejects(
    dead_letter: str, disposition: Disposition, expected: tuple[str, int, bool]
) -> None:
    rabbit, _ = connector(dead_letter)
    channel = RecordingChannel()
    [event] = await take(rabbit, [message_on(channel, tag=1)])
    await event.settle(disposition)
    assert channel.sent == [expected]


async def test_acks_of_one_loop_iteration_are_coalesced() -> None:
    rabbit, _ = connector("{rabbitmq: {reject: true}}")
    channel = RecordingChannel()
    events = await take(rabbit, [message_on(channel, tag) for tag in range(1, 9)])
    by_tag = dict(zip(range(1, 9), events, strict=True))
    # 2, 3 settle first: 1 is still out, so they are acked one by one.
    await asyncio.gather(by_tag[2].settle(Disposition.DELIVERED),
                         by_tag[3].settle(Disposition.DELIVERED))
    # 4 is rejected (reject mode); 1, 5, 6 and 8 settle together: 1..6 form a run from
    # the oldest, sent as one multiple ack carrying 6; 8 is after the gap at 7.
    await by_tag[4].settle(Disposition.DEAD_LETTERED)
    await asyncio.gather(*(by_tag[t].settle(Disposition.DELIVERED) for t in (1, 5, 6, 8)))
    await by_tag[7].settle(Disposition.DELIVERED)
    assert channel.sent == [
        ("ack", 2, False), ("ack", 3, False), ("reject", 4, False),
        ("ack", 6, True), ("ack", 8, False), ("ack", 7, True),
    ]


async def test_a_flush_waits_for_one_write_however_many_frames_it_sends() -> None:
    rabbit, _ = connector()
    channel = RecordingChannel()
    events = await take(rabbit, [message_on(channel, tag) for tag in range(1, 22)])
    # 1 is still out: 2..21 settle in one pass and go one by one, in order.
    await asyncio.gather(*(e.settle(Disposition.DELIVERED) for e in events[1:]))
    assert channel.sent == [("ack", tag, False) for tag in range(2, 22)]
    assert channel.writes_waited == 1, "one write round trip for the flush, not one per ack"
    await events[0].settle(Disposition.DELIVERED)
    assert channel.sent[-1] == ("ack", 1, True)  # 2..21 are acked already


async def test_settling_a_delivery_of_a_dead_channel_is_logged_not_raised() -> None:
    rabbit, metrics = connector()
    channel = RecordingChannel()
    events = await take(rabbit, [message_on(channel, 1), message_on(channel, 2)])
    channel.failing = True
    await asyncio.gather(*(e.settle(Disposition.DELIVERED) for e in events))
    assert sample(metrics, "bridge_rabbitmq_settle_failures_total") == 2
    assert all(e.settled is Disposition.DELIVERED for e in events)


async def test_not_ready_and_bounded_before_start() -> None:
    rabbit, _ = connector()
    assert rabbit.ready is False
    assert rabbit.max_unsettled == 7, "max_unsettled = prefetch"
    await rabbit.stop()
    await rabbit.stop()


async def test_stale_deliveries_are_dropped_before_dispatch() -> None:
    rabbit, metrics = connector()
    live, dead = RecordingChannel(), RecordingChannel(closed=True)
    await rabbit._on_message(message_on(dead))
    [event] = await take(rabbit, [message_on(live, 1)])
    await event.settle(Disposition.DELIVERED)
    assert live.sent == [("ack", 1, True)]
    assert sample(metrics, "bridge_rabbitmq_stale_deliveries_total") == 1


async def test_a_new_channel_gets_its_own_tag_sequence() -> None:
    rabbit, _ = connector()
    old, new = RecordingChannel(), RecordingChannel()
    [first] = await take(rabbit, [message_on(old, 1)])
    [second] = await take(rabbit, [message_on(new, 1)])
    await second.settle(Disposition.DELIVERED)
    old.failing = True  # the old channel died meanwhile
    await first.settle(Disposition.DELIVERED)
    assert new.sent == [("ack", 1, True)]
    assert old.sent == []


@pytest.mark.parametrize(("error", "expected"), [
    (amqp_errors.ProbableAuthenticationError("ACCESS_REFUSED - Login was refused"),
     "RabbitMQ at amqp://bridge:***@rabbit:5672/prod refused the login"),
    (amqp_errors.InvalidFrameError("Expected Connection.OpenOk, got <Connection.Close>"),
     "refused virtual host 'prod': it does not exist or the user may not use it"),
    (amqp_errors.ChannelNotFoundEntity(
        'NOT_FOUND - no queue \'jobs\' in vhost \'prod\''),
     "no queue 'jobs' in vhost 'prod' at amqp://bridge:***@rabbit:5672/prod: create it, or "
     "add a 'declare' section"),
    (amqp_errors.ChannelPreconditionFailed(
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'jobs'"),
     "the broker rejected the declared settings at amqp://bridge:***@rabbit:5672/prod: "
     "inequivalent arg 'durable'"),
    (amqp_errors.AMQPConnectionError(111, "Connect call failed ('10.0.0.1', 5672)"),
     "cannot connect to RabbitMQ at amqp://bridge:***@rabbit:5672/prod: AMQPConnectionError"),
    (ssl.SSLCertVerificationError("certificate verify failed"), "TLS handshake with"),
    (RuntimeError("oops s3cret-pw"), "oops ***"),
])
def test_errors_are_explained_without_secrets(error: Exception, expected: str) -> None:
    text = explain(error, URL_, queue="jobs")
    assert expected in text
    assert "s3cret-pw" not in text


async def test_reconnect_pause_grows_with_the_outage() -> None:
    connection = _BackoffConnection(URL("amqp://h/"), reconnect_interval=1.0)
    assert connection.reconnect_interval == 1.0
    closing = asyncio.get_running_loop().create_future()
    closing.set_exception(ConnectionError("gone"))
    await connection._on_connection_close(closing)
    lost_at = connection._lost_at
    assert lost_at is not None
    await connection._on_connection_close(closing)  # a failed attempt: same outage
    assert connection._lost_at == lost_at
    assert connection.reconnect_interval == 1.0
    connection._lost_at = time.monotonic() - 9
    assert 4.4 < connection.reconnect_interval < 4.6
    connection._lost_at = time.monotonic() - 600
    assert connection.reconnect_interval == 30.0


def test_sink_factory() -> None:
    config = parse_config(config_text("{rabbitmq: {reject: true}}"))
    trigger = config.resolve(config.triggers[0])
    assert trigger.dead_letter is not None
    assert isinstance(rabbit_sink(trigger.dead_letter, trigger), RejectSink)
    config = parse_config(config_text("{rabbitmq: {exchange: dlx, routing_key: dead}}"))
    trigger = config.resolve(config.triggers[0])
    assert trigger.dead_letter is not None
    sink = rabbit_sink(trigger.dead_letter, trigger)
    assert isinstance(sink, RabbitPublishSink)
    assert sink.target == "exchange 'dlx' at amqp://bridge:***@rabbit:5672/prod"


CRON = 'cron: {schedule: "* * * * *"}'


@pytest.mark.parametrize(("text", "path", "message"), [
    (config_text("{rabbitmq: {exchange: dlx}}", CRON), "triggers[0].dead_letter.rabbitmq.url",
     "required: trigger 't' is a cron trigger"),
    (config_text("{rabbitmq: {reject: true}}", CRON), "triggers[0].dead_letter.rabbitmq.reject",
     "'reject: true' needs a rabbitmq trigger"),
    (config_text("{rabbitmq: {reject: true, url: 'amqp://h/'}}"),
     "triggers[0].dead_letter.rabbitmq", "'url', 'tls' and 'routing_key' do not apply"),
    (config_text("{rabbitmq: {exchange: x, reject: true}}"), "triggers[0].dead_letter.rabbitmq",
     "set either 'exchange'"),
    (config_text("{rabbitmq: {exchange: x, url: 'http://h/'}}"),
     "triggers[0].dead_letter.rabbitmq.url", "expected an amqp:// or amqps:// URL"),
    (config_text("{file: {path: x}}", 'rabbitmq: {url: "amqp://h/", queue: q, tls: {}}'),
     "triggers[0].rabbitmq.tls", "needs an amqps:// url"),
    (config_text("{file: {path: x}}",
                 'rabbitmq: {url: "amqp://h/", queue: q, ordering_header: k}'),
     "triggers[0].rabbitmq.ordering_header", "needs 'ordering: key'"),
    (config_text("{file: {path: x}}", 'rabbitmq: {url: "amqp://h/", queue: q, '
                 'declare: {durable: false, arguments: {x-queue-type: quorum}}}'),
     "triggers[0].rabbitmq.declare.durable", "quorum and stream queues must be durable"),
    (config_text("{file: {path: x}}", 'rabbitmq: {url: "amqp://h/", queue: q, prefetch: 0}'),
     "triggers[0].rabbitmq.prefetch", "1"),
])
def test_config_problems(text: str, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    problems = {p.path: p.message for p in caught.value.problems}
    assert path in problems, problems
    assert message in problems[path]


def test_inherited_dead_letter_sink_is_checked_per_trigger() -> None:
    text = """
defaults: {dead_letter: {rabbitmq: {exchange: dlx}}}
functions: {f: {url: "http://127.0.0.1:1/"}}
triggers:
  - {name: a, function: f, rabbitmq: {url: "amqp://h/", queue: q}}
  - {name: b, function: f, cron: {schedule: "* * * * *"}}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    [problem] = caught.value.problems
    assert problem.path == "defaults.dead_letter.rabbitmq.url"
    assert "(inherited by trigger 'b')" in problem.message
