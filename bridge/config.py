"""The config file (DESIGN section 3): YAML -> validated, frozen pydantic models.

Loading goes through three steps, each of which reports problems with the path of the
offending field (``triggers[2].cron.schedule: ...``) instead of raising a traceback:

1. YAML is parsed (duplicate keys are an error, not a silent overwrite);
2. ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``) inside strings is replaced from the
   environment; a missing variable is a problem at its path;
3. the tree is validated (unknown keys rejected), then cross-references are checked
   (each trigger's function exists, trigger names are unique).

``load_config`` returns a :class:`BridgeConfig` or raises :class:`ConfigError` holding
every problem found. Triggers resolve their effective settings (defaults inherited,
field by field) through :meth:`BridgeConfig.resolve`.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from bridge.durations import parse_duration
from bridge.headers import is_header_name, is_reserved
from bridge.outcome import DEFAULT_RETRYABLE_STATUSES
from bridge.retry import RetryPolicy
from bridge.schedule import ScheduleError, parse_schedule
from bridge.urls import password_forms, path_problem, server_problem, url_problem


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """One or more problems in a config; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


#: A timeout: 0 would fail every invocation at once (and read as "unset" when inherited).
Timeout = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]

_NAME_MAX = 63


def _check_name(value: str) -> str:
    """A trigger name: a DNS label (lower-case letters, digits, '-'), like Kubernetes names."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > _NAME_MAX:
        raise ValueError(f"must be at most {_NAME_MAX} characters, got {len(value)}")
    if value != value.lower():
        raise ValueError(f"must be lower case, got {value!r} (try {value.lower()!r})")
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c == "-"))})
    if bad:
        listed = " ".join(repr(c) for c in bad)
        raise ValueError(f"may contain only lower-case letters, digits and '-'; found {listed}")
    if value[0] == "-" or value[-1] == "-":
        raise ValueError(f"must start and end with a letter or digit, got {value!r}")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


def _as_list(value: object) -> object:
    """``a:1,b:2`` or ``[a:1, b:2]`` -> list of strings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_T = TypeVar("_T")


def _checked(problem: str | None, value: _T) -> _T:
    if problem:
        raise ValueError(problem)
    return value


def _check_server(value: str) -> str:
    return _checked(server_problem(value), value)


def _check_http_url(value: str) -> str:
    return _checked(url_problem(value, ("http", "https")), value)


def _check_amqp_url(value: SecretStr) -> SecretStr:
    return _checked(url_problem(value.get_secret_value(), ("amqp", "amqps")), value)


