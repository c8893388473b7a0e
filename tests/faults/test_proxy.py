"""The fault proxy itself: each mode does to a real TCP connection what it says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.faults


@contextlib.asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 2
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_pass_and_delay() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await round_trip(reader, writer, b"hello") == b"hello"
        proxy.set_mode("delay", 0.2)
        started = time.monotonic()
        assert await round_trip(reader, writer, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.4  # both directions delayed
        writer.close()


async def test_blackhole_holds_bytes_and_loses_none() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await round_trip(reader, writer, b"a") == b"a"
        proxy.set_mode("blackhole")
        writer.write(b"held")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        fresh = asyncio.create_task(asyncio.open_connection("127.0.0.1", proxy.port))
        proxy.set_mode("pass")
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"held"
        reader2, writer2 = await fresh
        assert await round_trip(reader2, writer2, b"new") == b"new"
        writer.close()
        writer2.close()


async def test_drop_closes_open_and_new_connections() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await round_trip(reader, writer, b"x") == b"x"
        proxy.set_mode("drop")
        assert await asyncio.wait_for(reader.read(10), 2) == b""  # EOF
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(reader2.read(10), 2) == b""
        proxy.set_mode("pass")
        reader3, writer3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await round_trip(reader3, writer3, b"back") == b"back"
        for w in (writer, writer2, writer3):
            w.close()


async def test_reset_aborts_with_rst() -> None:
    async with echo_server() as port, FaultProxy(port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await round_trip(reader, writer, b"x") == b"x"
        proxy.set_mode("reset")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(10), 2)
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader2.read(10), 2)
        assert proxy.severed == 2
        writer.close()
        writer2.close()
