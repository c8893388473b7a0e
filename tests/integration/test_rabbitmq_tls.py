"""``amqps://`` with CA verification and a client certificate (encrypted key), through a
TLS front that requires client certificates, to the real broker."""

from __future__ import annotations

from pathlib import Path

from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.rabbitmq import Broker, bridge_yaml, eventually
from tests.support.tls import TlsFront, make_pki


async def test_amqps_with_client_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other-pki")

    def behaviour(call: Call, attempt: int) -> Reply:
        return Reply(422) if call.body == b"refuse" else Reply()

    async with (
        Broker() as broker,
        TlsFront(pki, upstream_port=5672) as proxy,
        RecordingFunction(behaviour) as fn,
    ):
        queue, dlq = await broker.queue(), await broker.queue()
        dlx = await broker.exchange("fanout")
        await broker.bind(dlq, dlx)
        await broker.publish_many(queue, [f"tls {n}".encode() for n in range(20)] + [b"refuse"])
        url = f"amqps://guest:guest@localhost:{proxy.port}/"
        tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
               "key_file": str(pki.client_key), "key_password": "${TB_KEY_PASSWORD}"}
        triggers = [
            {"name": "secure", "rabbitmq": {"url": url, "queue": queue, "tls": tls}},
            {"name": "wrong-ca", "rabbitmq": {"url": url, "queue": queue,
                                              "tls": {**tls, "ca_file": str(other.ca)}}},
        ]
        # The dead-letter sink borrows the trigger's amqps url and TLS settings.
        config = bridge_yaml(fn.url, triggers, {"rabbitmq": {"exchange": dlx}})
        env = {"TB_KEY_PASSWORD": pki.key_password}
        async with BridgeProcess(config, tmp_path, env=env) as bridge:
            await fn.wait_for(lambda: len({c.body for c in fn.calls}) == 21)
            [dead] = await broker.take(dlq, 1)
            await eventually(lambda: any(
                e.get("event") == "source failed" and e.get("trigger") == "wrong-ca"
                for e in bridge.logs()), what="the wrong-CA trigger to fail")
            status = bridge.get_status("/readyz")
            await bridge.terminate()
        assert await broker.count(queue) == 0
    assert status == 503, "wrong-ca is not ready"
    assert dead.body == b"refuse"
    assert dead.headers["bridge-trigger"] == "secure"
    assert "tb-bridge" in proxy.clients, "the bridge presented its client certificate"
    errors = [str(e.get("error")) for e in bridge.logs()
              if e.get("event") == "source failed" and e.get("trigger") == "wrong-ca"]
    assert "TLS handshake with amqps://guest:***@localhost" in errors[0]
    assert "certificate verify failed" in errors[0]
