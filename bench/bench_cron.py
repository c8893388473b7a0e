"""Cron benchmarks: fire lag and memory with many schedules, and idle memory.

    .venv/bin/python bench/bench_cron.py                 # all scenarios
    .venv/bin/python bench/bench_cron.py --only spread   # one scenario

Scenarios (one JSON line each):

- ``spread``: 10,000 cron triggers all due within the same minute (6-field schedules,
  ticks spread over the minute's 60 seconds, ~167 per second), a fast local function
  in its own process. Lag = function receipt time - scheduled time (``ce-time``), so
  it includes the HTTP request: an upper bound of "scheduled -> request sent".
  Targets: p99 <= 250 ms, every tick delivered, peak RSS <= 300 MB.
- ``burst``: the same 10,000 triggers all due in the same *second*: the worst case.
- ``idle``: RSS of an idle daemon with 100 cron triggers (target <= 80 MB).
- ``replicas``: 30,000 cron triggers due within the same minute over 3 daemon
  processes sharing cron through shard Leases (``BRIDGE_CRON_SHARDS``) in the
  Kubernetes API emulator (its own process): every tick delivered exactly once, lag,
  and each replica's load (the ticks of the shards it holds) against the mean
  (target: within 20 %). ``--replicas``, ``--shards``, ``--triggers`` change it.
- ``one-of-ten``: the model of 100,000 schedules over 10 replicas, measured on one:
  a daemon loading all 100,000 triggers while 9 other members are announced on the
  members Lease, so it holds a tenth of the shards and fires a tenth of the ticks.

Baseline, measured in the same run: a raw asyncio loop that sleeps until each
scheduled time and posts with aiohttp (no scheduler, no dispatcher), giving the lag
floor of this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bridge.kube.shards import shard_lease_name, shard_of

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


#: Runs a command as its child, forwards SIGTERM, prints the child's peak RSS (KiB).
#: (``/proc/<pid>`` of a child is not visible in every sandbox; rusage always is.)
_RSS_WRAPPER = """
import resource, signal, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
code = child.wait()
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1], "w").write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(code)
"""


class Bridge:
    """The daemon as a subprocess, with its peak RSS read when it exits."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, name: str = "") -> None:
        self.rss_file = config.with_suffix(f".{name}rss")
        self.cpu_s = 0.0
        self.admin_port = free_port()
        env = {**os.environ, "BRIDGE_ADMIN_PORT": str(self.admin_port),
               "BRIDGE_LOG_LEVEL": "warning", "BRIDGE_ADMIN_HOST": "127.0.0.1", **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _RSS_WRAPPER, str(self.rss_file),
             sys.executable, "-m", "bridge", "run", "--config", str(config)],
            env=env, cwd=ROOT, stderr=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> float:
        """SIGTERM, wait, return peak RSS in MB (CPU seconds in ``cpu_s``)."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        rss, cpu = self.rss_file.read_text().split()
        self.cpu_s = float(cpu)
        return int(rss) / 1024

    def metric(self, name: str) -> float:
        """The sum of a metric's samples (``/metrics``)."""
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        return sum(float(line.rpartition(" ")[2]) for line in text.splitlines()
                   if line.startswith(name) and line[len(name)] in "{ ")


class FastFunction:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.out = workdir / f"fn-{self.port}.json"
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> FastFunction:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fastfn.py"), str(self.port), str(self.out)],
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        self.process.stdout.readline()
        return self

    def records(self) -> list[tuple[str, str, float]]:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)
        return [tuple(r) for r in json.loads(self.out.read_text())]  # type: ignore[misc]

    def __exit__(self, *exc: object) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()


