"""How a redrive reaches the dead letters in a topic or queue: the config's own sinks.

The broker connection (servers, security, credentials) comes from the dead-letter
sinks of the config file (the triggers' and the defaults'), so no secret is typed on a
command line:

- a Kafka topic: the connection of the sinks (``dead_letter`` or ``fallback``, of any
  trigger or the defaults) that write to that topic; ``--bootstrap-servers`` for a
  plaintext cluster no sink names;
- a RabbitMQ queue: the connection of the config's RabbitMQ sinks (their ``url``, or
  their trigger's; a ``reject: true`` sink's is its trigger's broker, where the queue's
  own dead-letter exchange is).

When the sinks use different connections, ``--trigger`` narrows them to those of the
triggers named.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

from pydantic import ValidationError

from bridge.config import (
    BridgeConfig,
    DeadLetterConfig,
    KafkaConnection,
    SinkConfig,
    TlsConfig,
    TriggerConfig,
    problems_from,
)
from bridge.redrive.sources import SourceError

_T = TypeVar("_T")


def kafka_connection(
    config: BridgeConfig, topic: str, triggers: frozenset[str], servers: str | None = None
) -> KafkaConnection:
    """The connection to read ``topic`` with; SourceError says what to pass instead."""
    if servers is not None:
        try:
            return KafkaConnection.model_validate({"bootstrap_servers": servers})
        except ValidationError as err:
            problem = next(iter(problems_from(err)))
            raise SourceError(f"--bootstrap-servers: {problem.message}") from None
    found: list[tuple[KafkaConnection, str]] = []
    for name, trigger, sink in _sinks(config, triggers):
        if sink.kafka is None or sink.kafka.topic != topic:
            continue
        try:
            found.append((sink.kafka.connection(None if trigger is None else trigger.kafka), name))
        except ValueError:
            continue  # validate reports it (or a defaults sink that needs a trigger's)
    if not found:
        raise SourceError(f"no dead-letter sink{_of(triggers)} in the config writes to kafka "
                          f"topic {topic!r}: pass --bootstrap-servers HOST:PORT")
    return _one(found, f"kafka topic {topic!r}", "or pass --bootstrap-servers")


def rabbitmq_connection(
    config: BridgeConfig, triggers: frozenset[str]
) -> tuple[str, TlsConfig | None]:
    """The broker (url, tls) of the config's RabbitMQ dead letters; SourceError."""
    found: list[tuple[tuple[str, TlsConfig | None], str]] = []
    for name, trigger, sink in _sinks(config, triggers):
        rabbit = sink.rabbitmq
        if rabbit is None:
            continue
        own = None if trigger is None else trigger.rabbitmq
        if rabbit.url is not None and not rabbit.reject:
            found.append(((rabbit.url.get_secret_value(), rabbit.tls), name))
        elif own is not None:
            found.append(((own.url.get_secret_value(), own.tls), name))
    if not found:
        raise SourceError(f"no RabbitMQ dead-letter sink{_of(triggers)} in the config: "
                          "the queue's broker is taken from one")
    return _one(found, "RabbitMQ dead letters")


def _sinks(
    config: BridgeConfig, triggers: frozenset[str]
) -> Iterator[tuple[str, TriggerConfig | None, SinkConfig]]:
    """(trigger name, its config, sink) of every sink in use; the defaults' own too (the
    triggers may all be Trigger resources)."""
    for trigger in config.triggers:
        if triggers and trigger.name not in triggers:
            continue
        yield from _both(trigger.name, trigger, config.resolve(trigger).dead_letter)
    if not triggers:
        yield from _both("defaults", None, config.defaults.dead_letter)


def _both(
    name: str, trigger: TriggerConfig | None, dead_letter: DeadLetterConfig | None
) -> Iterator[tuple[str, TriggerConfig | None, SinkConfig]]:
    if dead_letter is not None:
        yield name, trigger, dead_letter.primary()
        if dead_letter.fallback is not None:
            yield name, trigger, dead_letter.fallback


def _one(found: list[tuple[_T, str]], what: str, otherwise: str = "") -> _T:
    distinct: list[tuple[_T, list[str]]] = []
    for connection, trigger in found:
        for known, names in distinct:
            if known == connection:
                names.append(trigger)
                break
        else:
            distinct.append((connection, [trigger]))
    if len(distinct) > 1:
        groups = "; ".join(", ".join(sorted(set(names))) for _, names in distinct)
        tail = f", {otherwise}" if otherwise else ""
        raise SourceError(f"the sinks for {what} use {len(distinct)} different connections "
                          f"(triggers {groups}): name the trigger with --trigger{tail}")
    return distinct[0][0]


def _of(triggers: frozenset[str]) -> str:
    return f" of trigger {', '.join(sorted(triggers))}" if triggers else ""
