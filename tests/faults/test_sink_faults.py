"""The dead-letter sink is unavailable: nothing settles until it is back, nothing is lost.

Every fifth message is refused by the function with a 422 (permanent: dead-letter at
once). While the sink cannot store them, those events stay unsettled (the source keeps
the messages), their writes are retried, the source pauses once ``prefetch`` /
``max_unsettled`` events are open, and no event is settled as dead-lettered. Then the
sink is repaired and every refused event lands in it exactly once.

- ``file: directory missing``: a file sink whose directory does not exist yet (a
  volume not mounted), RabbitMQ source;
- ``kafka: dead-letter broker blackholed``: a Kafka sink on a broker reached through
  the fault proxy, blackholed (requests hang; nothing answers), Kafka source.

And at start-up: a dead-letter broker that hangs must neither hold the triggers' start
nor let ``/readyz`` say ready before they run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.faults.prober import (
    Answer,
    DeadLetters,
    FileDeadLetters,
    KafkaDeadLetters,
    KafkaSender,
    Prober,
    RabbitSender,
    Request,
    daemon_config,
    kafka_source,
)
from tests.faults.proxy import FaultProxy
from tests.faults.test_kafka_probes import proxied_broker, tansu_log
from tests.support.daemon import BridgeProcess, free_port
from tests.support.kafka import KafkaBroker
from tests.support.rabbitmq import BROKER_URL, Broker

pytestmark = pytest.mark.faults
__all__ = ["proxied_broker", "tansu_log"]  # fixtures used here

OPEN_LIMIT = 20
#: Full: a paused Kafka source takes again only once a tenth of its window settled.
FULL = OPEN_LIMIT - OPEN_LIMIT // 10


def refuse_every_fifth(request: Request, attempt: int) -> Answer:
    return Answer(status=422) if request.tag == "refuse" else Answer(delay=0.005)


def tag(n: int) -> str:
    return "refuse" if n % 5 == 2 else ""


async def hold_down_then_repair(
    probe: Prober, bridge: BridgeProcess, repair: Callable[[], Awaitable[None]],
    dead: DeadLetters,
) -> dict[str, Any]:
    """Wait for the stall with the sink down, check nothing settled, then repair."""
    await probe.wait_deliveries(10, timeout=15)
    probe.fault_began("dead-letter sink unavailable")
    deadline = time.monotonic() + 30
    while not (
        bridge.metric("bridge_unsettled_events", trigger="probe") >= FULL
        and time.monotonic() - max(a.at for a in probe.fn.arrivals) > 0.5
    ):  # full, and quiet: every open event waits for the sink
        assert time.monotonic() < deadline, "the source never filled up"
        await asyncio.sleep(0.1)
    stalled_at = len(probe.fn.delivered_ids())
    await asyncio.sleep(1.0)
    figures: dict[str, Any] = {
        "write_failures": bridge.metric("bridge_dead_letter_write_failures_total"),
        "settled_dead_while_down": bridge.metric(
            "bridge_events_settled_total", disposition="dead_lettered"
        ),
        "stalled": len(probe.fn.delivered_ids()) - stalled_at,
        "delivered_while_down": stalled_at,
        "open_while_down": bridge.metric("bridge_unsettled_events", trigger="probe"),
    }
    assert await dead.entries() == [], "nothing stored while the sink is down"
    await repair()
    probe.fault_ended()
    return figures


async def test_file_sink_directory_missing(tmp_path: Path) -> None:
    directory = tmp_path / "not-mounted-yet"
    async with Broker() as broker, Prober("dead-letter sink: file dir missing",
                                          refuse_every_fifth) as probe:
        queue = await broker.queue(durable=True)
        await RabbitSender(probe, broker, queue).send(200, tag=tag)
        trigger = {"rabbitmq": {"url": BROKER_URL, "queue": queue, "prefetch": OPEN_LIMIT}}
        config = daemon_config(probe.fn.url, trigger,
                               {"file": {"path": str(directory / "dead.jsonl")}})
        dead = FileDeadLetters(directory / "dead.jsonl")

        async def repair() -> None:
            directory.mkdir()

        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            figures = await hold_down_then_repair(probe, bridge, repair, dead)
            await probe.wait_handled(dead, timeout=60, bridge=bridge)
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0
        report = await probe.report(dead, **figures)
    check_sink_outage(probe, report.dead_ids, figures)
    report.check(dead_lettered=probe.ids_tagged("refuse"))


async def test_kafka_sink_blackholed(
    kafka_broker: KafkaBroker, proxied_broker: tuple[KafkaBroker, FaultProxy], tmp_path: Path
) -> None:
    sink_broker, proxy = proxied_broker
    dlq = await asyncio.to_thread(sink_broker.topic, 1, "dlq")
    topic = kafka_broker.topic(partitions=2)
    gate = asyncio.Event()  # the function answers once the sink is blackholed

    async def gated(request: Request, attempt: int) -> Answer:
        await gate.wait()
        return refuse_every_fifth(request, attempt)

    async with Prober("dead-letter sink: kafka blackholed", gated) as probe:
        async with KafkaSender(probe, kafka_broker.bootstrap, topic) as sender:
            await sender.send(200, tag=tag)
        source = kafka_source(kafka_broker.bootstrap, topic, max_unsettled=OPEN_LIMIT,
                              ordering="none")  # the refused events alone fill the source
        sink = {"kafka": {"topic": dlq, "bootstrap_servers": sink_broker.bootstrap}}
        config = daemon_config(probe.fn.url, source, sink)
        dead = KafkaDeadLetters(sink_broker.bootstrap, dlq)

        async def repair() -> None:
            proxy.set_mode("pass")

        try:
            assert await dead.entries() == []  # its consumer connects before the blackhole
            async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
                proxy.set_mode("blackhole")
                gate.set()
                figures = await hold_down_then_repair(probe, bridge, repair, dead)
                await probe.wait_handled(dead, timeout=60, bridge=bridge)
                assert await bridge.terminate() == 0
            report = await probe.report(dead, **figures)
        finally:
            await dead.close()
    check_sink_outage(probe, report.dead_ids, figures)
    report.check(dead_lettered=probe.ids_tagged("refuse"))


def check_sink_outage(probe: Prober, dead_ids: set[str], figures: dict[str, Any]) -> None:
    assert figures["settled_dead_while_down"] == 0, "no dead-letter settle while it is down"
    assert figures["stalled"] == 0, "the source paused at the limit"
    assert FULL <= figures["open_while_down"] <= OPEN_LIMIT
    # Refused events wait for the sink without holding the trigger's concurrency: the
    # healthy ones (4 in 5) kept flowing until OPEN_LIMIT refused ones were open.
    assert figures["delivered_while_down"] >= 3 * OPEN_LIMIT
    refused_once = {a.event_id for a in probe.fn.arrivals if a.status == 422}
    assert dead_ids == refused_once


async def test_hanging_sink_at_startup_neither_holds_the_triggers_nor_reads_ready(
    tmp_path: Path,
) -> None:
    async with FaultProxy(free_port()) as proxy, Broker() as broker, \
            Prober("start-up: dead-letter broker hangs") as probe:
        proxy.set_mode("blackhole")  # connections accepted, nothing ever answered
        queue = await broker.queue(durable=True)
        await RabbitSender(probe, broker, queue).send(50)
        trigger = {"rabbitmq": {"url": BROKER_URL, "queue": queue, "prefetch": 20}}
        config = daemon_config(probe.fn.url, trigger,
                               {"kafka": {"topic": "dlq", "bootstrap_servers": proxy.address}})
        spawned = time.monotonic()
        async with BridgeProcess(config, tmp_path) as bridge:
            first = await asyncio.to_thread(bridge.get_status, "/readyz")
            await probe.wait_handled(timeout=20, bridge=bridge)
            handled_s = round(time.monotonic() - spawned, 3)
            await bridge.wait_http("/readyz", timeout=10)
            assert await bridge.terminate() == 0
        report = await probe.report(handled_s=handled_s)
    report.check()
    assert first == 503, "not ready while the triggers are still being built"
    assert handled_s < 15, "the hanging sink held the start-up"
    sink_down = [e for e in bridge.logs() if e.get("event") == "dead-letter sink not available yet"]
    assert sink_down
    assert sink_down[0]["error"] == "no answer within 5s"
