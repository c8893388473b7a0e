"""The dispatcher: from an accepted event to a settled one, for one trigger.

It knows nothing about any one source. Which event runs when -- admission
(``max_unsettled``, the backpressure), ordering lanes, workers, the drain rule -- is
:mod:`bridge.lanes`'s. What a worker does with one event is this module's:

1. **attempts**: each holds a trigger concurrency slot and, inside the invoker, the
   function's quota slot, bounded by the invocation timeout; between attempts it sleeps
   the backoff (holding no slot, lending its worker's place), honouring ``Retry-After``;
2. **dead letter**: on a permanent failure or after the last attempt it writes a dead
   letter, retrying the write until it is confirmed (a sink's refusal for good goes to
   ``dead_letter.fallback``, or blocks the event loudly);
3. **reply** (a trigger with ``reply``, :mod:`bridge.replies`): the 2xx answer is
   published before the settle; a reply refused for good dead-letters the event
   (``reply_failed``);
4. **settle**: ``DELIVERED`` after a 2xx (and its reply), ``DEAD_LETTERED`` after the
   confirmed write.
   Nothing is settled otherwise: an event still unsettled at shutdown is the source's
   to redeliver.

An unexpected exception (a bug in the bridge, not an outcome: the invoker never raises
for a failed attempt) ends the event's processing as a permanent failure with reason
``internal_error``: it is dead-lettered (redrivable once fixed), counted
(``bridge_internal_errors_total``) and logged with its traceback. If even that fails,
the event is settled ``ABANDONED``, which every source takes as "not done" (RabbitMQ
requeues it, Kafka does not commit it, cron ends the run). An event is never dropped by
a bug and never keeps holding its source (a Kafka commit point, a prefetch slot, a
``Forbid`` cron trigger).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime

from bridge.batches import BatchLanes, Poster
from bridge.config import ResolvedTrigger
from bridge.deadletter import DeadLetter, Sink, SinkRefused
from bridge.errors import describe
from bridge.events import Disposition, Event
from bridge.invoker import Invoker
from bridge.lanes import Lanes, Ordering
from bridge.logs import Logger
from bridge.metrics import Metrics
from bridge.outcome import Outcome, OutcomeKind
from bridge.pools import Target
from bridge.replies import Replier, ReplySink
from bridge.retry import Backoff, backoff
from bridge.tracing import EventTrace, Tracer

#: Backoff between failed dead-letter writes: quick at first, then every 30 s.
_SINK_RETRY = Backoff(initial=0.5, maximum=30.0)


class Draining(Exception):
    """Raised inside a backoff wait when the dispatcher is told to stop."""


class Dispatcher:
    def __init__(
        self,
        trigger: ResolvedTrigger,
        *,
        target: Target,
        invoker: Invoker,
        sink: Sink,
        metrics: Metrics,
        log: Logger,
        fallback: Sink | None = None,
        ordering: Ordering = "none",
        max_unsettled: int | None = None,
        replies: ReplySink | None = None,
        tracer: Tracer | None = None,
    ) -> None:
        """``sink`` takes the trigger's dead letters, ``fallback`` (``dead_letter.fallback``)
        those ``sink`` refuses for good; ``max_unsettled`` bounds the events open at once
        (None: 4 x concurrency, at least 256); ``replies`` publishes the function's answers
        (a trigger with ``reply``, :mod:`bridge.replies`); ``tracer`` traces each event
        (:mod:`bridge.tracing`; None: tracing off, and then no tracing code runs)."""
        self.trigger = trigger
        self._target = target
        self._invoker = invoker
        self._sink = sink
        self._fallback = fallback
        self._root_log = log
        self._policy = trigger.retry.policy()
        self._retryable = trigger.retry.retryable_statuses
        self._slots = asyncio.Semaphore(trigger.concurrency)
        #: Events whose dead letter the sinks refuse for good (see _store).
        self.blocked = 0
        self._stop_event: asyncio.Event | None = None  # created by the first backoff wait
        name, function = trigger.name, trigger.function_name
        self._stats = metrics.trigger(name, function)
        self._bound_log: Logger | None = None
        #: A line per attempt only at debug level; checked once, not per attempt.
        self._debug = log.is_enabled_for(logging.DEBUG)
        self._replier = None if replies is None or trigger.reply is None else Replier(
            replies, name, trigger.reply, stats=self._stats, log=lambda: self._log,
            pause=self._pause,
        )
        #: Bytes of a 2xx answer the invoker keeps (0: none, the answer is dropped unread).
        self._answer_bytes = 0 if self._replier is None else self._replier.max_size
        self._tracer = tracer
        #: Each open event's trace while tracing is on (None: off). Batches are not traced.
        self._traces: dict[Event, EventTrace] | None = None if tracer is None else {}
        window = max_unsettled or max(4 * trigger.concurrency, 256)
        batch = trigger.config.batch
        #: ``batch:`` triggers post their events in batches (bridge.batches); retries alone.
        self._poster: Poster | None = None
        self._lanes: Lanes
        if batch is None:
            self._lanes = Lanes(
                ordering=ordering, concurrency=trigger.concurrency, max_unsettled=window,
                stats=self._stats, run=self._process if tracer is None else self._traced,
                log=lambda: self._log, debug=self._debug,
            )
        else:
            self._poster = Poster(
                trigger=trigger.name, target=target, invoker=invoker, timeout=trigger.timeout,
                retryable=self._retryable, stats=self._stats, log=lambda: self._log,
            )
            self._lanes = BatchLanes(
                batch, poster=self._poster, handler=self, slots=self._slots,
                ordering=ordering, concurrency=trigger.concurrency, max_unsettled=window,
                stats=self._stats, log=lambda: self._log,
            )
        #: Accept an event; waits while ``max_unsettled`` events are open. (The lanes'
        #: own method: no extra call per event.)
        self.submit: Callable[[Event], Awaitable[None]] = self._lanes.submit

    @property
    def _log(self) -> Logger:
        """Bound on first use: most triggers never log, and 10,000 bindings add up."""
        if self._bound_log is None:
            self._bound_log = self._root_log.bind(
                trigger=self.trigger.name, function=self.trigger.function_name
            )
        return self._bound_log

    @property
    def unsettled(self) -> int:
        """Events accepted and not yet finished."""
        return self._lanes.open

    async def delivered(self, event: Event) -> None:
        """Batch lanes: ``event`` was delivered in a batch; settle it."""
        await self._settle(event, Disposition.DELIVERED)

    async def process(self, event: Event, first: Outcome | None) -> None:
        """Batch lanes: ``event`` goes on alone after its batch's ``first`` outcome
        (retries, dead letter, settle), or from the start (None: a ``defect``)."""
        await self._process(event, first)

    async def _traced(self, event: Event) -> None:
        """:meth:`_process` inside the event's trace (tracing on). A tracer that fails
        costs the event its trace, never its delivery."""
        assert self._tracer is not None
        assert self._traces is not None
        try:
            trace = self._traces[event] = self._tracer.receive(
                event, self.trigger.function_name)
        except Exception as err:
            self._log.warning("tracing failed; event not traced", event_id=event.id,
                              error=describe(err))
            await self._process(event)
            return
        try:
            await self._process(event)
        finally:
            del self._traces[event]
            trace.end(event.settled)

    async def _process(self, event: Event, first: Outcome | None = None) -> None:
        try:
            try:
                await self._deliver(event, first)
            except Draining:
                raise
            except Exception as err:  # a bug, not an outcome: the event is not lost to it
                await self._after_bug(event, err)
        except asyncio.CancelledError:
            if not event.abandoned:
                raise
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await self._settle(event, Disposition.ABANDONED)
        except Draining:
            self._log.debug("left unsettled for redelivery", event_id=event.id)

    async def _after_bug(self, event: Event, err: Exception) -> None:
        """An unexpected exception while handling ``event`` (a bug in the bridge, not an
        outcome of the function): dead-letter it as ``internal_error``, so it can be
        redriven once fixed. Should that fail too, hand it back to its source unsettled
        (``ABANDONED``: RabbitMQ requeues it, Kafka does not commit it, cron ends the
        run). Either way it is settled once: never dropped, never holding its source.
        """
        self._bug(event, err)
        if event.settled is not None:  # the bug came after the settle
            return
        self._lanes.mark_started(event)
        outcome = Outcome(OutcomeKind.PERMANENT, "internal_error", detail=describe(err))
        try:
            await self._dead_letter(event, outcome, attempts=0)
        except Draining:
            raise
        except Exception as again:
            self._bug(event, again, "internal error while dead-lettering; "
                                    "handing the event back to its source")
            await self._settle(event, Disposition.ABANDONED)

    def _bug(self, event: Event, err: BaseException,
             what: str = "internal error; dead-lettering") -> None:
        self._stats.internal_errors += 1
        self._log.error(what, event_id=event.id, error=describe(err), exc_info=err)

    async def _deliver(self, event: Event, first: Outcome | None = None) -> None:
        if event.defect is not None:
            self._lanes.mark_started(event)
            outcome = Outcome(OutcomeKind.PERMANENT, "invalid_message", detail=event.defect)
            await self._dead_letter(event, outcome, attempts=0)
            return
        result, attempts = await self._attempts(event, first)
        if result is None:
            await self._settle(event, Disposition.ABANDONED)
        elif result.ok:
            # A reply is published before the settle: a crash between loses none.
            failed = None if self._replier is None else await self._replier.send(event, result)
            if failed is None:
                await self._settle(event, Disposition.DELIVERED)
            else:
                await self._dead_letter(event, failed, attempts)
        else:
            await self._dead_letter(event, result, attempts)

    async def _attempts(
        self, event: Event, first: Outcome | None = None
    ) -> tuple[Outcome | None, int]:
        """Run attempts until delivered, permanent or exhausted; None = missed deadline.
        ``first``: the outcome of attempt 1, made elsewhere (in a batch)."""
        lanes = self._lanes
        attempt, outcome = (0, None) if first is None else (1, first)
        while True:
            if outcome is None:
                attempt += 1
                if self._poster is not None:  # a batch trigger's retry: a batch of one
                    async with self._slots:
                        outcome = await self._poster.alone(event)
                else:
                    async with self._slots:
                        if attempt == 1 and lanes.stopping and not lanes.overtaken(event):
                            raise Draining
                        if attempt == 1 and _past(event.not_after):
                            self._log.warning("missed starting deadline", event_id=event.id)
                            return None, 0
                        if attempt == 1:
                            self._lanes.mark_started(event)
                        outcome = await self._attempt(event, attempt)
            if outcome.kind is not OutcomeKind.RETRYABLE or attempt >= self._policy.max_attempts:
                return outcome, attempt
            self._stats.retries += 1
            delay = backoff(self._policy, attempt, outcome.retry_after)
            self._log.warning(
                "invocation failed, will retry",
                event_id=event.id, attempt=attempt, status=outcome.status,
                reason=outcome.reason, detail=outcome.detail[:200], retry_in=round(delay, 3),
            )
            await self._pause(delay)
            outcome = None

    async def _attempt(self, event: Event, attempt: int) -> Outcome:
        trace = None if self._traces is None else self._traces.get(event)
        span = None if trace is None else trace.attempt(attempt)
        self._stats.in_flight += 1
        try:
            outcome = await self._invoker.invoke(
                self._target, event, attempt, self.trigger.timeout, self._retryable,
                answer_bytes=self._answer_bytes, trace=None if span is None else span.headers,
            )
        except Exception as err:  # the invoker never raises for a failed attempt: a bug
            self._bug(event, err)
            outcome = Outcome(OutcomeKind.PERMANENT, "internal_error", detail=describe(err))
        finally:
            self._stats.in_flight -= 1
        if span is not None:
            span.end(outcome)
        self._stats.outcome(outcome.kind.value, outcome.duration)
        if outcome.overflow:
            self._stats.overflow += 1
        if self._debug:
            self._log.debug(
                "invoked", event_id=event.id, attempt=attempt, status=outcome.status,
                outcome=outcome.reason, duration=round(outcome.duration, 4),
                overflow=outcome.overflow,
            )
        return outcome

    async def _dead_letter(self, event: Event, outcome: Outcome, attempts: int) -> None:
        record = DeadLetter.of(event, self.trigger.function_name, outcome, attempts)
        trace = None if self._traces is None else self._traces.get(event)
        span = None if trace is None else trace.dead_letter(outcome.reason)
        # A dead-letter write is no invocation: like the backoff, it lends its place, so
        # a slow or hanging sink does not hold the trigger's concurrency from healthy
        # events (they go on until max_unsettled events are open).
        with self._lanes.lending_place():
            fallback = await self._store(event, record)
        if span is not None:
            span.end(fallback)
        self._stats.dead_letter(outcome.reason)
        if fallback:
            self._stats.dead_letter_fallbacks += 1
        self._log.error(
            "dead-lettered", event_id=event.id, attempts=attempts, status=outcome.status,
            reason=outcome.reason, detail=outcome.detail[:200],
            **({"sink": "fallback"} if fallback else {}),
        )
        await self._settle(event, Disposition.DEAD_LETTERED)

    async def _store(self, event: Event, record: DeadLetter) -> bool:
        """Write ``record`` until a sink confirms it; True if the fallback did.

        A failed write is retried with backoff (the event stays unsettled). A refusal for
        good (:class:`SinkRefused`) sends the record to ``dead_letter.fallback`` at once;
        without one, or refused there too, the event is *blocked*: counted in
        ``bridge_dead_letter_blocked``, named by ``/readyz``, logged with the broker's
        reason at every try, and still retried (from the main sink) so that it goes
        through once an operator fixes the sink or adds a fallback (a reload).
        """
        primary, fallback = self._sink, self._fallback
        sink, written, failures, blocked = primary, record, 0, False
        try:
            while True:
                try:
                    await sink.write(written)
                    return sink is not primary
                except SinkRefused as err:
                    reason = str(err)[:300]
                    if sink is primary and fallback is not None:
                        self._log.warning(
                            "dead letter refused by the sink; writing it to the fallback",
                            event_id=event.id, error=reason,
                        )
                        sink, written = fallback, replace(record, refused=reason)
                        continue
                    blocked = self._block(blocked, True)
                    delay = _SINK_RETRY.delay(failures + 1)
                    self._log.error(
                        "dead letter refused for good; event blocked until the sink takes it "
                        "(fix the sink, or set dead_letter.fallback)",
                        event_id=event.id, error=reason, retry_in=round(delay, 3),
                    )
                    sink, written = primary, record
                except Exception as err:
                    blocked = self._block(blocked, False)
                    delay = _SINK_RETRY.delay(failures + 1)
                    self._log.error(
                        "dead-letter write failed; event stays unsettled",
                        event_id=event.id, error=str(err)[:300], retry_in=round(delay, 3),
                    )
                failures += 1
                self._stats.dead_letter_failures += 1
                await self._sleep(delay)
        finally:
            self._block(blocked, False)

    def _block(self, was: bool, now: bool) -> bool:
        """Count the event in (or out of) the blocked dead letters; returns ``now``."""
        if now != was:
            step = 1 if now else -1
            self.blocked += step
            self._stats.dead_letter_blocked += step
        return now

    async def _settle(self, event: Event, disposition: Disposition) -> None:
        try:
            await event.settle(disposition)
        except Exception as err:
            self._log.warning("settle failed", event_id=event.id, error=str(err)[:300])
            return
        self._stats.settle(disposition.value)

    async def _pause(self, delay: float) -> None:
        """Sleep between tries; the event lends its worker's place meanwhile."""
        with self._lanes.lending_place():
            await self._sleep(delay)

    async def _sleep(self, delay: float) -> None:
        """Back off for ``delay``; raise Draining as soon as the dispatcher stops."""
        if self._lanes.stopping:
            raise Draining
        if self._stop_event is None:
            self._stop_event = asyncio.Event()
        try:
            async with asyncio.timeout(delay):
                await self._stop_event.wait()
        except TimeoutError:
            return
        raise Draining

    async def drain(self, timeout: float) -> bool:
        """Stop retrying, let in-flight attempts (and overtaken events, see
        :mod:`bridge.lanes`) finish within ``timeout``, cancel the rest.

        Returns True when everything finished in time. Events whose work was cancelled
        stay unsettled (the source redelivers them).
        """
        if self._stop_event is not None:
            self._stop_event.set()
        return await self._lanes.drain(timeout)


def _past(deadline: datetime | None) -> bool:
    return deadline is not None and datetime.now(UTC) > deadline
