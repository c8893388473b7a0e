"""Where a trigger's events come from: the ``kafka``, ``rabbitmq`` and ``cron`` sources,
and the broker connection settings (TLS, SASL) the dead-letter sinks share.

Settings that would be silently ignored are refused: SASL credentials without a SASL
protocol, ``tls`` without TLS, a heartbeat no shorter than the session timeout, a cron
schedule or time zone that does not parse (reported at ``schedule`` or ``time_zone``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from bridge.config.fields import AmqpUrl, Duration, FieldError, Servers, Strict, as_list
from bridge.schedule import (
    Calendar,
    ScheduleError,
    parse_exclusion,
    parse_schedule,
    shortest_interval,
)


class TlsConfig(Strict):
    """TLS for broker connections. Files are paths (mounted secrets)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    key_password: SecretStr | None = None
    verify: bool = True


class SaslConfig(Strict):
    """SASL credentials; put the password in ``${ENV}`` (it is never logged)."""

    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str = Field(min_length=1)
    password: SecretStr


KafkaProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]


def kafka_security_problem(
    protocol: str, sasl: SaslConfig | None, tls: TlsConfig | None
) -> str | None:
    """Reject settings that would be silently ignored (credentials sent nowhere, no TLS)."""
    if protocol.startswith("SASL") and sasl is None:
        return f"security_protocol {protocol} needs a 'sasl' section"
    if sasl is not None and not protocol.startswith("SASL"):
        return f"'sasl' needs security_protocol SASL_PLAINTEXT or SASL_SSL, not {protocol}"
    if tls is not None and not protocol.endswith("SSL"):
        return f"'tls' needs security_protocol SSL or SASL_SSL, not {protocol}"
    return None


class KafkaConnection(Strict):
    """Settings shared by the Kafka source and the Kafka dead-letter sink."""

    bootstrap_servers: Servers
    security_protocol: KafkaProtocol = "PLAINTEXT"
    sasl: SaslConfig | None = None
    tls: TlsConfig | None = None
    client_id: str = Field("trigger-bridge", min_length=1)

    @model_validator(mode="after")
    def _security_is_consistent(self) -> KafkaConnection:
        problem = kafka_security_problem(self.security_protocol, self.sasl, self.tls)
        if problem:
            raise ValueError(problem)
        return self


def check_tls_scheme(url: SecretStr | None, tls: TlsConfig | None) -> None:
    """``tls`` with an ``amqp://`` URL would be ignored: refused (at ``tls``)."""
    if url is not None and tls is not None and not url.get_secret_value().startswith("amqps://"):
        raise FieldError("tls", "'tls' needs an amqps:// url (TLS is not used with amqp://)")


class KafkaSource(KafkaConnection):
    """``kafka:`` source of a trigger (see docs/kafka.md)."""

    topics: list[str] = Field(min_length=1)
    group_id: str = Field(min_length=1)
    #: Where a group without a committed offset (or with an expired one) starts.
    initial_offset: Literal["earliest", "latest"] = "earliest"
    ordering: Literal["key", "partition", "none"] = "key"
    #: Records taken but not yet settled; at the limit fetching pauses (backpressure).
    max_unsettled: int = Field(1000, ge=1)
    commit_interval: Duration = Field(1.0, gt=0)
    session_timeout: Duration = Field(30.0, gt=0)
    heartbeat_interval: Duration = Field(3.0, gt=0)
    #: On rebalance, how long revoked partitions' in-flight records get to settle
    #: (never more than half the session timeout).
    revoke_timeout: Duration = Field(10.0, ge=0)
    max_poll_records: int = Field(500, ge=1)

    @field_validator("topics", mode="before")
    @classmethod
    def _topics_list(cls, value: object) -> object:
        return as_list(value)

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaSource:
        if self.heartbeat_interval >= self.session_timeout:
            raise FieldError(
                "heartbeat_interval",
                f"must be shorter than session_timeout ({self.session_timeout:g}s); "
                "a third of it is usual",
            )
        return self


class RabbitDeclare(Strict):
    """Optional topology the bridge declares before consuming (idempotent; re-declared
    after a reconnect). Without it the queue must already exist."""

    durable: bool = True
    #: Queue arguments, e.g. ``x-queue-type: quorum``, ``x-dead-letter-exchange``,
    #: ``x-delivery-limit``.
    arguments: dict[str, Any] = Field(default_factory=dict)
    #: Declare this exchange too and bind the queue to it.
    exchange: str | None = None
    exchange_type: Literal["direct", "fanout", "topic", "headers"] = "direct"
    #: Binding key (default: the queue name).
    routing_key: str | None = None

    @model_validator(mode="after")
    def _quorum_is_durable(self) -> RabbitDeclare:
        if self.arguments.get("x-queue-type") in ("quorum", "stream") and not self.durable:
            raise FieldError("durable", "quorum and stream queues must be durable")
        if self.routing_key is not None and self.exchange is None:
            raise FieldError("routing_key", "a binding 'routing_key' needs an 'exchange'")
        return self


