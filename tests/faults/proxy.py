"""A TCP fault proxy between the bridge and a broker, switchable at runtime.

``async with FaultProxy(upstream_port) as proxy:`` listens on a free localhost port and
forwards every connection to ``127.0.0.1:upstream_port``. ``proxy.set_mode(...)``
changes what the network does, for the connections already open and for new ones:

- ``pass``: forward bytes both ways (the healthy network).
- ``delay``: forward each chunk ``delay`` seconds late (a slow link; order is kept).
- ``blackhole``: forward nothing and answer nothing, but lose nothing either: what is
  in flight is held and TCP's own buffers fill, as in a network partition where
  packets are dropped and retransmitted. Switching back to ``pass`` lets the held
  bytes through, so connections survive a short partition exactly as they would.
- ``drop``: close every open connection (FIN) and close each new one at once (a
  broker restart or a load balancer dropping connections).
- ``reset``: abort every open connection with a TCP RST and reset each new one.

Everything it starts is tracked: ``stop()`` (or leaving the ``async with``) closes the
listener and every connection and awaits their tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "delay", "blackhole", "drop", "reset"]
_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort with an RST (SO_LINGER 0) instead of a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.delay = 0.0
        self.port = 0
        #: Connections accepted, and those refused/closed by ``drop`` or ``reset``.
        self.accepted = 0
        self.severed = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._flowing.set()
        for link in list(self._links):
            self._close(link, rst=False)
        # The handlers end by themselves once their links are closed (asyncio owns
        # those tasks and reports a cancelled one as an error, so they are not cancelled).
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5)
        if server is not None:
            await server.wait_closed()

    def set_mode(self, mode: Mode, delay: float = 0.0) -> None:
        """Switch the network's behaviour; applies to open connections at once."""
        self.mode = mode
        self.delay = delay if mode == "delay" else 0.0
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode in ("drop", "reset"):
            for link in list(self._links):
                self._close(link, rst=mode == "reset")

    @property
    def open_connections(self) -> int:
        return len(self._links)

    def _close(self, link: _Link, *, rst: bool) -> None:
        self._links.discard(link)
        self.severed += 1
        for writer in link.writers():
            if rst:
                _reset(writer)
            else:
                writer.close()
        for task in link.tasks:
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio runs this callback as a task; track it so stop() can await it.
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        if self.mode in ("drop", "reset"):
            self.severed += 1
            if self.mode == "reset":
                _reset(writer)
            else:
                writer.close()
            return
        self._links.add(link)
        await self._flowing.wait()  # a blackhole holds new connections too
        if link not in self._links:
            return
        try:
            async with asyncio.timeout(5):
                up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except (OSError, TimeoutError):
            self._close(link, rst=True)
            return
        link.upstream = up_writer
        if link not in self._links:  # severed while connecting
            up_writer.close()
            return
        link.tasks = [
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            if link in self._links:
                self._links.discard(link)
                for w in link.writers():
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                await self._flowing.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()
