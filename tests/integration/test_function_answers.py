"""What a function answers, read as far as it matters and no further (issue 15, items 12
and 13), through the real daemon.

- ``Retry-After`` is delta-seconds in ASCII digits or an HTTP date; anything else (a
  Unicode digit such as ``²``) is ignored, and the 503 is retried with the normal
  backoff, never dead-lettered.
- A response body is read up to a bound: a function answering 2xx (or 503) with
  hundreds of MiB does not grow the daemon's memory. Measured as the growth of the
  daemon's peak RSS (``VmHWM`` in ``/proc/PID/status``) over the invocation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from aiohttp import web

from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.rabbitmq import Broker, bridge_yaml, eventually, rabbit_trigger


async def test_retry_after_with_a_unicode_digit_is_ignored_not_dead_lettered(
    tmp_path: Path,
) -> None:
    def busy_once(call: Call, attempt: int) -> Reply:
        # "²" is a digit to str.isdigit(), and float("²") raises: today's dead letter.
        return Reply(503, headers={"Retry-After": "²"}) if attempt == 1 else Reply(200)

    dl = tmp_path / "dl.jsonl"
    async with Broker() as broker, RecordingFunction(busy_once) as fn:
        queue = await broker.queue()
        config = bridge_yaml(fn.url, [rabbit_trigger("busy", queue)], {"file": {"path": str(dl)}})
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            for n in range(3):
                await broker.publish(queue, f"m{n}".encode(), message_id=f"m{n}")
            await fn.wait_for(lambda: sum(c.headers["bridge-attempt"] == "2"
                                          for c in fn.calls) == 3, timeout=15)
            assert bridge.metric("bridge_retries_total", trigger="busy") == 3
            assert bridge.metric("bridge_events_settled_total", disposition="delivered") == 3
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0
    assert not dl.exists(), dl.read_text() if dl.exists() else ""
    assert fn.attempts == {"m0": 2, "m1": 2, "m2": 2}


_MIB = 1024 * 1024


class HugeAnswers:
    """A function answering ``status`` followed by a body of ``size`` bytes, streamed in
    1 MiB chunks (the function never holds it); ``then`` answers later attempts."""

    def __init__(self, status: int, size: int, then: int = 200) -> None:
        self.status, self.size, self.then = status, size, then
        self.calls: list[tuple[str, str]] = []  # (event id, attempt)
        self.sent = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        attempt = request.headers.get("bridge-attempt", "")
        self.calls.append((request.headers.get("ce-id", ""), attempt))
        if attempt != "1":
            return web.Response(status=self.then, text="ok")
        response = web.StreamResponse(status=self.status)
        response.content_length = self.size
        await response.prepare(request)
        chunk = b"x" * _MIB
        with suppress(ConnectionError):  # the bridge may stop reading and close
            for _ in range(self.size // _MIB):
                await response.write(chunk)
                self.sent += len(chunk)
            await response.write_eof()
        return response

    @asynccontextmanager
    async def running(self) -> AsyncIterator[HugeAnswers]:
        app = web.Application()
        app.router.add_post("/", self.handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"
        try:
            yield self
        finally:
            await runner.cleanup()


def _peak_rss_mib(bridge: BridgeProcess) -> float:
    assert bridge.process is not None
    status = Path(f"/proc/{bridge.process.pid}/status").read_text()
    line = next(row for row in status.splitlines() if row.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


#: The stated bound: the daemon's peak RSS grows by less than this while a function
#: answers with a 512 MiB body (the bridge keeps at most 64 KiB of it).
RSS_GROWTH_BOUND_MIB = 32


async def _invoke_huge(tmp_path: Path, status: int) -> tuple[HugeAnswers, float, Path, str]:
    dl = tmp_path / "dl.jsonl"
    size = 512 * _MIB
    async with Broker() as broker, HugeAnswers(status, size).running() as fn:
        queue = await broker.queue()
        config = bridge_yaml(fn.url, [rabbit_trigger("huge", queue)], {"file": {"path": str(dl)}},
                             retry={"max_attempts": 3, "initial_backoff": "10ms"})
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await asyncio.sleep(0.5)  # settle start-up allocations
            before = _peak_rss_mib(bridge)
            await broker.publish(queue, b"one", message_id="one")
            await eventually(
                lambda: bridge.metric("bridge_events_settled_total", disposition="delivered") == 1,
                timeout=30, what="delivered",
            )
            growth = _peak_rss_mib(bridge) - before
            assert await bridge.terminate() == 0
        assert await broker.count(queue) == 0
    print(f"status {status}: peak RSS grew {growth:.1f} MiB; function sent {fn.sent / _MIB} MiB")
    return fn, growth, dl, "\n".join(bridge.log_lines)


async def test_huge_2xx_body_is_not_buffered(tmp_path: Path) -> None:
    fn, growth, dl, _ = await _invoke_huge(tmp_path, 200)
    assert growth < RSS_GROWTH_BOUND_MIB
    assert fn.calls == [("one", "1")], "delivered on its 2xx, not retried"
    assert fn.sent < 512 * _MIB, "the bridge stopped reading instead of taking it all"
    assert not dl.exists()


async def test_huge_error_body_is_not_buffered(tmp_path: Path) -> None:
    fn, growth, dl, log = await _invoke_huge(tmp_path, 503)
    assert growth < RSS_GROWTH_BOUND_MIB
    assert fn.calls == [("one", "1"), ("one", "2")], "retried after the 503, then delivered"
    retry = next(json.loads(line) for line in log.splitlines()
                 if "will retry" in line and line.startswith("{"))
    assert retry["status"] == 503
    assert len(retry["detail"]) <= 200
    assert not dl.exists()
