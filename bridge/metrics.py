"""Prometheus metrics (DESIGN section 7), all prefixed ``bridge_``.

One :class:`Metrics` object owns its own registry and is passed to whatever records;
there are no module-level collectors, so tests and embedded uses never collide.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120,
)
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events_received = Counter(
            "bridge_events_received", "Events taken from a source.", ["trigger"], registry=r
        )
        self.invocations = Counter(
            "bridge_invocations",
            "Invocation attempts by outcome (delivered, retryable, permanent).",
            ["trigger", "function", "outcome"],
            registry=r,
        )
        self.invocation_duration = Histogram(
            "bridge_invocation_duration_seconds",
            "Duration of one invocation attempt.",
            ["trigger", "function"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "bridge_retries", "Attempts scheduled for retry.", ["trigger", "function"], registry=r
        )
        self.dead_letters = Counter(
            "bridge_dead_letters",
            "Events written to a dead-letter sink, by reason.",
            ["trigger", "function", "reason"],
            registry=r,
        )
        self.dead_letter_failures = Counter(
            "bridge_dead_letter_write_failures",
            "Failed dead-letter writes (the event stays unsettled and is retried).",
            ["trigger"],
            registry=r,
        )
        self.settled = Counter(
            "bridge_events_settled", "Events settled, by disposition.", ["trigger", "disposition"],
            registry=r,
        )
        self.in_flight = Gauge(
            "bridge_in_flight", "Invocations in flight.", ["trigger", "function"], registry=r
        )
        self.unsettled = Gauge(
            "bridge_unsettled_events", "Events taken but not yet settled.", ["trigger"], registry=r
        )
        self.overflow_invocations = Counter(
            "bridge_overflow_invocations",
            "Invocations sent to the overflow pool.",
            ["trigger", "function"],
            registry=r,
        )
        self.cron_fire_lag = Histogram(
            "bridge_cron_fire_lag_seconds",
            "Delay from a tick's scheduled time to its invocation being sent.",
            ["trigger"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.cron_skipped = Counter(
            "bridge_cron_ticks_skipped",
            "Cron ticks not run, by reason (missed_deadline, forbid, suspended).",
            ["trigger", "reason"],
            registry=r,
        )
        self.cron_replaced = Counter(
            "bridge_cron_runs_replaced", "Running cron invocations cancelled by Replace.",
            ["trigger"], registry=r,
        )
        self.kafka_lag = Gauge(
            "bridge_kafka_consumer_lag", "Records behind the partition's high watermark.",
            ["trigger", "topic", "partition"], registry=r,
        )
        self.kafka_commits = Counter(
            "bridge_kafka_commits", "Offset commits.", ["trigger"], registry=r
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
        self.connector_ready = Gauge(
            "bridge_connector_ready", "1 when the trigger's connector is connected.",
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
        self.kafka_assigned_partitions = Gauge(
            "bridge_kafka_assigned_partitions", "Partitions assigned to this consumer.",
            ["trigger"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
