"""The config file (DESIGN section 3): YAML -> validated, frozen pydantic models.

The package, one module per part (read them in this order):

- :mod:`~bridge.config.fields`: value types (durations, names, URLs), the
  :class:`Strict` base model, :func:`secrets_of`;
- :mod:`~bridge.config.sources`: the ``kafka``, ``rabbitmq`` and ``cron`` sources and
  broker connection settings (TLS, SASL);
- :mod:`~bridge.config.sinks`: dead-letter sinks and ``dead_letter`` with its fallback;
- :mod:`~bridge.config.replies`: a trigger's ``reply`` (where a function's answer goes);
- :mod:`~bridge.config.functions`: functions (URLs or a Kubernetes Service, overflow,
  quota, headers);
- :mod:`~bridge.config.triggers`: triggers, ``defaults``, the whole
  :class:`BridgeConfig` and :class:`ResolvedTrigger` (defaults applied);
- :mod:`~bridge.config.problems`: :class:`ConfigProblem` / :class:`ConfigError` and the
  wording of pydantic's errors as one line per problem with its path;
- :mod:`~bridge.config.references`: cross-references between triggers, functions and
  sinks;
- :mod:`~bridge.config.loading`: YAML, ``${ENV}``, validation: :func:`load_config`,
  :func:`parse_config`, :func:`validate_trigger`.

Everything the rest of the code uses is imported from ``bridge.config`` itself.
"""

from __future__ import annotations

from bridge.config.fields import (
    NAME_MAX,
    AmqpUrl,
    Duration,
    HttpUrl,
    Name,
    Servers,
    Strict,
    Timeout,
    secrets_of,
)
from bridge.config.functions import (
    AdaptiveConcurrency,
    FunctionConfig,
    KubernetesTarget,
    OverflowConfig,
    QuotaConfig,
)
from bridge.config.loading import (
    load_config,
    parse_config,
    validate_tree,
    validate_trigger,
)
from bridge.config.problems import ConfigError, ConfigProblem, join_path, problems_from
from bridge.config.references import trigger_problems, unused_quotas
from bridge.config.replies import KafkaReplyConfig, RabbitReplyConfig, ReplyConfig
from bridge.config.sinks import (
    DeadLetterConfig,
    FileSinkConfig,
    KafkaSinkConfig,
    RabbitSinkConfig,
    SinkConfig,
)
from bridge.config.sources import (
    CronSource,
    KafkaConnection,
    KafkaProtocol,
    KafkaSource,
    RabbitDeclare,
    RabbitSource,
    SaslConfig,
    TlsConfig,
)
from bridge.config.triggers import (
    SOURCE_KINDS,
    BatchConfig,
    BridgeConfig,
    Defaults,
    ResolvedTrigger,
    RetryConfig,
    TriggerConfig,
)

__all__ = [
    "NAME_MAX",
    "SOURCE_KINDS",
    "AdaptiveConcurrency",
    "AmqpUrl",
    "BatchConfig",
    "BridgeConfig",
    "ConfigError",
    "ConfigProblem",
    "CronSource",
    "DeadLetterConfig",
    "Defaults",
    "Duration",
    "FileSinkConfig",
    "FunctionConfig",
    "HttpUrl",
    "KafkaConnection",
    "KafkaProtocol",
    "KafkaReplyConfig",
    "KafkaSinkConfig",
    "KafkaSource",
    "KubernetesTarget",
    "Name",
    "OverflowConfig",
    "QuotaConfig",
    "RabbitDeclare",
    "RabbitReplyConfig",
    "RabbitSinkConfig",
    "RabbitSource",
    "ReplyConfig",
    "ResolvedTrigger",
    "RetryConfig",
    "SaslConfig",
    "Servers",
    "SinkConfig",
    "Strict",
    "Timeout",
    "TlsConfig",
    "TriggerConfig",
    "join_path",
    "load_config",
    "parse_config",
    "problems_from",
    "secrets_of",
    "trigger_problems",
    "unused_quotas",
    "validate_tree",
    "validate_trigger",
]
