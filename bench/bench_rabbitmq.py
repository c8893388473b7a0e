"""RabbitMQ trigger benchmark: the bridge against a raw aio-pika consumer, same run.

    .venv/bin/python bench/bench_rabbitmq.py [--messages 50000] [--prefetch 100] [--batch]

Needs the RabbitMQ server at 127.0.0.1:5672 (guest/guest). Prints JSON lines.

Contenders, each in its own process, each consuming its own fresh queue:

- ``baseline``: an aio-pika consumer with ``basic.qos(prefetch)`` that posts each
  message with aiohttp (one pooled session) and acks after the response: the floor
  of "queue -> HTTP function" on this machine.
- ``bridge``: ``python -m bridge run`` with one RabbitMQ trigger at the same prefetch
  (trigger concurrency = prefetch).

The fast function is an aiohttp server in a third process (answers 200 at once), so
it does not compete with either consumer's event loop; it counts requests and keeps
their receive times. All processes share this machine's cores with the broker.

Phases (one JSON line per contender and phase, then a summary line):

- ``throughput``: ``--messages`` messages of ``--size`` bytes are published first, then
  the consumer starts; throughput = messages / (last receipt - first receipt) at the
  function, so process start-up is not counted.
- ``latency``: the consumer runs idle, then ``--latency-messages`` are published at
  ``--rate`` per second, each stamped with its publish time; latency = receipt at the
  function - publish time. ``--latency-rounds`` runs each, alternating; the summary
  takes the median round's p50 and p99; ``added`` = bridge - baseline.

Summary: the ratio of each round (both contenders back to back, so under about the same
load from whatever else runs on the machine), ``ratio_median_of_rounds`` (the target:
>= 0.95 over 5 rounds, issue 12), ``ratio_of_medians``, and ``ratio`` = best bridge /
best baseline throughput (the figure of earlier runs; not robust to a bimodal spread).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
BROKER = "amqp://guest:guest@127.0.0.1:5672/"
SENT_HEADER = "sent"
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
    print(json.dumps({"bench": "rabbitmq", **fields}), flush=True)


# --- the fast function (its own process) ---------------------------------------------


def serve_function(port: int) -> None:
    """Answers 200 to every POST; GET /stats returns the count and receive times."""
    received: list[float] = []
    latencies: list[float] = []

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        if request.content_type == BATCH:  # a batch function: one answer for all
            for event in json.loads(body):
                received.append(now)
                headers = json.loads(event.get("bridgeheaders", "{}"))
                sent = headers.get(f"amqp-header-{SENT_HEADER}")
                if sent:
                    latencies.append(now - float(sent))
            return web.Response()
        received.append(now)
        sent = request.headers.get(f"amqp-header-{SENT_HEADER}")
        if sent:
            latencies.append(now - float(sent))
        return web.Response(text="ok")

    async def stats(request: web.Request) -> web.Response:
        full = request.query.get("full") == "1"
        body = {"count": len(received), "first": received[0] if received else None,
                "last": received[-1] if received else None,
                "latencies": latencies if full else []}
        return web.json_response(body)

    async def reset(request: web.Request) -> web.Response:
        received.clear()
        latencies.clear()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/fn", post)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True)


# --- the raw baseline consumer (its own process) -------------------------------------


async def run_baseline(queue: str, function_url: str, prefetch: int) -> None:
    """aio-pika consumer: post each message with aiohttp, ack after the response."""
    connection = await aio_pika.connect(BROKER)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=prefetch)
    source = await channel.get_queue(queue, ensure=True)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def handle(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        headers = {f"amqp-header-{k}": str(v) for k, v in (message.headers or {}).items()}
        headers["ce-id"] = message.message_id or ""
        async with session.post(function_url, data=message.body, headers=headers) as reply:
            await reply.read()
        await message.ack()

    await source.consume(handle)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await connection.close()
    await session.close()


# --- the driver ----------------------------------------------------------------------


class Function:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/fn"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Function:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--role", "function", "--port", str(self.port)])
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)

    async def call(self, method: str, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.request(
                method, f"http://127.0.0.1:{self.port}{path}") as reply:
            return await reply.json() if method == "GET" else await reply.read()

    async def wait_up(self) -> None:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                await self.call("GET", "/stats")
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("function did not start")

    async def wait_count(self, count: int, timeout: float, pid: int | None = None,
                         on_first: Callable[[], None] | None = None) -> dict[str, Any]:
        """Wait for ``count`` requests; with ``pid``, also the CPU seconds that process
        used between the first request seen and the last (``cpu``); ``on_first`` is
        called once the first request arrived."""
        deadline = time.monotonic() + timeout
        cpu_start = None
        while True:
            stats = await self.call("GET", "/stats")
            if pid is not None and cpu_start is None and stats["count"] > 0:
                cpu_start, count_start = cpu_seconds(pid), stats["count"]
                if on_first is not None:
                    on_first()
            if stats["count"] >= count:
                full: dict[str, Any] = await self.call("GET", "/stats?full=1")
                if pid is not None and cpu_start is not None:
                    used = cpu_seconds(pid) - cpu_start
                    full["cpu_per_message_us"] = 1e6 * used / (count - count_start)
                return full
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {stats['count']} of {count} delivered in {timeout}s")
            await asyncio.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_contender(name: str, queue: str, function: Function, prefetch: int,
                    workdir: Path, *, batch: dict[str, Any] | None = None,
                    concurrency: int | None = None) -> subprocess.Popen[bytes]:
    """``batch``: the bridge's trigger gets this ``batch:`` (and ``concurrency``)."""
    if name == "baseline":
        args = [sys.executable, __file__, "--role", "baseline", "--queue", queue,
                "--function-url", function.url, "--prefetch", str(prefetch)]
        return subprocess.Popen(args)
    config = workdir / f"bridge-{queue}.yaml"
    trigger: dict[str, Any] = {
        "name": "bench", "function": "fn", "concurrency": concurrency or prefetch,
        "rabbitmq": {"url": BROKER, "queue": queue, "prefetch": prefetch}}
    if batch:
        trigger["batch"] = batch
    config.write_text(json.dumps({
        "defaults": {"dead_letter": {"file": {"path": str(workdir / "dead-letters.jsonl")}}},
        "functions": {"fn": {"url": function.url}},
        "triggers": [trigger],
    }))
    env = {**os.environ, "BRIDGE_ADMIN_PORT": str(free_port()), "BRIDGE_ADMIN_HOST": "127.0.0.1",
           "BRIDGE_LOG_LEVEL": "warning"}
    if name == "bridge_asyncio":  # the daemon on asyncio's loop even with uvloop installed
        env["BRIDGE_UVLOOP"] = "false"
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)], env=env, cwd=ROOT)


