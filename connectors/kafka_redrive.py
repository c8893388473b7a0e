"""``trigger-bridge redrive`` on Kafka: dead letters read back from a topic, and the
original records republished to their source topic (``--to-source``).

**Reading** (:class:`KafkaLetters`). A dead-letter topic is a log: nothing is removed
from it. The redrive's consumer group (``--group``, default ``trigger-bridge-redrive``)
is its cursor: a run reads every partition from the group's committed offset (or the
beginning) up to the end it finds at start (records written meanwhile -- including the
dead letters this run writes back to the same topic -- wait for the next run), and
commits, per partition, the first offset it is not done with (the same bookkeeping as
the daemon's source, :class:`~connectors.kafka_offsets.PartitionOffsets`). A record
the filters leave out is passed: the group moves past it, and it stays in the topic
(read it with another group). A record whose redrive did not finish (interrupted, a
crash, a failed write) holds the commit point, so the next run reads it again. The
partitions are assigned by hand (no group join, no rebalance): run one redrive per
group at a time.

A record is split back into the dead letter's parts: ``bridge-*`` headers, the
CloudEvent (``ce_*`` headers and ``content-type``), the original headers, key and
value (:func:`letter_of`). For an ``invalid_message`` record the sink kept the
original headers exactly, ``ce_*`` ones included: they all stay the original headers.

**Republishing** (:class:`KafkaRepublisher`). The record goes back to the topic named
in its ``bridge-source`` (which must be one of the trigger's topics), through the
trigger's connection, with its key and headers and its CloudEvent as ``ce_*`` headers
(binary mode), so the daemon invokes it with the same id (the ``kafkatopic``,
``kafkapartition`` and ``kafkaoffset`` extensions are left out: the new record gets its
own). An ``invalid_message`` record goes back exactly as it came.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from functools import partial

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from bridge.cloudevents import KAFKA_PREFIX
from bridge.config import KafkaConnection, ResolvedTrigger
from bridge.deadletter import Sink
from bridge.errors import describe
from bridge.logs import Logger, get_logger
from bridge.redrive.letters import INVALID_MESSAGE, Letter, NotALetter, NotRedrivable, from_fields
from bridge.redrive.sources import Item, SourceError
from connectors.kafka_connection import client_options, close_client, connect_failure
from connectors.kafka_offsets import PartitionOffsets
from connectors.kafka_sink import KafkaSink

DEFAULT_GROUP = "trigger-bridge-redrive"
#: Extensions the daemon derives from where a record is; a republished record gets new ones.
_PLACE_EXTENSIONS = frozenset({"kafkatopic", "kafkapartition", "kafkaoffset"})
_FETCH_BYTES = 64 * 1024 * 1024
_POLL_MS = 500


class KafkaLetters:
    """The dead letters in ``topic`` up to its end at ``open``, after ``group``'s offset."""

    def __init__(
        self, *, topic: str, connection: KafkaConnection, group: str = DEFAULT_GROUP,
        dry_run: bool = False, log: Logger | None = None,
    ) -> None:
        self.topic = topic
        self.name = f"kafka topic {topic}"
        self.recovered = 0  # the group commit / the unacked messages keep the place
        self._connection = connection
        self._group = group
        self._dry_run = dry_run
        self._log = log or get_logger(redrive=self.name)
        self._consumer: AIOKafkaConsumer | None = None
        self._offsets: dict[TopicPartition, PartitionOffsets] = {}
        self._starts: dict[TopicPartition, int] = {}
        self._ends: dict[TopicPartition, int] = {}
        self._commit_lock = asyncio.Lock()
        self._dirty = False

    @property
    def total(self) -> int | None:
        return sum(max(0, self._ends[tp] - start) for tp, start in self._starts.items())

    async def open(self) -> None:
        consumer = AIOKafkaConsumer(
            **client_options(self._connection), group_id=self._group,
            enable_auto_commit=False, auto_offset_reset="earliest",
            max_partition_fetch_bytes=_FETCH_BYTES, fetch_max_bytes=_FETCH_BYTES,
        )
        try:
            await consumer.start()
            await consumer.topics()  # the cluster's metadata, this topic's partitions
            numbers = consumer.partitions_for_topic(self.topic)
            if not numbers:
                servers = ",".join(self._connection.bootstrap_servers)
                raise SourceError(f"kafka topic {self.topic!r} does not exist at {servers}")
            partitions = [TopicPartition(self.topic, n) for n in sorted(numbers)]
            consumer.assign(partitions)
            firsts = await consumer.beginning_offsets(partitions)
            self._ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                committed = await consumer.committed(tp)
                start = max(firsts[tp], committed or 0)
                consumer.seek(tp, start)
                self._starts[tp] = start
                self._offsets[tp] = PartitionOffsets(tp)
        except SourceError:
            await close_client(consumer, self._log)
            raise
        except Exception as err:
            await close_client(consumer, self._log)
            raise SourceError(await connect_failure(err, self._connection)) from None
        self._consumer = consumer

    async def items(self) -> AsyncIterator[Item]:
        consumer = self._consumer
        assert consumer is not None, "open() first"
        left = {tp for tp, start in self._starts.items() if start < self._ends[tp]}
        while left:
            batch = await consumer.getmany(*left, timeout_ms=_POLL_MS)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= self._ends[tp]:
                        break
                    self._offsets[tp].take(record.offset)
                    yield self._item(tp, record)
            for tp in list(left):  # gaps (compaction, transaction markers) end by position
                if await consumer.position(tp) >= self._ends[tp]:
                    left.discard(tp)

    def _item(self, tp: TopicPartition, record: ConsumerRecord[bytes, bytes]) -> Item:
        position = f"{record.topic}/{record.partition}/{record.offset}"
        settle = partial(self._settle, tp, record.offset)
        try:
            return Item(position, letter_of(record, position), settle)
        except NotALetter as err:
            return Item(position, None, settle, f"not a dead-letter record: {err}")

    async def _settle(self, tp: TopicPartition, offset: int, done: bool) -> None:
        """Done or passed, the group may move past it (nothing is removed from a log)."""
        self._offsets[tp].settle(offset)
        await self._commit()

    async def _commit(self) -> None:
        """Commit what moved; settles that come in meanwhile are taken by the next round."""
        consumer = self._consumer
        if consumer is None:
            return
        self._dirty = True
        async with self._commit_lock:
            if not self._dirty:
                return
            self._dirty = False
            points = {tp: o.pending_commit() for tp, o in self._offsets.items()}
            offsets = {tp: point for tp, point in points.items() if point is not None}
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except Exception as err:  # the next settle or the close commits it
                self._dirty = True
                self._log.warning("redrive commit failed; retried with the next one",
                                  error=describe(err))
                return
            for tp, point in offsets.items():
                self._offsets[tp].committed = point

    def back_sink(self) -> Sink:
        return KafkaSink(self.topic, self._connection, self._log)

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            if not self._dry_run:
                self._consumer = consumer
                await self._commit()
                self._consumer = None
        finally:
            await close_client(consumer, self._log)


