"""A real HTTP function for tests: records every request, answers as told.

``behaviour(request_record) -> Reply`` decides each answer; the default is 200.
Runs in the test's event loop on a free localhost port, so a daemon started as a
subprocess reaches it over real TCP.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    received: float  # time.time()

    @property
    def event_id(self) -> str:
        return self.headers.get("ce-id", "")


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: str = "ok"


Behaviour = Callable[[Call, int], Reply | Awaitable[Reply]]


def always(status: int = 200, delay: float = 0.0) -> Behaviour:
    return lambda call, n: Reply(status=status, delay=delay)


class RecordingFunction:
    """``async with RecordingFunction() as fn: fn.url ...; fn.calls``."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour: Behaviour = behaviour or always()
        self.calls: list[Call] = []
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        #: (time.monotonic(), in_flight) at every change of in_flight.
        self.in_flight_history: list[tuple[float, int]] = []
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Condition()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def ids(self) -> list[str]:
        return [c.event_id for c in self.calls]

    async def __aenter__(self) -> RecordingFunction:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        call = Call(request.path, dict(request.headers), body, time.time())
        self.attempts[call.event_id] = self.attempts.get(call.event_id, 0) + 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.in_flight_history.append((time.monotonic(), self.in_flight))
        try:
            reply = self.behaviour(call, self.attempts[call.event_id])
            if asyncio.iscoroutine(reply) or isinstance(reply, Awaitable):
                reply = await reply
            assert isinstance(reply, Reply)
            if reply.delay:
                await asyncio.sleep(reply.delay)
        finally:
            self.in_flight -= 1
            self.in_flight_history.append((time.monotonic(), self.in_flight))
        self.calls.append(call)
        async with self._changed:
            self._changed.notify_all()
        return web.Response(status=reply.status, text=reply.body, headers=reply.headers)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        """Wait until ``predicate()`` holds (checked after each call), or fail."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(predicate)

    async def wait_calls(self, count: int, timeout: float = 20.0) -> list[Call]:
        await self.wait_for(lambda: len(self.calls) >= count, timeout)
        return list(self.calls)
