"""Per-partition offset bookkeeping for at-least-once Kafka commits.

Records of one partition are *taken* in offset order and *settled* in any order (key
lanes run in parallel). Kafka stores one number per partition, "the next offset to
read", so the only safe value to commit is the first offset that is taken but not yet
settled (or, when everything taken is settled, the offset after the last one taken):
every record below it is done, none at or above it is skipped on a restart.

:class:`PartitionOffsets` keeps exactly that, in O(1) amortized per record: a deque of
taken offsets in order and the set of those settled out of order. It is owned by one
assignment of the partition; when the partition goes to another member it is closed
and late settles for it are ignored (the new owner redelivers those records).
"""

from __future__ import annotations

from collections import deque

from aiokafka import TopicPartition


class PartitionOffsets:
    """Taken, settled and committed offsets of one assigned partition."""

    __slots__ = ("_done", "_held", "_taken", "active", "committed", "next_offset", "open", "tp")

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self._taken: deque[int] = deque()
        self._done: set[int] = set()
        #: Records handed back unsettled (``hold``): the commit point never passes them.
        self._held = 0
        #: Offset after the last record taken; None until one is taken.
        self.next_offset: int | None = None
        #: The last offset this assignment committed (next to read), if any.
        self.committed: int | None = None
        #: False while the partition is being revoked: take nothing more from it.
        self.active = True
        #: False once the partition belongs to someone else: settles no longer count.
        self.open = True

    def accepts(self, offset: int) -> bool:
        """True for an offset after everything already taken (never take one twice)."""
        return self.next_offset is None or offset >= self.next_offset

    def take(self, offset: int) -> None:
        self._taken.append(offset)
        self.next_offset = offset + 1

    def settle(self, offset: int) -> None:
        if not self.open:
            return
        taken = self._taken
        if taken and taken[0] == offset:
            taken.popleft()
            done = self._done
            while taken and taken[0] in done:
                done.remove(taken.popleft())
        else:
            self._done.add(offset)

    def hold(self, offset: int) -> None:
        """The record is back, not done: it stays the commit point's floor for this
        assignment, so a restart or the partition's next owner reads it again. It no
        longer counts as in flight (a revoke does not wait for it)."""
        if self.open:
            self._held += 1

    @property
    def unsettled(self) -> int:
        return len(self._taken) - len(self._done) - self._held

    def commit_point(self) -> int | None:
        """The next offset to read such that every record before it is settled."""
        if self._taken:
            return self._taken[0]
        return self.next_offset

    def pending_commit(self) -> int | None:
        """The commit point if it moved past what this assignment last committed."""
        point = self.commit_point()
        if point is None or (self.committed is not None and point <= self.committed):
            return None
        return point

    def close(self) -> None:
        self.active = False
        self.open = False
