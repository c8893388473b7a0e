"""Helpers for tests against the real RabbitMQ server (127.0.0.1:5672, guest/guest).

Other engineers use the same broker at the same time, so every test works on its own
queues and exchanges (``broker.name("q")``: a uuid-suffixed name, deleted on exit
whoever declared it) and never purges or deletes anything it did not name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import aio_pika
import aiormq
import yaml
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

BROKER_URL = "amqp://guest:guest@127.0.0.1:5672/"


class Broker:
    """``async with Broker() as broker``: declare, publish, read and clean up."""

    def __init__(self, url: str = BROKER_URL) -> None:
        self.url = url
        self.queues: list[str] = []
        self.exchanges: list[str] = []
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None

    async def __aenter__(self) -> Broker:
        await self._open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cleanup()

    async def _open(self) -> AbstractChannel:
        if self._channel is None or self._channel.is_closed or self._connection is None \
                or self._connection.is_closed:
            await self._close()
            self._connection = await aio_pika.connect(self.url, timeout=10)
            self._channel = await self._connection.channel(publisher_confirms=True)
        return self._channel

    async def _close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close()
        self._connection = self._channel = None

    def name(self, kind: str = "q") -> str:
        """A fresh name, remembered for deletion (queues for ``q``, else exchanges)."""
        name = f"tb-test-{kind}-{uuid.uuid4().hex[:12]}"
        (self.queues if kind.startswith("q") else self.exchanges).append(name)
        return name

    async def queue(
        self, durable: bool = False, arguments: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> str:
        name = name or self.name("q")
        channel = await self._open()
        await channel.declare_queue(name, durable=durable, arguments=arguments)
        return name

    async def exchange(self, kind: str = "direct", name: str | None = None) -> str:
        name = name or self.name("x")
        channel = await self._open()
        await channel.declare_exchange(name, type=kind, durable=False)
        return name

    async def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        channel = await self._open()
        target = await channel.get_queue(queue, ensure=False)
        await target.bind(exchange, routing_key=routing_key)

    async def publish(
        self, routing_key: str, body: bytes = b"", exchange: str = "", **properties: Any
    ) -> None:
        """Publish with a broker confirm (persistent unless told otherwise)."""
        channel = await self._open()
        properties.setdefault("delivery_mode", aio_pika.DeliveryMode.PERSISTENT)
        target = channel.default_exchange if exchange == "" else await channel.get_exchange(
            exchange, ensure=False
        )
        await target.publish(aio_pika.Message(body, **properties), routing_key=routing_key)

    async def publish_many(
        self, routing_key: str, bodies: Iterable[bytes], batch: int = 200, **properties: Any
    ) -> None:
        pending: list[Awaitable[None]] = []
        for body in bodies:
            pending.append(self.publish(routing_key, body, **properties))
            if len(pending) >= batch:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)

    async def count(self, queue: str) -> int:
        """Ready messages in ``queue`` (not counting unacked deliveries)."""
        channel = await self._open()
        declared = await channel.declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)

    async def take(
        self, queue: str, count: int, timeout: float = 15.0
    ) -> list[AbstractIncomingMessage]:
        """Consume and ack ``count`` messages from ``queue`` (fails after ``timeout``)."""
        channel = await self._open()
        target = await channel.get_queue(queue, ensure=False)
        taken: list[AbstractIncomingMessage] = []
        async with asyncio.timeout(timeout):
            while len(taken) < count:
                message = await target.get(no_ack=False, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                await message.ack()
                taken.append(message)
        return taken

    async def requeue(self, queue: str, body: bytes, times: int, timeout: float = 10.0) -> None:
        """Take the message ``body`` and nack it with requeue, ``times`` times (what a
        crashing consumer does to a quorum queue's delivery count)."""
        channel = await self._open()
        target = await channel.get_queue(queue, ensure=False)
        async with asyncio.timeout(timeout):
            for _ in range(times):
                message = await target.get(no_ack=False, fail=False)
                while message is None:
                    await asyncio.sleep(0.05)
                    message = await target.get(no_ack=False, fail=False)
                assert message.body == body, f"expected {body!r} at the head, got {message.body!r}"
                await message.nack(requeue=True)

    async def cleanup(self) -> None:
        """Delete every queue and exchange this helper named (fresh connection: the old
        one may have died with a broker restart)."""
        await self._close()
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(self.url, timeout=10)
            async with connection:
                for name in self.queues:
                    with contextlib.suppress(Exception):
                        channel = await connection.channel()
                        await channel.queue_delete(name)
                        await channel.close()
                for name in self.exchanges:
                    with contextlib.suppress(Exception):
                        channel = await connection.channel()
                        await channel.exchange_delete(name)
                        await channel.close()


def rabbitmqctl(*args: str, timeout: float = 60.0) -> str:
    """Run ``rabbitmqctl`` (e.g. ``stop_app``); raises when it fails."""
    done = subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


@contextlib.asynccontextmanager
async def vhost(user: str = "guest", password: str | None = None) -> AsyncIterator[str]:
    """A fresh virtual host on the shared broker where guest and ``user`` may do anything
    (the user is created first when ``password`` is given); deleted afterwards, with the
    user."""
    name = f"tb-test-v-{uuid.uuid4().hex[:12]}"
    created_user = False
    try:
        await asyncio.to_thread(rabbitmqctl, "add_vhost", name)
        if password is not None:
            await asyncio.to_thread(rabbitmqctl, "add_user", user, password)
            created_user = True
        for who in dict.fromkeys(["guest", user]):
            await asyncio.to_thread(rabbitmqctl, "set_permissions", "-p", name, who,
                                    ".*", ".*", ".*")
        yield name
    finally:
        with contextlib.suppress(RuntimeError):
            await asyncio.to_thread(rabbitmqctl, "delete_vhost", name)
        if created_user:
            with contextlib.suppress(RuntimeError):
                await asyncio.to_thread(rabbitmqctl, "delete_user", user)


def connections(user: str) -> list[dict[str, Any]]:
    """The broker's open connections of ``user`` (vhost, peer_port, ...)."""
    out = rabbitmqctl("list_connections", "-q", "user", "vhost", "peer_port", "--formatter", "json")
    return [c for c in json.loads(out or "[]") if c["user"] == user]


@contextlib.asynccontextmanager
async def broker_stopped() -> AsyncIterator[None]:
    """``rabbitmqctl stop_app`` for the block; ``start_app`` always runs afterwards."""
    try:
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        yield
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]], timeout: float = 20.0,
    interval: float = 0.1, what: str = "condition",
) -> None:
    """Poll ``check`` until it is true, or fail with ``what`` after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


FAST_RETRY = {"max_attempts": 3, "initial_backoff": "10ms", "max_backoff": "50ms"}


def bridge_yaml(
    function_url: str, triggers: list[dict[str, Any]], dead_letter: dict[str, Any],
    retry: dict[str, Any] | None = None,
) -> str:
    """A config file: one function ``fn`` at ``function_url`` and these triggers."""
    document = {
        "defaults": {"retry": retry or FAST_RETRY, "dead_letter": dead_letter},
        "functions": {"fn": {"url": function_url}},
        "triggers": [{"function": "fn", **trigger} for trigger in triggers],
    }
    return yaml.safe_dump(document, sort_keys=False)


def rabbit_trigger(name: str, queue: str, url: str = BROKER_URL, **options: Any) -> dict[str, Any]:
    return {"name": name, "rabbitmq": {"url": url, "queue": queue, **options}}


async def publish_without_message_id(
    url: str, routing_key: str, body: bytes, exchange: str = "", **properties: Any
) -> None:
    """Publish as most AMQP clients do, without a ``message_id``.

    aiormq gives every publish a random ``message_id``, so this writes the
    publish frames itself on a plain channel, then makes one round trip on that channel
    (the broker handles a channel's frames in order, so the message is enqueued by then).
    """
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=False)
        header = ContentHeader(
            properties=spec.Basic.Properties(delivery_mode=2, **properties), body_size=len(body)
        )
        frames: list[Any] = [
            spec.Basic.Publish(exchange=exchange, routing_key=routing_key), header,
            ContentBody(body),
        ]
        await channel.write_queue.put(
            ChannelFrame.marshall(channel_number=channel.number, frames=frames)
        )
        await channel.basic_qos(prefetch_count=1)
    finally:
        await connection.close()
