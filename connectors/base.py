"""The connector seam: a small Protocol, a shared context and a lazy registry.

A connector turns one trigger's source into a stream of :class:`~bridge.events.Event`
and settles each event when the dispatcher hands it back (ack, commit, reject). The
engine drives it like this::

    await connector.start()            # connect; raise to be retried with backoff
    async for event in connector.events():
        await dispatcher.submit(event)  # may wait: that is the backpressure
    ...                                 # on shutdown the loop is cancelled (stop intake),
    await connector.stop()              # in-flight work drained, then stop(): commit, close

``start`` and ``stop`` must be safe to repeat: after a failure the engine calls
``stop`` and then ``start`` again. Modules are imported only when a trigger uses them,
so an all-cron daemon never imports a Kafka or AMQP client.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from bridge.config import ResolvedTrigger, SinkConfig
from bridge.cron_control import CronStateStore, MemoryStateStore, ScheduleControl
from bridge.deadletter import Sink
from bridge.leadership import Leadership
from bridge.metrics import Metrics
from bridge.replies import ReplySink

if TYPE_CHECKING:
    from bridge.events import Event
    from bridge.logs import Logger


class Connector(Protocol):
    """One trigger's source."""

    @property
    def ready(self) -> bool:
        """True while connected and consuming (feeds ``/readyz``)."""

    @property
    def max_unsettled(self) -> int | None:
        """Bound on events taken but not settled, or None for the engine's default."""

    @property
    def last_schedule_time(self) -> datetime | None:
        """The scheduled time of the last tick this replica fired (cron: a Trigger's
        ``status.lastScheduleTime``); None for sources without a schedule."""

    @property
    def control(self) -> ScheduleControl | None:
        """Run now, backfill, resume (cron); None for sources without a schedule."""

    async def start(self) -> None: ...

    def events(self) -> AsyncIterator[Event]: ...

    async def stop(self) -> None: ...


_T = TypeVar("_T")


@dataclass(slots=True)
class ConnectorContext:
    """What the engine gives every connector: no globals, one object."""

    metrics: Metrics
    log: Logger
    leadership: Leadership
    #: Where cron triggers keep a pause and a backfill's progress (bridge.cron_control).
    state: CronStateStore = field(default_factory=MemoryStateStore)
    _shared: dict[type[Any], Any] = field(default_factory=dict)

    def shared(self, kind: type[_T], factory: Callable[[], _T]) -> _T:
        """One instance of ``kind`` for every connector of this process (e.g. a clock)."""
        if kind not in self._shared:
            self._shared[kind] = factory()
        return self._shared[kind]  # type: ignore[no-any-return]

    def shared_values(self) -> list[Any]:
        return list(self._shared.values())


ConnectorFactory = Callable[[ResolvedTrigger, ConnectorContext], Connector]
SinkFactory = Callable[[SinkConfig, ResolvedTrigger], Sink]
ReplyFactory = Callable[[ResolvedTrigger], ReplySink]

#: Source kind -> "module:attribute" of its connector factory.
SOURCES: dict[str, str] = {
    "cron": "connectors.cron:CronConnector",
    "kafka": "connectors.kafka:KafkaConnector",
    "rabbitmq": "connectors.rabbitmq:RabbitConnector",
}

#: Dead-letter sink kind -> "module:attribute" of its factory.
SINKS: dict[str, str] = {
    "file": "bridge.deadletter:file_sink",
    "kafka": "connectors.kafka_sink:kafka_sink",
    "rabbitmq": "connectors.rabbitmq_sink:rabbit_sink",
}

#: ``reply`` kind -> "module:attribute" of its reply sink factory (bridge.replies).
REPLIES: dict[str, str] = {
    "kafka": "connectors.kafka_sink:kafka_replies",
    "rabbitmq": "connectors.rabbitmq_sink:rabbit_replies",
}

#: ``trigger-bridge redrive``: dead letters read back from a topic or queue
#: (bridge.redrive.sources.LetterSource), and ``--to-source`` publishers (Republisher).
REDRIVE_SOURCES: dict[str, str] = {
    "kafka": "connectors.kafka_redrive:KafkaLetters",
    "rabbitmq": "connectors.rabbitmq_redrive:RabbitLetters",
}
REPUBLISHERS: dict[str, str] = {
    "kafka": "connectors.kafka_redrive:KafkaRepublisher",
    "rabbitmq": "connectors.rabbitmq_redrive:RabbitRepublisher",
}


def _load(spec: str) -> Any:
    module, _, attribute = spec.partition(":")
    return getattr(importlib.import_module(module), attribute)


def connector_factory(kind: str) -> ConnectorFactory:
    if kind not in SOURCES:
        raise LookupError(f"no connector for source kind {kind!r}")
    return _load(SOURCES[kind])  # type: ignore[no-any-return]


def sink_factory(kind: str) -> SinkFactory:
    if kind not in SINKS:
        raise LookupError(f"no dead-letter sink of kind {kind!r}")
    return _load(SINKS[kind])  # type: ignore[no-any-return]


def reply_factory(kind: str) -> ReplyFactory:
    if kind not in REPLIES:
        raise LookupError(f"no reply sink of kind {kind!r}")
    return _load(REPLIES[kind])  # type: ignore[no-any-return]


def redrive_source(kind: str) -> Callable[..., Any]:
    """The class reading dead letters back from a sink of ``kind`` (keyword arguments)."""
    if kind not in REDRIVE_SOURCES:
        raise LookupError(f"no redrive reader for {kind!r}")
    return _load(REDRIVE_SOURCES[kind])  # type: ignore[no-any-return]


def republisher_factory(kind: str) -> Callable[[], Any]:
    """The ``--to-source`` publisher for a source of ``kind``."""
    if kind not in REPUBLISHERS:
        raise LookupError(f"no republisher for source kind {kind!r}")
    return _load(REPUBLISHERS[kind])  # type: ignore[no-any-return]
