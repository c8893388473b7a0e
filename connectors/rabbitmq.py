"""RabbitMQ triggers on aio-pika: acknowledged delivery, dead-letter exchanges, reconnects.

**Consuming.** :class:`RabbitConnector` opens one robust connection
(``aio_pika.connect_robust``) per trigger, sets ``basic.qos(prefetch)`` on one channel,
declares the topology in ``declare`` (or checks that the queue exists) and consumes
with manual acknowledgements. Deliveries go into a small inbox that
:meth:`~RabbitConnector.events` turns into :class:`~bridge.events.Event`; the dispatcher
admits at most ``prefetch`` unsettled events (``max_unsettled``), which is also what the
broker allows in flight. Several replicas on one queue are ordinary competing consumers.

**Acknowledging.** Each event's settler acks the delivery after a 2xx (``DELIVERED``) or
a confirmed dead-letter publish (``DEAD_LETTERED``). With ``dead_letter: {rabbitmq:
{reject: true}}`` a dead letter is instead ``basic.reject(requeue=false)``, which hands
the message to the queue's own ``x-dead-letter-exchange``; the sink's ``write`` then
stores nothing (:class:`~connectors.rabbitmq_sink.RejectSink`), the reject *is* the
dead-letter write. Acks are coalesced per event-loop iteration
(:class:`~connectors.rabbitmq_acks.AckBatcher`): a run of settled deliveries goes as
one ``basic.ack(multiple=true)``, which halves the ack frames under load.
An ack or reject for a delivery whose channel died (reconnect) cannot be sent: it is
logged and counted, and the broker redelivers the message with the same CloudEvent id.

**Reconnecting.** aio-pika's robust connection reconnects after a broker restart or a
dropped connection and restores the channel, qos, declarations and the consumer
(:mod:`connectors.rabbitmq_connection` makes its retry pause grow with the outage).
While the connection or the consumer is down, :attr:`~RabbitConnector.ready` is False.
Deliveries of the dead channel still waiting in the inbox are dropped (the broker has
requeued them), and so are those the dispatcher holds but has not started (each event's
``stale`` check asks whether its channel closed): they are withdrawn, not invoked. Only
those already being invoked finish, and their ack is the one that is lost.

**Consumer cancelled by the broker.** RabbitMQ cancels a consumer with
``basic.cancel`` when its queue is deleted (and when a quorum queue's leader moves, or
an operator deletes and declares the queue again); the channel and connection stay
up. The connector then reads not ready and consumes again with backoff (1 s doubling
to 30 s, jittered): each try first declares the queue on a short-lived channel of its
own (passively, or as ``declare`` says: a trigger that declares its queue declares it
again), so a missing queue never closes the consuming channel and its unacked
deliveries; the reason of each failed try is logged (``rabbitmq queue not consumable;
trying again``) until the queue is back. Deliveries already taken are settled on the
channel they came from as usual.

**CloudEvents** (DESIGN section 4): :mod:`connectors.rabbitmq_mapping` turns each
delivery into its Event: ``id`` is the ``message_id`` or a hash of the message; a
message that already is a CloudEvent keeps its attributes; a malformed one becomes a
``defect`` event (dead-lettered at once, the rest keeps flowing).

**Dead-letter sink.** :mod:`connectors.rabbitmq_sink` publishes dead letters to an
exchange with publisher confirms (for Kafka and cron triggers too), or rejects them to
the queue's dead-letter exchange.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)

from bridge.closing import close_quietly
from bridge.config import DeadLetterConfig, ResolvedTrigger
from bridge.errors import describe
from bridge.events import Disposition, Event
from bridge.logs import redact_url
from bridge.retry import Backoff
from connectors.base import ConnectorContext
from connectors.rabbitmq_acks import AckBatcher, AckError
from connectors.rabbitmq_connection import (
    CLOSE_TIMEOUT,
    ConsumerChannel,
    RabbitSetupError,
    connect,
    explain,
    scrub,
    vhost_of,
)
from connectors.rabbitmq_mapping import EventMapper

#: Pause between tries to consume again after the broker cancelled the consumer.
_RESUME = Backoff(initial=1.0, maximum=30.0)


def _rejects(dead_letter: DeadLetterConfig | None) -> bool:
    return bool(dead_letter and dead_letter.rabbitmq and dead_letter.rabbitmq.reject)


class RabbitConnector:
    """One RabbitMQ trigger: a queue consumed with manual acks."""

    def __init__(self, trigger: ResolvedTrigger, context: ConnectorContext) -> None:
        source = trigger.config.rabbitmq
        assert source is not None
        self._name = trigger.name
        self._source = source
        self._url = source.url.get_secret_value()
        self._reject_dead = _rejects(trigger.dead_letter)
        self._map = EventMapper(trigger.name, source, vhost_of(self._url))
        self._log = context.log.bind(trigger=self._name, queue=source.queue)
        m = context.metrics
        self._m_lost = m.rabbitmq_connection_losses.labels(self._name)
        self._m_reconnects = m.rabbitmq_reconnects.labels(self._name)
        self._m_settle_failures = m.rabbitmq_settle_failures.labels(self._name)
        self._m_stale = m.rabbitmq_stale_deliveries.labels(self._name)
        self._m_cancels = m.rabbitmq_consumer_cancels.labels(self._name)
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractRobustChannel | None = None
        self._queue_ref: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._up = False
        self._acks: AckBatcher | None = None
        #: Deliveries in arrival order; None: the broker cancelled the consumer.
        self._inbox: asyncio.Queue[AbstractIncomingMessage | None] = asyncio.Queue()

    @property
    def ready(self) -> bool:
        """Connected, channel open and the consumer registered on it."""
        connection, channel = self._connection, self._channel
        if connection is None or channel is None or not connection.connected.is_set():
            return False
        try:  # the current aiormq channel (a new one after a reopen)
            underlay: Any = channel.channel  # type: ignore[attr-defined]
        except Exception:
            return False
        return not underlay.is_closed and self._consumer_tag in underlay.consumers

    @property
    def max_unsettled(self) -> int:
        return self._source.prefetch

    @property
    def last_schedule_time(self) -> None:
        """A queue source fires no scheduled ticks."""
        return None

    @property
    def control(self) -> None:
        """No schedule to control."""
        return None

    async def start(self) -> None:
        if self._connection is not None:
            return
        self._drop_inbox()
        connection = await connect(self._url, self._source.tls, self._name)
        assert isinstance(connection, AbstractRobustConnection)
        try:
            channel = await connection.channel(publisher_confirms=False)
            await channel.set_qos(prefetch_count=self._source.prefetch)
            queue = await self._queue(channel)
            self._consumer_tag = await queue.consume(self._on_message, no_ack=False)
            if isinstance(channel, ConsumerChannel):
                channel.on_cancelled = self._on_cancelled
        except (Exception, asyncio.CancelledError) as err:
            await close_quietly(connection.close, timeout=CLOSE_TIMEOUT)
            if isinstance(err, asyncio.CancelledError):
                raise
            raise RabbitSetupError(explain(err, self._url, self._source.queue)) from None
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        self._connection, self._channel, self._up = connection, channel, True
        self._queue_ref = queue
        if self._reject_dead and "x-dead-letter-exchange" not in self._declared_arguments():
            self._log.warning("dead_letter reject mode: make sure the queue has a dead-letter "
                              "exchange (queue argument or policy), or rejected messages are lost")
        self._log.info("consuming", url=redact_url(self._url), prefetch=self._source.prefetch)

    def _declared_arguments(self) -> dict[str, Any]:
        declare = self._source.declare
        return {} if declare is None else dict(declare.arguments)

    async def _queue(self, channel: AbstractChannel) -> AbstractQueue:
        declare, name = self._source.declare, self._source.queue
        if declare is None:
            return await channel.declare_queue(name, passive=True)
        queue = await channel.declare_queue(
            name, durable=declare.durable, arguments=declare.arguments or None
        )
        if declare.exchange is not None:
            exchange = await channel.declare_exchange(
                declare.exchange, type=declare.exchange_type, durable=declare.durable
            )
            await queue.bind(exchange, routing_key=declare.routing_key or name)
        return queue

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._inbox.put_nowait(message)

    def _on_lost(self, _connection: object, error: BaseException | None = None) -> None:
        # Also called for each failed reconnect attempt: report the loss once.
        if self._connection is None or not self._up:
            return  # our own close, or already reported
        self._up = False
        self._m_lost.inc()
        self._log.warning("rabbitmq connection lost; reconnecting",
                          error=scrub(str(error) or type(error).__name__, self._url)[:300])

    def _on_cancelled(self, consumer_tag: str) -> None:
        if consumer_tag != self._consumer_tag or self._connection is None:
            return
        self._m_cancels.inc()
        self._log.warning("rabbitmq consumer cancelled by the broker",
                          cause="queue deleted, or its leader moved; consuming again")
        self._inbox.put_nowait(None)  # after the deliveries already taken

    async def _consume_again(self) -> None:
        """After a ``basic.cancel``: try to consume again, with backoff, until it works
        (or a reconnect restored the consumer meanwhile)."""
        tries = 0
        while not self.ready:
            try:
                await self._resume()
                break
            except Exception as err:
                tries += 1
                delay = _RESUME.delay(tries)
                self._log.warning(
                    "rabbitmq queue not consumable; trying again", attempt=tries,
                    reason=explain(err, self._url, self._source.queue), retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay)
        self._log.info("rabbitmq consuming again", failed_tries=tries)

    async def _resume(self) -> None:
        connection, channel, queue = self._connection, self._channel, self._queue_ref
        if connection is None or channel is None or queue is None:
            raise RabbitSetupError("the connector is stopped")
        if not connection.connected.is_set():
            raise RabbitSetupError("connection lost; reconnecting")
        # A missing queue closes the channel that declares it: use one of our own, so
        # the consuming channel (and the acks of its deliveries in flight) stays open.
        probe = await aio_pika.Channel(connection, publisher_confirms=False)
        try:
            await self._queue(probe)
        finally:  # the broker may have closed it already
            await close_quietly(probe.close, timeout=CLOSE_TIMEOUT)
        if not self.ready:  # a reconnect may have restored the consumer meanwhile
            await queue.consume(self._on_message, no_ack=False, consumer_tag=self._consumer_tag)

    def _on_reconnected(self, _connection: object) -> None:
        self._up = True
        self._m_reconnects.inc()
        self._log.info("rabbitmq connection restored; consuming again")

    async def events(self) -> AsyncIterator[Event]:
        while True:
            message = await self._inbox.get()
            if message is None:
                await self._consume_again()
                continue
            acks = self._acks_for(message)
            if acks is None or message.delivery_tag is None:
                self._m_stale.inc()  # its channel died: the broker has requeued it
                continue
            event = self._map(message, partial(self._settle, acks, message.delivery_tag))
            event.stale = acks.closed
            yield event

    def _acks_for(self, message: AbstractIncomingMessage) -> AckBatcher | None:
        """The batcher of the delivery's channel, or None when that channel is closed."""
        try:
            channel = message.channel  # raises once the channel is closed
        except Exception:
            return None
        if channel.is_closed:
            return None
        if self._acks is None or self._acks.channel is not channel:
            self._acks = AckBatcher(channel)  # a new channel (reconnect): tags restart at 1
        return self._acks

    async def _settle(
        self, acks: AckBatcher, tag: int, event: Event, disposition: Disposition
    ) -> None:
        try:
            if disposition is Disposition.DEAD_LETTERED and self._reject_dead:
                await acks.reject(tag, requeue=False)
            elif disposition is Disposition.ABANDONED:
                await acks.reject(tag, requeue=True)
            else:
                await acks.ack(tag)
        except Exception as err:
            self._settle_failed(err, disposition, event_id=event.id)

    def _settle_failed(self, err: BaseException, disposition: Disposition | None = None,
                       **context: str) -> None:
        count = err.count if isinstance(err, AckError) else 1
        self._m_settle_failures.inc(count)
        self._log.warning(
            "acknowledgement not sent; the broker will redeliver", count=count,
            disposition=None if disposition is None else disposition.value,
            error=describe(err), **context,
        )

    async def stop(self) -> None:
        connection, self._connection = self._connection, None
        self._channel, self._consumer_tag, self._queue_ref = None, None, None
        self._drop_inbox()
        acks, self._acks = self._acks, None
        if acks is not None:
            try:
                await acks.flush()
            except Exception as err:
                self._settle_failed(err)
        if connection is not None:
            await close_quietly(connection.close, timeout=CLOSE_TIMEOUT)
            self._log.info("rabbitmq connection closed")

    def _drop_inbox(self) -> None:
        """Deliveries not yet taken: unacked, so the broker requeues them on close."""
        while not self._inbox.empty():
            self._inbox.get_nowait()
