"""The dispatcher with a real Invoker and a real local function over TCP.

Only the dead-letter sink is in memory here (so failures can be injected); the file
sink has its own tests. Backoffs are small so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest

from bridge.config import ResolvedTrigger, parse_config
from bridge.deadletter import DeadLetter, SinkRefused
from bridge.dispatcher import Dispatcher, Ordering
from bridge.events import Disposition, Event
from bridge.invoker import Invoker
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.outcome import Outcome
from bridge.pools import BalancedPool, Target
from tests.support.functions import Call, RecordingFunction, Reply


class MemorySink:
    """A dead-letter sink whose first ``fail_first`` writes raise (a passing failure),
    then the next ``refuse`` writes are refused for good."""

    def __init__(self, fail_first: int = 0, refuse: int = 0) -> None:
        self.fail_first = fail_first
        self.refuse = refuse
        self.attempts = 0
        self.records: list[DeadLetter] = []

    async def start(self) -> None:
        """Nothing to connect."""

    async def write(self, record: DeadLetter) -> None:
        self.attempts += 1
        if self.attempts <= self.fail_first:
            raise OSError(f"sink down (write {self.attempts})")
        if self.attempts <= self.fail_first + self.refuse:
            raise SinkRefused("NOT_FOUND - no exchange 'dlx' in vhost '/'")
        self.records.append(record)

    async def close(self) -> None:
        """Nothing to close."""


@dataclass
class Settlements:
    """What the dispatcher handed back, per event id, in order."""

    by_id: dict[str, list[Disposition]] = field(default_factory=lambda: defaultdict(list))

    async def settler(self, event: Event, disposition: Disposition) -> None:
        self.by_id[event.id].append(disposition)

    def count(self) -> int:
        return sum(len(v) for v in self.by_id.values())

    async def wait(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < count:
            assert time.monotonic() < deadline, f"only {self.count()} of {count} settled"
            await asyncio.sleep(0.01)


def resolved(
    url: str, *, concurrency: int = 10, timeout: str = "5s", attempts: int = 5,
    backoff: str = "10ms", name: str = "orders",
) -> ResolvedTrigger:
    config = parse_config(
        "defaults: {dead_letter: {file: {path: /unused}}}\n"
        f"functions: {{fn: {{url: '{url}'}}}}\n"
        f"triggers: [{{name: {name}, function: fn, concurrency: {concurrency}, "
        f"timeout: {timeout}, cron: {{schedule: '@daily'}}, "
        f"retry: {{max_attempts: {attempts}, initial_backoff: {backoff}, jitter: false}}}}]\n",
        env={},
    )
    return config.resolve(config.triggers[0])


@dataclass
class Rig:
    fn: RecordingFunction
    session: aiohttp.ClientSession
    metrics: Metrics = field(default_factory=Metrics)
    settlements: Settlements = field(default_factory=Settlements)
    sink: MemorySink = field(default_factory=MemorySink)
    fallback: MemorySink | None = None

    def target(self, max_concurrency: int | None = None) -> Target:
        return Target("fn", BalancedPool([self.fn.url]), max_concurrency=max_concurrency)

    def dispatcher(
        self, trigger: ResolvedTrigger | None = None, *, target: Target | None = None,
        ordering: Ordering = "none", max_unsettled: int | None = None,
    ) -> Dispatcher:
        return Dispatcher(
            trigger or resolved(self.fn.url),
            target=target or self.target(), invoker=Invoker(self.session), sink=self.sink,
            metrics=self.metrics, log=get_logger(test=True), fallback=self.fallback,
            ordering=ordering, max_unsettled=max_unsettled,
        )

    def event(self, event_id: str, **fields: object) -> Event:
        return Event(
            trigger="orders", id=event_id, source="test", type="test.event",
            data=f'{{"id": "{event_id}"}}'.encode(), content_type="application/json",
            origin=f"test/{event_id}", settler=self.settlements.settler, **fields,  # type: ignore[arg-type]
        )

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    async with RecordingFunction() as fn, Invoker.new_session() as session:
        yield Rig(fn, session)


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# --- retries and outcomes ----------------------------------------------------------------


@pytest.mark.parametrize("failures", [0, 1, 3])
async def test_fails_n_times_then_succeeds(rig: Rig, failures: int) -> None:
    rig.fn.behaviour = lambda call, n: Reply(status=503 if n <= failures else 200)
    dispatcher = rig.dispatcher()
    await dispatcher.submit(rig.event("e1"))
    await rig.settlements.wait(1)
    assert rig.fn.attempts["e1"] == failures + 1
    assert rig.settlements.by_id["e1"] == [Disposition.DELIVERED]
    assert [c.headers["bridge-attempt"] for c in rig.fn.calls] == [
        str(n) for n in range(1, failures + 2)
    ]
    assert rig.sink.records == []
    assert rig.metric("bridge_retries_total", trigger="orders", function="fn") == failures
    assert dispatcher.unsettled == 0
    assert await dispatcher.drain(1)


async def test_permanent_failure_is_dead_lettered_without_retry(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(status=422, body="order id must be even")
    await rig.dispatcher().submit(rig.event("e1", key=b"k1", headers=(("h", b"v"),)))
    await rig.settlements.wait(1)
    assert rig.fn.attempts["e1"] == 1
    assert rig.settlements.by_id["e1"] == [Disposition.DEAD_LETTERED]
    (record,) = rig.sink.records
    assert (record.error, record.last_status, record.attempts) == ("http_422", 422, 1)
    assert record.error_detail == "order id must be even"
    assert (record.trigger, record.function, record.source) == ("orders", "fn", "test/e1")
    assert (record.body, record.key, record.headers) == (b'{"id": "e1"}', b"k1", (("h", b"v"),))
    assert rig.metric(
        "bridge_dead_letters_total", trigger="orders", function="fn", reason="http_422"
    ) == 1


async def test_attempts_exhausted_go_to_dead_letter(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(status=503)
    await rig.dispatcher(resolved(rig.fn.url, attempts=3)).submit(rig.event("e1"))
    await rig.settlements.wait(1)
    assert rig.fn.attempts["e1"] == 3
    (record,) = rig.sink.records
    assert (record.error, record.last_status, record.attempts) == ("http_503", 503, 3)
    assert rig.settlements.by_id["e1"] == [Disposition.DEAD_LETTERED]


async def test_timeout_is_retried(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=1.0 if n == 1 else 0.0)
    trigger = resolved(rig.fn.url, timeout="200ms")
    started = time.monotonic()
    await rig.dispatcher(trigger).submit(rig.event("e1"))
    await rig.settlements.wait(1)
    assert rig.fn.attempts["e1"] == 2
    assert rig.settlements.by_id["e1"] == [Disposition.DELIVERED]
    assert time.monotonic() - started < 1.0  # did not wait for the slow first reply
    assert rig.metric(
        "bridge_invocations_total", trigger="orders", function="fn", outcome="retryable"
    ) == 1


async def test_retry_after_is_honoured(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: (
        Reply(status=429, headers={"Retry-After": "1"}) if n == 1 else Reply()
    )
    await rig.dispatcher().submit(rig.event("e1"))
    await rig.settlements.wait(1, timeout=5)
    first, second = sorted(c.received for c in rig.fn.calls)
    assert second - first >= 0.95  # not our 10 ms backoff


async def test_defect_is_dead_lettered_and_never_invoked(rig: Rig) -> None:
    await rig.dispatcher().submit(rig.event("bad", defect="ce-specversion 0.1 is not supported"))
    await rig.settlements.wait(1)
    assert rig.fn.calls == []
    (record,) = rig.sink.records
    assert (record.error, record.attempts, record.last_status) == ("invalid_message", 0, None)
    assert record.error_detail == "ce-specversion 0.1 is not supported"
    assert rig.settlements.by_id["bad"] == [Disposition.DEAD_LETTERED]


# --- dead-letter sink failures --------------------------------------------------------------


async def test_sink_failures_keep_the_event_unsettled_until_the_write_succeeds(rig: Rig) -> None:
    rig.sink.fail_first = 2
    rig.fn.behaviour = lambda call, n: Reply(status=400)
    dispatcher = rig.dispatcher()
    event = rig.event("e1")
    await dispatcher.submit(event)
    await until(lambda: rig.sink.attempts >= 2)
    assert event.settled is None
    assert rig.settlements.count() == 0
    assert dispatcher.unsettled == 1
    await rig.settlements.wait(1, timeout=10)
    assert rig.sink.attempts == 3
    assert len(rig.sink.records) == 1
    assert rig.settlements.by_id["e1"] == [Disposition.DEAD_LETTERED]
    assert rig.fn.attempts["e1"] == 1  # the function is not called again
    assert rig.metric("bridge_dead_letter_write_failures_total", trigger="orders") == 2


async def test_drain_leaves_an_event_whose_dead_letter_cannot_be_written(rig: Rig) -> None:
    rig.sink.fail_first = 10**6
    rig.fn.behaviour = lambda call, n: Reply(status=400)
    dispatcher = rig.dispatcher()
    event = rig.event("e1")
    await dispatcher.submit(event)
    await until(lambda: rig.sink.attempts >= 1)
    assert await dispatcher.drain(2)
    assert event.settled is None  # nothing dropped: the source redelivers it
    assert rig.settlements.count() == 0


async def test_a_refused_dead_letter_goes_to_the_fallback_at_once(rig: Rig) -> None:
    rig.sink.refuse = 1
    rig.fallback = MemorySink()
    rig.fn.behaviour = lambda call, n: Reply(status=400)
    dispatcher = rig.dispatcher()
    await dispatcher.submit(rig.event("e1"))
    await rig.settlements.wait(1, timeout=5)
    assert rig.settlements.by_id["e1"] == [Disposition.DEAD_LETTERED]
    assert rig.sink.records == []
    [record] = rig.fallback.records
    assert record.refused == "NOT_FOUND - no exchange 'dlx' in vhost '/'"
    assert ("bridge-sink-refused", record.refused) in record.bridge_headers()
    assert rig.metric("bridge_dead_letter_fallbacks_total", trigger="orders") == 1
    assert rig.metric("bridge_dead_letter_blocked", trigger="orders") == 0


async def test_a_refusal_without_fallback_blocks_the_event_until_the_sink_takes_it(
    rig: Rig,
) -> None:
    rig.sink.refuse = 2
    rig.fn.behaviour = lambda call, n: Reply(status=400)
    dispatcher = rig.dispatcher()
    event = rig.event("e1")
    await dispatcher.submit(event)
    await until(lambda: rig.sink.attempts >= 1)
    assert dispatcher.blocked == 1
    assert rig.metric("bridge_dead_letter_blocked", trigger="orders") == 1
    assert event.settled is None
    assert dispatcher.unsettled == 1
    await rig.settlements.wait(1, timeout=10)  # the 3rd write is taken: fixed meanwhile
    assert [r.refused for r in rig.sink.records] == [""]
    assert dispatcher.blocked == 0
    assert rig.metric("bridge_dead_letter_blocked", trigger="orders") == 0


async def test_a_fallback_that_is_down_is_retried_and_the_event_is_not_blocked(
    rig: Rig,
) -> None:
    rig.sink.refuse = 10**6
    rig.fallback = MemorySink(fail_first=2)
    rig.fn.behaviour = lambda call, n: Reply(status=400)
    dispatcher = rig.dispatcher()
    await dispatcher.submit(rig.event("e1"))
    await rig.settlements.wait(1, timeout=10)
    assert rig.sink.attempts == 1, "the main sink's refusal is taken as final for the record"
    assert rig.fallback.attempts == 3
    assert len(rig.fallback.records) == 1
    assert dispatcher.blocked == 0
    assert rig.metric("bridge_dead_letter_write_failures_total", trigger="orders") == 2


async def test_refused_by_both_blocks_then_the_main_sink_is_tried_again(rig: Rig) -> None:
    rig.sink.refuse = 2
    rig.fallback = MemorySink(refuse=10**6)
    rig.fn.behaviour = lambda call, n: Reply(status=400)
    dispatcher = rig.dispatcher()
    await dispatcher.submit(rig.event("e1"))
    await until(lambda: dispatcher.blocked == 1)
    await rig.settlements.wait(1, timeout=10)
    assert [r.refused for r in rig.sink.records] == [""]  # the main sink, unmarked
    assert rig.fallback.attempts == 2
    assert rig.fallback.records == []
    assert dispatcher.blocked == 0


async def test_drain_leaves_a_blocked_event_unsettled_and_unblocks_the_gauge(rig: Rig) -> None:
    rig.sink.refuse = 10**6
    rig.fn.behaviour = lambda call, n: Reply(status=400)
    dispatcher = rig.dispatcher()
    event = rig.event("e1")
    await dispatcher.submit(event)
    await until(lambda: dispatcher.blocked == 1)
    assert await dispatcher.drain(2)
    assert event.settled is None
    assert dispatcher.blocked == 0
    assert rig.metric("bridge_dead_letter_blocked", trigger="orders") == 0


# --- concurrency ----------------------------------------------------------------------------


async def test_trigger_concurrency_cap(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=0.1)
    dispatcher = rig.dispatcher(resolved(rig.fn.url, concurrency=4))
    for i in range(16):
        await dispatcher.submit(rig.event(f"e{i}"))
    await rig.settlements.wait(16)
    assert rig.fn.max_in_flight == 4


async def test_function_quota_is_shared_by_triggers(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=0.1)
    target = rig.target(max_concurrency=3)
    first = rig.dispatcher(resolved(rig.fn.url, name="a"), target=target)
    second = rig.dispatcher(resolved(rig.fn.url, name="b"), target=target)
    for i in range(10):
        await first.submit(rig.event(f"a{i}"))
        await second.submit(rig.event(f"b{i}"))
    await rig.settlements.wait(20)
    assert rig.fn.max_in_flight == 3
    assert len(rig.fn.calls) == 20


async def test_submit_waits_when_max_unsettled_are_open(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=0.3)
    dispatcher = rig.dispatcher(max_unsettled=2)
    await dispatcher.submit(rig.event("e1"))
    await dispatcher.submit(rig.event("e2"))
    third = asyncio.create_task(dispatcher.submit(rig.event("e3")))
    await asyncio.sleep(0.1)
    assert not third.done()  # backpressure: the connector is held here
    await asyncio.wait_for(third, 5)
    await rig.settlements.wait(3)


# --- ordering ---------------------------------------------------------------------------------


class LaneProbe:
    """Function behaviour recording, per lane, the arrival order and peak concurrency."""

    def __init__(self, lane_header: str, delay: float = 0.05) -> None:
        self.header = lane_header
        self.delay = delay
        self.order: dict[str, list[str]] = defaultdict(list)
        self.active: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self.fail_once: set[str] = set()

    async def __call__(self, call: Call, n: int) -> Reply:
        lane = call.headers[self.header]
        self.order[lane].append(call.event_id)
        self.active[lane] += 1
        self.peak[lane] = max(self.peak[lane], self.active[lane])
        await asyncio.sleep(self.delay)
        self.active[lane] -= 1
        if call.event_id in self.fail_once and n == 1:
            return Reply(status=500)
        return Reply()


async def test_key_ordering_keeps_order_per_key_and_runs_keys_in_parallel(rig: Rig) -> None:
    probe = LaneProbe("ce-partitionkey")
    probe.fail_once = {"a1"}  # a retry holds its key's lane, not the others
    rig.fn.behaviour = probe
    dispatcher = rig.dispatcher(ordering="key")
    for i in range(4):
        for key in "abc":
            await dispatcher.submit(rig.event(
                f"{key}{i}", ordering_key=key, partition="p0", extensions={"partitionkey": key}
            ))
    await rig.settlements.wait(12)
    assert probe.order["a"] == ["a0", "a1", "a1", "a2", "a3"]
    assert probe.order["b"] == ["b0", "b1", "b2", "b3"]
    assert probe.order["c"] == ["c0", "c1", "c2", "c3"]
    assert all(peak == 1 for peak in probe.peak.values())
    assert rig.fn.max_in_flight == 3  # three keys at once


async def test_key_ordering_falls_back_to_the_partition(rig: Rig) -> None:
    probe = LaneProbe("ce-lane")
    rig.fn.behaviour = probe
    dispatcher = rig.dispatcher(ordering="key")
    for i in range(3):
        await dispatcher.submit(rig.event(f"n{i}", partition="p7", extensions={"lane": "p7"}))
    await rig.settlements.wait(3)
    assert probe.order["p7"] == ["n0", "n1", "n2"]
    assert probe.peak["p7"] == 1


async def test_partition_ordering_is_one_at_a_time_per_partition(rig: Rig) -> None:
    probe = LaneProbe("ce-lane")
    rig.fn.behaviour = probe
    dispatcher = rig.dispatcher(ordering="partition")
    for i in range(4):
        for partition in ("p0", "p1"):
            await dispatcher.submit(rig.event(
                f"{partition}-{i}", ordering_key=f"key{i}", partition=partition,
                extensions={"lane": partition},
            ))
    await rig.settlements.wait(8)
    assert probe.order["p0"] == [f"p0-{i}" for i in range(4)]
    assert probe.order["p1"] == [f"p1-{i}" for i in range(4)]
    assert probe.peak == {"p0": 1, "p1": 1}
    assert rig.fn.max_in_flight == 2


async def test_no_ordering_is_fully_parallel(rig: Rig) -> None:
    probe = LaneProbe("ce-lane", delay=0.1)
    rig.fn.behaviour = probe
    dispatcher = rig.dispatcher(ordering="none")
    for i in range(5):
        await dispatcher.submit(rig.event(
            f"e{i}", ordering_key="same", partition="p0", extensions={"lane": "p0"}
        ))
    await rig.settlements.wait(5)
    assert probe.peak["p0"] == 5


# --- shutdown and cancellation ------------------------------------------------------------


async def test_drain_lets_in_flight_finish_and_leaves_backing_off_unsettled(rig: Rig) -> None:
    def behaviour(call: Call, n: int) -> Reply:
        return Reply(status=503) if call.event_id == "retrying" else Reply(delay=0.5)

    rig.fn.behaviour = behaviour
    dispatcher = rig.dispatcher(resolved(rig.fn.url, backoff="30s"))
    slow, retrying = rig.event("slow"), rig.event("retrying")
    await dispatcher.submit(slow)
    await dispatcher.submit(retrying)
    await until(lambda: rig.fn.attempts.get("retrying") == 1 and rig.fn.in_flight == 1)
    await asyncio.sleep(0.05)  # the 503 reply reaches the dispatcher, which starts backing off
    started = time.monotonic()
    assert await dispatcher.drain(5)
    assert time.monotonic() - started < 2  # no waiting out the 30 s backoff
    assert slow.settled is Disposition.DELIVERED
    assert retrying.settled is None
    assert rig.settlements.by_id["retrying"] == []
    assert rig.fn.attempts["retrying"] == 1
    assert dispatcher.unsettled == 0


async def test_drain_timeout_cancels_what_is_left_unsettled(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=1.0)
    dispatcher = rig.dispatcher(resolved(rig.fn.url, timeout="10s"))
    event = rig.event("stuck")
    await dispatcher.submit(event)
    await until(lambda: rig.fn.in_flight > 0)
    assert not await dispatcher.drain(0.2)
    assert event.settled is None
    assert rig.settlements.count() == 0


async def test_no_new_attempt_starts_after_drain(rig: Rig) -> None:
    dispatcher = rig.dispatcher()
    assert await dispatcher.drain(1)
    event = rig.event("late")
    await dispatcher.submit(event)
    assert await dispatcher.drain(1)
    assert rig.fn.calls == []
    assert event.settled is None


async def test_cancel_settles_abandoned(rig: Rig) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=0.8)
    dispatcher = rig.dispatcher()
    event = rig.event("running")
    await dispatcher.submit(event)
    await until(lambda: rig.fn.in_flight > 0)
    assert event.cancel()
    await rig.settlements.wait(1)
    assert rig.settlements.by_id["running"] == [Disposition.ABANDONED]
    assert event.settled is Disposition.ABANDONED
    assert rig.sink.records == []
    assert not event.cancel()  # already finished
    assert await dispatcher.drain(1)


@pytest.mark.parametrize("ordering", ["none", "key"])
async def test_a_cancelled_event_ends_alone_and_its_worker_goes_on(
    rig: Rig, ordering: Ordering
) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=0.8 if call.event_id == "first" else 0.0)
    dispatcher = rig.dispatcher(resolved(rig.fn.url, concurrency=1), ordering=ordering)
    first = rig.event("first", ordering_key="k", partition="p0")
    second = rig.event("second", ordering_key="k", partition="p0")
    await dispatcher.submit(first)
    await dispatcher.submit(second)
    await until(lambda: rig.fn.in_flight > 0)
    assert first.cancel()
    await rig.settlements.wait(2)
    assert rig.settlements.by_id == {
        "first": [Disposition.ABANDONED], "second": [Disposition.DELIVERED]
    }
    assert not second.cancel()
    assert await dispatcher.drain(1)


async def test_a_backoff_lends_its_place_and_attempts_stay_bounded(rig: Rig) -> None:
    def behaviour(call: Call, n: int) -> Reply:
        if call.event_id == "flaky" and n == 1:
            return Reply(status=503)
        return Reply(delay=0.2)

    rig.fn.behaviour = behaviour
    dispatcher = rig.dispatcher(resolved(rig.fn.url, concurrency=2, backoff="100ms"))
    await dispatcher.submit(rig.event("flaky"))
    await until(lambda: rig.fn.attempts.get("flaky") == 1)
    for i in range(6):
        await dispatcher.submit(rig.event(f"e{i}"))
    await rig.settlements.wait(7)
    # While "flaky" backed off, two others ran; back from its backoff it waited for a
    # slot: never more than two attempts at once.
    assert rig.fn.max_in_flight == 2
    assert rig.fn.attempts["flaky"] == 2
    assert dispatcher.unsettled == 0
    assert await dispatcher.drain(1)


@pytest.mark.parametrize("ordering", ["none", "key"])
async def test_events_the_source_took_back_are_never_started(
    rig: Rig, ordering: Ordering
) -> None:
    rig.fn.behaviour = lambda call, n: Reply(delay=0.3 if call.event_id == "first" else 0.0)
    channel_open = [True]
    dispatcher = rig.dispatcher(resolved(rig.fn.url, concurrency=1), ordering=ordering)
    events = [rig.event(name, ordering_key="k", partition="p0",
                        stale=lambda: not channel_open[0])
              for name in ("first", "waiting-1", "waiting-2")]
    for event in events:
        await dispatcher.submit(event)
    await until(lambda: rig.fn.in_flight > 0)
    channel_open[0] = False  # the connection dropped: the broker has the others back
    await until(lambda: dispatcher.unsettled == 0)
    assert [call.event_id for call in rig.fn.calls] == ["first"]
    assert rig.settlements.by_id == {"first": [Disposition.DELIVERED]}
    assert rig.metric("bridge_events_withdrawn_total", trigger="orders") == 2
    later = rig.event("after-reconnect", ordering_key="k", partition="p0")
    await dispatcher.submit(later)  # the lane goes on with new deliveries
    await rig.settlements.wait(2)
    assert later.settled is Disposition.DELIVERED
    assert await dispatcher.drain(1)


async def test_an_event_starts_one_worker_not_a_whole_pool(rig: Rig) -> None:
    dispatcher = rig.dispatcher(resolved(rig.fn.url, concurrency=50))
    before = len(asyncio.all_tasks())
    await dispatcher.submit(rig.event("one"))
    assert len(asyncio.all_tasks()) - before == 1
    for i in range(3):
        await dispatcher.submit(rig.event(f"more-{i}"))
    assert len(asyncio.all_tasks()) - before == 4  # one per ready event, up to concurrency
    await rig.settlements.wait(4)
    assert await dispatcher.drain(1)


async def test_settle_is_called_exactly_once(rig: Rig) -> None:
    dispatcher = rig.dispatcher()
    events = [rig.event(f"e{i}") for i in range(20)]
    for event in events:
        await dispatcher.submit(event)
    await rig.settlements.wait(20)
    await asyncio.sleep(0.05)
    assert all(v == [Disposition.DELIVERED] for v in rig.settlements.by_id.values())
    await events[0].settle(Disposition.DEAD_LETTERED)  # a second settle is ignored
    assert rig.settlements.by_id["e0"] == [Disposition.DELIVERED]


# --- bugs inside the bridge (issue 15, item 11) ------------------------------------------


class RaisingInvoker(Invoker):
    """The real invoker, except that it raises (a bug) for the events named."""

    def __init__(self, session: aiohttp.ClientSession, bad: set[str]) -> None:
        super().__init__(session)
        self.bad = bad

    async def invoke(  # type: ignore[override]
        self, target: Target, event: Event, *args: object, **kwargs: object
    ) -> Outcome:
        if event.id in self.bad:
            raise KeyError("injected bug")
        return await super().invoke(target, event, *args, **kwargs)  # type: ignore[arg-type]


def buggy(rig: Rig, bad: set[str], ordering: Ordering = "none") -> Dispatcher:
    return Dispatcher(
        resolved(rig.fn.url, attempts=3),
        target=rig.target(), invoker=RaisingInvoker(rig.session, bad), sink=rig.sink,
        metrics=rig.metrics, log=get_logger(test=True), ordering=ordering,
    )


async def test_an_invoker_bug_dead_letters_the_event_as_internal_error(rig: Rig) -> None:
    dispatcher = buggy(rig, {"bad"}, ordering="key")
    for name in ("before", "bad", "after"):
        await dispatcher.submit(rig.event(name, ordering_key="k"))
    await rig.settlements.wait(3)
    assert rig.settlements.by_id == {
        "before": [Disposition.DELIVERED], "bad": [Disposition.DEAD_LETTERED],
        "after": [Disposition.DELIVERED],
    }
    (record,) = rig.sink.records
    assert (record.error, record.attempts) == ("internal_error", 1)
    assert record.error_detail == "KeyError: 'injected bug'"
    assert rig.metric("bridge_internal_errors_total", trigger="orders") == 1
    assert rig.metric("bridge_dead_letters_total", trigger="orders", function="fn",
                      reason="internal_error") == 1
    assert dispatcher.unsettled == 0
    assert await dispatcher.drain(1)


async def test_a_bug_outside_the_invoker_dead_letters_the_event(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_backoff(*args: object) -> float:
        raise ZeroDivisionError("injected bug")

    monkeypatch.setattr("bridge.dispatcher.backoff", broken_backoff)
    rig.fn.behaviour = lambda call, n: Reply(status=503)
    dispatcher = rig.dispatcher()
    await dispatcher.submit(rig.event("e1"))
    await rig.settlements.wait(1)
    assert rig.settlements.by_id["e1"] == [Disposition.DEAD_LETTERED]
    (record,) = rig.sink.records
    assert record.error == "internal_error"
    assert record.error_detail == "ZeroDivisionError: injected bug"
    assert rig.metric("bridge_internal_errors_total", trigger="orders") == 1
    assert await dispatcher.drain(1)


async def test_a_bug_that_also_breaks_the_dead_letter_hands_the_event_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_record(*args: object, **kwargs: object) -> DeadLetter:
        raise TypeError("injected bug in the record")

    monkeypatch.setattr("bridge.dispatcher.DeadLetter.of", broken_record)
    dispatcher = buggy(rig, {"bad"})
    await dispatcher.submit(rig.event("bad"))
    await rig.settlements.wait(1)
    assert rig.settlements.by_id["bad"] == [Disposition.ABANDONED]
    assert rig.sink.records == []
    # Every exception counts: the invoker's, then the record's on each of the two tries.
    assert rig.metric("bridge_internal_errors_total", trigger="orders") == 3
    assert dispatcher.unsettled == 0
    assert await dispatcher.drain(1)


async def test_a_stale_check_that_raises_still_runs_the_event(rig: Rig) -> None:
    def broken() -> bool:
        raise RuntimeError("injected bug")

    dispatcher = rig.dispatcher()
    await dispatcher.submit(rig.event("e1", stale=broken))
    await rig.settlements.wait(1)
    assert rig.settlements.by_id["e1"] == [Disposition.DELIVERED]
    assert await dispatcher.drain(1)
