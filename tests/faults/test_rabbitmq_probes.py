"""RabbitMQ under faults, every message accounted for by the prober.

SIGKILL of the bridge three times mid-stream, SIGTERM under load (a rolling update),
a broker restart mid-stream (``rabbitmqctl stop_app``/``start_app``), and a poison
message among healthy ones. Real broker, the daemon as a subprocess through its CLI.

Duplicate bound: RabbitMQ redelivers exactly the deliveries that were unacked when the
consumer went away, and the broker never lets more than ``prefetch`` be unacked, so a
settled delivery whose ack had not reached the broker is already inside that number:
the bound is ``prefetch`` per fault (``uncommitted_s=0``). A SIGTERM drains and acks:
no duplicate at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.prober import (
    Answer,
    Prober,
    RabbitDeadLetters,
    RabbitSender,
    Request,
    daemon_config,
    file_dead_letters,
    file_sink,
    healthy,
)
from tests.support.daemon import BridgeProcess
from tests.support.rabbitmq import BROKER_URL, Broker, eventually, rabbitmqctl

pytestmark = pytest.mark.faults


@contextlib.asynccontextmanager
async def broker_outage(probe: Prober) -> AsyncIterator[None]:
    """``stop_app`` for the block, then ``start_app`` (always, in ``finally``); the fault
    ends when the AMQP port accepts connections again (``start_app`` itself returns
    later than that)."""
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        yield
    finally:
        starting = asyncio.create_task(asyncio.to_thread(rabbitmqctl, "start_app"))
        try:
            while not await asyncio.to_thread(_accepts, 5672):
                if starting.done():
                    break
                await asyncio.sleep(0.02)
        finally:
            probe.fault_ended()
            await starting
            await asyncio.to_thread(rabbitmqctl, "await_startup")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def rabbit(queue: str, prefetch: int) -> dict[str, object]:
    return {"rabbitmq": {"url": BROKER_URL, "queue": queue, "prefetch": prefetch}}


def refuse_some(request: Request, attempt: int) -> Answer:
    """Healthy, except the messages tagged ``refuse``: a 422, dead-lettered at once (so
    dead-letter writes are in flight at the kills too)."""
    return Answer(status=422) if request.tag == "refuse" else Answer(delay=0.01)


def every_50th(n: int) -> str:
    return "refuse" if n % 50 == 25 else ""


async def test_sigkill_three_times_mid_stream(tmp_path: Path) -> None:
    prefetch = 20
    async with Broker() as broker, Prober("rabbitmq: SIGKILL x3", refuse_some) as probe:
        queue = await broker.queue(durable=True)
        await RabbitSender(probe, broker, queue).send(450, tag=every_50th)
        config = daemon_config(probe.fn.url, rabbit(queue, prefetch), file_sink(tmp_path))
        await probe.kill_mid_stream(config, tmp_path, times=3, every=80)
        dead = await probe.final_run(config, tmp_path)
        assert await broker.count(queue) == 0
        bound = probe.duplicate_bound(in_flight=prefetch, uncommitted_s=0)
        report = await probe.report(dead, duplicate_bound=bound)
    report.check(dead_lettered=probe.ids_tagged("refuse"))


async def test_sigterm_under_load_drains_and_duplicates_nothing(tmp_path: Path) -> None:
    async with Broker() as broker, Prober("rabbitmq: SIGTERM under load", healthy(0.05)) as probe:
        queue = await broker.queue(durable=True)
        await RabbitSender(probe, broker, queue).send(300)
        config = daemon_config(probe.fn.url, rabbit(queue, 40), file_sink(tmp_path))
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await probe.wait_deliveries(80)
            assert probe.fn.in_flight > 0, "under load"
            probe.fault_began("sigterm")
            started = time.monotonic()
            assert await bridge.terminate() == 0
            drain_s = round(time.monotonic() - started, 3)
        left = len(probe.sent) - len(probe.fn.delivered_ids())
        assert left > 0, "stopped mid-stream"
        probe.fault_ended()
        dead = await probe.final_run(config, tmp_path)
        assert await broker.count(queue) == 0
        report = await probe.report(dead, duplicate_bound=0, drain_s=drain_s)
    report.check()


async def test_sigterm_past_the_drain_timeout_exits_and_loses_nothing(tmp_path: Path) -> None:
    """In-flight invocations slower than ``BRIDGE_DRAIN_TIMEOUT``: the daemon gives up on
    them and exits 0 in time; the broker redelivers them. The function finishes the
    abandoned requests anyway, so each can come twice: at most ``concurrency``."""
    concurrency, slow = 8, True

    def behaviour(request: Request, attempt: int) -> Answer:
        return Answer(delay=1.5 if slow else 0.01)

    async with Broker() as broker, Prober("rabbitmq: SIGTERM past the drain timeout",
                                          behaviour) as probe:
        queue = await broker.queue(durable=True)
        await RabbitSender(probe, broker, queue).send(40)
        config = daemon_config(probe.fn.url, rabbit(queue, 20), file_sink(tmp_path),
                               concurrency=concurrency)
        async with BridgeProcess(config, tmp_path, wait_ready=True,
                                 drain_timeout="500ms") as bridge:
            await eventually(lambda: probe.fn.in_flight == concurrency, what="all slots busy")
            probe.fault_began("sigterm, drain timeout 0.5 s")
            started = time.monotonic()
            assert await bridge.terminate() == 0
            exit_s = round(time.monotonic() - started, 3)
        slow = False
        probe.fault_ended()
        dead = await probe.final_run(config, tmp_path)
        await eventually(lambda: probe.fn.in_flight == 0, what="abandoned requests answered")
        assert await broker.count(queue) == 0
        report = await probe.report(dead, duplicate_bound=concurrency, exit_s=exit_s)
    report.check()
    assert exit_s < 3.0, "the drain timeout bounds the shutdown"


@pytest.mark.broker_restart
async def test_broker_restart_mid_stream(tmp_path: Path) -> None:
    prefetch, concurrency = 50, 4
    async with Broker() as broker, Prober("rabbitmq: broker restart", healthy(0.05)) as probe:
        queue = await broker.queue(durable=True)
        await RabbitSender(probe, broker, queue).send(300)
        config = daemon_config(probe.fn.url, rabbit(queue, prefetch), file_sink(tmp_path),
                               concurrency=concurrency)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await probe.wait_deliveries(60)
            mark = probe.fault_began("rabbitmqctl stop_app")
            async with broker_outage(probe):
                await eventually(lambda: bridge.get_status("/readyz") == 503, timeout=10,
                                 what="readiness to drop while the broker is down")
            assert mark.ended is not None
            outage_s = round(mark.ended - mark.began, 3)
            assert len(probe.fn.delivered_ids()) < len(probe.sent), "restarted mid-stream"
            dead = file_dead_letters(tmp_path)
            await probe.wait_handled(dead, timeout=60, bridge=bridge)
            await eventually(lambda: bridge.get_status("/readyz") == 200, what="ready again")
            assert bridge.metric("bridge_rabbitmq_reconnects_total") >= 1
            withdrawn = bridge.metric("bridge_events_withdrawn_total")
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0
        # Up to ``prefetch`` deliveries were with the bridge; only those being invoked
        # (and acks on the wire) can come back as duplicates: the waiting ones are
        # withdrawn, not invoked.
        bound = probe.duplicate_bound(in_flight=2 * concurrency, uncommitted_s=0)
        report = await probe.report(dead, duplicate_bound=bound, outage_s=outage_s)
    report.check()
    assert withdrawn > 0, "deliveries waiting at the loss should have been withdrawn"


async def test_poison_message_is_dead_lettered_while_the_others_flow(tmp_path: Path) -> None:
    attempts = 4

    def behaviour(request: Request, attempt: int) -> Answer:
        return Answer(status=500) if request.tag == "poison" else Answer(delay=0.01)

    async with Broker() as broker, Prober("rabbitmq: poison message", behaviour) as probe:
        queue, dlq = await broker.queue(durable=True), await broker.queue(durable=True)
        dlx = await broker.exchange()
        await broker.bind(dlq, dlx, "dead")
        await RabbitSender(probe, broker, queue).send(
            300, tag=lambda n: "poison" if n % 50 == 7 else ""
        )
        poison = probe.ids_tagged("poison")
        config = daemon_config(
            probe.fn.url, rabbit(queue, 20), {"rabbitmq": {"exchange": dlx, "routing_key": "dead"}},
            retry={"max_attempts": attempts, "initial_backoff": "100ms", "max_backoff": "200ms"},
        )
        dead = RabbitDeadLetters(broker, dlq)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await probe.wait_handled(dead, timeout=60, bridge=bridge)
            assert await bridge.terminate() == 0
        report = await probe.report(dead, poison=len(poison))
    report.check(dead_lettered=poison)
    calls = probe.fn.arrivals
    for event_id in poison:
        tried = [a.at for a in calls if a.event_id == event_id]
        assert len(tried) == attempts
        flowing = [a for a in calls if a.delivered and tried[0] < a.at < tried[-1]]
        assert flowing, f"healthy messages kept flowing while {event_id} was retried"
