"""Batch invocations: many events of one trigger in one POST, CloudEvents batched mode.

A Kafka or RabbitMQ trigger with ``batch: {max_events, max_bytes, max_wait}`` sends its
events to the function as a JSON array of structured CloudEvents
(``application/cloudevents-batch+json``, the JSON format's batch, section 4).

**How it fits.** :class:`BatchLanes` is :class:`~bridge.lanes.Lanes` (admission, the
ordering lanes, the drain rule: all unchanged) whose workers take a *batch* of ready
events at a time instead of one: a busy trigger costs no task, future or coroutine
chain per event, which is what makes a batch cheaper than the requests it replaces.
:class:`Poster` makes the request and reads the answer. The dispatcher
(:mod:`bridge.dispatcher`) settles what was delivered and runs everything else on the
single-event path (retries, dead letter), each such event on a task of its own.

**Forming a batch.** A worker takes the ready events (oldest first) while they fit:
``max_events`` events, ``max_bytes`` of request body (an event larger than that goes
alone). Not full, it waits for more, at most ``max_wait`` after its first event
(``0``: not at all). Then it takes one of the trigger's ``concurrency`` slots; events
that became ready while it waited for the slot join the batch (up to the same bounds),
so under load batches fill while the function is busy, and at low rates ``max_wait``
(plus the wait for a slot) bounds how long an event waits. At most ``concurrency``
workers, so at most that many batches are collected or in flight; each is one request:
one quota slot of the function, one endpoint, the trigger's ``timeout``.

**What the function receives** (:func:`structured`): each event as the JSON format
writes it: its context attributes as members; ``data`` holding the JSON value when the
content type is JSON (:func:`bridge.cloudevents.is_json`) and the bytes are valid JSON,
a string for ``text/*`` data in UTF-8, otherwise ``data_base64``; no data member for
empty data. The message's own headers, sent as HTTP headers in binary mode
(``kafka-header-*``, ``amqp-header-*``), travel as the extension ``bridgeheaders``: a
JSON object in a string (an attribute value must be a string).

**The answer** (:func:`read_answer`): a 2xx with an empty body delivered every event; a
2xx with ``{"failed": ["<ce-id>", ...]}`` delivered all but those named. Any other 2xx
body -- not JSON, not that object, an id that was not in the batch, more ids than
events, or longer than :func:`answer_bound` -- is logged (``batch answer not
understood``) and fails the whole batch as ``bad_batch_answer`` (retryable): nothing is
settled on an answer the bridge cannot read. A non-2xx, a timeout or a connection error
fails the whole batch with that outcome, classified as for single events.

**Retries.** A failed event is retried under the trigger's retry policy, after its own
backoff (``Retry-After`` honoured), **alone**: a batch of one, sent as soon as a slot is
free. A whole-batch failure may come from one bad event (a function that crashes on
it): retried together, that event would fail its batch-mates again at every attempt and
take them to the dead-letter sink with it. Alone, from the second attempt on every
event's outcome is its own, and each is dead-lettered one by one with its own reason
and last status (``failed_in_batch``, ``bad_batch_answer``, ``http_503``, ...). New
events keep forming full batches meanwhile.

**Ordering.** The lanes give a worker at most one event per ordering lane (key or
partition) at a time, and the next event of a lane only once the previous one is
settled (delivered or dead-lettered): a batch never holds two events of one key, and a
failed event holds the later events of its key back until it is delivered by a retry or
dead-lettered; other keys go on in the next batches. (``ordering: partition`` therefore
batches at most one event per partition: use ``key`` or ``none`` with batches.)

**Drain.** On SIGTERM a worker collecting a batch stops waiting; the events that had not
started (and were not overtaken, see :mod:`bridge.lanes`) are left out, unsettled, for
the source to redeliver, and so are events whose source took them back meanwhile
(``stale``, checked again when the batch goes). Batches in flight finish within the
drain timeout. An event with a ``defect`` is never sent: it is dead-lettered at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import types
from collections.abc import Callable, Collection, Coroutine, Generator, Iterator, Sequence
from typing import Any, Protocol

from bridge.cloudevents import is_json
from bridge.config import BatchConfig
from bridge.events import Event
from bridge.invoker import BODY_BOUND, Invoker
from bridge.lanes import Lanes, Ordering
from bridge.logs import Logger
from bridge.metrics import TriggerStats
from bridge.outcome import Outcome, OutcomeKind
from bridge.pools import Target

#: The JSON format's batch media type.
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
#: The extension carrying a message's own headers in a structured event.
HEADERS_EXTENSION = "bridgeheaders"
#: Reasons of the outcomes this module makes (dead letters carry them as bridge-error).
FAILED_IN_BATCH = "failed_in_batch"
BAD_ANSWER = "bad_batch_answer"


def structured(event: Event) -> bytes:
    """``event`` as one structured CloudEvent of the JSON format (UTF-8)."""
    members: dict[str, Any] = event.ce_attributes()
    members.pop("data", None)  # an extension of that name cannot be written in JSON
    if event.http_headers:
        members[HEADERS_EXTENSION] = _encode(dict(event.http_headers))
    data = event.data
    if not data:
        return _encode(members).encode("utf-8")
    kind = _data_kind(event.content_type)
    if kind is _JSON:
        raw = _json_text(data)
        if raw is not None:  # the data's own JSON text, unchanged (numbers keep digits)
            return f'{_encode(members)[:-1]},"data":{raw}}}'.encode()
    elif kind is _TEXT:
        with contextlib.suppress(UnicodeDecodeError):
            members["data"] = data.decode("utf-8")
            return _encode(members).encode("utf-8")
    # Base64 needs no JSON escaping: spliced in rather than scanned by the encoder.
    encoded = base64.b64encode(data)
    return b"".join((_encode(members)[:-1].encode("utf-8"), b',"data_base64":"', encoded, b'"}'))


#: Compact JSON, UTF-8 as is (one encoder, not one per call as json.dumps makes).
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


_JSON, _TEXT, _BINARY = "json", "text", "binary"


@functools.lru_cache(maxsize=256)
def _data_kind(content_type: str | None) -> str:
    """How data of this content type is written (a source has few content types)."""
    if content_type and is_json(content_type):
        return _JSON
    if content_type and content_type.lstrip().lower().startswith("text/"):
        return _TEXT
    return _BINARY


def _json_text(data: bytes) -> str | None:
    """``data`` as JSON text when it is valid JSON in UTF-8 (NaN and Infinity are not
    JSON), else None (it then travels as ``data_base64``)."""
    try:
        text = data.decode("utf-8")
        json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return None
    return text


def _not_json(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def answer_bound(ids: Collection[str]) -> int:
    """The longest answer read: room for every id JSON-escaped, plus ``BODY_BOUND``."""
    return BODY_BOUND + sum(6 * len(i) + 4 for i in ids)


def read_answer(answer: bytes | None, ids: Sequence[str]) -> frozenset[str] | str:
    """The ids a 2xx answer names as failed, or why the answer cannot be read.

    ``answer`` None means it was longer than :func:`answer_bound`.
    """
    if answer is None:
        return f"the answer is longer than {answer_bound(ids)} bytes"
    if not answer.strip():
        return frozenset()
    try:
        document = json.loads(answer)
    except (ValueError, RecursionError) as err:
        return f"the answer is not JSON ({str(err)[:100]}): {answer[:80]!r}"
    failed = document.get("failed") if isinstance(document, dict) else None
    if not isinstance(failed, list):
        return f'the answer must be empty or {{"failed": [<ce-id>, ...]}}: {answer[:80]!r}'
    if not all(isinstance(i, str) for i in failed):
        return "'failed' must list CloudEvent ids (strings)"
    if len(failed) > len(ids):
        return f"'failed' names {len(failed)} events; the batch has {len(ids)}"
    unknown = sorted(set(failed).difference(ids))
    if unknown:
        listed = ", ".join(repr(i[:100]) for i in unknown[:3])
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        return f"'failed' names ids that were not in the batch: {listed}{more}"
    return frozenset(failed)


class _Item:
    """An event taken into a batch, with its encoding."""

    __slots__ = ("body", "event")

    def __init__(self, event: Event) -> None:
        self.event = event
        self.body = structured(event)


class Poster:
    """Posts batches of one trigger and reads each event's outcome from the answer."""

    def __init__(
        self,
        *,
        trigger: str,
        target: Target,
        invoker: Invoker,
        timeout: float,
        retryable: Collection[int],
        stats: TriggerStats,
        log: Callable[[], Logger],
    ) -> None:
        self._target = target
        self._invoker = invoker
        self._timeout = timeout
        self._retryable = retryable
        self._stats = stats
        self._log = log
        self._headers = {"Content-Type": BATCH_CONTENT_TYPE, "bridge-trigger": trigger}

    async def alone(self, event: Event) -> Outcome:
        """A retry: ``event`` as a batch of one."""
        return (await self.post([_Item(event)]))[0]

    async def post(self, items: Sequence[_Item]) -> list[Outcome]:
        """One request with ``items``; the outcome of each."""
        count = len(items)
        body = b"[" + b",".join([item.body for item in items]) + b"]"
        ids = [item.event.id for item in items]
        stats = self._stats
        stats.in_flight += count
        try:
            outcome, answer = await self._invoker.invoke_batch(
                self._target, body, self._headers, timeout=self._timeout,
                retryable=self._retryable, answer_bound=answer_bound(ids),
            )
        finally:
            stats.in_flight -= count
        if outcome.overflow:
            stats.overflow += 1
        outcomes = self._judge(outcome, answer, ids)
        for each in outcomes:
            stats.outcome(each.kind.value, each.duration)
        log = self._log()
        if log.is_enabled_for(logging.DEBUG):
            log.debug("batch invoked", events=count, status=outcome.status,
                      outcome=outcome.reason, duration=round(outcome.duration, 4),
                      failed=sum(1 for o in outcomes if not o.ok))
        return outcomes

    def _judge(self, outcome: Outcome, answer: bytes | None, ids: list[str]) -> list[Outcome]:
        """Each event's outcome from the request's outcome and its answer."""
        if not outcome.ok:
            return [outcome] * len(ids)
        failed = read_answer(answer, ids)
        if isinstance(failed, str):
            failed = self._target.redact(failed)  # it quotes the answer: a function's secrets
            self._log().error(
                "batch answer not understood; the whole batch counts as failed",
                problem=failed, status=outcome.status, events=len(ids),
            )
            bad = Outcome(OutcomeKind.RETRYABLE, BAD_ANSWER, outcome.status, detail=failed,
                          duration=outcome.duration, overflow=outcome.overflow)
            return [bad] * len(ids)
        if not failed:
            return [outcome] * len(ids)
        item_failed = Outcome(
            OutcomeKind.RETRYABLE, FAILED_IN_BATCH, outcome.status,
            detail=f"the function named this event as failed in a batch of {len(ids)}",
            duration=outcome.duration, overflow=outcome.overflow,
        )
        return [item_failed if i in failed else outcome for i in ids]


