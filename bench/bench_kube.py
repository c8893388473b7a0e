"""Kubernetes pool benchmarks (one JSON line each).

    .venv/bin/python bench/bench_kube.py
    .venv/bin/python bench/bench_kube.py --changes 200 --calls 2000

- ``endpoint_change``: time from an EndpointSlice change in the API emulator
  (tests/support/kube_api.py, real HTTP watch through kubernetes-asyncio) to the
  balancer's ready set showing it, over ``--changes`` alternating add/remove changes.
  Target: p99 well under 1 s.
- ``pick_overhead``: ``pool.pick()`` per call with 1, 5 and 50 busy endpoints (ns), next to one HTTP
  POST to a local aiohttp function through the invoker's session (us): the cost of
  choosing an endpoint relative to the call it routes.
- ``watch_memory``: resident memory added by ``--pools`` pools (one Service each, each
  with its EndpointSlice watch open), emulator included, per pool (KB).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bridge.config import KubernetesTarget  # noqa: E402
from bridge.invoker import Invoker  # noqa: E402
from bridge.kube.client import KubeClient  # noqa: E402
from bridge.kube.pool import KubernetesPool  # noqa: E402
from bridge.logs import configure, get_logger  # noqa: E402
from bridge.pools import BalancedPool  # noqa: E402
from bridge.settings import Settings  # noqa: E402
from tests.support.kube_api import KubeApi, endpoint_slice  # noqa: E402

SLICES = "endpointslices.discovery.k8s.io"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def until(predicate: Callable[[], bool]) -> None:
    """Poll every loop iteration: the measurement includes no sleep granularity."""
    while True:
        if predicate():
            return
        await asyncio.sleep(0)


async def endpoint_change(changes: int) -> dict[str, object]:
    async with KubeApi() as api:
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings(kubeconfig=str(api.kubeconfig(Path(tmp))))
            log = get_logger()
            client = KubeClient(settings, log)
            pool = KubernetesPool("fn", KubernetesTarget(service="fn"), client, log)
            api.put(SLICES, endpoint_slice("fn", [("10.0.0.1", True)], [("http", 8080)], "a"))
            watch = asyncio.create_task(pool.run())
            await until(lambda: any(e.ready for e in pool.endpoints))
            latencies = []
            for n in range(changes):
                ready = n % 2 == 0  # alternately add and remove 10.0.0.2
                endpoints = [("10.0.0.1", True)] + ([("10.0.0.2", True)] if ready else [])
                started = time.perf_counter()
                api.put(SLICES, endpoint_slice("fn", endpoints, [("http", 8080)], "a"))
                want = 2 if ready else 1
                await until(lambda want=want: sum(e.ready for e in pool.endpoints) == want)
                latencies.append(time.perf_counter() - started)
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            await client.close()
    return {
        "bench": "kube_endpoint_change", "changes": changes,
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "max_ms": round(max(latencies) * 1000, 3), "target_ms": 1000,
    }


def rss_mb() -> float:
    """Resident memory now (not the peak), MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


async def watch_memory(pools: int) -> dict[str, object]:
    async with KubeApi() as api:
        with tempfile.TemporaryDirectory() as tmp:
            log = get_logger()
            client = KubeClient(Settings(kubeconfig=str(api.kubeconfig(Path(tmp)))), log)
            await client.connect()
            made = [KubernetesPool(f"fn{n}", KubernetesTarget(service=f"fn{n}"), client, log)
                    for n in range(pools)]
            for n in range(pools):
                api.put(SLICES, endpoint_slice(f"fn{n}", [("10.0.0.1", True)], 8080, f"s{n}"))
            before = rss_mb()
            watches = [asyncio.create_task(pool.run()) for pool in made]
            await until(lambda: all(p.ready for p in made) and api.open_watches == pools)
            await asyncio.sleep(0.5)
            added = rss_mb() - before
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
            await client.close()
    return {"bench": "kube_watch_memory", "pools": pools, "rss_added_mb": round(added, 1),
            "per_pool_kb": round(added * 1024 / pools)}


async def pick_overhead(calls: int) -> dict[str, object]:
    pick_ns = {size: pick_cost(size) for size in (1, 5, 50)}

    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = Invoker.new_session()
    durations = []
    try:
        for _ in range(calls):
            started = time.perf_counter_ns()
            async with session.post(f"http://127.0.0.1:{port}/", data=b"{}") as response:
                await response.read()
            durations.append(time.perf_counter_ns() - started)
    finally:
        await session.close()
        await runner.cleanup()
    http_us = statistics.median(durations) / 1000
    return {
        "bench": "kube_pick_overhead",
        "pick_ns": {f"{size}_endpoints": round(ns, 1) for size, ns in pick_ns.items()},
        "http_call_p50_us": round(http_us, 1), "http_calls": calls,
        "pick_share_of_call_50_endpoints": round(pick_ns[50] / 1000 / http_us, 5),
    }


def pick_cost(size: int, rounds: int = 100_000) -> float:
    """ns per ``pick()``, every endpoint busy (1-6 outstanding: the full scan)."""
    pool = BalancedPool([f"http://10.0.{i // 250}.{i % 250}:8080/" for i in range(size)])
    for i, endpoint in enumerate(pool.endpoints):
        endpoint.outstanding = 1 + i % 6
    started = time.perf_counter_ns()
    for _ in range(rounds):
        pool.pick()
    return (time.perf_counter_ns() - started) / rounds


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--pools", type=int, default=50)
    args = parser.parse_args()
    configure("json", "warning")
    print(json.dumps(await endpoint_change(args.changes)), flush=True)
    print(json.dumps(await pick_overhead(args.calls)), flush=True)
    print(json.dumps(await watch_memory(args.pools)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
