"""Prometheus metrics (DESIGN section 7), all prefixed ``bridge_``.

One :class:`Metrics` object owns its own registry and is passed to whatever records;
there are no module-level collectors, so tests and embedded uses never collide.

Per-trigger figures (events, invocations, retries, dead letters, cron) live in a
plain :class:`TriggerStats` object per trigger and are exported by a custom collector
at scrape time: prometheus_client's labelled children hold memory and a lock per series,
too much with thousands of triggers (figures: docs/benchmarks.md, *Cron*). Plain
integers updated from the event loop's one thread need no lock.
Connector metrics with few series stay ordinary prometheus_client collectors.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from bridge.events import Disposition
from bridge.outcome import OutcomeKind

DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300)
#: Label values of ``outcome`` and ``disposition``: every value, so each series exists at 0.
OUTCOME_KINDS = tuple(kind.value for kind in OutcomeKind)
DISPOSITIONS = tuple(disposition.value for disposition in Disposition)


class Histogram:
    """A histogram without locks: per-bucket counts, cumulated at scrape time."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            running += n
            out.append((bound, float(running)))
        return out


@dataclass(slots=True, eq=False)
class TriggerStats:
    """Everything counted for one trigger."""

    trigger: str
    function: str
    received: int = 0
    in_flight: int = 0
    unsettled: int = 0
    retries: int = 0
    withdrawn: int = 0
    overflow: int = 0
    dead_letter_failures: int = 0
    dead_letter_fallbacks: int = 0
    dead_letter_blocked: int = 0
    internal_errors: int = 0
    #: A trigger with a ``reply`` (bridge.replies): its reply series are exported.
    replying: bool = False
    replies: int = 0
    reply_failures: int = 0
    #: Asked at scrape time for ``bridge_connector_ready``. None: no running connector
    #: (stopped, or the trigger could not be built), exported as 0.
    readiness: Callable[[], bool] | None = None
    outcomes: dict[str, int] = field(default_factory=dict)
    settled: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    duration: Histogram | None = None
    cron_lag: Histogram | None = None
    cron_skipped: dict[str, int] = field(default_factory=dict)
    cron_replaced: int = 0
    #: None unless the trigger pauses on failure; then True while paused.
    cron_paused: bool | None = None
    #: None unless the trigger buffers ticks (BufferOne, BufferAll).
    cron_buffered: int | None = None
    cron_manual: int = 0
    cron_backfilled: int = 0

    def outcome(self, kind: str, seconds: float) -> None:
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1
        if self.duration is None:
            self.duration = Histogram(DURATION_BUCKETS)
        self.duration.observe(seconds)

    def settle(self, disposition: str) -> None:
        self.settled[disposition] = self.settled.get(disposition, 0) + 1

    def dead_letter(self, reason: str) -> None:
        self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def skip(self, reason: str) -> None:
        self.cron_skipped[reason] = self.cron_skipped.get(reason, 0) + 1

    def fire_lag(self, seconds: float) -> None:
        if self.cron_lag is None:
            self.cron_lag = Histogram(LAG_BUCKETS)
        self.cron_lag.observe(seconds)


