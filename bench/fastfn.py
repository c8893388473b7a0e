"""A fast local function for benchmarks, run as its own process.

``python bench/fastfn.py PORT OUT.json [DELAY]`` answers every POST with 200 (after
DELAY seconds) and records ``(ce-id, ce-time, received_at)``; on SIGTERM it writes the
records to OUT.json and exits. Running it in its own process keeps it from competing
with the bridge's event loop for the same core.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time

from aiohttp import web


def main() -> None:
    port, out = int(sys.argv[1]), sys.argv[2]
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    records: list[tuple[str, str, float]] = []

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        records.append((request.headers.get("ce-id", ""), request.headers.get("ce-time", ""),
                        time.time()))
        if delay:
            await asyncio.sleep(delay)
        return web.Response(text="ok")

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, backlog=4096).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        print("ready", flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(records, fh)


if __name__ == "__main__":
    main()
