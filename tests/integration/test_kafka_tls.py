"""``security_protocol: SSL`` with CA verification and a client certificate whose key is
encrypted (password from ``${ENV}``), through a TLS listener in front of Tansu."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from bridge.config import TlsConfig, parse_config
from bridge.leadership import AlwaysLeader
from bridge.logs import get_logger
from bridge.metrics import Metrics
from connectors.base import ConnectorContext
from connectors.kafka import KafkaConnector
from connectors.kafka_connection import KafkaSourceError, ssl_context
from tests.support.functions import RecordingFunction
from tests.support.kafka import (
    bridge_config,
    ready,
    running_bridge,
    start_broker,
    stop_broker,
)
from tests.support.tls import TlsFront, make_pki


def kafka_connector(text: str) -> KafkaConnector:
    config = parse_config(text)
    context = ConnectorContext(metrics=Metrics(), log=get_logger(), leadership=AlwaysLeader())
    return KafkaConnector(config.resolve(config.triggers[0]), context)


async def test_ssl_with_client_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    front = TlsFront(pki)
    broker = start_broker(tmp_path / "tansu.log", advertised=f"tcp://localhost:{front.port}")
    front.upstream_port = broker.port
    monkeypatch.setenv("TB_KAFKA_KEY_PASSWORD", pki.key_password)
    try:
        topic = broker.create_topic("secure", partitions=2)

        def tls(ca: Path) -> str:
            return (
                "security_protocol: SSL\n"
                f"      tls: {{ca_file: '{ca}', cert_file: '{pki.client_cert}', "
                f"key_file: '{pki.client_key}', key_password: '${{TB_KAFKA_KEY_PASSWORD}}'}}"
            )

        async with front, RecordingFunction() as fn:
            producer = AIOKafkaProducer(
                bootstrap_servers=f"localhost:{front.port}", security_protocol="SSL",
                ssl_context=ssl_context(TlsConfig(
                    ca_file=str(pki.ca), cert_file=str(pki.client_cert),
                    key_file=str(pki.client_key), key_password=pki.key_password,
                )),
            )
            await producer.start()
            for i in range(10):
                await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k")
            await producer.stop()
            secure = bridge_config(broker, topic, fn.url, kafka_extra=tls(pki.ca))
            secure = secure.replace(broker.bootstrap, f"localhost:{front.port}")
            async with running_bridge(secure) as runtime:
                await ready(runtime)
                await fn.wait_calls(10)
            wrong = bridge_config(broker, topic, fn.url, kafka_extra=tls(other.ca))
            wrong = wrong.replace(broker.bootstrap, f"localhost:{front.port}")
            connector = kafka_connector(wrong)
            with pytest.raises(KafkaSourceError) as caught:
                await connector.start()
            assert not connector.ready
            await connector.stop()
    finally:
        stop_broker(broker)
    message = str(caught.value)
    assert message.startswith(f"TLS handshake with localhost:{front.port} failed")
    assert "certificate verify failed" in message
    assert sorted(c.body for c in fn.calls) == sorted(f"v{i}".encode() for i in range(10))
    assert "tb-bridge" in front.clients  # the bridge presented its client certificate
