"""A function with a capacity, for the adaptive concurrency benchmark and its test.

    python bench/capacityfn.py PORT [--schedule 8:20,32:20,4:20] [--service 0.05]
                               [--queue-factor 2]

It serves ``capacity`` requests at a time, each taking ``--service`` seconds +/- 10 %
(its uncongested latency). Requests beyond the capacity wait in a FIFO queue of up to
``--queue-factor`` x capacity (their latency climbs); beyond that the function answers
429 at once. ``--schedule`` changes the capacity over time (``capacity:seconds,...``),
starting at the first request; the last capacity stays.

``POST /capacity?n=N`` sets the capacity now; ``GET /elapsed`` gives the seconds since
the first request (null before it); ``GET /stats`` returns every request as
``[arrived, started, finished, status]`` (seconds since the first request; ``started``
is null for a 429), the schedule and the service time. Runs in its own process, so it
does not compete with the bridge's event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import deque

from aiohttp import web


class Capacity:
    """``capacity`` workers and a bounded FIFO queue in front of them."""

    def __init__(self, capacity: int, queue_factor: int) -> None:
        self.capacity = capacity
        self.queue_factor = queue_factor
        self.busy = 0
        self.waiting: deque[asyncio.Future[None]] = deque()

    def set(self, capacity: int) -> None:
        self.capacity = capacity
        self._admit()

    async def enter(self) -> bool:
        """Take a worker (after waiting in the queue); False: refused (queue full)."""
        if self.busy < self.capacity and not self.waiting:
            self.busy += 1
            return True
        if len(self.waiting) >= self.queue_factor * self.capacity:
            return False
        turn = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        await turn
        return True

    def leave(self) -> None:
        self.busy -= 1
        self._admit()

    def _admit(self) -> None:
        while self.waiting and self.busy < self.capacity:
            self.busy += 1
            self.waiting.popleft().set_result(None)


def parse_schedule(text: str) -> list[tuple[int, float]]:
    return [(int(c), float(s)) for c, s in (part.split(":") for part in text.split(","))]


def build_app(schedule: list[tuple[int, float]], service: float, queue_factor: int
              ) -> web.Application:
    gate = Capacity(schedule[0][0], queue_factor)
    records: list[tuple[float, float | None, float, int]] = []
    origin: list[float] = []
    tasks: list[asyncio.Task[None]] = []
    rng = random.Random(1)

    async def follow_schedule() -> None:
        for capacity, seconds in schedule:
            gate.set(capacity)
            await asyncio.sleep(seconds)

    async def invoke(request: web.Request) -> web.Response:
        await request.read()
        if not origin:
            origin.append(time.monotonic())
            tasks.append(asyncio.create_task(follow_schedule()))
        arrived = time.monotonic() - origin[0]
        if not await gate.enter():
            records.append((arrived, None, time.monotonic() - origin[0], 429))
            return web.Response(status=429, text="over capacity")
        started = time.monotonic() - origin[0]
        try:
            await asyncio.sleep(service * rng.uniform(0.9, 1.1))
        finally:
            gate.leave()
        records.append((arrived, started, time.monotonic() - origin[0], 200))
        return web.Response(text="ok")

    async def set_capacity(request: web.Request) -> web.Response:
        gate.set(int(request.query["n"]))
        return web.json_response(gate.capacity)

    async def elapsed(request: web.Request) -> web.Response:
        return web.json_response(time.monotonic() - origin[0] if origin else None)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"records": records, "schedule": schedule,
                                  "service": service, "capacity": gate.capacity})

    app = web.Application()
    app.router.add_post("/capacity", set_capacity)
    app.router.add_get("/stats", stats)
    app.router.add_get("/elapsed", elapsed)
    app.router.add_post("/{tail:.*}", invoke)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--schedule", default="8:3600", help="capacity:seconds,...")
    parser.add_argument("--service", type=float, default=0.05)
    parser.add_argument("--queue-factor", type=int, default=2)
    args = parser.parse_args()
    app = build_app(parse_schedule(args.schedule), args.service, args.queue_factor)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None,
                backlog=4096)


if __name__ == "__main__":
    main()
