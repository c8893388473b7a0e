"""Dead letters as the daemon writes them, and ``trigger-bridge redrive`` as users run it.

The records come from the real :class:`~bridge.deadletter.DeadLetter` and the real
sinks (file, Kafka, RabbitMQ), from events shaped as the connectors make them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bridge.deadletter import DeadLetter, Sink
from bridge.events import Event
from bridge.outcome import Outcome, OutcomeKind

BASE_TIME = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def kafka_event(topic: str, offset: int, key: bytes | None, body: bytes, *,
                trigger: str = "orders", partition: int = 0) -> Event:
    """An event as connectors.kafka_mapping makes it for a plain record."""
    origin = f"{topic}/{partition}/{offset}"
    extensions = {"kafkatopic": topic, "kafkapartition": str(partition),
                  "kafkaoffset": str(offset)}
    if key is not None:
        extensions["partitionkey"] = key.decode()
    return Event(
        trigger=trigger, id=origin, source=f"kafka://{topic}",
        type="dev.triggerbridge.kafka.record", data=body, content_type="application/json",
        time=BASE_TIME + timedelta(seconds=offset), extensions=extensions,
        http_headers={"kafka-header-trace": f"t{offset}"},
        ordering_key=None if key is None else key.decode("latin-1"),
        partition=f"{topic}/{partition}", origin=origin, key=key,
        headers=(("trace", f"t{offset}".encode()),),
    )


def rabbit_event(queue: str, number: int, body: bytes, *, trigger: str = "jobs",
                 exchange: str = "", routing_key: str | None = None) -> Event:
    """An event as connectors.rabbitmq_mapping makes it for a message with message_id."""
    routing_key = queue if routing_key is None else routing_key
    return Event(
        trigger=trigger, id=f"msg-{number}", source=f"amqp:///{queue}",
        type="dev.triggerbridge.rabbitmq.message", data=body, content_type="application/json",
        time=BASE_TIME + timedelta(seconds=number),
        extensions={"amqpexchange": exchange, "amqproutingkey": routing_key,
                    "amqpredelivered": "false"},
        http_headers={"amqp-header-trace": f"t{number}"}, partition=queue, origin=queue,
        key=routing_key.encode(), headers=(("trace", f"t{number}".encode()),),
    )


def dead_letter(event: Event, function: str = "fn", reason: str = "http_503",
                status: int | None = 503, at: datetime | None = None) -> DeadLetter:
    outcome = Outcome(OutcomeKind.RETRYABLE, reason, status, detail="busy")
    record = DeadLetter.of(event, function, outcome, attempts=3)
    return record if at is None else dataclasses.replace(record, time=at)


async def write_all(sink: Sink, records: Sequence[DeadLetter]) -> None:
    await sink.start()
    try:
        for record in records:
            await sink.write(record)
    finally:
        await sink.close()


@dataclass
class Finished:
    code: int
    out: str
    err: str

    @property
    def summary(self) -> str:
        lines = [line for line in self.out.splitlines() if line.startswith("redrive ")]
        assert lines, f"no summary in stdout:\n{self.out}\nstderr:\n{self.err}"
        return lines[-1]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return {**env, "BRIDGE_DRAIN_TIMEOUT": "5s", **extra}


async def redrive(*args: str, timeout: float = 60.0, **env: str) -> Finished:
    """``python -m bridge redrive ARGS`` to the end."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "redrive", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=environment(**env),
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())


async def redrive_killed(*args: str, when: Callable[[], bool], timeout: float = 60.0) -> int:
    """Start a redrive and SIGKILL it as soon as ``when()`` holds; returns its exit code."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "redrive", *args,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env=environment(),
    )
    try:
        async with asyncio.timeout(timeout):
            while not when():
                if process.returncode is not None:
                    raise AssertionError(f"redrive ended ({process.returncode}) before the kill")
                await asyncio.sleep(0.01)
        process.send_signal(signal.SIGKILL)
    finally:
        if process.returncode is None:
            process.kill()
        code = await process.wait()
    return code
