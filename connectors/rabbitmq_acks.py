"""Acknowledgements of one AMQP channel, coalesced into ``basic.ack(multiple=true)`` runs.

The connector acks a delivery once it is settled (``DELIVERED``, or ``DEAD_LETTERED``
after a confirmed dead-letter publish). :class:`AckBatcher` sends the acks settled in
one event-loop iteration together, which halves the ack frames under load without
holding any ack back longer than that iteration (what it saves: docs/benchmarks.md,
*RabbitMQ*).
"""

from __future__ import annotations

import asyncio

import aiormq

from bridge.errors import describe


class AckBatcher:
    """The acknowledgements of one AMQP channel, coalesced.

    Acks settled during one event-loop iteration are sent together by the first of
    them, after one ``sleep(0)``: the run of deliveries settled from the oldest one
    unacked goes as a single ``basic.ack(multiple=true)`` carrying the highest pending
    tag; later ones are acked one by one in the same flush. Nothing waits longer than
    that iteration, so a slow or retrying delivery never delays the acks of the
    others. Rejects go out at once. A channel's delivery tags are 1, 2, 3, ... in
    delivery order, which is what lets the run be computed from ``_through`` alone.
    One flush at a time (a lock), so a multiple ack never overtakes an earlier frame:
    its own tag is always still unacked (the broker closes the channel otherwise).

    A flush queues all its frames to the connection's writer back to back and waits
    for the last one to be written only (the writer sends frames in order, so the last
    written means all were): one write round trip per flush, however many frames.
    Waiting for each frame in turn made a flush of k one-by-one acks take k loop passes
    while holding the lock (docs/benchmarks.md, *RabbitMQ*).
    """

    def __init__(self, channel: aiormq.abc.AbstractChannel) -> None:
        self.channel = channel
        #: Every tag <= this is settled and acknowledged (or rejected).
        self._through = 0
        #: Settled tags above ``_through``.
        self._settled: set[int] = set()
        #: Positive acks not sent yet.
        self._pending: set[int] = set()
        self._lock = asyncio.Lock()
        self._flushing = False

    def closed(self) -> bool:
        """True once the channel is closed: its deliveries are back with the broker."""
        return bool(self.channel.is_closed)

    async def ack(self, tag: int) -> None:
        """Queue an ack; the first caller in a loop iteration sends the batch and
        raises if it could not be sent (the other callers have returned already)."""
        self._pending.add(tag)
        if self._flushing:
            return
        self._flushing = True
        try:
            await asyncio.sleep(0)  # let the other settles of this iteration join
        finally:
            self._flushing = False
        await self.flush()

    async def reject(self, tag: int, requeue: bool) -> None:
        async with self._lock:
            await self.channel.basic_reject(delivery_tag=tag, requeue=requeue)
            self._settled.add(tag)

    async def flush(self) -> None:
        """Send the pending acks (also called by ``stop`` for what is left)."""
        async with self._lock:
            pending, self._pending = self._pending, set()
            if not pending:
                return
            self._settled |= pending
            while self._through + 1 in self._settled:
                self._through += 1
                self._settled.discard(self._through)
            covered = [tag for tag in pending if tag <= self._through]
            frames = [(max(covered), True)] if covered else []
            frames += [(tag, False) for tag in sorted(pending) if tag > self._through]
            try:
                # Queued in order, one write round trip for all: the connection's writer
                # sends its frames in order, so the last one written means all were.
                for tag, multiple in frames[:-1]:
                    await self.channel.basic_ack(delivery_tag=tag, multiple=multiple,
                                                 wait=False)
                tag, multiple = frames[-1]
                await self.channel.basic_ack(delivery_tag=tag, multiple=multiple)
            except Exception as err:
                raise AckError(len(pending), err) from err


class AckError(Exception):
    """Acks that could not be sent (their channel died): the broker redelivers them."""

    def __init__(self, count: int, cause: BaseException) -> None:
        super().__init__(f"{count} ack(s) not sent: {describe(cause, None)}")
        self.count = count
