"""Compressed Kafka records (issue 15, item 15), through the real daemon against Tansu.

Producers in production compress. Every codec Kafka defines (gzip, snappy, lz4, zstd)
must be read by the package as installed (the codec library, cramjam, is a dependency
through ``aiokafka[snappy,lz4,zstd]``). A codec the daemon cannot read is a clear error
naming the topic and partition, not retried, with readiness false; the other
partitions go on.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests.support import kafka as kafka_support
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction
from tests.support.inject import preload
from tests.support.kafka import KafkaBroker, bridge_config, wait_until

kafka_broker = kafka_support.kafka_broker

RECORDS = 40


async def produce_compressed(
    broker: KafkaBroker, topic: str, codec: str | None, values: list[bytes], partition: int = 0
) -> None:
    """Produce ``values`` in compressed batches (linger: many records per batch)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap, acks="all", compression_type=codec, linger_ms=50,
    )
    await producer.start()
    try:
        futures = [await producer.send(topic, value=v, key=b"k%d" % (i % 4), partition=partition)
                   for i, v in enumerate(values)]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _values(codec: str) -> list[bytes]:
    # Repetitive bodies, so each codec really compresses them.
    return [f"{codec} record {n} ".encode() * 50 for n in range(RECORDS)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_every_kafka_codec_is_read(
    kafka_broker: KafkaBroker, tmp_path: Path, codec: str
) -> None:
    topic = kafka_broker.topic(prefix=codec)
    values = _values(codec)
    await produce_compressed(kafka_broker, topic, codec, values)
    dl = tmp_path / "dl.jsonl"
    async with RecordingFunction() as fn:
        config = bridge_config(kafka_broker, topic, fn.url,
                               dead_letter=f'{{file: {{path: "{dl}"}}}}')
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await fn.wait_calls(RECORDS, timeout=30)
            assert await bridge.terminate() == 0
    assert sorted(c.body for c in fn.calls) == sorted(values)
    assert not dl.exists()
    assert await kafka_broker.committed(f"g-{topic}", topic) == {0: RECORDS}
    assert not [line for line in bridge.log_lines if "source failed" in line]


#: The daemon as installed without the codec library: ``import cramjam`` fails.
NO_CODEC_LIBRARY = """
import sys
sys.modules["cramjam"] = None
"""


async def test_unreadable_codec_is_a_clear_error_and_the_other_partitions_go_on(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic(partitions=2, prefix="nocodec")
    snappy = _values("snappy")
    plain = _values("plain")
    await produce_compressed(kafka_broker, topic, "snappy", snappy, partition=0)
    await produce_compressed(kafka_broker, topic, None, plain, partition=1)
    dl = tmp_path / "dl.jsonl"
    async with RecordingFunction() as fn:
        config = bridge_config(kafka_broker, topic, fn.url,
                               dead_letter=f'{{file: {{path: "{dl}"}}}}')
        env = preload(tmp_path, NO_CODEC_LIBRARY)
        async with BridgeProcess(config, tmp_path, env=env) as bridge:
            await fn.wait_calls(RECORDS, timeout=30)  # partition 1: uncompressed
            await wait_until(lambda: bool(_unreadable(bridge)), 10, "the codec error")
            await asyncio.sleep(2)  # not retried: no second error, no restart
            assert bridge.get_status("/readyz") == 503
            [error] = _unreadable(bridge)
            assert error["topic"] == topic
            assert error["partition"] == 0
            assert "snappy" in str(error["error"])
            assert not [line for line in bridge.log_lines if "source failed" in line]
            assert bridge.metric("bridge_kafka_unreadable_partitions", trigger="orders") == 1
            refetched = [e for e in bridge.logs()
                         if e.get("event") == "kafka records dropped with the decoding error "
                                              "fetched again"]
            # Only when the fetcher drained partition 1 before it failed on 0 (its order).
            print("partition 1 drained before the error:", bool(refetched))
            assert await bridge.terminate() == 0
    assert sorted(c.body for c in fn.calls) == sorted(plain)
    assert not dl.exists(), "nothing can be dead-lettered from an unreadable batch"
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert committed[1] == RECORDS
    assert not committed[0], "the unreadable partition is not committed past"


def _unreadable(bridge: BridgeProcess) -> list[dict[str, object]]:
    return [e for e in bridge.logs() if e.get("event") == "kafka records cannot be read"]
