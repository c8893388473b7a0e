"""The Event every connector produces and the settle path back to its connector.

An :class:`Event` carries the CloudEvents attributes the function will receive, the
data bytes untouched, what the dispatcher needs for ordering (``ordering_key`` and
``partition``), and what a dead-letter record needs to redrive it (``key``,
``headers``, ``origin``). The connector that made it passes a ``settler``: the
dispatcher calls :meth:`Event.settle` exactly once, after a 2xx from the function or a
confirmed dead-letter write, and never before. An event that is not settled (the
daemon stopped first) stays the source's to redeliver. A source may also pass a
``stale`` check: an event the source has already given up on (it will redeliver it)
is withdrawn instead of being started, so a reconnect costs no duplicate invocations
of what was still waiting.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bridge.cloudevents import CORE, CloudEvent


class Disposition(enum.Enum):
    """How an event left the bridge; connectors turn it into ack/commit/reject."""

    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"
    #: Ended without delivery on purpose (cron ``Replace`` cancelled the run).
    ABANDONED = "abandoned"


Settler = Callable[["Event", Disposition], Awaitable[None]]


async def _no_settle(event: Event, disposition: Disposition) -> None:
    """Default settler for sources with nothing to acknowledge."""


@dataclass(slots=True, eq=False)
class Event:
    """One unit of work from a source, in CloudEvents terms."""

    trigger: str
    id: str
    source: str
    type: str
    data: bytes
    content_type: str | None = None
    time: datetime | None = None
    subject: str | None = None
    #: CloudEvents extension attributes (lower-case alphanumeric names) as strings.
    extensions: Mapping[str, str] = field(default_factory=dict)
    #: Extra HTTP headers for the function (e.g. the message's own headers).
    http_headers: Mapping[str, str] = field(default_factory=dict)
    #: ``ordering: key`` lane; ``None`` falls back to ``partition``.
    ordering_key: str | None = None
    #: ``ordering: partition`` lane (Kafka partition, queue name, cron trigger).
    partition: str | None = None
    #: Where it came from, for ``bridge-source``: ``topic/partition/offset``, queue, schedule.
    origin: str = ""
    #: Original message key and headers, kept for dead-letter records.
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    #: When set, the event is dead-lettered at once with this reason (a bad message).
    defect: str | None = None
    #: More ``bridge-*`` facts a dead letter of this event carries, as (name, JSON text):
    #: a redriven event's earlier failures (``bridge-redrive-attempts``, ...).
    history: tuple[tuple[str, str], ...] = ()
    #: If the first attempt cannot start by then, the event is abandoned (cron deadline).
    not_after: datetime | None = None
    settler: Settler = _no_settle
    #: Set by a source that can take an event back before it starts: True once the
    #: source will redeliver it anyway (e.g. its AMQP channel closed). The dispatcher
    #: then never starts it; it is withdrawn, not settled.
    stale: Callable[[], bool] | None = None
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _settled: Disposition | None = field(default=None, repr=False)
    _abandoned: bool = field(default=False, repr=False)

    @property
    def settled(self) -> Disposition | None:
        return self._settled

    async def settle(self, disposition: Disposition) -> None:
        """Hand the event back to its connector; a second call is ignored."""
        if self._settled is not None:
            return
        await self.settler(self, disposition)
        self._settled = disposition

    def attach(self, task: asyncio.Task[None] | None) -> None:
        """Called by the dispatcher with the task that processes this event (None: done)."""
        self._task = task

    @property
    def abandoned(self) -> bool:
        return self._abandoned

    def cancel(self) -> bool:
        """Abandon this event: cancel its processing and settle it ``ABANDONED``.

        Used by cron ``Replace``. The dispatcher's worker takes the cancellation as this
        event's end and goes on with its next event.
        """
        task = self._task
        if task is None or task.done():
            return False
        self._abandoned = True
        return task.cancel()

    def adopt(
        self, cloudevent: CloudEvent, transport: Mapping[str, str], time: datetime | None
    ) -> None:
        """The message already is ``cloudevent``: it keeps its own attributes.

        Its ``id``, ``source``, ``type``, ``subject``, data and content type replace what
        the source mapped; ``time`` is the source's choice (Kafka: the CloudEvent's own,
        RabbitMQ: its own, else the message's ``timestamp``); the ``transport``
        extensions (``kafka*``, ``amqp*``) are kept unless the CloudEvent has its own of
        that name. One rule for every source (the Kafka and RabbitMQ mappings).
        """
        attributes = cloudevent.attributes
        self.id = attributes["id"]
        self.source = attributes["source"]
        self.type = attributes["type"]
        self.subject = attributes.get("subject")
        self.time = time
        self.data = cloudevent.data
        self.content_type = cloudevent.content_type
        self.extensions = {**transport, **cloudevent.extensions}

    def ce_attributes(self) -> dict[str, str]:
        """CloudEvents context attributes as strings (for headers and dead letters)."""
        attrs = {"specversion": "1.0", "id": self.id, "source": self.source, "type": self.type}
        if self.time is not None:
            attrs["time"] = format_time(self.time)
        if self.subject is not None:
            attrs["subject"] = self.subject
        if self.content_type:
            attrs["datacontenttype"] = self.content_type
        attrs.update((k, v) for k, v in self.extensions.items() if k not in CORE)
        return attrs


def format_time(moment: datetime) -> str:
    """RFC 3339 as CloudEvents writes it; UTC as ``Z``.

    UTC times (every Kafka record's) are remembered for a while: records arrive in
    runs that share a millisecond timestamp, and ``isoformat`` costs ~1 µs.
    """
    if moment.tzinfo is UTC:
        return _format_utc(moment)
    return _format(moment)


def _format(moment: datetime) -> str:
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


#: Keyed by equal instants, so only for one time zone (UTC): 12:00Z == 13:00+01:00.
_format_utc = functools.lru_cache(maxsize=256)(_format)
