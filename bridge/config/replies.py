"""A trigger's ``reply``: where a function's answer goes, as a CloudEvent.

``reply: {kafka: {topic: ...}}`` or ``reply: {rabbitmq: {exchange: ..., routing_key:
...}}``; the connection settings are those of the dead-letter sinks
(:mod:`bridge.config.sinks`): without ``bootstrap_servers`` / ``url`` the reply uses the
trigger's own Kafka / RabbitMQ connection, which needs a trigger of that kind (a
cross-reference, :mod:`bridge.config.references`). What is published and when:
:mod:`bridge.replies`.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from bridge.config.fields import AmqpUrl, FieldError, Strict, require_exactly_one
from bridge.config.sinks import KafkaSinkConfig
from bridge.config.sources import TlsConfig, check_tls_scheme

#: Bytes of a function's answer kept for its reply, by default (1 MiB).
DEFAULT_REPLY_SIZE = 1024 * 1024
REPLY_KINDS = ("kafka", "rabbitmq")


class KafkaReplyConfig(KafkaSinkConfig):
    """``reply: {kafka: ...}``: produce the reply to a topic (acks=all, awaited); the
    connection settings are a Kafka dead-letter sink's."""


class RabbitReplyConfig(Strict):
    """``reply: {rabbitmq: ...}``: publish the reply to an exchange with publisher
    confirms, ``mandatory`` (a reply no queue takes is refused, not dropped)."""

    #: ``""`` is the default exchange (``routing_key`` is then the queue's name).
    exchange: str
    routing_key: str = ""
    #: Default: the trigger's own RabbitMQ url (when it has one).
    url: AmqpUrl | None = None
    #: Default: the trigger's own ``tls`` when ``url`` is the trigger's.
    tls: TlsConfig | None = None

    @model_validator(mode="after")
    def _tls_needs_url(self) -> RabbitReplyConfig:
        if self.tls is not None and self.url is None:
            raise FieldError("url", "'tls' needs an explicit amqps:// 'url'")
        check_tls_scheme(self.url, self.tls)
        return self


class ReplyConfig(Strict):
    """``reply``: exactly one of ``kafka``, ``rabbitmq``."""

    kafka: KafkaReplyConfig | None = None
    rabbitmq: RabbitReplyConfig | None = None
    #: CloudEvents ``type`` of a reply whose function sets no ``ce-type``
    #: (default: the source event's type + ``.reply``).
    type: str | None = Field(None, min_length=1)
    #: Bytes of the function's answer kept; a longer answer is not published and the
    #: event is dead-lettered (``reply_failed``).
    max_size: int = Field(DEFAULT_REPLY_SIZE, ge=1, le=64 * 1024 * 1024)

    @model_validator(mode="after")
    def _exactly_one(self) -> ReplyConfig:
        require_exactly_one(self, REPLY_KINDS, "reply target")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in REPLY_KINDS if getattr(self, k) is not None)