#: A Kafka bootstrap server ``host:port`` (checked as the client reads it).
Server = Annotated[str, AfterValidator(_check_server)]
Servers = Annotated[list[Server], BeforeValidator(_as_list), Field(min_length=1)]
#: URLs: checked by :mod:`bridge.urls`; an error never shows the value (it may hold a
#: password).
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
AmqpUrl = Annotated[SecretStr, AfterValidator(_check_amqp_url)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- retries and dead letters -------------------------------------------------------


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


def _kafka_security_problem(
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
        problem = _kafka_security_problem(self.security_protocol, self.sasl, self.tls)
        if problem:
            raise ValueError(problem)
        return self


class FileSinkConfig(Strict):
    path: str = Field(min_length=1)
    fsync: bool = True


_KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")


class KafkaSinkConfig(Strict):
    """``dead_letter: {kafka: ...}``: produce to a topic (acks=all, awaited).

    Without ``bootstrap_servers`` the sink uses the trigger's own Kafka connection
    (servers, security, client id), overriding only what is set here; that needs a Kafka
    trigger. With ``bootstrap_servers`` the sink has a connection of its own and nothing
    is inherited.
    """

    topic: str = Field(min_length=1)
    bootstrap_servers: Servers | None = None
    security_protocol: KafkaProtocol | None = None
    sasl: SaslConfig | None = None
    tls: TlsConfig | None = None
    client_id: str | None = Field(None, min_length=1)
    #: Bytes; a larger record is refused before it is sent (the producer's
    #: max.request.size). Set it to the topic's max.message.bytes where the broker does
    #: not enforce that itself.
    max_request_size: int = Field(64 * 1024 * 1024, ge=1024)

    @field_validator("topic")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not _KAFKA_TOPIC.match(value) or value in (".", ".."):
            raise ValueError(
                f"{value!r} is not a Kafka topic name: use letters, digits, '.', '_' and '-' "
                "(at most 249)"
            )
        return value

    @model_validator(mode="after")
    def _security_is_consistent(self) -> KafkaSinkConfig:
        if self.bootstrap_servers is None:
            return self
        problem = _kafka_security_problem(
            self.security_protocol or "PLAINTEXT", self.sasl, self.tls
        )
        if problem:
            raise ValueError(problem)
        return self

    def connection(self, trigger_connection: KafkaConnection | None) -> KafkaConnection:
        """The connection to produce with (see the class docs); raises if there is none."""
        own = {
            k: v for k, v in
            (("security_protocol", self.security_protocol), ("sasl", self.sasl),
             ("tls", self.tls), ("client_id", self.client_id))
            if v is not None
        }
        if self.bootstrap_servers is not None:
            return KafkaConnection(bootstrap_servers=self.bootstrap_servers, **own)
        if trigger_connection is None:
            raise ValueError("a Kafka dead-letter sink needs 'bootstrap_servers' here")
        base = trigger_connection.model_dump(include=set(KafkaConnection.model_fields))
        return KafkaConnection.model_validate({**base, **own})


class RabbitSinkConfig(Strict):
    """``dead_letter: {rabbitmq: ...}``: publish (with confirms) or reject to the queue's DLX."""

    #: Publish to this exchange with publisher confirms (``""`` is the default exchange).
    exchange: str | None = None
    routing_key: str = ""
    #: Default: the trigger's own RabbitMQ url (when it has one).
    url: AmqpUrl | None = None
    #: Default: the trigger's own ``tls`` when ``url`` is the trigger's.
    tls: TlsConfig | None = None
    #: ``basic.reject(requeue=false)`` the original so the queue's own DLX takes it.
    reject: bool = False

    @model_validator(mode="after")
    def _exchange_or_reject(self) -> RabbitSinkConfig:
        if self.reject == (self.exchange is not None):
            raise ValueError("set either 'exchange' (publish) or 'reject: true' (queue's own DLX)")
        if self.reject and (self.url is not None or self.tls is not None or self.routing_key):
            raise ValueError(
                "'reject: true' publishes nothing: 'url', 'tls' and 'routing_key' do not apply"
            )
        if self.tls is not None and self.url is None:
            raise _FieldError("url", "'tls' needs an explicit amqps:// 'url'")
        _check_tls_scheme(self.url, self.tls)
        return self


def _check_tls_scheme(url: SecretStr | None, tls: TlsConfig | None) -> None:
    if url is not None and tls is not None and not url.get_secret_value().startswith("amqps://"):
        raise _FieldError("tls", "'tls' needs an amqps:// url (TLS is not used with amqp://)")


class SinkConfig(Strict):
    """One dead-letter sink: exactly one of ``file``, ``kafka``, ``rabbitmq``."""

    file: FileSinkConfig | None = None
    kafka: KafkaSinkConfig | None = None
    rabbitmq: RabbitSinkConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SinkConfig:
        _require_exactly_one(self, ("file", "kafka", "rabbitmq"), "dead-letter sink")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("file", "kafka", "rabbitmq") if getattr(self, k) is not None)

    @property
    def rejects(self) -> bool:
        """``rabbitmq: {reject: true}``: the dead letter is the source's own reject."""
        return self.rabbitmq is not None and self.rabbitmq.reject


class DeadLetterConfig(SinkConfig):
    """``dead_letter``: a sink, and optionally the ``fallback`` sink that takes the dead
    letters it refuses for good (unknown exchange or topic, too large, access refused)."""

    #: Takes the dead letters this sink refuses for good; without one they block.
    fallback: SinkConfig | None = None

    @model_validator(mode="after")
    def _fallback_stores(self) -> DeadLetterConfig:
        if self.fallback is None:
            return self
        if self.rejects:
            raise _FieldError("fallback", "'rabbitmq: {reject: true}' never refuses a dead "
                                          "letter, so a fallback would never be used")
        if self.fallback.rejects:
            raise _FieldError("fallback.rabbitmq.reject",
                              "a fallback must store the dead letter itself: publish it to an "
                              "'exchange', or use a file or kafka fallback")
        return self

    def primary(self) -> SinkConfig:
        """This sink without its fallback (what identifies its connection)."""
        return SinkConfig(file=self.file, kafka=self.kafka, rabbitmq=self.rabbitmq)


class Defaults(Strict):
    timeout: Timeout = 30.0
    retry: RetryConfig = RetryConfig()
    dead_letter: DeadLetterConfig | None = None
    concurrency: int = Field(100, ge=1)


# --- functions ---------------------------------------------------------------------


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")
_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def _check_service(value: str) -> str:
    if len(value) > _NAME_MAX or not _SERVICE_NAME.match(value):
        raise ValueError("must be a Service name: at most 63 lower-case letters, digits and "
                         "'-', starting with a letter and ending with a letter or digit")
    return value


def _check_namespace(value: str) -> str:
    if len(value) > _NAME_MAX or not _DNS_LABEL.match(value):
        raise ValueError("must be a namespace name: at most 63 lower-case letters, digits "
                         "and '-', starting and ending with a letter or digit")
    return value


def _check_port(value: int | str) -> int | str:
    if isinstance(value, int) or value.isdigit():
        if not 1 <= int(value) <= 65535:
            raise ValueError("a port number must be from 1 to 65535")
        return value
    if len(value) > 15 or not _PORT_NAME.match(value) or "--" in value or not any(
        c.isalpha() for c in value
    ):
        raise ValueError("must be a port number or a Service port name (at most 15 "
                         "lower-case letters, digits and '-', with a letter)")
    return value


def _check_path(value: str) -> str:
    return _checked(path_problem(value), value)


class KubernetesTarget(Strict):
    service: Annotated[str, Field(min_length=1), AfterValidator(_check_service)]
    namespace: Annotated[str, AfterValidator(_check_namespace)] | None = None
    port: Annotated[int | str, AfterValidator(_check_port)] = "http"
    path: Annotated[str, AfterValidator(_check_path)] = "/"


class OverflowConfig(Strict):
    url: HttpUrl
    #: How long to wait for in-cluster capacity before overflowing.
    after: Duration = 0.25


class FunctionConfig(Strict):
    url: HttpUrl | None = None
    urls: list[HttpUrl] | None = Field(None, min_length=1)
    kubernetes: KubernetesTarget | None = None
    #: In-flight invocations of this function across all triggers (the quota).
    max_concurrency: int | None = Field(None, ge=1)
    timeout: Timeout | None = None
    overflow: OverflowConfig | None = None
    #: Static headers added to every request (e.g. an auth token from ``${ENV}``).
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers_are_safe(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_static_header(name, text)
        return value

    @model_validator(mode="after")
    def _one_target(self) -> FunctionConfig:
        _require_exactly_one(self, ("url", "urls", "kubernetes"), "target")
        return self

    @property
    def static_urls(self) -> list[str]:
        return [self.url] if self.url else list(self.urls or [])




def _check_static_header(name: str, value: str) -> None:
    """Reject what would break the request or be silently replaced (path: ``headers.NAME``)."""
    if not is_header_name(name):
        raise _FieldError(name, "not a valid HTTP header name")
    if is_reserved(name):
        raise _FieldError(name, "set by the bridge on every request; it cannot be configured")
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise _FieldError(name, "value contains control characters (CR, LF, ...)")


# --- sources -----------------------------------------------------------------------


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
        return _as_list(value)

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> KafkaSource:
        if self.heartbeat_interval >= self.session_timeout:
            raise _FieldError(
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
            raise _FieldError("durable", "quorum and stream queues must be durable")
        if self.routing_key is not None and self.exchange is None:
            raise _FieldError("routing_key", "a binding 'routing_key' needs an 'exchange'")
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
            raise _FieldError("ordering_header", "'ordering_header' needs 'ordering: key'")
        _check_tls_scheme(self.url, self.tls)
        return self


class CronSource(Strict):
    schedule: str
    time_zone: str = "UTC"
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Allow"
    starting_deadline: Duration | None = None
    suspend: bool = False
    data: Any = None
    content_type: str = "application/json"

    @model_validator(mode="after")
    def _schedule_parses(self) -> CronSource:
        try:
            parse_schedule(self.schedule, self.time_zone)
        except ScheduleError as err:
            # only the zone's own errors belong to time_zone ("time zone prefixes ..." is
            # about the schedule text)
            zone_error = str(err).startswith(("unknown time zone", "time zone must"))
            field = "time_zone" if zone_error else "schedule"
            raise _FieldError(field, str(err)) from None
        return self


class _FieldError(ValueError):
    """A model-level check that belongs to one field (its name goes into the path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}\x00{message}")


SOURCE_KINDS = ("kafka", "rabbitmq", "cron")


class TriggerConfig(Strict):
    name: Name
    function: str
    concurrency: int | None = Field(None, ge=1)
    timeout: Timeout | None = None
    retry: RetryConfig | None = None
    dead_letter: DeadLetterConfig | None = None
    kafka: KafkaSource | None = None
    rabbitmq: RabbitSource | None = None
    cron: CronSource | None = None

    @model_validator(mode="after")
    def _one_source(self) -> TriggerConfig:
        _require_exactly_one(self, SOURCE_KINDS, "source")
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
    def ordering(self) -> Literal["key", "partition", "none"]:
        """The source's ordering mode (cron has none)."""
        source = self.config.source
        return "none" if isinstance(source, CronSource) else source.ordering


def secrets_of(*parts: BaseModel | None) -> set[str]:
    """Every secret the config parts hold, to keep out of messages.

    ``SecretStr`` values (of a URL only its password: host and vhost are no secret) and
    the passwords of http URLs, each as written and percent-decoded.
    """
    found: set[str] = set()
    pending: list[Any] = list(parts)
    while pending:
        value = pending.pop()
        if isinstance(value, BaseModel):
            pending.extend(getattr(value, name) for name in type(value).model_fields)
        elif isinstance(value, list | tuple | set | frozenset):
            pending.extend(value)
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, SecretStr):
            text = value.get_secret_value()
            found.update(password_forms(text) if "://" in text else [text])
        elif isinstance(value, str) and "://" in value:
            found.update(password_forms(value))
    found.discard("")
    return found


def _merge(base: RetryConfig, override: RetryConfig | None) -> RetryConfig:
    if override is None:
        return base
    return base.model_copy(update={f: getattr(override, f) for f in override.model_fields_set})


def _require_exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    present = [f for f in fields if getattr(model, f) is not None]
    if len(present) != 1:
        options = ", ".join(f"'{f}'" for f in fields)
        found = f"found {', '.join(present)}" if present else "found none"
        raise ValueError(f"needs exactly one {what} of {options}; {found}")


# --- loading -----------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read, interpolate and validate a config file; raise ConfigError on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([ConfigProblem("", f"cannot read {path}: {err.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem("", f"{path} is not UTF-8 text")]) from None
    return parse_config(text, env=env, name=str(path))


def parse_config(
    text: str, env: Mapping[str, str] | None = None, name: str = "<config>"
) -> BridgeConfig:
    raw = _load_yaml(text, name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("", "the top level must be a mapping")])
    problems: list[ConfigProblem] = []
    raw = _interpolate(raw, os.environ if env is None else env, "", problems)
    if problems:
        raise ConfigError(problems)
    return validate_tree(raw)


def validate_tree(raw: dict[str, Any]) -> BridgeConfig:
    """Validate an already-loaded tree (also used for Trigger custom resources)."""
    try:
        config = BridgeConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(list(problems_from(err))) from None
    problems = list(_cross_references(config))
    if problems:
        raise ConfigError(problems)
    return config


def problems_from(
    err: ValidationError, prefix: str = "", root: type[BaseModel] | None = None
) -> Iterator[ConfigProblem]:
    """One problem per error, worded for the person who wrote the file.

    ``root`` is the validated model (found from the error's title when omitted): it lets
    an unknown key suggest the keys allowed there.
    """
    root = root or _config_model(err.title)
    unions: dict[str, list[ErrorDetails]] = {}
    for item in err.errors(include_url=False):
        loc, types = _real_loc(root, list(item["loc"]))
        ctx_error = (item.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _FieldError):
            field, message = str(ctx_error).split("\x00", 1)
            yield ConfigProblem(join_path([*loc, field], prefix), message)
        elif item["type"] == "invalid_key" or item["loc"][-1:] == ("[key]",):
            path = join_path([*loc[:-1], str(loc[-1])], prefix)
            yield ConfigProblem(path, f"keys must be strings, got {_describe(item.get('input'))}")
        elif len(loc) < len(item["loc"]):
            unions.setdefault(join_path(loc, prefix), []).append(item)
        else:
            yield ConfigProblem(join_path(loc, prefix), _humanize(item, types))
    for path, items in unions.items():
        yield ConfigProblem(path, _humanize_union(items))


def join_path(loc: list[int | str] | tuple[int | str, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _config_model(title: str) -> type[BaseModel] | None:
    pending: list[type[BaseModel]] = [Strict]
    while pending:
        model = pending.pop()
        if model.__name__ == title:
            return model
        pending.extend(model.__subclasses__())
    return None


def _real_loc(root: type[BaseModel] | None, loc: list[Any]) -> tuple[list[Any], list[Any]]:
    """``loc`` without pydantic's union tags and ``[key]`` markers, and the type at each step.

    ``types[i]`` is the declared type at ``loc[:i]`` as far as it can be followed.
    """
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type
        return loc[:-1], []
    types: list[Any] = [root]
    for index, part in enumerate(loc):
        current = _unwrap(types[-1])
        if current is None:
            return loc, types
        if isinstance(current, tuple):  # a union: the next part is a member tag
            return loc[:index], types
        following = _step(current, part)
        if following is None:
            return loc, types
        types.append(following)
    return loc, types


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional; a real union comes back as a tuple of members."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        members = tuple(a for a in get_args(annotation) if a is not type(None))
        return _unwrap(members[0]) if len(members) == 1 else members
    return annotation


def _step(current: Any, part: Any) -> Any:
    if isinstance(current, type) and issubclass(current, BaseModel):
        field = current.model_fields.get(part) if isinstance(part, str) else None
        return None if field is None else field.annotation
    origin, args = get_origin(current), get_args(current)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return args[1]
    return None


_EXPECTED = {
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "list_type": "a list", "frozen_set_type": "a list", "set_type": "a list",
    "tuple_type": "a list", "string_type": "a string", "int_type": "a whole number",
    "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
}


def _humanize(item: ErrorDetails, types: list[Any]) -> str:
    kind, given, ctx = item["type"], item.get("input"), item.get("ctx") or {}
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_describe(given)}"
    if kind == "extra_forbidden":
        return "unknown key" + _suggest(str(item["loc"][-1]), types, len(item["loc"]) - 1)
    if kind in _LIMITS:
        return _LIMITS[kind].format(given=_describe(given), **ctx)
    if kind in ("too_short", "string_too_short"):
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"needs at least {ctx.get('min_length')} items"
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}; got {_describe(given)}"
    if kind == "missing":
        return "required key is missing"
    message = str(item["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


_LIMITS = {
    "greater_than_equal": "must be at least {ge}, got {given}",
    "greater_than": "must be greater than {gt}, got {given}",
    "less_than_equal": "must be at most {le}, got {given}",
    "less_than": "must be less than {lt}, got {given}",
}


def _humanize_union(items: list[ErrorDetails]) -> str:
    """``port: [1]`` fails as int and as str: one line, not one per member type."""
    words = [_EXPECTED.get(i["type"]) for i in items]
    if all(words):
        expected = " or ".join(dict.fromkeys(w for w in words if w))
        return f"expected {expected}, got {_describe(items[0].get('input'))}"
    return next(_humanize(i, []) for i in items if i["type"] not in _EXPECTED)


def _suggest(key: str, types: list[Any], parent: int) -> str:
    model = _unwrap(types[parent]) if parent < len(types) else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed here: {', '.join(allowed)})"


def _describe(value: Any) -> str:
    """A short, YAML-flavoured description of a value the user wrote."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _cross_references(config: BridgeConfig) -> Iterator[ConfigProblem]:
    seen: dict[str, int] = {}
    for index, trigger in enumerate(config.triggers):
        if trigger.name in seen:
            yield ConfigProblem(
                f"triggers[{index}].name",
                f"duplicate trigger name {trigger.name!r} (also triggers[{seen[trigger.name]}])",
            )
        seen.setdefault(trigger.name, index)
        yield from trigger_problems(config, trigger, f"triggers[{index}]")


def validate_trigger(
    raw: Any,
    base: BridgeConfig,
    path: str,
    functions: Mapping[str, FunctionConfig] | None = None,
) -> TriggerConfig:
    """One ``triggers`` entry, checked exactly as a config file's are.

    The entry's own model, then :func:`trigger_problems` against ``base``'s defaults and
    functions (plus ``functions``): the checks a file runs on each of its triggers, for
    a trigger that comes from elsewhere (a Trigger resource). Problems are reported at
    ``path`` (``spec.cron.schedule``); raises :class:`ConfigError`.
    """
    try:
        trigger = TriggerConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(list(problems_from(err, prefix=path, root=TriggerConfig))) from None
    composed = BridgeConfig.model_construct(
        defaults=base.defaults, functions={**base.functions, **(functions or {})},
        triggers=[trigger],
    )
    problems = list(trigger_problems(composed, trigger, path))
    if problems:
        raise ConfigError(problems)
    return trigger


def trigger_problems(
    config: BridgeConfig, trigger: TriggerConfig, path: str
) -> Iterator[ConfigProblem]:
    """What a trigger needs from the rest of the config: its function, and a dead-letter
    sink it can use. ``path`` is where the trigger is written (``triggers[2]``)."""
    if trigger.function not in config.functions:
        known = ", ".join(sorted(config.functions)) or "none defined"
        yield ConfigProblem(
            f"{path}.function", f"unknown function {trigger.function!r} (known: {known})"
        )
    if trigger.dead_letter is None and config.defaults.dead_letter is None:
        yield ConfigProblem(
            f"{path}.dead_letter", "no dead-letter sink: set one here or in defaults.dead_letter"
        )
    yield from _rabbit_sink_problems(config, trigger, path)
    yield from _kafka_sink_problems(config, trigger, path)


def _trigger_sinks(
    config: BridgeConfig, trigger: TriggerConfig, path: str
) -> Iterator[tuple[SinkConfig, str, str]]:
    """The trigger's dead-letter sink and its fallback: (sink, path, note for messages)."""
    own = trigger.dead_letter is not None
    dead_letter = trigger.dead_letter or config.defaults.dead_letter
    if dead_letter is None:
        return
    where = f"{path}.dead_letter" if own else "defaults.dead_letter"
    suffix = "" if own else f" (inherited by trigger {trigger.name!r})"
    yield dead_letter, where, suffix
    if dead_letter.fallback is not None:
        yield dead_letter.fallback, f"{where}.fallback", suffix


def _kafka_sink_problems(
    config: BridgeConfig, trigger: TriggerConfig, path: str
) -> Iterator[ConfigProblem]:
    """A Kafka dead-letter sink without servers borrows the trigger's connection."""
    for dead_letter, where, suffix in _trigger_sinks(config, trigger, path):
        sink = dead_letter.kafka
        if sink is None or sink.bootstrap_servers is not None:
            continue
        if trigger.kafka is not None:
            source = trigger.kafka
            problem = _kafka_security_problem(
                sink.security_protocol or source.security_protocol,
                sink.sasl or source.sasl,
                sink.tls or source.tls,
            )
            if problem:
                yield ConfigProblem(
                    f"{where}.kafka",
                    f"with the trigger's connection settings: {problem}{suffix}",
                )
            continue
        yield ConfigProblem(
            f"{where}.kafka.bootstrap_servers",
            f"required for a {trigger.kind} trigger: only a kafka trigger has a Kafka "
            f"connection to default to{suffix}",
        )


def _rabbit_sink_problems(
    config: BridgeConfig, trigger: TriggerConfig, path: str
) -> Iterator[ConfigProblem]:
    """A RabbitMQ dead-letter sink borrows the trigger's connection, so it needs one."""
    for dead_letter, where, suffix in _trigger_sinks(config, trigger, path):
        sink = dead_letter.rabbitmq
        if sink is None or trigger.kind == "rabbitmq":
            continue
        if sink.reject:
            yield ConfigProblem(
                f"{where}.rabbitmq.reject",
                f"'reject: true' needs a rabbitmq trigger (it rejects the original message to "
                f"its queue's own dead-letter exchange); trigger {trigger.name!r} is a "
                f"{trigger.kind} trigger: set 'exchange' and 'url' instead{suffix}",
            )
        elif sink.url is None:
            yield ConfigProblem(
                f"{where}.rabbitmq.url",
                f"required: trigger {trigger.name!r} is a {trigger.kind} trigger, so there is "
                f"no RabbitMQ connection to default to{suffix}",
            )


#: libyaml's parser when PyYAML has it (about 10x faster on big files), else pure Python;
#: both build objects with the safe constructor.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """Keys written twice are an error; a key from a ``<<: *anchor`` merge may be overridden."""
    written = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)  # puts the merged pairs first, in YAML precedence order
    merged = len(node.value) - written
    result: dict[Any, Any] = {}
    seen: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if index >= merged:
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", mark
                )
            seen.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_MERGE_TAG = "tag:yaml.org,2002:merge"


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _load_yaml(text: str, name: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([ConfigProblem("", f"{where}: invalid YAML: {problem}")]) from None


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    node: Any, env: Mapping[str, str], path: str, problems: list[ConfigProblem]
) -> Any:
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, join_path([str(k)], path), problems) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _ENV_REF.sub(lambda m: _lookup(m, env, path, problems), node)
    return node


def _lookup(
    match: re.Match[str], env: Mapping[str, str], path: str, problems: list[ConfigProblem]
) -> str:
    name, default = match.group(1), match.group(2)
    if name in env:
        return env[name]
    if default is not None:
        return default
    problems.append(ConfigProblem(path, f"environment variable {name} is not set"))
    return ""
