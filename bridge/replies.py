"""Replies: a function's answer published as a CloudEvent before its event is settled.

A trigger with ``reply: {kafka: {topic}}`` or ``reply: {rabbitmq: {exchange,
routing_key}}`` (:mod:`bridge.config.replies`) keeps every 2xx answer's body (up to
``reply.max_size``) and, when the body is not empty, publishes it in CloudEvents binary
mode -- Kafka ``ce_*`` headers, AMQP ``cloudEvents:*`` application properties -- through
a :class:`ReplySink` (``connectors/kafka_sink.py``, ``connectors/rabbitmq_sink.py``: the
dead-letter sinks' connection code). A 2xx without a body publishes nothing.

**Attributes** (:func:`reply_of`): the function's own ``ce-*`` answer headers win, each
one (values percent-decoded as the HTTP binding says; names that are no CloudEvents
attribute name are ignored); an answer of content type
``application/cloudevents+json`` is a structured CloudEvent and keeps all of its own.
What the function leaves out is derived:

- ``id``: the source event's id + ``/reply`` (a redelivered event's reply has the same
  id, so consumers de-duplicate the at-least-once replies),
- ``source``: ``trigger-bridge://<trigger>``,
- ``type``: ``reply.type`` if configured, else the source event's type + ``.reply``,
- ``subject``: the source event's, ``time``: when the answer came,
- ``datacontenttype``: the answer's ``Content-Type``.

The Kafka record's key is the source event's key (a Kafka record's key, a RabbitMQ
message's routing key; none for cron), so replies of one key stay in order.

**When and what if it fails** (:class:`Replier`): after the 2xx and before the event is
settled, so a crash in between never loses a reply: the source redelivers the event, the
function runs again, its reply is published (again): at least once. A reply that cannot
be published as things are -- the answer is larger than ``max_size``, its ``ce-*``
attributes are not a valid CloudEvent, the broker refuses it for good (unknown topic or
exchange, no queue bound, too large, access refused) -- dead-letters the *event* with
reason ``reply_failed`` (the detail says why), so a redrive invokes the function again.
A broker that is down or slow is retried with backoff (0.5 s doubling to 30 s) while the
event stays unsettled and the source pauses at its limit, as for a dead-letter sink.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import unquote

from bridge import cloudevents
from bridge.config import ReplyConfig
from bridge.deadletter import SinkRefused
from bridge.errors import describe
from bridge.events import Event, format_time
from bridge.logs import Logger
from bridge.metrics import TriggerStats
from bridge.outcome import Answer, Outcome, OutcomeKind
from bridge.retry import Backoff

#: ``bridge_dead_letters_total{reason}`` of an event whose reply could not be published.
REPLY_FAILED = "reply_failed"
#: Appended to the source event's id and type for a reply's own.
ID_SUFFIX = "/reply"
TYPE_SUFFIX = ".reply"
#: Between failed publishes of one reply (the broker is down): quick, then every 30 s.
_PUBLISH_RETRY = Backoff(initial=0.5, maximum=30.0)


@dataclass(frozen=True, slots=True)
class Reply:
    """The CloudEvent published for a function's answer."""

    #: Context attributes as text (``datacontenttype`` included when known).
    attributes: Mapping[str, str]
    data: bytes
    #: The Kafka record key (the source event's key).
    key: bytes | None = None

    @property
    def id(self) -> str:
        return self.attributes["id"]

    @property
    def content_type(self) -> str | None:
        return self.attributes.get("datacontenttype")


class ReplySink(Protocol):
    """Where replies go. ``publish`` returns once the broker has the reply; it raises
    :class:`~bridge.deadletter.SinkRefused` when no retry can publish it as things are,
    any other exception when a retry may. ``start`` raises ``SinkRefused`` for a target
    that does not exist (a config problem at start-up)."""

    async def start(self) -> None: ...

    async def publish(self, reply: Reply) -> None: ...

    async def close(self) -> None: ...


def reply_of(
    event: Event, answer: Answer, trigger: str, type_: str | None = None,
    now: datetime | None = None,
) -> Reply:
    """The reply for ``event``'s ``answer`` (see the module docs); raises
    :class:`~bridge.cloudevents.CloudEventError` when the function's own attributes are
    not a valid CloudEvent."""
    content_type = answer.headers.get("content-type")
    if cloudevents.is_structured(content_type):
        own = cloudevents.parse_structured(answer.body)
        data, content_type, given = own.data, own.content_type, dict(own.attributes)
    else:
        data, given = answer.body, _binary_attributes(answer.headers)
    attributes = {
        "specversion": cloudevents.SPEC_VERSION,
        "id": event.id + ID_SUFFIX,
        "source": f"trigger-bridge://{trigger}",
        "type": type_ or event.type + TYPE_SUFFIX,
        "time": format_time(now or datetime.now(UTC)),
    }
    if event.subject is not None:
        attributes["subject"] = event.subject
    if content_type:
        attributes["datacontenttype"] = content_type
    attributes.update(given)
    cloudevents.validate(attributes)
    return Reply(attributes, data, event.key)


def _binary_attributes(headers: Mapping[str, str]) -> dict[str, str]:
    """The ``ce-*`` answer headers as attributes (invalid names ignored)."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        attribute = name[3:] if name.startswith("ce-") else ""
        if cloudevents.is_attribute_name(attribute):
            found[attribute] = unquote(value)
    return found


class Replier:
    """Publishes one trigger's replies for the dispatcher (see the module docs)."""

    def __init__(
        self, sink: ReplySink, trigger: str, config: ReplyConfig, *, stats: TriggerStats,
        log: Callable[[], Logger], pause: Callable[[float], Awaitable[None]],
    ) -> None:
        """``pause(seconds)`` sleeps between failed publishes; it raises to end the
        retries when the dispatcher drains (the event then stays unsettled)."""
        self._sink = sink
        self._trigger = trigger
        self._type = config.type
        self.max_size = config.max_size
        self._stats = stats
        self._log = log
        self._pause = pause
        stats.replying = True

    async def send(self, event: Event, outcome: Outcome) -> Outcome | None:
        """Publish the reply of a delivered ``outcome``: None once published (or when
        there is nothing to publish), else the failed outcome to dead-letter the event
        with (``reply_failed``)."""
        answer = outcome.answer
        if answer is None or not (answer.body or answer.truncated):
            return None
        if answer.truncated:
            return self._failed(outcome, f"the function's answer is larger than "
                                         f"reply.max_size ({self.max_size} bytes)")
        try:
            reply = reply_of(event, answer, self._trigger, self._type)
        except cloudevents.CloudEventError as err:
            return self._failed(outcome, f"the function's answer is not a valid CloudEvent: "
                                         f"{err}")
        failures = 0
        while True:
            try:
                await self._sink.publish(reply)
            except SinkRefused as err:
                return self._failed(outcome, str(err))
            except Exception as err:
                failures += 1
                self._stats.reply_failures += 1
                delay = _PUBLISH_RETRY.delay(failures)
                self._log().error(
                    "reply not published; event stays unsettled", event_id=event.id,
                    reply_id=reply.id, error=describe(err, 300), retry_in=round(delay, 3),
                )
                await self._pause(delay)
                continue
            self._stats.replies += 1
            return None

    @staticmethod
    def _failed(outcome: Outcome, detail: str) -> Outcome:
        return Outcome(OutcomeKind.PERMANENT, REPLY_FAILED, outcome.status, detail=detail[:400],
                       duration=outcome.duration)
