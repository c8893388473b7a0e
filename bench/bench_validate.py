"""``trigger-bridge validate`` of a 1,000-trigger config file (target: < 1 s).

    .venv/bin/python bench/bench_validate.py [--triggers 1000] [--repeat 5]

Prints one JSON line. ``seconds`` is the median wall time of the real command as users
run it (``python -m bridge validate --config FILE`` in a fresh process: interpreter
start, imports, YAML, validation, cross-checks). The in-process figures split that up:
``in_process_seconds`` is ``main(["validate", ...])`` with modules already imported, and
``startup_seconds`` is a fresh process that only imports the CLI (the floor of any
command). ``cpu_seconds`` is the command's user + system CPU time: on a shared, loaded
machine wall time grows with the load (``load_average_1m``), CPU time does not.

The file mixes the three sources with ``${ENV}`` references, durations, retry overrides
and per-trigger dead letters, so every validation path runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def config_text(triggers: int, functions: int = 50) -> str:
    lines = [
        "defaults:",
        "  timeout: 30s",
        "  retry: {max_attempts: 5, initial_backoff: 200ms, max_backoff: 30s}",
        "  dead_letter: {file: {path: ./dead-letters.jsonl}}",
        "functions:",
    ]
    for i in range(functions):
        lines.append(
            f"  fn-{i}: {{url: 'http://fn-{i}.functions.svc:8080/', max_concurrency: 64, "
            f"timeout: 10s, headers: {{Authorization: 'Bearer ${{TOKEN:-none}}'}}}}"
        )
    lines.append("triggers:")
    for i in range(triggers):
        lines.append(f"  - name: trigger-{i}")
        lines.append(f"    function: fn-{i % functions}")
        lines.append(f"    concurrency: {10 + i % 90}")
        kind = i % 4
        if kind == 0:
            lines.append(
                f"    kafka: {{bootstrap_servers: '${{KAFKA:-kafka:9092}}', topics: [t-{i}], "
                f"group_id: g-{i}, ordering: key}}"
            )
            lines.append(f"    dead_letter: {{kafka: {{topic: t-{i}.dlq}}}}")
        elif kind == 1:
            lines.append(
                f"    rabbitmq: {{url: 'amqp://guest:guest@rabbit:5672/', queue: q-{i}, "
                f"prefetch: 50}}"
            )
            lines.append("    retry: {max_attempts: 3}")
        else:
            tz = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai")[i % 4]
            lines.append(
                f"    cron: {{schedule: '{i % 60} */2 * * MON-FRI', time_zone: {tz}, "
                f"concurrency_policy: Forbid, starting_deadline: 5m}}"
            )
    return "\n".join(lines) + "\n"


def run_subprocess(path: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one ``python -m bridge validate``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "validate", "--config", str(path)],
        env=env, capture_output=True, text=True, check=False,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"validate failed: {done.stderr.strip()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def run_startup(env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import bridge.cli"], env=env, check=True)
    return time.perf_counter() - started


def run_in_process(path: Path) -> float:
    from bridge.cli import main

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", "--config", str(path)])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit("validate failed in process")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triggers", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env["PYTHONPATH"] = str(ROOT)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory() as workdir:
        path = Path(workdir) / "big.yaml"
        path.write_text(config_text(args.triggers))
        runs = [run_subprocess(path, env) for _ in range(args.repeat)]
        fresh = [wall for wall, _ in runs]
        startup = [run_startup(env) for _ in range(args.repeat)]
        warm = [run_in_process(path) for _ in range(args.repeat)]
        print(json.dumps({
            "bench": "validate",
            "triggers": args.triggers,
            "bytes": path.stat().st_size,
            "seconds": round(statistics.median(fresh), 3),
            "seconds_max": round(max(fresh), 3),
            "cpu_seconds": round(statistics.median(cpu for _, cpu in runs), 3),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "startup_seconds": round(statistics.median(startup), 3),
            "in_process_seconds": round(statistics.median(warm), 3),
            "target_seconds": 1.0,
            "ok": statistics.median(fresh) < 1.0,
        }), flush=True)


if __name__ == "__main__":
    main()
