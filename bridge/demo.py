"""``trigger-bridge demo``: the whole data path on one machine, nothing to install.

It starts three sample functions on localhost and three cron triggers (6-field
schedules, so something happens every few seconds):

- ``greet`` -> ``hello``: answers 200, every 2 s;
- ``flaky`` -> ``flaky``: answers 503 twice per event, then 200 (shows retries; the
  same CloudEvent id arrives three times);
- ``broken`` -> ``strict``: answers 422 (permanent) -> dead-lettered at once.

The admin server (``/metrics``, ``/readyz``) and the dead-letter file are printed at
start. Ctrl-C (or ``--duration``) drains and stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from bridge.cli import stop_on_signals
from bridge.config import parse_config
from bridge.runtime import Runtime
from bridge.settings import Settings

_CONFIG = """
defaults:
  timeout: 2s
  retry: {{max_attempts: 4, initial_backoff: 200ms, max_backoff: 2s}}
  dead_letter: {{file: {{path: "{dead_letters}", fsync: false}}}}
functions:
  hello:  {{url: "http://127.0.0.1:{port}/hello", max_concurrency: 8}}
  flaky:  {{url: "http://127.0.0.1:{port}/flaky"}}
  strict: {{url: "http://127.0.0.1:{port}/strict"}}
triggers:
  - name: greet
    function: hello
    cron: {{schedule: "*/2 * * * * *", data: {{greeting: hello}}}}
  - name: flaky
    function: flaky
    cron: {{schedule: "*/5 * * * * *", concurrency_policy: Forbid}}
  - name: broken
    function: strict
    cron: {{schedule: "*/7 * * * * *", data: {{invalid: true}}}}
"""


class SampleFunctions:
    """Three tiny functions that print what they receive."""

    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hello", self._hello)
        app.router.add_post("/flaky", self._flaky)
        app.router.add_post("/strict", self._strict)
        return app

    def _show(self, name: str, request: web.Request, answer: int) -> None:
        h = request.headers
        print(
            f"  function {name:<6} <- ce-id={h.get('ce-id')} attempt={h.get('bridge-attempt')}"
            f" -> {answer}",
            flush=True,
        )

    async def _hello(self, request: web.Request) -> web.Response:
        await request.read()
        self._show("hello", request, 200)
        return web.Response(text="hi")

    async def _flaky(self, request: web.Request) -> web.Response:
        event_id = request.headers.get("ce-id", "")
        self.calls[event_id] += 1
        status = 503 if self.calls[event_id] <= 2 else 200
        self._show("flaky", request, status)
        return web.Response(status=status, text="busy, try again" if status == 503 else "ok")

    async def _strict(self, request: web.Request) -> web.Response:
        self._show("strict", request, 422)
        return web.Response(status=422, text="payload rejected: field 'invalid' is true")


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def run_demo(settings: Settings, duration: float | None = None) -> int:
    functions = web.AppRunner(SampleFunctions().app(), access_log=None, handle_signals=False)
    await functions.setup()
    port = _free_port(0)
    await web.TCPSite(functions, "127.0.0.1", port).start()
    workdir = Path(tempfile.mkdtemp(prefix="trigger-bridge-demo-"))
    dead_letters = workdir / "dead-letters.jsonl"
    config = parse_config(_CONFIG.format(port=port, dead_letters=dead_letters))
    admin_port = _free_port(settings.admin_port)
    runtime = Runtime(
        config, settings.model_copy(update={"admin_port": admin_port, "admin_host": "127.0.0.1"})
    )
    stop = stop_on_signals()
    print(_banner(admin_port, dead_letters), flush=True)
    try:
        await runtime.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=duration)
    finally:
        await runtime.shutdown()
        await functions.cleanup()
    print(_summary(dead_letters), flush=True)
    return 0


def _banner(admin_port: int, dead_letters: Path) -> str:
    return f"""
trigger-bridge demo: three cron triggers invoking three local functions.
  greet  -> hello   every 2 s, answers 200
  flaky  -> flaky   every 5 s, answers 503 twice per event, then 200 (watch the retries)
  broken -> strict  every 7 s, answers 422: dead-lettered without retry

  metrics:      http://127.0.0.1:{admin_port}/metrics   (bridge_* series)
  readiness:    http://127.0.0.1:{admin_port}/readyz
  dead letters: {dead_letters}
Press Ctrl-C to stop.
"""


def _summary(dead_letters: Path) -> str:
    count = 0
    if dead_letters.exists():
        count = sum(1 for _ in dead_letters.open(encoding="utf-8"))
    return f"demo stopped: {count} dead letter(s) in {dead_letters}"


if __name__ == "__main__":
    sys.exit(asyncio.run(run_demo(Settings())))
