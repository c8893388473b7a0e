"""The settled-prefix rule behind Kafka commits."""

from __future__ import annotations

import random

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from bridge.config import parse_config
from bridge.events import Disposition
from bridge.leadership import AlwaysLeader
from bridge.logs import get_logger
from bridge.metrics import Metrics
from connectors.base import ConnectorContext
from connectors.kafka import KafkaConnector
from connectors.kafka_offsets import PartitionOffsets

TP = TopicPartition("t", 0)


def test_nothing_taken_means_nothing_to_commit() -> None:
    state = PartitionOffsets(TP)
    assert state.commit_point() is None
    assert state.pending_commit() is None


def test_commit_point_stops_at_the_first_unsettled_record() -> None:
    state = PartitionOffsets(TP)
    for offset in range(10, 15):
        state.take(offset)
    state.settle(10)
    state.settle(12)
    state.settle(13)
    assert state.commit_point() == 11
    assert state.unsettled == 2
    state.settle(11)
    assert state.commit_point() == 14
    state.settle(14)
    assert state.commit_point() == 15
    assert state.unsettled == 0


def test_gaps_in_offsets_are_fine() -> None:
    state = PartitionOffsets(TP)
    for offset in (3, 7, 8):  # compaction / transaction markers leave gaps
        state.take(offset)
    state.settle(7)
    assert state.commit_point() == 3
    state.settle(3)
    assert state.commit_point() == 8
    state.settle(8)
    assert state.commit_point() == 9


def test_pending_commit_only_when_it_moved() -> None:
    state = PartitionOffsets(TP)
    state.take(0)
    state.settle(0)
    assert state.pending_commit() == 1
    state.committed = 1
    assert state.pending_commit() is None
    state.take(1)
    assert state.pending_commit() is None  # 1 is taken but unsettled
    state.settle(1)
    assert state.pending_commit() == 2


def test_random_settle_order_never_commits_past_an_unsettled_record() -> None:
    rng = random.Random(7)
    state = PartitionOffsets(TP)
    offsets = list(range(500))
    for offset in offsets:
        state.take(offset)
    order = offsets[:]
    rng.shuffle(order)
    settled: set[int] = set()
    for offset in order:
        state.settle(offset)
        settled.add(offset)
        point = state.commit_point()
        assert point is not None
        assert all(o in settled for o in range(point))
        assert point == 500 or point not in settled
    assert state.commit_point() == 500


def test_closed_state_ignores_settles_and_refuses_nothing_taken_twice() -> None:
    state = PartitionOffsets(TP)
    state.take(5)
    assert not state.accepts(5)
    assert state.accepts(6)
    state.close()
    state.settle(5)
    assert state.unsettled == 1
    assert not state.active


def test_a_held_record_stays_the_commit_point_and_is_not_in_flight() -> None:
    state = PartitionOffsets(TP)
    for offset in range(5):
        state.take(offset)
    state.settle(0)
    state.hold(1)
    for offset in (2, 3, 4):
        state.settle(offset)
    assert state.commit_point() == 1  # the next reader of the partition gets 1 again
    assert state.unsettled == 0  # nothing left to wait for on a revoke


async def test_the_kafka_settler_commits_only_delivered_or_dead_lettered_records() -> None:
    config = parse_config(
        "defaults: {dead_letter: {file: {path: /unused}}}\n"
        "functions: {fn: {url: 'http://127.0.0.1:1/'}}\n"
        "triggers: [{name: orders, function: fn,"
        " kafka: {bootstrap_servers: '127.0.0.1:9', topics: [t], group_id: g}}]\n",
        env={},
    )
    context = ConnectorContext(metrics=Metrics(), log=get_logger(), leadership=AlwaysLeader())
    connector = KafkaConnector(config.resolve(config.triggers[0]), context)
    state = PartitionOffsets(TP)
    events = [connector._take(state, _record(offset)) for offset in range(4)]
    assert connector._unsettled == 4
    await events[0].settle(Disposition.DELIVERED)
    await events[1].settle(Disposition.ABANDONED)
    await events[2].settle(Disposition.DEAD_LETTERED)
    await events[3].settle(Disposition.DELIVERED)
    assert state.commit_point() == 1, "an abandoned record is never committed past"
    assert connector._unsettled == 0


def _record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TP.topic, partition=TP.partition, offset=offset, timestamp=0,
        timestamp_type=0, key=None, value=b"v", checksum=None, serialized_key_size=-1,
        serialized_value_size=1, headers=(),
    )
