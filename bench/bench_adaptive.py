"""Adaptive concurrency benchmark: a function whose capacity changes mid-run, the bridge
with static concurrencies and with ``concurrency: {adaptive: ...}``, same run.

    .venv/bin/python bench/bench_adaptive.py [--phase-seconds 20] [--service 0.05]
                                             [--static 4,8,32,64] [--rounds 1]

Needs the RabbitMQ server at 127.0.0.1:5672 (guest/guest). Prints JSON lines.

The function (``bench/capacityfn.py``, its own process) serves 8 requests at a time for
``--phase-seconds``, then 32, then 4 (``--schedule``), each in ``--service`` seconds
+/- 10 %; beyond its capacity requests queue (latency climbs) up to twice the capacity,
then it answers 429. Its clock starts at the first request, so start-up is not counted.

Each contender drains its own fresh queue of small messages (more than it can take in the
run) through ``python -m bridge run`` with one RabbitMQ trigger (prefetch 256, trigger
concurrency 128, retries up to 50 attempts with backoff 0.1-2 s):

- ``static-N``: the function's ``max_concurrency: N``;
- ``adaptive``: ``max_concurrency: 64`` and ``concurrency: {adaptive: {min: 1, max: 64}}``;
  ``bridge_function_concurrency_limit`` is scraped every 0.25 s.

Per contender and phase (measured at the function): delivered per second (200 answers
finished in the phase), 429 answers, p50/p99 latency of the 200 answers (arrival to
answer). The function's uncongested latency is the p99 latency static-4 sees in the
32-worker phase (4 in flight, never a queue). Summary, the issue's targets: per phase
the adaptive throughput / the best static one (>= 0.9), adaptive 429s / static-64's
(<= 0.1), adaptive p99 / uncongested (<= 2) per phase and over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import aiohttp

ROOT = Path(__file__).resolve().parent.parent
BROKER = "amqp://guest:guest@127.0.0.1:5672/"
LIMIT_METRIC = re.compile(r'^bridge_function_concurrency_limit\{function="fn"\} (\S+)$', re.M)


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
    print(json.dumps({"bench": "adaptive", **fields}), flush=True)


class Function:
    """bench/capacityfn.py in its own process."""

    def __init__(self, schedule: str, service: float) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/fn"
        self.args = [sys.executable, str(ROOT / "bench" / "capacityfn.py"), str(self.port),
                     "--schedule", schedule, "--service", str(service)]
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Function:
        self.process = subprocess.Popen(self.args)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(10)

    async def get(self, path: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{self.port}{path}") as reply:
            return await reply.json()

    async def wait_up(self) -> None:
        for _ in range(100):
            with contextlib.suppress(aiohttp.ClientError):
                await self.get("/elapsed")
                return
            await asyncio.sleep(0.1)
        raise RuntimeError("function did not start")


def bridge_config(name: str, queue: str, url: str, workdir: Path) -> dict[str, Any]:
    function: dict[str, Any] = {"url": url}
    if name == "adaptive":
        function |= {"max_concurrency": 64, "concurrency": {"adaptive": {"min": 1, "max": 64}}}
    else:
        function["max_concurrency"] = int(name.removeprefix("static-"))
    return {
        "defaults": {"dead_letter": {"file": {"path": str(workdir / f"dl-{queue}.jsonl")}}},
        "functions": {"fn": function},
        "triggers": [{
            "name": "bench", "function": "fn", "concurrency": 128,
            "retry": {"max_attempts": 50, "initial_backoff": 0.1, "max_backoff": 2.0},
            "rabbitmq": {"url": BROKER, "queue": queue, "prefetch": 256},
        }],
    }


async def publish(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> None:
    body = b"x" * 100
    for start in range(0, count, 500):
        await asyncio.gather(*(
            channel.default_exchange.publish(
                aio_pika.Message(body, message_id=f"{queue}-{n}"), routing_key=queue)
            for n in range(start, min(count, start + 500))))


async def scrape_limit(session: aiohttp.ClientSession, admin: int) -> float | None:
    with contextlib.suppress(aiohttp.ClientError):
        async with session.get(f"http://127.0.0.1:{admin}/metrics") as reply:
            found = LIMIT_METRIC.search(await reply.text())
            return float(found.group(1)) if found else None
    return None


async def run_contender(name: str, args: argparse.Namespace,
                        channel: aio_pika.abc.AbstractChannel, workdir: Path
                        ) -> tuple[dict[str, Any], list[tuple[float, float]]]:
    """One run: the function's records and (for adaptive) the limit over time."""
    schedule = parse_schedule(args.schedule, args.phase_seconds)
    total = sum(seconds for _, seconds in schedule)
    messages = int(1.3 * sum(c * s for c, s in schedule) / args.service) + 1000
    queue = f"bench-adaptive-{name}-{uuid.uuid4().hex[:8]}"
    await channel.declare_queue(queue, auto_delete=False)
    limits: list[tuple[float, float]] = []
    try:
        await publish(channel, queue, messages)
        config = workdir / f"{queue}.yaml"
        text = ",".join(f"{c}:{s:g}" for c, s in schedule)
        with Function(text, args.service) as function:
            config.write_text(json.dumps(bridge_config(name, queue, function.url, workdir)))
            await function.wait_up()
            admin = free_port()
            env = {**os.environ, "BRIDGE_ADMIN_PORT": str(admin),
                   "BRIDGE_ADMIN_HOST": "127.0.0.1", "BRIDGE_LOG_LEVEL": "error",
                   "BRIDGE_DRAIN_TIMEOUT": "1s"}
            bridge = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "run", "--config", str(config),
                env=env, cwd=ROOT)
            try:
                limits = await watch(function, admin, total, name == "adaptive")
            finally:
                bridge.send_signal(signal.SIGTERM)
                await asyncio.wait_for(bridge.wait(), 30)
            stats: dict[str, Any] = await function.get("/stats")
    finally:
        await channel.queue_delete(queue)
    return stats, limits


