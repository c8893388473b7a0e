"""Triggers and the whole config: a trigger joins one source to one function, with
retries and a dead-letter sink; ``defaults`` fill what a trigger leaves out.

:meth:`BridgeConfig.resolve` gives a :class:`ResolvedTrigger`, every default applied
(the retry settings field by field), which is what the runtime builds from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bridge.config.fields import (
    Duration,
    FieldError,
    Name,
    Strict,
    Timeout,
    require_exactly_one,
)
from bridge.config.functions import FunctionConfig, QuotaConfig
from bridge.config.replies import ReplyConfig
from bridge.config.sinks import DeadLetterConfig
from bridge.config.sources import CronSource, KafkaSource, RabbitSource
from bridge.outcome import DEFAULT_RETRYABLE_STATUSES
from bridge.retry import RetryPolicy


class RetryConfig(Strict):
    max_attempts: int = Field(5, ge=1, le=1000)
    initial_backoff: Duration = 0.2
    max_backoff: Duration = 30.0
    multiplier: float = Field(2.0, ge=1.0, le=100.0)
    jitter: bool = True
    #: Non-5xx statuses that are retried (every 5xx always is).
    retryable_statuses: frozenset[int] = DEFAULT_RETRYABLE_STATUSES

    @field_validator("retryable_statuses")
    @classmethod
    def _statuses_are_errors(cls, value: frozenset[int]) -> frozenset[int]:
        bad = sorted(s for s in value if not 400 <= s <= 599)
        if bad:
            raise ValueError(f"retryable statuses must be 4xx or 5xx, got {bad}")
        return value

    def policy(self) -> RetryPolicy:
        return RetryPolicy(
            max_attempts=self.max_attempts,
            initial_backoff=self.initial_backoff,
            max_backoff=self.max_backoff,
            multiplier=self.multiplier,
            jitter=self.jitter,
        )


class Defaults(Strict):
    timeout: Timeout = 30.0
    retry: RetryConfig = RetryConfig()
    dead_letter: DeadLetterConfig | None = None
    concurrency: int = Field(100, ge=1)


SOURCE_KINDS = ("kafka", "rabbitmq", "cron")


class BatchConfig(Strict):
    """``batch:`` of a Kafka or RabbitMQ trigger: the function receives its events in
    batches, one POST in CloudEvents batched mode (:mod:`bridge.batches`, docs/batches.md).

    A batch goes when it holds ``max_events`` events or ``max_bytes`` of encoded events,
    or ``max_wait`` after its first event (0: as soon as a concurrency slot is free).
    """

    max_events: int = Field(ge=1, le=10_000)
    #: Bytes of the request body; a single event larger than this goes alone.
    max_bytes: int = Field(1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_wait: Duration = Field(0.1, ge=0, le=300)


class TriggerConfig(Strict):
    name: Name
    function: str
    concurrency: int | None = Field(None, ge=1)
    timeout: Timeout | None = None
    retry: RetryConfig | None = None
    dead_letter: DeadLetterConfig | None = None
    #: Publish the function's answer (a 2xx with a body) as a CloudEvent, before the
    #: event is settled (docs/configuration.md, *Replies*).
    reply: ReplyConfig | None = None
    kafka: KafkaSource | None = None
    rabbitmq: RabbitSource | None = None
    cron: CronSource | None = None
    batch: BatchConfig | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TriggerConfig:
        require_exactly_one(self, SOURCE_KINDS, "source")
        return self

    @model_validator(mode="after")
    def _batch_fits_the_source(self) -> TriggerConfig:
        """Batches are for queue sources, and a batch must be able to fill: the source
        never holds more than its window (``max_unsettled``, ``prefetch``) unsettled."""
        batch = self.batch
        if batch is None:
            return self
        if self.cron is not None:
            raise FieldError(
                "batch", "cron triggers fire one event per tick and cannot batch; "
                "'batch' is for kafka and rabbitmq triggers",
            )
        if self.reply is not None:
            raise FieldError(
                "batch", "a batch is answered with the events that failed, not with replies: "
                "'batch' and 'reply' cannot be combined",
            )
        if self.kafka is not None:
            window, setting = self.kafka.max_unsettled, "kafka.max_unsettled"
        elif self.rabbitmq is not None:
            window, setting = self.rabbitmq.prefetch, "rabbitmq.prefetch"
        else:
            return self
        if batch.max_events > window:
            raise FieldError(
                "batch.max_events",
                f"{batch.max_events} is more than {setting} ({window}): a batch could never "
                f"fill and would always wait max_wait; raise {setting} (a few batches' "
                "worth) or lower max_events",
            )
        return self

    @property
    def kind(self) -> str:
        return next(k for k in SOURCE_KINDS if getattr(self, k) is not None)

    @property
    def source(self) -> KafkaSource | RabbitSource | CronSource:
        source = getattr(self, self.kind)
        assert source is not None
        return source  # type: ignore[no-any-return]


class BridgeConfig(Strict):
    defaults: Defaults = Defaults()
    #: Team quotas (name -> max_concurrency) that functions join with ``quota: NAME``.
    quotas: dict[Name, QuotaConfig] = Field(default_factory=dict)
    functions: dict[str, FunctionConfig] = Field(default_factory=dict)
    triggers: list[TriggerConfig] = Field(default_factory=list)

    def resolve(self, trigger: TriggerConfig) -> ResolvedTrigger:
        function = self.functions[trigger.function]
        retry = _merge(self.defaults.retry, trigger.retry)
        timeout = trigger.timeout or function.timeout or self.defaults.timeout
        return ResolvedTrigger(
            config=trigger,
            function_name=trigger.function,
            function=function,
            concurrency=trigger.concurrency or self.defaults.concurrency,
            timeout=timeout,
            retry=retry,
            dead_letter=trigger.dead_letter or self.defaults.dead_letter,
        )

    def summary(self) -> str:
        kinds = {k: sum(1 for t in self.triggers if t.kind == k) for k in SOURCE_KINDS}
        parts = ", ".join(f"{n} {k}" for k, n in kinds.items() if n)
        return (
            f"{len(self.triggers)} trigger(s)" + (f" ({parts})" if parts else "")
            + f", {len(self.functions)} function(s)"
        )


@dataclass(frozen=True, slots=True)
class ResolvedTrigger:
    """A trigger with every default applied: what the runtime builds from."""

    config: TriggerConfig
    function_name: str
    function: FunctionConfig
    concurrency: int
    timeout: float
    retry: RetryConfig
    dead_letter: DeadLetterConfig | None

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def reply(self) -> ReplyConfig | None:
        return self.config.reply

    @property
    def ordering(self) -> Literal["key", "partition", "none"]:
        """The source's ordering mode (cron has none)."""
        source = self.config.source
        return "none" if isinstance(source, CronSource) else source.ordering


def _merge(base: RetryConfig, override: RetryConfig | None) -> RetryConfig:
    if override is None:
        return base
    return base.model_copy(update={f: getattr(override, f) for f in override.model_fields_set})
