"""The settled-prefix rule behind Kafka commits."""

from __future__ import annotations

import random

from aiokafka import TopicPartition

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
