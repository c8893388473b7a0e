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
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

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
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


class Bridge:
    """The daemon as a subprocess, with its peak RSS read when it exits."""

    def __init__(self, config: Path) -> None:
        self.rss_file = config.with_suffix(".rss")
        env = {**os.environ, "BRIDGE_ADMIN_PORT": str(free_port()),
               "BRIDGE_LOG_LEVEL": "warning", "BRIDGE_ADMIN_HOST": "127.0.0.1"}
        self.process = subprocess.Popen(
            [sys.executable, "-c", _RSS_WRAPPER, str(self.rss_file),
             sys.executable, "-m", "bridge", "run", "--config", str(config)],
            env=env, cwd=ROOT, stderr=subprocess.DEVNULL,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> float:
        """SIGTERM, wait, return peak RSS in MB."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)
        return int(self.rss_file.read_text()) / 1024


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
    parser.add_argument("--only", choices=["spread", "burst", "idle"])
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


if __name__ == "__main__":
    main()