def write_config(workdir: Path, url: str, schedules: list[str]) -> Path:
    lines = [
        "defaults:",
        "  timeout: 10s",
        f'  dead_letter: {{file: {{path: "{workdir}/dl.jsonl"}}}}',
        "functions:",
        f'  fast: {{url: "{url}"}}',
        "triggers:",
    ]
    for i, schedule in enumerate(schedules):
        lines.append(f'  - {{name: t{i}, function: fast, cron: {{schedule: "{schedule}"}}}}')
    path = workdir / "bench.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def next_minute(after: float, margin: float) -> float:
    """Start of the first whole minute at least ``margin`` seconds after ``after``."""
    return (int(after + margin) // 60 + 1) * 60


def lag_figures(records: list[tuple[str, str, float]], window: tuple[float, float]) -> list[float]:
    lags = []
    for _, ce_time, received in records:
        scheduled = datetime.fromisoformat(ce_time.replace("Z", "+00:00")).timestamp()
        if window[0] <= scheduled < window[1]:
            lags.append(received - scheduled)
    return lags


def run_scale(count: int, spread: int, workdir: Path) -> dict[str, object]:
    """``count`` triggers, trigger i due at second (i % spread) of every minute."""
    schedules = [f"{i % spread} * * * * *" for i in range(count)]
    with FastFunction(workdir) as fn:
        config = write_config(workdir, f"http://127.0.0.1:{fn.port}/", schedules)
        started = time.time()
        bridge = Bridge(config)
        minute = next_minute(time.time(), margin=20)
        while time.time() < minute + spread + 3:
            time.sleep(0.5)
            if not bridge.alive():
                raise RuntimeError(f"bridge exited {bridge.process.returncode}")
        peak = bridge.stop()
        records = fn.records()
    lags = lag_figures(records, (minute, minute + 60))
    return {
        "bench": "cron_scale", "scenario": "spread" if spread > 1 else "burst",
        "triggers": count, "due_within_seconds": spread,
        "ticks_due": count, "ticks_delivered": len(lags),
        "lag_p50_ms": round(percentile(lags, 0.50) * 1000, 1),
        "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1),
        "lag_max_ms": round(max(lags, default=float("nan")) * 1000, 1),
        "peak_rss_mb": round(peak, 1),
        "startup_to_minute_s": round(minute - started, 1),
        "baseline": baseline(count, spread),
    }


def baseline(count: int, spread: int) -> dict[str, object]:
    """Raw asyncio + aiohttp: sleep until each time, post; the machine's lag floor."""
    return asyncio.run(_baseline(count, spread))


async def _baseline(count: int, spread: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp, FastFunction(Path(tmp)) as fn:
        url = f"http://127.0.0.1:{fn.port}/"
        start = int(time.time()) + 3
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

            async def fire(i: int) -> None:
                due = start + i % spread
                await asyncio.sleep(max(0.0, due - time.time()))
                stamp = datetime.fromtimestamp(due, UTC).isoformat().replace("+00:00", "Z")
                async with session.post(url, data=b"", headers={"ce-id": str(i),
                                                                "ce-time": stamp}) as r:
                    await r.read()

            await asyncio.gather(*(fire(i) for i in range(count)))
        records = fn.records()
    lags = lag_figures(records, (start, start + spread + 1))
    return {"lag_p50_ms": round(percentile(lags, 0.5) * 1000, 1),
            "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1), "delivered": len(lags)}


class Emulator:
    """The Kubernetes API emulator in its own process (bench/kubeapi.py)."""

    def __init__(self, workdir: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "kubeapi.py"), str(workdir)],
            stdout=subprocess.PIPE, cwd=ROOT)
        assert self.process.stdout is not None
        self.kubeconfig = self.process.stdout.readline().decode().strip()
        server = next(line.split("server:")[1].strip()
                      for line in Path(self.kubeconfig).read_text().splitlines()
                      if "server:" in line)
        self.leases_url = f"{server}/apis/coordination.k8s.io/v1/namespaces/default/leases"

    def leases(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.leases_url, timeout=30) as response:
            return list(json.loads(response.read())["items"])

    def holders(self) -> dict[str, str | None]:
        """Shard Lease name -> holder."""
        return {lease["metadata"]["name"]: lease["spec"].get("holderIdentity")
                for lease in self.leases() if "-shards-" in lease["metadata"]["name"]}

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


def shard_lease_of(trigger: str, shards: int) -> str:
    """The shard Lease of ``trigger`` (the deployment's BRIDGE_LEASE_NAME)."""
    return shard_lease_name("trigger-bridge", shards, shard_of(trigger, shards))


def shard_env(emulator: Emulator, name: str, shards: int) -> dict[str, str]:
    return {"BRIDGE_KUBECONFIG": emulator.kubeconfig, "BRIDGE_INSTANCE": name,
            "BRIDGE_CRON_SHARDS": str(shards)}


def wait_until(check: object, timeout: float, bridges: list[Bridge]) -> None:
    deadline = time.time() + timeout
    while not check():  # type: ignore[operator]
        if time.time() > deadline:
            raise RuntimeError("not reached in time")
        if not all(b.alive() for b in bridges):
            raise RuntimeError("a bridge exited")
        time.sleep(0.5)


def run_replicas(count: int, replicas: int, shards: int, workdir: Path) -> dict[str, object]:
    """``count`` triggers due within one minute over ``replicas`` daemons."""
    schedules = [f"{i % 60} * * * * *" for i in range(count)]
    names = [f"replica-{r}" for r in range(replicas)]
    emulator = Emulator(workdir)
    try:
        with FastFunction(workdir) as fn:
            config = write_config(workdir, f"http://127.0.0.1:{fn.port}/", schedules)
            started = time.time()
            bridges = [Bridge(config, shard_env(emulator, name, shards), name)
                       for name in names]
            fair = sorted(shards // replicas + (1 if i < shards % replicas else 0)
                          for i in range(replicas))
            wait_until(lambda: sorted(Counter(h for h in emulator.holders().values()
                                              if h in names).values()) == fair, 120, bridges)
            ready_after = time.time() - started
            minute = next_minute(time.time(), margin=5)
            holders = emulator.holders()
            while time.time() < minute + 60 + 3:
                time.sleep(0.5)
                if not all(b.alive() for b in bridges):
                    raise RuntimeError("a bridge exited")
            moved = emulator.holders() != holders
            peaks = [b.stop() for b in bridges]
            records = fn.records()
    finally:
        emulator.stop()
    lags = lag_figures(records, (minute, minute + 60))
    fired = Counter(r[0] for r in records
                    if minute <= datetime.fromisoformat(r[1].replace("Z", "+00:00"))
                    .timestamp() < minute + 60)
    load = Counter(holders[shard_lease_of(f"t{i}", shards)] for i in range(count))
    mean = count / replicas
    share = {n: load.get(n, 0) for n in names}
    return {
        "bench": "cron_replicas", "triggers": count, "replicas": replicas, "shards": shards,
        "due_within_seconds": 60, "ticks_due": count, "ticks_delivered": len(lags),
        "ticks_fired_twice": sum(1 for n in fired.values() if n > 1),
        "lag_p50_ms": round(percentile(lags, 0.50) * 1000, 1),
        "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1),
        "lag_max_ms": round(max(lags, default=float("nan")) * 1000, 1),
        "load_per_replica": share,
        "load_max_vs_mean_pct": round((max(share.values()) / mean - 1) * 100, 1),
        "load_min_vs_mean_pct": round((min(share.values()) / mean - 1) * 100, 1),
        "shards_moved_during_minute": moved,
        "peak_rss_mb": [round(p, 1) for p in peaks],
        "cpu_s": [round(b.cpu_s, 1) for b in bridges],
        "ready_after_s": round(ready_after, 1),
        "baseline": baseline(count, 60),
    }


def run_one_of_many(count: int, replicas: int, shards: int, workdir: Path) -> dict[str, object]:
    """One daemon of ``replicas``: it loads all ``count`` triggers; the other members are
    announced on the members Lease (an hour-long entry each), so it holds its share of
    the shards and fires only their ticks."""
    schedules = [f"{i % 60} * * * * *" for i in range(count)]
    emulator = Emulator(workdir)
    try:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        others = {f"member.triggerbridge.dev/other-{r}": json.dumps({
            "holderIdentity": f"other-{r}", "renewTime": stamp, "leaseDurationSeconds": 3600,
            "shards": shards}) for r in range(1, replicas)}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "trigger-bridge-members", "annotations": others},
                "spec": {}}
        request = urllib.request.Request(emulator.leases_url, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=30).close()
        with FastFunction(workdir) as fn:
            config = write_config(workdir, f"http://127.0.0.1:{fn.port}/", schedules)
            started = time.time()
            bridge = Bridge(config, shard_env(emulator, "replica-0", shards), "one")
            wait_until(lambda: len([h for h in emulator.holders().values()
                                    if h == "replica-0"]) >= shards // replicas, 120, [bridge])
            ready_after = time.time() - started
            mine = {n for n, h in emulator.holders().items() if h == "replica-0"}
            minute = next_minute(time.time(), margin=5)
            while time.time() < minute + 60 + 3:
                time.sleep(0.5)
                if not bridge.alive():
                    raise RuntimeError("the bridge exited")
            peak = bridge.stop()
            records = fn.records()
    finally:
        emulator.stop()
    lags = lag_figures(records, (minute, minute + 60))
    due = sum(1 for i in range(count) if shard_lease_of(f"t{i}", shards) in mine)
    return {
        "bench": "cron_one_of_many", "triggers_loaded": count, "replicas_modelled": replicas,
        "shards": shards, "shards_held": len(mine), "ticks_due_here": due,
        "ticks_delivered": len(lags),
        "lag_p50_ms": round(percentile(lags, 0.50) * 1000, 1),
        "lag_p99_ms": round(percentile(lags, 0.99) * 1000, 1),
        "lag_max_ms": round(max(lags, default=float("nan")) * 1000, 1),
        "peak_rss_mb": round(peak, 1), "cpu_s": round(bridge.cpu_s, 1),
        "ready_after_s": round(ready_after, 1),
    }


def run_idle(count: int, workdir: Path) -> dict[str, object]:
    schedules = [f"{i % 60} {i % 60} * * *" for i in range(count)]
    config = write_config(workdir, "http://127.0.0.1:9/", schedules)
    bridge = Bridge(config)
    time.sleep(6)
    peak = bridge.stop()
    return {"bench": "cron_idle", "triggers": count, "peak_rss_mb": round(peak, 1),
            "target_mb": 80}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--triggers", type=int, default=10_000)
    parser.add_argument("--only", choices=["spread", "burst", "idle", "replicas", "one-of-ten"])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--shards", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.only in (None, "idle"):
            print(json.dumps(run_idle(100, workdir)), flush=True)
        if args.only in (None, "spread"):
            print(json.dumps(run_scale(args.triggers, 60, workdir)), flush=True)
        if args.only in (None, "burst"):
            with contextlib.suppress(RuntimeError):
                print(json.dumps(run_scale(args.triggers, 1, workdir)), flush=True)
        if args.only in (None, "replicas"):
            count = 30_000 if args.triggers == 10_000 else args.triggers
            print(json.dumps(run_replicas(count, args.replicas, args.shards, workdir)),
                  flush=True)
        if args.only == "one-of-ten":  # long (100,000 triggers): only when asked
            count = 100_000 if args.triggers == 10_000 else args.triggers
            print(json.dumps(run_one_of_many(count, 10, args.shards, workdir)), flush=True)


if __name__ == "__main__":
    main()