class Handler(Protocol):
    """What the dispatcher does with an event once its batch is answered."""

    async def delivered(self, event: Event) -> None:
        """Settle a delivered event."""

    async def process(self, event: Event, first: Outcome | None) -> None:
        """The single-event path (retries alone, dead letter, settle) after a first
        outcome; ``first`` None: from the start (an event with a ``defect``)."""


class BatchLanes(Lanes):
    """:class:`~bridge.lanes.Lanes` whose workers take a batch of ready events at a time.

    Admission, ordering lanes and the drain rule are the lanes'; ``concurrency``
    workers each collect a batch (see the module docs), post it, settle what was
    delivered and hand each other event to its own task on the single-event path
    (:meth:`Handler.process`), which ends it in the lanes when it is done.
    """

    __slots__ = ("_collecting", "_handler", "_max_bytes", "_max_events", "_max_wait",
                 "_more", "_poster", "_slots")

    def __init__(
        self,
        settings: BatchConfig,
        *,
        poster: Poster,
        handler: Handler,
        slots: asyncio.Semaphore,
        ordering: Ordering,
        concurrency: int,
        max_unsettled: int,
        stats: TriggerStats,
        log: Callable[[], Logger],
    ) -> None:
        super().__init__(ordering=ordering, concurrency=concurrency,
                         max_unsettled=max_unsettled, stats=stats, run=_unused, log=log)
        self._max_events = settings.max_events
        self._max_bytes = settings.max_bytes
        self._max_wait = settings.max_wait
        self._poster = poster
        self._handler = handler
        self._slots = slots
        #: Workers collecting a batch, and the future that wakes them when events arrive.
        self._collecting = 0
        self._more: asyncio.Future[None] | None = None

    @contextlib.contextmanager
    def lending_place(self) -> Iterator[None]:
        """The single-event path's backoff and dead-letter writes run on tasks of their
        own, which hold no worker's place: nothing to lend."""
        yield

    async def drain(self, timeout: float) -> bool:
        self._wake()  # a worker collecting a batch sends it now (without what had not started)
        return await super().drain(timeout)

    def _wake(self) -> None:
        more = self._more
        if more is not None and not more.done():
            more.set_result(None)

    def _start_workers(self) -> None:
        """A collecting worker takes new ready events; otherwise start a worker per
        ``max_events`` ready events no starting worker will take, while places are free."""
        if self._collecting:
            self._wake()
            return
        while (len(self._ready) > self._starting * self._max_events
               and self._workers < self._concurrency):
            self._workers += 1
            self._starting += 1
            task = asyncio.create_task(self._work())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        self._starting -= 1
        try:
            while self._ready and self._workers <= self._concurrency:
                if self._collecting:  # another worker is filling a batch: it takes these
                    self._wake()
                    break
                items = await self._collect()
                if not items:
                    continue
                async with self._slots:
                    self._top_up(items)
                    going = self._going(items)
                    outcomes = await self._post(going) if going else []
                delivered = []
                for item, outcome in zip(going, outcomes, strict=True):
                    if outcome.ok:
                        delivered.append(item.event)
                    else:
                        self._spawn(item.event, outcome)
                for event in delivered:
                    self._eagerly(self._settle(event))
        finally:
            self._workers -= 1

    async def _collect(self) -> list[_Item]:
        """The ready events, up to a batch; while it is not full, wait up to ``max_wait``
        from the first for more. One worker collects at a time: events that become
        ready meanwhile (new ones, or the next of a lane whose event another worker
        settled) wake it, and the other workers leave them to it."""
        items: list[_Item] = []
        size, full = self._take(items, 1)
        if full or self._max_wait <= 0 or self.stopping:
            return items
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._max_wait
        self._collecting += 1
        try:
            while not full and not self.stopping:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._more = more = loop.create_future()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await more
                size, full = self._take(items, size)
        finally:
            self._collecting -= 1
            self._more = None
        self._start_workers()  # what did not fit goes to the next worker
        return items

    def _top_up(self, items: list[_Item]) -> None:
        """Events that became ready while the batch waited for a slot join it."""
        if not self.stopping:
            self._take(items, 1 + sum(len(i.body) + 1 for i in items))

    def _take(self, items: list[_Item], size: int) -> tuple[int, bool]:
        """Move ready events into ``items`` while they fit: the body's new size, and
        whether the batch is full. An event that does not fit stays ready (one larger
        than ``max_bytes`` goes alone)."""
        ready = self._ready
        while ready:
            if len(items) >= self._max_events:
                return size, True
            event = ready[0]
            if event.stale is not None and self._is_stale(event):
                ready.popleft()
                self._withdraw(event)
                continue
            if event.defect is not None:  # dead-lettered at once, never sent
                ready.popleft()
                self._spawn(event, None)
                continue
            item = _Item(event)
            if items and size + len(item.body) + 1 > self._max_bytes:
                return size, True
            ready.popleft()
            items.append(item)
            size += len(item.body) + 1
        return size, len(items) >= self._max_events or size >= self._max_bytes

    def _going(self, items: list[_Item]) -> list[_Item]:
        """The items that start now: not while draining (unless overtaken), not once
        the source took them back; the others end here unsettled."""
        going = []
        for item in items:
            event = item.event
            if self.stopping and not self.overtaken(event):
                self._end(event)
            elif event.stale is not None and self._is_stale(event):
                self._withdraw(event)
            else:
                self.mark_started(event)
                going.append(item)
        return going

    async def _post(self, items: list[_Item]) -> list[Outcome]:
        try:
            return await self._poster.post(items)
        except Exception as err:  # a bug, not an outcome: each event goes on alone
            self._log().error("internal error while posting a batch", error=repr(err)[:300],
                              exc_info=err)
            self._stats.internal_errors += 1
            return [Outcome(OutcomeKind.PERMANENT, "internal_error", detail=repr(err)[:300])
                    ] * len(items)

    def _eagerly(self, settle: Coroutine[Any, Any, None]) -> None:
        """Run ``settle`` now, up to its first suspension, as Python 3.12's eager tasks
        do; a task runs the rest only if it suspends.

        A Kafka settle never suspends: no task per event (gathering the settles cost
        ~40 % more CPU per event than this). A RabbitMQ ack does (the ack batcher waits
        one loop pass, then sends what was settled meanwhile): settling the next events
        meanwhile lets their acks join it, one ``basic.ack(multiple)`` per batch instead
        of a frame and a socket drain per event, which awaiting them one by one costs.
        """
        try:
            suspended = settle.send(None)
        except StopIteration:
            return
        task = asyncio.ensure_future(_rest(settle, suspended))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _settle(self, event: Event) -> None:
        try:
            await self._handler.delivered(event)
        except Exception as err:  # a bug, not an outcome: keep the other events going
            self._log().error("settle failed", event_id=event.id, error=repr(err)[:300])
        finally:
            self._end(event)

    def _spawn(self, event: Event, first: Outcome | None) -> None:
        """``event`` goes on on its own task (retries, dead letter), ends there."""
        task = asyncio.create_task(self._alone(event, first))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _alone(self, event: Event, first: Outcome | None) -> None:
        event.attach(asyncio.current_task())
        try:
            await self._handler.process(event, first)
        except Exception as err:  # a bug, not an outcome: keep the other events going
            self._log().error("dispatch failed", event_id=event.id, error=repr(err)[:300])
        finally:
            self._end(event)
            self._start_workers()  # the next event of its lane may be ready now

    def _end(self, event: Event) -> None:
        """``event`` is finished here; its lane goes on."""
        self._release(event)
        event.attach(None)
        self._lane_done(event)


@types.coroutine
def _rest(coroutine: Coroutine[Any, Any, None], suspended: Any) -> Generator[Any, Any, None]:
    """Drive the rest of ``coroutine``, which suspended on ``suspended`` when stepped
    outside a task: what ``yield from`` does, so a task can take it over (it waits for
    the same future, then resumes it; an exception thrown in goes into it)."""
    while True:
        try:
            sent = yield suspended
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as err:  # thrown in by the task (a cancel): forward it
            try:
                suspended = coroutine.throw(err)
            except StopIteration:
                return
        else:
            try:
                suspended = coroutine.send(sent)
            except StopIteration:
                return


async def _unused(event: Event) -> None:
    raise AssertionError("batch lanes run events in batches")  # pragma: no cover