class _TriggerCollector:
    """Exports every TriggerStats as Prometheus families at scrape time."""

    def __init__(self, stats: dict[str, TriggerStats]) -> None:
        self._stats = stats

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        stats = list(self._stats.values())
        yield from self._counters(stats)
        yield from self._gauges(stats)
        yield from self._histograms(stats)

    def _counters(self, stats: list[TriggerStats]) -> Iterator[Metric]:
        t, tf = ["trigger"], ["trigger", "function"]
        received = CounterMetricFamily(
            "bridge_events_received", "Events taken from a source.", labels=t
        )
        invocations = CounterMetricFamily(
            "bridge_invocations", "Invocation attempts by outcome.", labels=[*tf, "outcome"]
        )
        retries = CounterMetricFamily("bridge_retries", "Attempts scheduled for retry.", labels=tf)
        overflow = CounterMetricFamily(
            "bridge_overflow_invocations", "Invocations sent to the overflow pool.", labels=tf
        )
        dead = CounterMetricFamily(
            "bridge_dead_letters", "Events written to a dead-letter sink, by reason.",
            labels=[*tf, "reason"],
        )
        dead_failed = CounterMetricFamily(
            "bridge_dead_letter_write_failures",
            "Failed dead-letter writes (the event stays unsettled and is retried).", labels=t,
        )
        fallbacks = CounterMetricFamily(
            "bridge_dead_letter_fallbacks",
            "Dead letters the sink refused for good, written to dead_letter.fallback.",
            labels=t,
        )
        internal = CounterMetricFamily(
            "bridge_internal_errors",
            "Unexpected errors (bugs) while handling an event; the event is dead-lettered "
            "with reason internal_error, or handed back to its source.", labels=t,
        )
        settled = CounterMetricFamily(
            "bridge_events_settled", "Events settled, by disposition.", labels=[*t, "disposition"]
        )
        withdrawn = CounterMetricFamily(
            "bridge_events_withdrawn",
            "Events the source took back before they started (it redelivers them).", labels=t,
        )
        skipped = CounterMetricFamily(
            "bridge_cron_ticks_skipped",
            "Cron ticks not run, by reason (missed_deadline, superseded, forbid, "
            "buffer_full, paused, not_leader).",
            labels=[*t, "reason"],
        )
        replaced = CounterMetricFamily(
            "bridge_cron_runs_replaced", "Running cron invocations cancelled by Replace.", labels=t
        )
        replies = CounterMetricFamily(
            "bridge_replies_published", "Function answers published as reply CloudEvents.",
            labels=tf,
        )
        reply_failed = CounterMetricFamily(
            "bridge_reply_publish_failures",
            "Failed reply publishes (the event stays unsettled and is retried).", labels=t,
        )
        manual = CounterMetricFamily(
            "bridge_cron_manual_runs", "Cron runs started by run-now.", labels=t
        )
        backfilled = CounterMetricFamily(
            "bridge_cron_backfill_ticks", "Cron ticks fired by a backfill.", labels=t
        )
        for s in stats:
            name, pair = [s.trigger], [s.trigger, s.function]
            received.add_metric(name, s.received)
            for kind in OUTCOME_KINDS:
                invocations.add_metric([*pair, kind], s.outcomes.get(kind, 0))
            retries.add_metric(pair, s.retries)
            overflow.add_metric(pair, s.overflow)
            for reason, n in s.dead_letters.items():
                dead.add_metric([*pair, reason], n)
            dead_failed.add_metric(name, s.dead_letter_failures)
            fallbacks.add_metric(name, s.dead_letter_fallbacks)
            internal.add_metric(name, s.internal_errors)
            withdrawn.add_metric(name, s.withdrawn)
            for disposition in DISPOSITIONS:
                settled.add_metric([*name, disposition], s.settled.get(disposition, 0))
            for reason, n in s.cron_skipped.items():
                skipped.add_metric([*name, reason], n)
            if s.cron_lag is not None or s.cron_replaced:
                replaced.add_metric(name, s.cron_replaced)
            if s.replying:
                replies.add_metric(pair, s.replies)
                reply_failed.add_metric(name, s.reply_failures)
            if s.cron_manual:
                manual.add_metric(name, s.cron_manual)
            if s.cron_backfilled:
                backfilled.add_metric(name, s.cron_backfilled)
        yield from (received, invocations, retries, overflow, dead, dead_failed, fallbacks,
                    internal, settled, withdrawn, skipped, replaced, replies, reply_failed,
                    manual, backfilled)

    def _gauges(self, stats: list[TriggerStats]) -> Iterator[Metric]:
        in_flight = GaugeMetricFamily(
            "bridge_in_flight", "Invocations in flight.", labels=["trigger", "function"]
        )
        unsettled = GaugeMetricFamily(
            "bridge_unsettled_events", "Events taken but not yet settled.", labels=["trigger"]
        )
        ready = GaugeMetricFamily(
            "bridge_connector_ready", "1 when the trigger's connector is connected.",
            labels=["trigger"],
        )
        blocked = GaugeMetricFamily(
            "bridge_dead_letter_blocked",
            "Events whose dead letter every sink refuses for good (unsettled, retried).",
            labels=["trigger"],
        )
        paused = GaugeMetricFamily(
            "bridge_cron_paused",
            "1 while a cron trigger with pause_on_failure is paused after a dead letter.",
            labels=["trigger"],
        )
        buffered = GaugeMetricFamily(
            "bridge_cron_buffered_ticks",
            "Cron ticks waiting for the running one (BufferOne, BufferAll).", labels=["trigger"],
        )
        for s in stats:
            if s.cron_paused is not None:
                paused.add_metric([s.trigger], 1 if s.cron_paused else 0)
            if s.cron_buffered is not None:
                buffered.add_metric([s.trigger], s.cron_buffered)
            in_flight.add_metric([s.trigger, s.function], s.in_flight)
            unsettled.add_metric([s.trigger], s.unsettled)
            ready.add_metric([s.trigger], 1 if s.readiness is not None and s.readiness() else 0)
            blocked.add_metric([s.trigger], s.dead_letter_blocked)
        yield from (in_flight, unsettled, ready, blocked, paused, buffered)

    def _histograms(self, stats: list[TriggerStats]) -> Iterator[Metric]:
        duration = HistogramMetricFamily(
            "bridge_invocation_duration_seconds", "Duration of one invocation attempt.",
            labels=["trigger", "function"],
        )
        lag = HistogramMetricFamily(
            "bridge_cron_fire_lag_seconds",
            "Delay from a tick's scheduled time to its hand-over to the dispatcher.",
            labels=["trigger"],
        )
        for s in stats:
            if s.duration is not None:
                duration.add_metric([s.trigger, s.function], s.duration.cumulative(),
                                    s.duration.total)
            if s.cron_lag is not None:
                lag.add_metric([s.trigger], s.cron_lag.cumulative(), s.cron_lag.total)
        yield from (duration, lag)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._triggers: dict[str, TriggerStats] = {}
        self.registry.register(_TriggerCollector(self._triggers))
        r = self.registry
        self.kafka_lag = Gauge(
            "bridge_kafka_consumer_lag", "Records behind the partition's high watermark.",
            ["trigger", "topic", "partition"], registry=r,
        )
        self.kafka_commits = Counter(
            "bridge_kafka_commits", "Offset commits.", ["trigger"], registry=r
        )
        self.control_requests = Counter(
            "bridge_control_requests",
            "Requests to the control endpoints (run-now, backfill, resume) by answer status "
            "(401: missing or wrong token).", ["action", "code"], registry=r,
        )
        self.source_paused = Gauge(
            "bridge_source_paused", "1 while the source is paused by backpressure.",
            ["trigger"], registry=r,
        )
        self.rabbitmq_connection_losses = Counter(
            "bridge_rabbitmq_connection_losses",
            "RabbitMQ connections lost (the connector reconnects by itself).",
            ["trigger"], registry=r,
        )
        self.rabbitmq_reconnects = Counter(
            "bridge_rabbitmq_reconnects",
            "RabbitMQ connections re-established with consuming resumed.",
            ["trigger"], registry=r,
        )
        self.rabbitmq_settle_failures = Counter(
            "bridge_rabbitmq_settle_failures",
            "Acks/rejects not sent because the delivery's channel was gone "
            "(the broker redelivers the message).",
            ["trigger"], registry=r,
        )
        self.rabbitmq_stale_deliveries = Counter(
            "bridge_rabbitmq_stale_deliveries",
            "Deliveries dropped before dispatch because their channel had closed "
            "(the broker requeued them).",
            ["trigger"], registry=r,
        )
        self.rabbitmq_consumer_cancels = Counter(
            "bridge_rabbitmq_consumer_cancels",
            "Consumers cancelled by the broker (queue deleted, leader moved); the connector "
            "consumes again with backoff.",
            ["trigger"], registry=r,
        )
        self.kafka_commit_failures = Counter(
            "bridge_kafka_commit_failures", "Offset commits that failed (retried later).",
            ["trigger"], registry=r,
        )
        self.kafka_rebalances = Counter(
            "bridge_kafka_rebalances", "Consumer group assignments received.", ["trigger"],
            registry=r,
        )
        self.kafka_unreadable_partitions = Gauge(
            "bridge_kafka_unreadable_partitions",
            "Assigned partitions paused because a batch cannot be decoded (codec missing).",
            ["trigger"], registry=r,
        )
        self.kafka_assigned_partitions = Gauge(
            "bridge_kafka_assigned_partitions", "Partitions assigned to this consumer.",
            ["trigger"], registry=r,
        )

        self.lease_failures = Counter(
            "bridge_lease_failures",
            "Failed rounds of the cron Lease loop by kind (api, timeout, malformed, internal; "
            "renew_deadline: stepped down unrenewed). The loop goes on.",
            ["lease", "kind"], registry=r,
        )
        self.task_crashes = Counter(
            "bridge_task_crashes",
            "Crashes of a supervised background task (bridge.supervisor), by task name; "
            "the task is restarted with backoff.",
            ["task"], registry=r,
        )
        self.function_concurrency_limit = Gauge(
            "bridge_function_concurrency_limit",
            "The adaptive concurrency limit of a function (concurrency.adaptive): how many "
            "invocations it is given at once now, within min/max and under the quota.",
            ["function"], registry=r,
        )
        self.cron_leader = Gauge(
            "bridge_cron_leader", "1 while this replica leads cron (holds the Lease, fires).",
            ["lease"], registry=r,
        )
        self.cluster_members = Gauge(
            "bridge_cluster_members",
            "Live replicas this one sees through the members Lease (itself included once "
            "its own is current).", registry=r,
        )
        self.quota_share = Gauge(
            "bridge_quota_share",
            "This replica's share of a cluster-wide quota (kind: function or team); 0 while "
            "not settled in the cluster.", ["kind", "quota"], registry=r,
        )

    def trigger(self, name: str, function: str = "") -> TriggerStats:
        """The stats of trigger ``name`` (created on first use)."""
        stats = self._triggers.get(name)
        if stats is None:
            stats = self._triggers[name] = TriggerStats(name, function)
        elif function and stats.function != function:
            stats.function = function
        return stats

    def function_limit(self, function: str, read: Callable[[], float] | None) -> None:
        """Export ``read()`` (asked at scrape time) as the function's adaptive limit;
        None drops the series (the function was removed or changed)."""
        if read is not None:
            self.function_concurrency_limit.labels(function).set_function(read)
        else:
            with contextlib.suppress(KeyError):
                self.function_concurrency_limit.remove(function)

    def forget(self, name: str) -> None:
        """Drop a removed trigger's series."""
        self._triggers.pop(name, None)

    def value(self, name: str, **labels: str) -> float | None:
        """One sample's value, e.g. ``value("bridge_retries_total", trigger="t", function="f")``."""
        return self.registry.get_sample_value(name, labels)

    def render(self) -> bytes:
        return generate_latest(self.registry)
