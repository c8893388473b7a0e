"""Kafka triggers on aiokafka: the consumer group source.

**Delivery (at-least-once).** Auto-commit is off. Every record taken is tracked per
partition (:mod:`connectors.kafka_offsets`); the dispatcher settles it after a 2xx or
a confirmed dead-letter write, and the connector commits, per partition, the first
offset not yet settled -- every ``commit_interval``, when partitions are revoked and on
``stop()``. A crash therefore redelivers what was not settled and never skips a record.
Only ``DELIVERED`` and ``DEAD_LETTERED`` count as settled: a record handed back
``ABANDONED`` (the dispatcher could not even dead-letter it) holds its partition's
commit point, so the next reader of the partition gets it again.

**Rebalances.** aiokafka's group protocol is eager: every rebalance revokes every
partition. On revoke the connector stops taking records from those partitions, waits
(at most ``min(revoke_timeout, session_timeout / 2)``) for their in-flight records to
settle, commits what is settled, and keeps the bookkeeping. Partitions that come back
resume exactly where this member stopped taking (their in-flight records still settle
here, so nothing is delivered twice); partitions that went elsewhere are closed (their
late settles no longer commit; the new owner redelivers from the committed offset).

**Backpressure.** At most ``max_unsettled`` records are taken and unsettled (the
dispatcher gets the same bound). At the limit the connector stops taking records, and
so fetching stops: aiokafka fetches at most one batch ahead per partition and keeps it
(``consumer.pause()`` would discard it, to be fetched again). Heartbeats run in
aiokafka's background task; while full, the partitions are paused for one empty poll
every ``keepalive_interval`` so ``max_poll_interval`` never expires: a slow function
never costs the group membership. Taking resumes once a tenth of the window (at most
``max_poll_records``) has settled.

**Compressed records.** Every codec Kafka defines is read: gzip by the standard
library, snappy, lz4 and zstd by cramjam (a dependency, through
``aiokafka[snappy,lz4,zstd]``). A batch that still cannot be read (the library missing
from a hand-made install, a codec id Kafka does not define) is no retryable failure:
fetching it again gives the same batch. Its partition is paused for the life of this
consumer with one error naming topic, partition and codec (``kafka records cannot be
read``), ``bridge_kafka_unreadable_partitions`` counts it and readiness is false; its
commit point stays where it is, so a fixed daemon reads the batch, and the other
partitions go on meanwhile. The batch's records cannot be dead-lettered: they were
never decoded.

**Readiness** is true while the consumer is started, has received its group assignment
(possibly empty: more members than partitions), the last broker probe (the lag query,
every few seconds) succeeded and no assigned partition is unreadable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.structs import ConsumerRecord

from bridge.config import KafkaSource, ResolvedTrigger
from bridge.errors import describe
from bridge.events import Disposition, Event
from connectors.base import ConnectorContext
from connectors.kafka_connection import (
    REQUEST_TIMEOUT,
    KafkaSourceError,
    client_options,
    close_client,
    connect_failure,
)
from connectors.kafka_mapping import record_event
from connectors.kafka_offsets import PartitionOffsets

#: How long one ``getmany`` waits for records when there are none.
_POLL = 0.2
#: Lag query (also the broker liveness probe behind ``ready``).
_PROBE_INTERVAL = 5.0
#: aiokafka's max_poll_interval: a member that does not poll for this long leaves.
_MAX_POLL_INTERVAL = 300.0


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, connector: KafkaConnector) -> None:
        self._connector = connector

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._connector._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._connector._on_assigned(assigned)


class KafkaConnector:
    """One Kafka trigger: a member of its consumer group."""

    def __init__(self, trigger: ResolvedTrigger, context: ConnectorContext) -> None:
        source = trigger.config.kafka
        assert source is not None
        self._name = trigger.name
        self._source: KafkaSource = source
        self._log = context.log.bind(trigger=self._name)
        self._consumer: AIOKafkaConsumer | None = None
        self._states: dict[TopicPartition, PartitionOffsets] = {}
        self._retained: dict[TopicPartition, PartitionOffsets] = {}
        self._epoch = 0
        self._unsettled = 0
        self._joined = False
        self._broker_ok = False
        self._paused = False
        self._settled = asyncio.Event()
        #: Settles wake the full intake only once ``unsettled`` is down to this (-1: not
        #: waiting): one loop turn per record settled would cost more than the record.
        self._wake_at = -1
        #: While a revoke waits for its partitions, every settle wakes it.
        self._revoking = False
        limit = source.max_unsettled
        self._resume_step = max(1, min(limit // 10, source.max_poll_records))
        self._commit_lock = asyncio.Lock()
        self._last_commit = 0.0
        self._last_probe = 0.0
        self._last_poll = 0.0
        self._lag_series: set[TopicPartition] = set()
        #: Partitions paused because a batch of theirs cannot be decoded -> why.
        self._unreadable: dict[TopicPartition, str] = {}
        #: Seconds between broker probes / lag updates (tests shorten it).
        self.probe_interval = _PROBE_INTERVAL
        #: While full, the longest time without a poll (well inside max_poll_interval).
        self.keepalive_interval = _MAX_POLL_INTERVAL / 5
        m = context.metrics
        self._m_lag = m.kafka_lag
        self._m_commits = m.kafka_commits.labels(self._name)
        self._m_commit_failures = m.kafka_commit_failures.labels(self._name)
        self._m_rebalances = m.kafka_rebalances.labels(self._name)
        self._m_assigned = m.kafka_assigned_partitions.labels(self._name)
        self._m_paused = m.source_paused.labels(self._name)
        self._m_unreadable = m.kafka_unreadable_partitions.labels(self._name)

    @property
    def ready(self) -> bool:
        return (self._consumer is not None and self._joined and self._broker_ok
                and not self._unreadable)

    @property
    def max_unsettled(self) -> int:
        return self._source.max_unsettled

    @property
    def last_schedule_time(self) -> None:
        """A queue source fires no scheduled ticks."""
        return None

    @property
    def control(self) -> None:
        """No schedule to control."""
        return None

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        if self._consumer is not None:
            return
        source = self._source
        consumer = AIOKafkaConsumer(
            **client_options(source),
            group_id=source.group_id,
            enable_auto_commit=False,
            auto_offset_reset=source.initial_offset,
            session_timeout_ms=int(source.session_timeout * 1000),
            heartbeat_interval_ms=int(source.heartbeat_interval * 1000),
            max_poll_records=source.max_poll_records,
            max_poll_interval_ms=int(_MAX_POLL_INTERVAL * 1000),
        )
        try:
            await consumer.start()
            missing = sorted(set(source.topics) - await consumer.topics())
            if missing:
                servers = ",".join(source.bootstrap_servers)
                raise KafkaSourceError(
                    f"topic(s) {', '.join(missing)} not found on {servers}"
                    " (create them; the bridge does not)"
                )
        except BaseException as err:
            await close_client(consumer, self._log)
            if isinstance(err, Exception):
                raise KafkaSourceError(await connect_failure(err, source)) from None
            raise
        consumer.subscribe(topics=list(source.topics), listener=_Rebalance(self))
        self._consumer = consumer
        self._broker_ok = True
        self._last_commit = self._last_probe = self._last_poll = time.monotonic()
        self._log.info(
            "kafka consumer started", brokers=",".join(source.bootstrap_servers),
            topics=list(source.topics), group_id=source.group_id, ordering=source.ordering,
        )

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            await self._commit(consumer, list(self._states.values()), "stop")
        finally:
            for state in [*self._states.values(), *self._retained.values()]:
                state.close()
            self._states.clear()
            self._retained.clear()
            self._joined = False
            self._unreadable.clear()
            self._m_unreadable.set(0)
            self._set_paused(False)
            self._m_assigned.set(0)
            self._forget_lag(set(self._lag_series))
            await close_client(consumer, self._log)
            self._log.info("kafka consumer stopped", unsettled=self._unsettled)

    # --- intake -------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        consumer = self._consumer
        if consumer is None:
            raise KafkaSourceError("events() before start()")
        limit = self._source.max_unsettled
        resume_at = limit - self._resume_step
        while True:
            await self._housekeeping(consumer)
            if self._unsettled >= limit or (self._paused and self._unsettled > resume_at):
                await self._wait_for_room(consumer)
                continue
            self._set_paused(False)
            room = min(limit - self._unsettled, self._source.max_poll_records)
            try:
                batch = await consumer.getmany(timeout_ms=int(_POLL * 1000), max_records=room)
            except kafka_errors.UnsupportedCodecError as err:
                self._cannot_decode(consumer, err)
                continue
            self._last_poll = time.monotonic()
            epoch = self._epoch  # aiokafka returns records of the current assignment only
            for tp, records in batch.items():
                state = self._states.get(tp)
                for record in records:
                    if epoch != self._epoch or state is None or not state.active:
                        break  # reassigned since this fetch: the new assignment set the position
                    if state.accepts(record.offset):
                        yield self._take(state, record)

    def _take(self, state: PartitionOffsets, record: ConsumerRecord[bytes, bytes]) -> Event:
        state.take(record.offset)
        self._unsettled += 1
        settler = functools.partial(self._settle, state, record.offset)
        return record_event(self._name, record, settler)

    async def _settle(
        self, state: PartitionOffsets, offset: int, event: Event, disposition: Disposition
    ) -> None:
        self._unsettled -= 1
        if disposition is Disposition.ABANDONED:  # not done: never committed past it
            state.hold(offset)
            self._log.error(
                "kafka record handed back unsettled; its partition commits no further "
                "until a restart or rebalance reads it again", event_id=event.id,
            )
        else:
            state.settle(offset)
        if self._unsettled <= self._wake_at or self._revoking:
            self._settled.set()

    async def _wait_for_room(self, consumer: AIOKafkaConsumer) -> None:
        """Full: take nothing until records settle, yet stay a live member of the group.

        Not polling is the pause: aiokafka fetches at most one batch ahead per partition,
        so nothing more is fetched meanwhile, and what it holds is kept (``pause()`` would
        throw it away, to be fetched again). Every ``keepalive_interval`` the partitions are
        paused for one empty poll, which keeps ``max_poll_interval`` from expiring.
        """
        self._set_paused(True)
        self._wake_at = self._source.max_unsettled - self._resume_step  # resume_at
        try:
            await self._wait_settled(_POLL)
        finally:
            self._wake_at = -1
        if time.monotonic() - self._last_poll < self.keepalive_interval:
            return
        consumer.pause(*consumer.assignment())
        try:
            stray = await consumer.getmany(timeout_ms=0)
        finally:
            consumer.resume(*(consumer.paused() - self._unreadable.keys()))
        self._last_poll = time.monotonic()
        for tp, records in stray.items():  # none expected: rewind whatever came anyway
            if records and tp in consumer.assignment():
                consumer.seek(tp, records[0].offset)

    def _cannot_decode(
        self, consumer: AIOKafkaConsumer, err: kafka_errors.UnsupportedCodecError
    ) -> None:
        """A fetched batch cannot be decoded: pause its partition (fetching it again
        gives the same batch) and say so once; the other partitions go on.

        aiokafka raises while draining one partition's records after it may already
        have drained others in the same ``getmany``: their records are dropped with the
        error and their positions moved past them. Each other partition is rewound to
        where this connector stopped taking (or to the first record dropped), so no
        record is skipped.
        """
        bad, dropped = _fetch_state(err.__traceback__)
        partitions = [bad] if bad is not None else sorted(consumer.assignment())
        for tp in consumer.assignment() - set(partitions):
            lost = dropped.get(tp)
            state = self._states.get(tp)
            position = lost[0].offset if lost else state.next_offset if state else None
            if position is not None:
                consumer.seek(tp, position)
            if lost:
                self._log.info("kafka records dropped with the decoding error fetched again",
                               topic=tp.topic, partition=tp.partition, offset=position)
        for tp in partitions:
            if tp in self._unreadable:
                continue
            self._unreadable[tp] = str(err)
            self._log.error(
                "kafka records cannot be read", topic=tp.topic, partition=tp.partition,
                error=describe(err),
                action="partition paused until the bridge restarts; install the codec's "
                       "library (cramjam ships with trigger-bridge) or fix the producer",
            )
        consumer.pause(*partitions)
        self._m_unreadable.set(len(self._unreadable))

    def _set_paused(self, paused: bool) -> None:
        if paused != self._paused:
            self._paused = paused
            self._m_paused.set(1 if paused else 0)
            self._log.debug(
                "kafka source paused" if paused else "kafka source resumed",
                unsettled=self._unsettled,
            )

    async def _wait_settled(self, timeout: float) -> None:
        """Wait for a wake-up from ``_settle`` (see ``_wake_at``) or ``timeout``."""
        self._settled.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._settled.wait()

    # --- commits, lag, liveness ----------------------------------------------------------

    async def _housekeeping(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        if now - self._last_commit >= self._source.commit_interval:
            self._last_commit = now
            await self._commit(consumer, list(self._states.values()), "interval")
        if now - self._last_probe >= self.probe_interval:
            self._last_probe = now
            await self._probe(consumer)

    async def _commit(
        self, consumer: AIOKafkaConsumer, states: Iterable[PartitionOffsets], reason: str
    ) -> bool:
        """Commit each partition's settled prefix; False (and logged) if the commit failed."""
        async with self._commit_lock:
            offsets = {}
            for state in states:
                point = state.pending_commit() if state.open else None
                if point is not None:
                    offsets[state.tp] = point
            if not offsets:
                return True
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    await consumer.commit(offsets)
            except Exception as err:  # kept uncommitted: retried next time
                self._m_commit_failures.inc()
                self._log.warning(
                    "kafka offset commit failed", reason=reason,
                    error=describe(err),
                )
                return False
            for state in states:
                if state.tp in offsets:
                    state.committed = offsets[state.tp]
            self._m_commits.inc()
            return True

    async def _probe(self, consumer: AIOKafkaConsumer) -> None:
        """Check the brokers answer (feeds ``ready``) and update the lag gauges.

        Lag = end of the partition - the first offset not yet settled: records fetched
        but still in flight count as lag until they are settled (what a restart would
        redeliver, plus what is not fetched yet).
        """
        states = dict(self._states)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT / 2):
                ends = await consumer.end_offsets(list(states)) if states else {}
                if not states:
                    await consumer.topics()
        except Exception as err:  # any failure: the brokers are not usable
            if self._broker_ok:
                self._log.warning(
                    "kafka brokers not responding", error=describe(err)
                )
            self._broker_ok = False
            return
        if not self._broker_ok:
            self._log.info("kafka brokers responding again")
        self._broker_ok = True
        for tp, state in states.items():
            point = state.commit_point()
            if point is None:
                point = await _known_position(consumer, tp)
            # The larger of ListOffsets and the last fetch's high watermark (a broker's
            # ListOffsets(latest) can lag behind: docs/kafka.md, *Tests and Tansu*).
            end = max(ends.get(tp) or 0, consumer.highwater(tp) or 0)
            if point is not None:
                self._m_lag.labels(self._name, tp.topic, str(tp.partition)).set(
                    max(0, end - point)
                )
                self._lag_series.add(tp)

    def _forget_lag(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions & self._lag_series:
            with contextlib.suppress(KeyError):
                self._m_lag.remove(self._name, tp.topic, str(tp.partition))
            self._lag_series.discard(tp)

    # --- rebalance -----------------------------------------------------------------------

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        consumer = self._consumer
        states = [self._states[tp] for tp in revoked if tp in self._states]
        if consumer is None or not states:
            return
        for state in states:
            state.active = False
        bound = min(self._source.revoke_timeout, self._source.session_timeout / 2)
        deadline = time.monotonic() + bound
        self._revoking = True
        try:
            while any(s.unsettled for s in states) and (left := deadline - time.monotonic()) > 0:
                await self._wait_settled(left)
        finally:
            self._revoking = False
        await self._commit(consumer, states, "revoke")
        waiting = sum(s.unsettled for s in states)
        self._log.info(
            "kafka partitions revoked", partitions=_names(revoked),
            still_in_flight=waiting,
        )
        for state in states:
            self._retained[state.tp] = self._states.pop(state.tp)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        self._epoch += 1
        self._m_rebalances.inc()
        resumed = []
        for tp in assigned:
            retained = self._retained.pop(tp, None)
            if retained is not None and retained.next_offset is not None:
                retained.active = True
                self._states[tp] = retained
                consumer.seek(tp, retained.next_offset)
                resumed.append(tp)
            else:
                self._states[tp] = PartitionOffsets(tp)
        for tp in set(self._unreadable) - assigned:  # someone else's problem now
            del self._unreadable[tp]
        unreadable = assigned & self._unreadable.keys()
        if unreadable:  # still paused: the same batch would fail again
            consumer.pause(*unreadable)
        self._m_unreadable.set(len(self._unreadable))
        gone = set(self._retained)
        for state in self._retained.values():
            state.close()
        self._retained.clear()
        self._forget_lag(gone)
        self._joined = True
        self._m_assigned.set(len(assigned))
        self._log.info(
            "kafka partitions assigned", partitions=_names(assigned),
            resumed=len(resumed), count=len(assigned),
        )


async def _known_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The fetch position if it is known by now (nothing taken yet from ``tp``)."""
    try:
        async with asyncio.timeout(0.5):
            position: int = await consumer.position(tp)
            return position
    except Exception:  # unknown yet or revoked meanwhile: no lag figure now
        return None


def _fetch_state(
    trace: TracebackType | None,
) -> tuple[TopicPartition | None, dict[TopicPartition, list[ConsumerRecord[Any, Any]]]]:
    """From a decoding error raised inside ``getmany``: the partition whose batch raised
    (aiokafka's fetcher handles one partition at a time in a local ``tp``; its errors do
    not name it) and the records it had already drained for other partitions in that
    call (local ``drained``), which the error drops. Empty if aiokafka changed shape."""
    bad: TopicPartition | None = None
    dropped: dict[TopicPartition, list[ConsumerRecord[Any, Any]]] = {}
    while trace is not None:
        names = trace.tb_frame.f_locals
        if isinstance(names.get("tp"), TopicPartition):
            bad = names["tp"]
        if isinstance(names.get("drained"), dict):
            dropped = names["drained"]
        trace = trace.tb_next
    return bad, dropped


def _names(partitions: Iterable[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}/{tp.partition}" for tp in partitions)