async def watch(function: Function, admin: int, total: float, scrape: bool
                ) -> list[tuple[float, float]]:
    """Wait out the schedule (from the function's first request); scrape the limit."""
    elapsed = None
    deadline = time.monotonic() + 60
    while elapsed is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the bridge sent nothing within 60 s")
        await asyncio.sleep(0.05)
        elapsed = await function.get("/elapsed")
    origin = time.monotonic() - elapsed
    limits: list[tuple[float, float]] = []
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - origin < total + 0.5:
            if scrape:
                value = await scrape_limit(session, admin)
                if value is not None:
                    limits.append((time.monotonic() - origin, value))
            await asyncio.sleep(0.25)
    return limits


def parse_schedule(text: str, phase_seconds: float) -> list[tuple[int, float]]:
    return [(int(c), phase_seconds) for c in text.split(",")]


def phase_figures(stats: dict[str, Any], limits: list[tuple[float, float]],
                  phase_seconds: float) -> list[dict[str, Any]]:
    figures = []
    for index, (capacity, _) in enumerate(stats["schedule"]):
        start, end = index * phase_seconds, (index + 1) * phase_seconds
        inside = [r for r in stats["records"] if start <= r[2] < end]
        ok = [1000 * (r[2] - r[0]) for r in inside if r[3] == 200]
        seen = [v for t, v in limits if start <= t < end]
        figure = {"capacity": capacity, "per_second": round(len(ok) / phase_seconds, 1),
                  "rejected_429": sum(1 for r in inside if r[3] == 429),
                  "p50_ms": round(percentile(ok, 0.5), 1), "p99_ms": round(percentile(ok, 0.99), 1),
                  "latencies_ms": ok}
        if seen:
            figure["limit"] = {"min": min(seen), "mean": round(sum(seen) / len(seen), 1),
                               "max": max(seen)}
        figures.append(figure)
    return figures


async def drive(args: argparse.Namespace) -> None:
    connection = await aio_pika.connect(BROKER)
    channel = await connection.channel()
    contenders = [f"static-{n}" for n in args.static.split(",")]
    results: dict[str, list[list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name in [*contenders, "adaptive"]:
                stats, limits = await run_contender(name, args, channel, Path(tmp))
                phases = phase_figures(stats, limits, args.phase_seconds)
                results.setdefault(name, []).append(phases)
                emit(contender=name, round=round_, service_ms=1000 * args.service,
                     phases=[{k: v for k, v in p.items() if k != "latencies_ms"}
                             for p in phases])
    await connection.close()
    summarize(results, args)


def summarize(results: dict[str, list[list[dict[str, Any]]]], args: argparse.Namespace
              ) -> None:
    """The issue's targets, for each adaptive round against the static runs."""
    statics = {k: v for k, v in results.items() if k != "adaptive"}
    best = [max(max(run[i]["per_second"] for run in runs) for runs in statics.values())
            for i in range(len(args.schedule.split(",")))]
    uncongested = None
    if "static-4" in statics and len(best) > 1:
        uncongested = percentile([x for run in statics["static-4"] for x in run[1]["latencies_ms"]],
                                 0.99)
    static64 = [sum(p["rejected_429"] for p in run) for run in statics.get("static-64", [])]
    for round_, run in enumerate(results.get("adaptive", [])):
        everything = [x for p in run for x in p["latencies_ms"]]
        rejected = sum(p["rejected_429"] for p in run)
        emit(summary=True, round=round_,
             throughput_vs_best_static=[round(p["per_second"] / b, 3)
                                        for p, b in zip(run, best, strict=True)],
             best_static_per_second=best,
             rejected_429=rejected, static64_rejected_429=static64,
             rejected_vs_static64=round(rejected / max(static64), 4) if static64 else None,
             uncongested_p99_ms=round(uncongested, 1) if uncongested else None,
             p99_vs_uncongested=[round(p["p99_ms"] / uncongested, 2) for p in run]
             if uncongested else None,
             run_p99_vs_uncongested=round(percentile(everything, 0.99) / uncongested, 2)
             if uncongested else None,
             targets={"throughput": 0.9, "rejected": 0.1, "p99": 2.0})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--phase-seconds", type=float, default=20.0)
    parser.add_argument("--schedule", default="8,32,4", help="capacity of each phase")
    parser.add_argument("--service", type=float, default=0.05)
    parser.add_argument("--static", default="4,8,32,64")
    parser.add_argument("--rounds", type=int, default=1)
    asyncio.run(drive(parser.parse_args()))


if __name__ == "__main__":
    main()
