"""Where dead letters go: the ``file``, ``kafka`` and ``rabbitmq`` sinks, and a
trigger's ``dead_letter`` (a sink and its optional ``fallback``).

A Kafka sink without ``bootstrap_servers`` and a RabbitMQ sink without ``url`` borrow
the trigger's own connection; whether the trigger has one is a cross-reference
(:mod:`bridge.config.references`).
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from bridge.config.fields import AmqpUrl, FieldError, Servers, Strict, require_exactly_one
from bridge.config.sources import (
    KafkaConnection,
    KafkaProtocol,
    SaslConfig,
    TlsConfig,
    check_tls_scheme,
    kafka_security_problem,
)


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
        problem = kafka_security_problem(
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
            raise FieldError("url", "'tls' needs an explicit amqps:// 'url'")
        check_tls_scheme(self.url, self.tls)
        return self


class SinkConfig(Strict):
    """One dead-letter sink: exactly one of ``file``, ``kafka``, ``rabbitmq``."""

    file: FileSinkConfig | None = None
    kafka: KafkaSinkConfig | None = None
    rabbitmq: RabbitSinkConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SinkConfig:
        require_exactly_one(self, ("file", "kafka", "rabbitmq"), "dead-letter sink")
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
            raise FieldError("fallback", "'rabbitmq: {reject: true}' never refuses a dead "
                                          "letter, so a fallback would never be used")
        if self.fallback.rejects:
            raise FieldError("fallback.rabbitmq.reject",
                              "a fallback must store the dead letter itself: publish it to an "
                              "'exchange', or use a file or kafka fallback")
        return self

    def primary(self) -> SinkConfig:
        """This sink without its fallback (what identifies its connection)."""
        return SinkConfig(file=self.file, kafka=self.kafka, rabbitmq=self.rabbitmq)