class RabbitSource(Strict):
    url: AmqpUrl
    queue: str = Field(min_length=1, max_length=255)
    #: basic.qos: messages delivered and not yet acked; also the bridge's in-flight bound.
    prefetch: int = Field(50, ge=1, le=65535)
    declare: RabbitDeclare | None = None
    ordering: Literal["none", "key"] = "none"
    #: With ``ordering: key``: the header holding the key (default: the routing key).
    ordering_header: str | None = None
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _consistent(self) -> RabbitSource:
        if self.ordering_header is not None and self.ordering != "key":
            raise FieldError("ordering_header", "'ordering_header' needs 'ordering: key'")
        check_tls_scheme(self.url, self.tls)
        return self


def _parse_moment(value: object) -> object:
    """An ISO 8601 time (a datetime from YAML passes as it is)."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"expected an ISO 8601 time such as 2026-03-01T00:00:00Z, got {value!r}")


#: A point in time; without an offset it is read in the trigger's time_zone.
Moment = Annotated[datetime, BeforeValidator(_parse_moment)]


#: The overlap policies: CronJob's three, and two that queue ticks (Temporal's
#: BufferOne and BufferAll).
ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace", "BufferOne", "BufferAll"]


class CronSource(Strict):
    schedule: str
    time_zone: str = "UTC"
    concurrency_policy: ConcurrencyPolicy = "Allow"
    #: ``BufferAll``: ticks waiting for the running one at most; past it the newest
    #: tick is skipped (counted as ``buffer_full``).
    max_buffered: int = Field(100, ge=1, le=10_000)
    starting_deadline: Duration | None = None
    suspend: bool = False
    #: Suspend the trigger after a tick ends dead-lettered, until resumed.
    pause_on_failure: bool = False
    #: Each tick is delayed by a pseudo-random time below this (id and ce-time keep the
    #: scheduled time).
    jitter: Duration = 0.0
    #: No tick before / after these times (ISO 8601; without an offset: in time_zone).
    start_at: Moment | None = None
    end_at: Moment | None = None
    #: Days not to fire: dates (2026-12-25) or cron expressions (every day they fire on).
    exclude: list[str] = Field(default_factory=list)
    data: Any = None
    content_type: str = "application/json"

    @model_validator(mode="after")
    def _schedule_parses(self) -> CronSource:
        try:
            schedule = parse_schedule(self.schedule, self.time_zone)
        except ScheduleError as err:
            # only the zone's own errors belong to time_zone ("time zone prefixes ..." is
            # about the schedule text)
            zone_error = str(err).startswith(("unknown time zone", "time zone must"))
            field = "time_zone" if zone_error else "schedule"
            raise FieldError(field, str(err)) from None
        for index, entry in enumerate(self.exclude):
            try:
                parse_exclusion(entry, self.time_zone)
            except ScheduleError as err:
                raise FieldError(f"exclude[{index}]", str(err)) from None
        if self.start_at and self.end_at and self.aware(self.end_at) <= self.aware(self.start_at):
            raise FieldError("end_at", f"must be after start_at ({self.start_at.isoformat()})")
        if self.jitter:
            interval = shortest_interval(schedule).total_seconds()
            if self.jitter >= interval:
                raise FieldError("jitter", (
                    f"{self.jitter:g}s is not shorter than the schedule's interval "
                    f"({interval:g}s between ticks of {self.schedule!r}): ticks would run "
                    "out of order; use a jitter below it"))
        return self

    def aware(self, moment: datetime) -> datetime:
        """``moment`` with the trigger's zone if it has none."""
        if moment.tzinfo is None:
            return moment.replace(tzinfo=ZoneInfo(self.time_zone))
        return moment

    def calendar(self) -> Calendar:
        """The schedule with its bounds and exclusions."""
        return Calendar(
            parse_schedule(self.schedule, self.time_zone),
            start_at=None if self.start_at is None else self.aware(self.start_at),
            end_at=None if self.end_at is None else self.aware(self.end_at),
            exclude=tuple(parse_exclusion(e, self.time_zone) for e in self.exclude),
        )
