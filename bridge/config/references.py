"""Cross-references: what a trigger needs from the rest of the config.

Its function must exist; it needs a dead-letter sink (its own or the defaults'); a
RabbitMQ sink or ``reply`` without ``url`` needs a rabbitmq trigger (and ``reject:
true`` always does), and a Kafka sink or ``reply`` without ``bootstrap_servers`` a kafka
trigger whose connection settings suit it. Trigger names are unique. Each problem names
the path it is written at, and an inherited sink says which trigger inherits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from bridge.config.functions import FunctionConfig
from bridge.config.problems import ConfigProblem
from bridge.config.sinks import KafkaSinkConfig, SinkConfig
from bridge.config.sources import kafka_security_problem
from bridge.config.triggers import BridgeConfig, TriggerConfig


def cross_references(config: BridgeConfig) -> Iterator[ConfigProblem]:
    """Unique trigger names, :func:`trigger_problems` for every trigger, and every
    function's team quota exists."""
    for name, function in config.functions.items():
        yield from quota_problems(config, function.quota, f"functions.{name}.quota")
    seen: dict[str, int] = {}
    for index, trigger in enumerate(config.triggers):
        if trigger.name in seen:
            yield ConfigProblem(
                f"triggers[{index}].name",
                f"duplicate trigger name {trigger.name!r} (also triggers[{seen[trigger.name]}])",
            )
        seen.setdefault(trigger.name, index)
        yield from trigger_problems(config, trigger, f"triggers[{index}]")


def quota_problems(config: BridgeConfig, quota: str | None, path: str) -> Iterator[ConfigProblem]:
    """A function's ``quota`` must name one of the ``quotas:`` section."""
    if quota is not None and quota not in config.quotas:
        known = ", ".join(sorted(config.quotas)) or "none defined"
        yield ConfigProblem(path, f"unknown quota {quota!r} (known: {known})")


def unused_quotas(config: BridgeConfig, extra: Iterable[FunctionConfig] = ()) -> list[str]:
    """Team quotas no function joins (not an error: logged by the runtime)."""
    used = {f.quota for f in (*config.functions.values(), *extra)}
    return sorted(set(config.quotas) - used)


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
    yield from _reply_problems(trigger, path)


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
        if dead_letter.kafka is not None:
            yield from _borrowed_kafka(dead_letter.kafka, trigger, f"{where}.kafka", suffix)


def _borrowed_kafka(
    sink: KafkaSinkConfig, trigger: TriggerConfig, where: str, suffix: str = ""
) -> Iterator[ConfigProblem]:
    """A Kafka sink or reply at ``where``: without servers of its own it needs a kafka
    trigger whose connection settings suit it."""
    if sink.bootstrap_servers is not None:
        return
    if trigger.kafka is not None:
        source = trigger.kafka
        problem = kafka_security_problem(
            sink.security_protocol or source.security_protocol,
            sink.sasl or source.sasl,
            sink.tls or source.tls,
        )
        if problem:
            yield ConfigProblem(where, f"with the trigger's connection settings: {problem}{suffix}")
        return
    yield ConfigProblem(
        f"{where}.bootstrap_servers",
        f"required for a {trigger.kind} trigger: only a kafka trigger has a Kafka "
        f"connection to default to{suffix}",
    )


def _reply_problems(trigger: TriggerConfig, path: str) -> Iterator[ConfigProblem]:
    """A reply borrows the trigger's connection like a dead-letter sink does."""
    reply = trigger.reply
    if reply is None:
        return
    if reply.kafka is not None:
        yield from _borrowed_kafka(reply.kafka, trigger, f"{path}.reply.kafka")
    if reply.rabbitmq is not None and reply.rabbitmq.url is None and trigger.rabbitmq is None:
        yield ConfigProblem(
            f"{path}.reply.rabbitmq.url",
            f"required: trigger {trigger.name!r} is a {trigger.kind} trigger, so there is "
            "no RabbitMQ connection to default to",
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