async def publish(channel: aio_pika.abc.AbstractChannel, queue: str, count: int, size: int,
                  rate: float | None = None) -> None:
    body = os.urandom(size // 2).hex().encode()[:size]
    batch = 500 if rate is None else 1
    started = time.monotonic()
    pending = []
    for n in range(count):
        if rate is not None:
            await asyncio.sleep(max(0.0, started + n / rate - time.monotonic()))
        headers = {SENT_HEADER: repr(time.time())} if rate is not None else None
        message = aio_pika.Message(body, headers=headers, message_id=f"{queue}-{n}")
        pending.append(channel.default_exchange.publish(message, routing_key=queue))
        if len(pending) >= batch:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def fresh_queue(channel: aio_pika.abc.AbstractChannel, label: str) -> str:
    queue = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    await channel.declare_queue(queue, auto_delete=False)
    return queue


def _batch_mode(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """start_contender's settings of a batch-mode bridge (``bridge_batch``), else none."""
    if name != "bridge_batch":
        return {}
    return {"prefetch": args.batch_prefetch, "concurrency": args.batch_concurrency,
            "batch": {"max_events": args.batch_events, "max_wait": args.batch_wait}}


async def throughput(name: str, args: argparse.Namespace, function: Function,
                     channel: aio_pika.abc.AbstractChannel, workdir: Path) -> dict[str, float]:
    """Drain a pre-published backlog; rate from first to last receipt at the function."""
    queue = await fresh_queue(channel, name)
    try:
        await publish(channel, queue, args.messages, args.size)
        await function.call("POST", "/reset")
        process = start_contender(name, queue, function, workdir=workdir,
                                  **{"prefetch": args.prefetch, **_batch_mode(name, args)})
        profilers: list[subprocess.Popen[bytes]] = []

        def profile() -> None:
            if args.py_spy:
                profilers.append(start_profiler(process.pid, Path(args.py_spy), name))

        try:
            stats = await function.wait_count(args.messages, timeout=900, pid=process.pid,
                                              on_first=profile)
        finally:
            for profiler in profilers:  # SIGINT: py-spy writes its profile and exits
                profiler.send_signal(signal.SIGINT)
                profiler.wait(30)
            process.terminate()
            process.wait(30)
    finally:
        await channel.queue_delete(queue)
    seconds = stats["last"] - stats["first"]
    return {"per_second": (args.messages - 1) / seconds, "seconds": seconds,
            "cpu_us": stats.get("cpu_per_message_us", float("nan"))}


def start_profiler(pid: int, folder: Path, name: str) -> subprocess.Popen[bytes]:
    """py-spy (``pip install py-spy``) sampling a contender while messages flow: one
    collapsed-stack file per drain (``--idle``: waiting shows as ``select``)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}-{uuid.uuid4().hex[:6]}.txt"
    return subprocess.Popen(
        [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid),
         "--rate", "250", "--idle", "--format", "raw", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def latency(name: str, args: argparse.Namespace, function: Function,
                  channel: aio_pika.abc.AbstractChannel, workdir: Path, *,
                  rate: float | None = None, messages: int | None = None) -> dict[str, float]:
    """A steady rate into an idle consumer; latency = receipt - publish time."""
    rate = rate or args.rate
    messages = messages or args.latency_messages
    queue = await fresh_queue(channel, f"{name}-latency")
    try:
        await function.call("POST", "/reset")
        process = start_contender(name, queue, function, workdir=workdir,
                                  **{"prefetch": args.prefetch, **_batch_mode(name, args)})
        try:
            await asyncio.sleep(3.0)  # started and consuming
            await publish(channel, queue, messages, args.size, rate=rate)
            stats = await function.wait_count(messages, timeout=120)
        finally:
            process.terminate()
            process.wait(30)
    finally:
        await channel.queue_delete(queue)
    values = [1000 * v for v in stats["latencies"]]
    return {"p50": percentile(values, 0.5), "p99": percentile(values, 0.99),
            "max": max(values), "count": len(values)}


async def drive(args: argparse.Namespace) -> None:
    connection = await aio_pika.connect(BROKER)
    channel = await connection.channel()
    contenders = ["baseline", "bridge", *(["bridge_asyncio"] if args.with_asyncio else [])]
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    ratios: list[float] = []
    asyncio_ratios: list[float] = []
    lat: dict[str, dict[str, float]] = {}
    with Function() as function, tempfile.TemporaryDirectory() as tmp:
        await function.wait_up()
        for round_ in range(args.rounds):
            # Each round runs both back to back (alternating who goes first), so a round's
            # ratio compares runs under about the same machine load.
            order = contenders if round_ % 2 == 0 else contenders[::-1]
            run = {}
            for name in order:
                run[name] = await throughput(name, args, function, channel, Path(tmp))
                rates[name].append(run[name]["per_second"])
                emit(phase="throughput", round=round_, contender=name, messages=args.messages,
                     size=args.size, prefetch=args.prefetch,
                     seconds=round(run[name]["seconds"], 3),
                     per_second=round(run[name]["per_second"], 1),
                     cpu_per_message_us=round(run[name]["cpu_us"], 1))
            ratios.append(run["bridge"]["per_second"] / run["baseline"]["per_second"])
            if args.with_asyncio:
                asyncio_ratios.append(
                    run["bridge_asyncio"]["per_second"] / run["baseline"]["per_second"])
        samples: dict[str, list[dict[str, float]]] = {"baseline": [], "bridge": []}
        for round_ in range(args.latency_rounds):
            for name in ("baseline", "bridge") if round_ % 2 == 0 else ("bridge", "baseline"):
                result = await latency(name, args, function, channel, Path(tmp))
                samples[name].append(result)
                emit(phase="latency", round=round_, contender=name,
                     messages=int(result["count"]), rate=args.rate,
                     p50_ms=round(result["p50"], 2), p99_ms=round(result["p99"], 2),
                     max_ms=round(result["max"], 2))
        for name, results in samples.items():  # the median round damps other tenants' bursts
            if results:
                lat[name] = {q: statistics.median(r[q] for r in results)
                             for q in ("p50", "p99")}
    await connection.close()
    latency_figures = {} if not lat else {
        "latency_p50_ms": {k: round(v["p50"], 2) for k, v in lat.items()},
        "latency_p99_ms": {k: round(v["p99"], 2) for k, v in lat.items()},
        "added_latency_p50_ms": round(lat["bridge"]["p50"] - lat["baseline"]["p50"], 2),
        "added_latency_p99_ms": round(lat["bridge"]["p99"] - lat["baseline"]["p99"], 2),
    }
    emit(phase="summary", messages=args.messages, size=args.size, prefetch=args.prefetch,
         rounds=args.rounds, baseline_per_second=round(max(rates["baseline"]), 1),
         bridge_per_second=round(max(rates["bridge"]), 1),
         ratio=round(max(rates["bridge"]) / max(rates["baseline"]), 3),
         ratio_per_round=[round(r, 3) for r in ratios],
         ratio_median_of_rounds=round(statistics.median(ratios), 3),
         ratio_of_medians=round(
             statistics.median(rates["bridge"]) / statistics.median(rates["baseline"]), 3),
         target=0.95, **latency_figures, **({} if not asyncio_ratios else {
             "asyncio_ratio_per_round": [round(r, 3) for r in asyncio_ratios],
             "asyncio_ratio_median_of_rounds": round(statistics.median(asyncio_ratios), 3)}))


async def drive_batch(args: argparse.Namespace) -> None:
    """``--batch`` (issue 12): the bridge in batch mode against the raw per-message
    consumer (throughput, rounds alternating), then latency at ``--batch-rates`` for
    batch mode and per-message mode."""
    connection = await aio_pika.connect(BROKER)
    channel = await connection.channel()
    rates: dict[str, list[float]] = {"baseline": [], "bridge_batch": []}
    with Function() as function, tempfile.TemporaryDirectory() as tmp:
        await function.wait_up()
        for round_ in range(args.rounds):
            order = ("baseline", "bridge_batch")
            for name in order if round_ % 2 == 0 else order[::-1]:
                run = await throughput(name, args, function, channel, Path(tmp))
                rates[name].append(run["per_second"])
                emit(phase="batch_throughput", round=round_, contender=name,
                     messages=args.messages, size=args.size, **_described(name, args),
                     seconds=round(run["seconds"], 3), per_second=round(run["per_second"], 1),
                     cpu_per_message_us=round(run["cpu_us"], 1))
        medians = {name: statistics.median(values) for name, values in rates.items()}
        emit(phase="batch_summary", rounds=args.rounds,
             median_per_second={k: round(v, 1) for k, v in medians.items()},
             per_round=[round(b / a, 2) for a, b in
                        zip(rates["baseline"], rates["bridge_batch"], strict=True)],
             speedup=round(medians["bridge_batch"] / medians["baseline"], 2), target=5)
        for rate in args.batch_rates:
            count = max(200, int(rate * args.batch_seconds))
            for name in ("bridge_batch", "bridge"):
                result = await latency(name, args, function, channel, Path(tmp),
                                       rate=rate, messages=count)
                emit(phase="batch_latency", contender=name, rate=rate,
                     messages=int(result["count"]), **_described(name, args),
                     p50_ms=round(result["p50"], 1), p99_ms=round(result["p99"], 1),
                     max_ms=round(result["max"], 1))
    await connection.close()


def _described(name: str, args: argparse.Namespace) -> dict[str, Any]:
    mode = _batch_mode(name, args)
    return mode if mode else {"prefetch": args.prefetch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2,
                        help="throughput rounds per contender (best one is reported)")
    parser.add_argument("--latency-messages", type=int, default=2000)
    parser.add_argument("--latency-rounds", type=int, default=3,
                        help="latency runs per contender (the median is reported)")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--with-asyncio", action="store_true",
                        help="a third contender each round: the bridge with BRIDGE_UVLOOP=false")
    parser.add_argument("--py-spy", metavar="DIR",
                        help="profile each throughput drain with py-spy into DIR")
    parser.add_argument("--batch", action="store_true",
                        help="compare batch mode with the baseline instead (issue 12)")
    parser.add_argument("--batch-events", type=int, default=100)
    parser.add_argument("--batch-wait", default="50ms")
    parser.add_argument("--batch-prefetch", type=int, default=1000)
    parser.add_argument("--batch-concurrency", type=int, default=8)
    parser.add_argument("--batch-rates", type=float, nargs="*", default=[100.0, 1000.0])
    parser.add_argument("--batch-seconds", type=float, default=5.0)
    parser.add_argument("--role", choices=("driver", "function", "baseline"), default="driver")
    parser.add_argument("--port", type=int)
    parser.add_argument("--queue")
    parser.add_argument("--function-url")
    args = parser.parse_args()
    if args.role == "function":
        serve_function(args.port)
    elif args.role == "baseline":
        asyncio.run(run_baseline(args.queue, args.function_url, args.prefetch))
    elif args.batch:
        asyncio.run(drive_batch(args))
    else:
        asyncio.run(drive(args))


if __name__ == "__main__":
    main()
