"""The daemon as users run it (``python -m bridge run``), killed, restarted and scaled out.

Each test counts unique CloudEvent ids at a real HTTP function: the ids are
``topic/partition/offset``, so "none missing" is checked against what was produced.
"""

from __future__ import annotations

from pathlib import Path

from tests.support import kafka as kafka_support
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction, always
from tests.support.kafka import KafkaBroker, bridge_config, wait_until

kafka_broker = kafka_support.kafka_broker


async def test_sigkill_mid_stream_then_restart_delivers_every_record(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic(partitions=2)
    sent = await kafka_broker.produce(
        topic, [(f"k{i % 40}".encode(), f"v{i}".encode(), []) for i in range(400)]
    )
    expected = {f"{topic}/{p}/{o}" for p, o in sent}
    async with RecordingFunction(always(200, delay=0.01)) as fn:
        config = bridge_config(kafka_broker, topic, fn.url, concurrency=8)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as first:
            await fn.wait_calls(120, timeout=30)
            await first.kill()
        delivered_before = set(fn.ids())
        assert len(delivered_before) < len(expected)  # killed mid-stream
        async with BridgeProcess(config, tmp_path, wait_ready=True) as second:
            await wait_until(lambda: expected <= set(fn.ids()), 40, "every record delivered")
            assert await second.terminate() == 0
    ids = fn.ids()
    print("redelivered after the kill", len(ids) - len(expected))
    assert set(ids) == expected  # none missing, nothing foreign
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert sum(o or 0 for o in committed.values()) == 400


async def test_two_replicas_share_partitions_and_one_takes_over(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic(partitions=4)
    sent = await kafka_broker.produce(
        topic, [(f"k{i % 50}".encode(), f"v{i}".encode(), []) for i in range(400)]
    )
    expected = {f"{topic}/{p}/{o}" for p, o in sent}
    async with RecordingFunction(always(200, delay=0.05)) as fn:

        def config(replica: str) -> str:
            return bridge_config(
                kafka_broker, topic, fn.url + replica, concurrency=2,
                kafka_extra="max_unsettled: 20",
            )

        async with (
            BridgeProcess(config("a"), tmp_path, wait_ready=True) as a,
            BridgeProcess(config("b"), tmp_path, wait_ready=True) as b,
        ):
            await wait_until(lambda: _assigned(a) == 2 and _assigned(b) == 2, 30, "a 2/2 split")
            calls_at_split = len(fn.calls)
            await wait_until(
                lambda: {c.path for c in fn.calls[calls_at_split:]} == {"/a", "/b"},
                15, "both replicas invoking",
            )
            assert await a.terminate() == 0
            await wait_until(lambda: _assigned(b) == 4, 30, "b takes every partition")
            await wait_until(lambda: expected <= set(fn.ids()), 40, "every record")
            assert await b.terminate() == 0
    print("duplicates", len(fn.ids()) - len(expected))
    assert set(fn.ids()) == expected
    duplicates = len(fn.ids()) - len(expected)
    assert duplicates < 40  # a handover redelivers at most what was in flight


def _assigned(bridge: BridgeProcess) -> float:
    try:
        return bridge.metric("bridge_kafka_assigned_partitions", trigger="orders")
    except OSError:
        return -1.0


