"""Instructions per event of the bridge's per-record path against the pipelined loop.

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=DIR/cg.%p \\
        .venv/bin/python bench/instructions.py {bridge,pipelined} [--events 2000]
        [--ordering none|key] [--uvloop]

In one process, without a broker: Kafka records (1 KiB, 1,000 keys, 4 partitions) made
in memory go either through the bridge's own path -- ``KafkaConnector._take`` (the
record -> Event mapping, offset bookkeeping), the pump's ``submit``, the lanes, the
dispatcher, the invoker and the settle back into the partition's offsets -- or through
the pipelined loop of ``bench/bench_kafka.py`` (a task per record when a slot frees, the
same CloudEvents headers, finished offsets per partition), each posting to the fast
function (``bench/fastfn.py``) in its own process at concurrency 64. What aiokafka does
to fetch is the same for both and left out.

After ``--warmup`` events, callgrind's instrumentation is switched on (the process asks
``callgrind_control`` itself) for ``--events`` events and the counts are dumped: prints
``instructions_per_event``. Instruction counts do not depend on the machine's load,
so two versions of the code can be compared on a busy machine. Without valgrind it
prints the CPU time per event instead (noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_kafka import _headers  # noqa: E402

TOPIC = "bench"
PARTITIONS = 4
KEYS = 1000


def under_callgrind() -> bool:
    return "valgrind" in os.environ.get("LD_PRELOAD", "") or any(
        "vgpreload" in line for line in Path("/proc/self/maps").read_text().splitlines())


def callgrind(command: str) -> None:
    subprocess.run(["callgrind_control", command, str(os.getpid())], check=True,
                   capture_output=True)


def records(count: int, start: int = 0) -> list[ConsumerRecord[bytes, bytes]]:
    value = os.urandom(1024)
    stamp = int(time.time() * 1000)
    out = []
    for n in range(start, start + count):
        partition = n % PARTITIONS
        out.append(ConsumerRecord(TOPIC, partition, n // PARTITIONS, stamp, 0,
                                  str(n % KEYS).encode(), value, None, 3, 1024, ()))
    return out


class Function:
    def __enter__(self) -> Function:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
            self.out = out.name
        probe = __import__("socket").socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        self.url = f"http://127.0.0.1:{port}/"
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fastfn.py"), str(port), self.out],
            stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        self.process.stdout.readline()
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(10)
        os.unlink(self.out)


# --- the bridge's path ------------------------------------------------------------------


async def bridge_path(url: str, batches: list[list[Any]], ordering: str,
                      on_batch: Callable[[int], None]) -> None:
    from bridge.config import parse_config
    from bridge.config.sinks import FileSinkConfig
    from bridge.daemon import tune_gc
    from bridge.deadletter import FileSink
    from bridge.dispatcher import Dispatcher
    from bridge.invoker import Invoker
    from bridge.leadership import AlwaysLeader
    from bridge.logs import configure, get_logger
    from bridge.metrics import Metrics
    from bridge.pools import BalancedPool, Target
    from connectors.base import ConnectorContext
    from connectors.kafka import KafkaConnector
    from connectors.kafka_offsets import PartitionOffsets

    configure("json", "warning")  # as the benchmark runs the daemon
    config = parse_config(
        "defaults: {dead_letter: {file: {path: /dev/null}}}\n"
        f"functions: {{fn: {{url: '{url}'}}}}\n"
        "triggers: [{name: bench, function: fn, concurrency: 64, timeout: 30s, "
        f"kafka: {{bootstrap_servers: [127.0.0.1:9], topics: [{TOPIC}], group_id: g, "
        f"ordering: {ordering}}}}}]\n", env={})
    trigger = config.resolve(config.triggers[0])
    metrics, log = Metrics(), get_logger()
    connector = KafkaConnector(trigger, ConnectorContext(metrics, log, AlwaysLeader()))
    states = {p: PartitionOffsets(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
    connector._states = {s.tp: s for s in states.values()}
    async with Invoker.new_session() as session:
        dispatcher = Dispatcher(
            trigger, target=Target("fn", BalancedPool([url])), invoker=Invoker(session),
            sink=FileSink(FileSinkConfig(path="/dev/null")), metrics=metrics, log=log,
            ordering=trigger.ordering, max_unsettled=connector.max_unsettled)

        async def events() -> AsyncIterator[Any]:  # the connector's intake, fetch left out
            for number, batch in enumerate(batches):
                on_batch(number)
                while connector._unsettled + len(batch) > connector.max_unsettled:  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                for record in batch:
                    yield connector._take(states[record.partition], record)

        tune_gc()
        async for event in events():
            await dispatcher.submit(event)
            del event
        while dispatcher.unsettled:  # noqa: ASYNC110 (a harness: the wait costs nothing counted)
            await asyncio.sleep(0.001)


# --- the pipelined loop -----------------------------------------------------------------


async def pipelined_path(url: str, batches: list[list[Any]], ordering: str,
                         on_batch: Callable[[int], None]) -> None:
    slots = asyncio.Semaphore(64)
    taken: dict[int, deque[int]] = {p: deque() for p in range(PARTITIONS)}
    finished: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
    tasks: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def post(partition: int, record: Any) -> None:
            try:
                async with session.post(url, data=record.value, headers=_headers(record)) as r:
                    await r.read()
                    if r.status < 300:
                        finished[partition].add(record.offset)
            finally:
                slots.release()

        def commit() -> None:
            for partition, offsets_taken in taken.items():
                done = finished[partition]
                while offsets_taken and offsets_taken[0] in done:
                    done.discard(offsets_taken.popleft())

        for number, batch in enumerate(batches):
            on_batch(number)
            commit()
            for record in batch:
                await slots.acquire()
                taken[record.partition].append(record.offset)
                task = asyncio.create_task(post(record.partition, record))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", choices=["bridge", "pipelined"])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--ordering", choices=["none", "key"], default="none")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    batch = 500  # aiokafka's max_poll_records
    made = records(args.warmup + args.events + batch)
    batches = [made[i:i + batch] for i in range(0, len(made), batch)]
    valgrind = under_callgrind()
    first, last = args.warmup // batch, (args.warmup + args.events) // batch
    cpu: list[float] = []

    def on_batch(number: int) -> None:  # counting from the first measured batch
        if number == first:
            if valgrind:
                callgrind("--instr=on")
            cpu.append(time.process_time())
        elif number == last:
            if valgrind:
                callgrind("--dump")
                callgrind("--instr=off")
            cpu.append(time.process_time())

    run = bridge_path if args.path == "bridge" else pipelined_path
    with Function() as function:
        coroutine = run(function.url, batches, args.ordering, on_batch)
        if args.uvloop:
            import uvloop
            uvloop.run(coroutine)
        else:
            asyncio.run(coroutine)
    counted = (last - first) * batch
    figure: dict[str, Any] = {"path": args.path, "ordering": args.ordering,
                              "loop": "uvloop" if args.uvloop else "asyncio",
                              "events": counted}
    if not valgrind:
        figure["cpu_us_per_event"] = round((cpu[1] - cpu[0]) / counted * 1e6, 1)
    print(json.dumps(figure), flush=True)
    gc.collect()


if __name__ == "__main__":
    main()
