"""The demo's RabbitMQ part: a temporary queue on a local broker, a message every 2 s.

It joins when a broker answers at ``$BRIDGE_DEMO_AMQP_URL`` (default
``amqp://guest:guest@127.0.0.1:5672/``, what a fresh ``rabbitmq-server`` or the
``rabbitmq`` container accepts). The queue is the demo's own
(``trigger-bridge-demo-<random>``), deleted at the end; should the demo be killed, the
broker drops it after 5 idle minutes (``x-expires``).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
EVERY = 2.0
_EXPIRES_MS = 5 * 60 * 1000


class DemoQueue:
    def __init__(self, url: str, connection: AbstractConnection, channel: AbstractChannel,
                 name: str) -> None:
        self.url = url
        self.name = name
        self._connection = connection
        self._channel = channel

    @classmethod
    async def open(cls, url: str) -> DemoQueue:
        """Connect and declare the queue; raises what the connect raised."""
        connection = await aio_pika.connect(url, timeout=3)
        try:
            channel = await connection.channel()
            name = f"trigger-bridge-demo-{uuid.uuid4().hex[:8]}"
            await channel.declare_queue(name, durable=False,
                                        arguments={"x-expires": _EXPIRES_MS})
        except BaseException:
            await connection.close()
            raise
        return cls(url, connection, channel, name)

    async def publish(self) -> None:
        """``{"job": n}`` with ``message_id`` ``job-n`` every EVERY seconds, until cancelled."""
        number = 0
        while True:
            number += 1
            message = aio_pika.Message(json.dumps({"job": number}).encode(),
                                       message_id=f"job-{number}",
                                       content_type="application/json")
            await self._channel.default_exchange.publish(message, routing_key=self.name)
            await asyncio.sleep(EVERY)

    async def close(self) -> None:
        """Delete the queue and disconnect."""
        try:
            if self._channel.is_closed:
                self._channel = await self._connection.channel()
            await self._channel.queue_delete(self.name)
        finally:
            await self._connection.close()