def letter_of(record: ConsumerRecord[bytes, bytes], position: str) -> Letter:
    """A dead letter from a record the Kafka sink wrote; raises NotALetter."""
    fields: dict[str, str] = {}
    cloudevent: dict[str, str] = {}
    headers: list[tuple[str, bytes]] = []
    plain: list[tuple[str, bytes]] = []
    for name, raw in record.headers:
        value = raw or b""
        lower = name.lower()
        if lower.startswith("bridge-"):
            fields[lower] = value.decode("utf-8", "replace")
            continue
        headers.append((name, value))
        if lower.startswith(KAFKA_PREFIX):
            cloudevent[name[len(KAFKA_PREFIX):]] = value.decode("utf-8", "replace")
        elif lower == "content-type":
            cloudevent["datacontenttype"] = value.decode("utf-8", "replace")
        else:
            plain.append((name, value))
    invalid = fields.get("bridge-error") == INVALID_MESSAGE
    return from_fields(fields, cloudevent, record.value or b"", record.key,
                       headers if invalid else plain, position=position)


# --- --to-source -----------------------------------------------------------------------


class KafkaRepublisher:
    """Produces letters back to their source topics, one producer per trigger."""

    def __init__(self, log: Logger | None = None) -> None:
        self._producers: dict[str, AIOKafkaProducer] = {}
        self._lock = asyncio.Lock()
        self._log = log or get_logger(redrive="kafka")

    def describe(self, letter: Letter, trigger: ResolvedTrigger) -> str:
        return f"kafka topic {_source_topic(letter, trigger)}"

    async def send(self, letter: Letter, trigger: ResolvedTrigger) -> Awaitable[None]:
        topic = _source_topic(letter, trigger)
        producer = await self._producer(trigger)
        future: Awaitable[None] = await producer.send(
            topic, value=letter.body, key=letter.key, headers=republish_headers(letter)
        )
        return future

    async def _producer(self, trigger: ResolvedTrigger) -> AIOKafkaProducer:
        async with self._lock:
            producer = self._producers.get(trigger.name)
            if producer is not None:
                return producer
            source = trigger.config.kafka
            assert source is not None
            producer = AIOKafkaProducer(**client_options(source), acks="all",
                                        max_request_size=_FETCH_BYTES)
            try:
                await producer.start()
            except Exception as err:
                await close_client(producer, self._log)
                raise SourceError(await connect_failure(err, source)) from None
            self._producers[trigger.name] = producer
            return producer

    async def close(self) -> None:
        producers, self._producers = list(self._producers.values()), {}
        await asyncio.gather(*(close_client(p, self._log) for p in producers))


def _source_topic(letter: Letter, trigger: ResolvedTrigger) -> str:
    source = trigger.config.kafka
    assert source is not None, "a kafka trigger"
    topic = letter.source.rsplit("/", 2)[0] if letter.source.count("/") >= 2 else ""
    topic = topic or letter.cloudevent.get("kafkatopic", "")
    if topic not in source.topics:
        came = f"topic {topic!r}" if topic else f"{letter.source!r}"
        raise NotRedrivable(f"it came from {came}, not one of trigger {trigger.name!r}'s "
                            f"topics ({', '.join(source.topics)})")
    return topic


def republish_headers(letter: Letter) -> list[tuple[str, bytes]]:
    """The original headers, and the CloudEvent as ``ce_*`` headers (binary mode)."""
    if letter.error == INVALID_MESSAGE:
        return list(letter.headers)
    attributes = {k: v for k, v in letter.cloudevent.items() if k not in _PLACE_EXTENSIONS}
    content_type = attributes.pop("datacontenttype", None)
    headers = [(name, value) for name, value in letter.headers
               if not name.lower().startswith(KAFKA_PREFIX) and name.lower() != "content-type"]
    headers += [(KAFKA_PREFIX + name, value.encode("utf-8")) for name, value in attributes.items()]
    if content_type:
        headers.append(("content-type", content_type.encode("utf-8")))
    return headers
