"""The kafka source / sink config: security consistency, sink connection, cross-checks."""

from __future__ import annotations

import ssl

import pytest

from bridge.config import (
    BridgeConfig,
    ConfigError,
    KafkaSinkConfig,
    KafkaSource,
    TlsConfig,
    parse_config,
)
from connectors.kafka_connection import (
    KafkaSourceError,
    client_options,
    describe_failure,
    ssl_context,
)

HEAD = """\
functions:
  f: {url: "http://127.0.0.1:8080/"}
"""
KAFKA = "kafka: {bootstrap_servers: 'k:9092', topics: [t], group_id: g}"


def config(text: str) -> BridgeConfig:
    return parse_config(HEAD + text, env={"PW": "s3cret"})


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config(text)
    return [str(p) for p in caught.value.problems]


def test_kafka_sink_defaults_to_the_triggers_connection() -> None:
    cfg = config("""
triggers:
  - name: a
    function: f
    dead_letter: {kafka: {topic: a-dlq}}
    kafka:
      bootstrap_servers: k1:9092,k2:9092
      topics: [t]
      group_id: g
      security_protocol: SASL_PLAINTEXT
      sasl: {mechanism: SCRAM-SHA-512, username: u, password: "${PW}"}
      client_id: me
""")
    trigger = cfg.resolve(cfg.triggers[0])
    assert trigger.dead_letter is not None
    assert trigger.dead_letter.kafka is not None
    connection = trigger.dead_letter.kafka.connection(trigger.config.kafka)
    assert connection.bootstrap_servers == ["k1:9092", "k2:9092"]
    assert connection.security_protocol == "SASL_PLAINTEXT"
    assert connection.sasl is not None
    assert connection.sasl.password.get_secret_value() == "s3cret"
    assert connection.client_id == "me"


def test_kafka_sink_with_its_own_servers_inherits_nothing() -> None:
    source = KafkaSource(
        bootstrap_servers="k:1", topics="t", group_id="g", security_protocol="SASL_SSL",
        sasl={"username": "u", "password": "p"},
    )
    sink = KafkaSinkConfig(topic="d", bootstrap_servers="other:2")
    connection = sink.connection(source)
    assert connection.bootstrap_servers == ["other:2"]
    assert connection.security_protocol == "PLAINTEXT"
    assert connection.sasl is None


def test_kafka_sink_on_a_cron_trigger_needs_servers() -> None:
    found = problems("""
triggers:
  - name: nightly
    function: f
    dead_letter: {kafka: {topic: dlq}}
    cron: {schedule: "0 2 * * *"}
""")
    assert found == [
        "triggers[0].dead_letter.kafka.bootstrap_servers: required for a cron trigger: "
        "only a kafka trigger has a Kafka connection to default to"
    ]


def test_inherited_kafka_sink_names_the_trigger() -> None:
    found = problems(f"""
defaults:
  dead_letter: {{kafka: {{topic: dlq}}}}
triggers:
  - {{name: fine, function: f, {KAFKA}}}
  - {{name: nightly, function: f, cron: {{schedule: "0 2 * * *"}}}}
""")
    assert len(found) == 1
    assert found[0].startswith("defaults.dead_letter.kafka.bootstrap_servers: required for a cron")
    assert "(inherited by trigger 'nightly')" in found[0]


def test_kafka_sink_with_servers_is_fine_on_any_trigger() -> None:
    cfg = config("""
triggers:
  - name: nightly
    function: f
    dead_letter: {kafka: {topic: dlq, bootstrap_servers: "k:9092"}}
    cron: {schedule: "0 2 * * *"}
""")
    assert cfg.triggers[0].dead_letter is not None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("security_protocol: SASL_SSL", "security_protocol SASL_SSL needs a 'sasl' section"),
        ("sasl: {username: u, password: p}", "'sasl' needs security_protocol SASL_PLAINTEXT"),
        ("tls: {ca_file: /ca.pem}", "'tls' needs security_protocol SSL or SASL_SSL"),
        ("heartbeat_interval: 30s", "must be shorter than session_timeout"),
        ("max_unsettled: 0", "must be at least 1"),
    ],
)
def test_inconsistent_kafka_settings_are_rejected(extra: str, message: str) -> None:
    found = problems(f"""
defaults:
  dead_letter: {{file: {{path: /tmp/dl}}}}
triggers:
  - name: a
    function: f
    kafka:
      bootstrap_servers: k:9092
      topics: [t]
      group_id: g
      {extra}
""")
    assert len(found) == 1, found
    assert found[0].startswith("triggers[0].kafka")
    assert message in found[0]


def test_client_options_carry_security_without_logging_it() -> None:
    source = KafkaSource(
        bootstrap_servers="k:1,k:2", topics="t", group_id="g", security_protocol="SASL_SSL",
        sasl={"mechanism": "SCRAM-SHA-256", "username": "u", "password": "p@ss"},
        tls={"verify": False},
    )
    options = client_options(source)
    assert options["bootstrap_servers"] == ["k:1", "k:2"]
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert options["sasl_plain_password"] == "p@ss"
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    assert options["ssl_context"].verify_mode == ssl.CERT_NONE
    assert "p@ss" not in repr(source)
    failure = describe_failure(RuntimeError("bad"), source)
    assert failure.startswith("authentication with Kafka brokers k:1,k:2 failed (SCRAM-SHA-256)")
    assert "p@ss" not in failure


def test_missing_tls_file_is_a_clear_error() -> None:
    with pytest.raises(KafkaSourceError, match="cannot load TLS files"):
        ssl_context(TlsConfig(ca_file="/nonexistent/ca.pem"))


def test_sink_override_that_breaks_the_borrowed_connection_is_refused() -> None:
    found = problems("""
triggers:
  - name: a
    function: f
    dead_letter: {kafka: {topic: dlq, security_protocol: PLAINTEXT}}
    kafka:
      bootstrap_servers: k:9092
      topics: [t]
      group_id: g
      security_protocol: SASL_SSL
      sasl: {username: u, password: p}
""")
    assert found == [
        "triggers[0].dead_letter.kafka: with the trigger's connection settings: "
        "'sasl' needs security_protocol SASL_PLAINTEXT or SASL_SSL, not PLAINTEXT"
    ]
