"""The prober: numbered events in, every CloudEvent id accounted for, one report out.

After Knative's continual-verification prober: a sender emits uniquely numbered events
(Kafka records, RabbitMQ messages; cron's "sender" is its schedule), a receiving
function records every request with its CloudEvent id and raw headers, the dead-letter
sink is read back, and :meth:`Prober.report` accounts for every event:

- ``sent``: events the sender had acknowledged by the broker (their ids are known: a
  Kafka id is ``topic/partition/offset`` from the produce ack, a RabbitMQ id the
  ``message_id`` the sender set);
- ``delivered``: distinct sent ids the function answered 2xx at least once;
- ``dead_lettered``: distinct sent ids found in the dead-letter sink;
- ``missing``: sent ids neither delivered nor dead-lettered (must be 0);
- ``duplicated``: 2xx answers beyond the first per id, plus dead-letter records beyond
  the first per id (at-least-once allows them; they must stay within the in-flight
  window, see :meth:`Prober.duplicate_bound`);
- ``unexpected``: ids that were never sent, or a body that is not the one sent under
  that id (must be 0);
- ``recovery_s``: for each fault, from the moment it was removed (process restarted,
  link restored, function healthy, sink writable) to the next request that came in
  after it and delivered an event not handled before (or the next such dead letter);
  the largest over the run's faults;
- ``max_gap_s``: the longest time between two consecutive deliveries (the worst stall).

A run passes when missing = 0, unexpected = 0 and every event is delivered or
dead-lettered; :meth:`Report.check` asserts that and the duplicate bound, and the
report is printed as one JSON line (``PROBE {...}``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import aio_pika
import yaml
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from tests.support.daemon import BridgeProcess
from tests.support.rabbitmq import Broker

# --- the receiving function -----------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    """One request the function received, and what it answered (0 = connection reset)."""

    event_id: str
    body: bytes
    status: int
    attempt: int
    at: float  # time.monotonic()
    raw_headers: tuple[tuple[bytes, bytes], ...]
    path: str
    #: time.monotonic() when the request came in (``at`` is when it was answered).
    received: float = 0.0

    @property
    def delivered(self) -> bool:
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        wanted = name.lower().encode()
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None

    @property
    def tag(self) -> str:
        """The tag the sender put in a probe body (``probe:<run>:<n>:<tag>:``)."""
        parts = self.body[:200].split(b":")
        return parts[3].decode("ascii", "replace") if len(parts) > 4 else ""


@dataclass(frozen=True)
class Answer:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    #: Abort the connection with a TCP RST instead of answering.
    reset: bool = False


Behaviour = Callable[["Request", int], Answer | Awaitable[Answer]]


@dataclass(frozen=True)
class Request:
    """What a behaviour sees of an incoming request."""

    event_id: str
    body: bytes
    path: str

    @property
    def tag(self) -> str:
        parts = self.body[:200].split(b":")
        return parts[3].decode("ascii", "replace") if len(parts) > 4 else ""


def healthy(delay: float = 0.0) -> Behaviour:
    return lambda request, attempt: Answer(delay=delay)


class ProbeFunction:
    """A real HTTP function on a free localhost port recording every request.

    ``behaviour(request, attempt_seen_here) -> Answer`` decides each answer (default:
    200). ``go_down()`` closes the listener and every connection; ``come_back()``
    listens on the same port again.
    """

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour: Behaviour = behaviour or healthy()
        self.arrivals: list[Arrival] = []
        self.attempts: Counter[str] = Counter()
        self.port = 0
        self.in_flight = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def __aenter__(self) -> ProbeFunction:
        await self.come_back()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.go_down()

    async def come_back(self) -> None:
        if self._runner is not None:
            return
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def go_down(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = time.monotonic()
        body = await request.read()
        event_id = request.headers.get("ce-id", "")
        self.attempts[event_id] += 1
        seen = Request(event_id, body, request.path)
        self.in_flight += 1
        try:
            answer = self.behaviour(seen, self.attempts[event_id])
            if not isinstance(answer, Answer):
                answer = await answer
            if answer.delay:
                await asyncio.sleep(answer.delay)
        finally:
            self.in_flight -= 1
        attempt = int(request.headers.get("bridge-attempt", "0") or 0)
        status = 0 if answer.reset else answer.status
        self.arrivals.append(Arrival(event_id, body, status, attempt, time.monotonic(),
                                     tuple(request.raw_headers), request.path, received))
        if answer.reset:
            _abort(request)
        return web.Response(status=answer.status, headers=answer.headers, text="probe")

    def delivered_ids(self) -> set[str]:
        return {a.event_id for a in self.arrivals if a.delivered}


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


# --- dead letters read back -----------------------------------------------------------


@dataclass(frozen=True)
class DeadEntry:
    event_id: str
    body: bytes
    error: str
    at: float | None  # time.monotonic() of the write, when the sink records it
    #: ``bridge-source``, ``bridge-error-detail`` and the original headers (as text).
    source: str = ""
    detail: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class DeadLetters(Protocol):
    async def entries(self) -> list[DeadEntry]: ...

    async def close(self) -> None: ...


def _monotonic(wall: str | None) -> float | None:
    if not wall:
        return None
    moment = datetime.fromisoformat(wall.replace("Z", "+00:00")).timestamp()
    return time.monotonic() - (time.time() - moment)


class FileDeadLetters:
    """The file sink's JSON lines."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def entries(self) -> list[DeadEntry]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line being written
            record = json.loads(line)
            headers = {name: base64.b64decode(value).decode("utf-8", "replace")
                       for name, value in record["headers"]}
            out.append(DeadEntry(
                record["cloudevent"]["id"], base64.b64decode(record["body"]),
                record["bridge-error"], _monotonic(record.get("bridge-dead-lettered-at")),
                record["bridge-source"], record["bridge-error-detail"], headers,
            ))
        return out

    async def close(self) -> None:
        """Nothing held open."""


class KafkaDeadLetters:
    """A dead-letter topic, read from the beginning by a consumer without a group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._consumer: AIOKafkaConsumer | None = None
        self._seen: list[DeadEntry] = []

    async def entries(self) -> list[DeadEntry]:
        consumer = await self._open()
        batch = await consumer.getmany(timeout_ms=100)
        for records in batch.values():
            for record in records:
                headers = {k: v.decode("utf-8", "replace") for k, v in record.headers}
                self._seen.append(DeadEntry(
                    headers.get("ce_id", ""), record.value or b"",
                    headers.get("bridge-error", ""),
                    _monotonic(headers.get("bridge-dead-lettered-at")),
                    headers.get("bridge-source", ""), headers.get("bridge-error-detail", ""),
                    headers,
                ))
        return list(self._seen)

    async def _open(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap, enable_auto_commit=False,
                auto_offset_reset="earliest",
            )
            await consumer.start()
            await consumer.topics()
            partitions = consumer.partitions_for_topic(self._topic) or {0}
            consumer.assign([TopicPartition(self._topic, p) for p in sorted(partitions)])
            self._consumer = consumer
        return self._consumer

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.stop()


class RabbitDeadLetters:
    """A queue bound to the dead-letter exchange, consumed (and acked) as it fills."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self._broker = broker
        self._queue = queue
        self._seen: list[DeadEntry] = []

    async def entries(self) -> list[DeadEntry]:
        while True:
            message = await self._get()
            if message is None:
                return list(self._seen)
            headers = {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                       for k, v in (message.headers or {}).items()}
            when = message.timestamp
            self._seen.append(DeadEntry(
                message.message_id or "", message.body, headers.get("bridge-error", ""),
                _monotonic(when.isoformat()) if when else None,
                headers.get("bridge-source", ""), headers.get("bridge-error-detail", ""),
                headers,
            ))

    async def _get(self) -> aio_pika.abc.AbstractIncomingMessage | None:
        channel = await self._broker._open()
        queue = await channel.get_queue(self._queue, ensure=False)
        return await queue.get(no_ack=True, fail=False)

    async def close(self) -> None:
        """The broker helper owns the connection."""


# --- the ledger and the report ---------------------------------------------------------


@dataclass
class Fault:
    label: str
    began: float
    ended: float | None = None


@dataclass
class Report:
    fault: str
    sent: int
    delivered: int
    missing: int
    duplicated: int
    dead_lettered: int
    unexpected: int
    recovery_s: float | None
    duplicate_bound: int
    extra: dict[str, Any] = field(default_factory=dict)
    missing_ids: list[str] = field(default_factory=list)
    unexpected_ids: list[str] = field(default_factory=list)
    dead_ids: set[str] = field(default_factory=set)
    both_ids: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {
            "fault": self.fault, "sent": self.sent, "delivered": self.delivered,
            "missing": self.missing, "duplicated": self.duplicated,
            "dead_lettered": self.dead_lettered, "unexpected": self.unexpected,
            "recovery_s": self.recovery_s, "duplicate_bound": self.duplicate_bound,
            **self.extra,
        }

    def line(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=False)

    def check(self, *, dead_lettered: Iterable[str] = ()) -> None:
        """The pass rule, plus the expected dead letters (exactly these ids)."""
        expected_dead = set(dead_lettered)
        assert self.missing == 0, f"{self.missing} missing, e.g. {self.missing_ids[:5]}"
        assert self.unexpected == 0, f"unexpected: {self.unexpected_ids[:5]}"
        assert self.delivered + self.dead_lettered - len(self.both_ids) == self.sent
        assert self.dead_ids == expected_dead, (
            f"dead-lettered {sorted(self.dead_ids)[:5]}... expected {sorted(expected_dead)[:5]}"
        )
        assert not self.both_ids, f"delivered and dead-lettered: {sorted(self.both_ids)[:5]}"
        assert self.duplicated <= self.duplicate_bound, (
            f"{self.duplicated} duplicates > bound {self.duplicate_bound}"
        )


class Prober:
    """One run: the sent ledger, the receiving function, fault marks and the report.

    ``async with Prober("kafka-sigkill") as probe:`` starts the function
    (``probe.fn.url``). Senders call :meth:`sent_event`; the test marks each fault
    with :meth:`fault_began` / :meth:`fault_ended`.
    """

    def __init__(self, fault: str, behaviour: Behaviour | None = None) -> None:
        self.fault = fault
        self.run = uuid.uuid4().hex[:8]
        self.fn = ProbeFunction(behaviour)
        self.sent: dict[str, bytes] = {}
        self.numbers: dict[str, int] = {}
        self.faults: list[Fault] = []
        self._next = 0

    async def __aenter__(self) -> Prober:
        await self.fn.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.fn.__aexit__()

    # --- sending side ---

    def next_body(
        self, tag: Callable[[int], str] = lambda n: "", size: int = 0
    ) -> tuple[int, bytes]:
        """The next sequence number and its body ``probe:<run>:<n>:<tag(n)>:`` (padded)."""
        number = self._next
        self._next += 1
        head = f"probe:{self.run}:{number}:{tag(number)}:".encode()
        return number, head + b"." * max(0, size - len(head))

    def sent_event(self, event_id: str, number: int, body: bytes) -> None:
        assert event_id not in self.sent, f"id {event_id} sent twice"
        self.sent[event_id] = body
        self.numbers[event_id] = number

    def ids_tagged(self, tag: str) -> set[str]:
        return {i for i, body in self.sent.items() if body.split(b":")[3].decode() == tag}

    # --- faults ---

    def fault_began(self, label: str) -> Fault:
        mark = Fault(label, time.monotonic())
        self.faults.append(mark)
        return mark

    def fault_ended(self) -> None:
        open_faults = [f for f in self.faults if f.ended is None]
        assert open_faults, "no fault in progress"
        open_faults[-1].ended = time.monotonic()

    # --- waiting and accounting ---

    async def kill_mid_stream(
        self, config: str, workdir: Path, *, times: int, every: int, timeout: float = 30.0
    ) -> None:
        """Start a daemon on ``config`` and SIGKILL it after ``every`` more deliveries,
        ``times`` times over, each time before everything was delivered. Each kill is a
        fault; it ends (recovery counts) when the next daemon is spawned."""
        for _ in range(times):
            if self.faults:
                self.fault_ended()
            async with BridgeProcess(config, workdir, wait_ready=True) as bridge:
                await self.wait_deliveries(len(self.fn.delivered_ids()) + every, timeout)
                self.fault_began("sigkill")
                await bridge.kill()
            assert len(self.fn.delivered_ids()) < len(self.sent), "killed mid-stream"
        self.fault_ended()

    async def final_run(
        self, config: str, workdir: Path, timeout: float = 60.0
    ) -> FileDeadLetters:
        """A last daemon on ``config`` handles whatever is left, then stops cleanly (exit
        0); returns the file dead letters (see :func:`file_sink`) for the report."""
        dead = file_dead_letters(workdir)
        async with BridgeProcess(config, workdir, wait_ready=True) as bridge:
            await self.wait_handled(dead, timeout=timeout, bridge=bridge)
            assert await bridge.terminate() == 0
        return dead

    async def wait_handled(
        self, dead: DeadLetters | None = None, timeout: float = 60.0,
        ids: Iterable[str] | None = None, bridge: BridgeProcess | None = None,
    ) -> None:
        """Until every sent id (or ``ids``) is delivered or dead-lettered; on a timeout the
        error carries the function's view and the tail of ``bridge``'s log."""
        wanted = set(self.sent if ids is None else ids)
        deadline = time.monotonic() + timeout
        while True:
            handled = self.fn.delivered_ids()
            if dead is not None:
                handled |= {e.event_id for e in await dead.entries()}
            left = wanted - handled
            if not left:
                return
            if time.monotonic() > deadline:
                statuses = Counter(a.status for a in self.fn.arrivals)
                tail = "\n".join(bridge.log_lines[-20:]) if bridge is not None else ""
                raise AssertionError(
                    f"{self.fault}: {len(left)} of {len(wanted)} events not handled within "
                    f"{timeout}s, e.g. {sorted(left)[:5]}; function answers {dict(statuses)}, "
                    f"in flight {self.fn.in_flight}\n{tail}"
                )
            await asyncio.sleep(0.1)

    async def wait_deliveries(self, count: int, timeout: float = 30.0) -> None:
        """Until ``count`` distinct ids were delivered."""
        deadline = time.monotonic() + timeout
        while len(self.fn.delivered_ids()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.fault}: fewer than {count} deliveries in {timeout}s")
            await asyncio.sleep(0.02)

    def first_deliveries(self) -> dict[str, float]:
        first: dict[str, float] = {}
        for arrival in self.fn.arrivals:
            if arrival.delivered and arrival.event_id not in first:
                first[arrival.event_id] = arrival.at
        return first

    def duplicate_bound(self, in_flight: int, uncommitted_s: float) -> int:
        """Duplicates at-least-once may produce for the faults marked so far.

        Per fault: what the source may hand out again = events taken and not settled
        (at most ``in_flight``: the trigger's ``max_unsettled`` / prefetch) plus events
        settled but not yet committed: those first delivered within ``uncommitted_s``
        before the fault (the commit interval plus a margin for Kafka, a few ms for
        RabbitMQ acks). Counted from the function's own timeline.
        """
        first = self.first_deliveries().values()
        bound = 0
        for mark in self.faults:
            recent = sum(1 for t in first if mark.began - uncommitted_s < t <= mark.began)
            bound += in_flight + recent
        return bound

    def _recovery(self, dead: Sequence[DeadEntry]) -> float | None:
        # A request counts from when it came in: one sent by a killed process before the
        # fault and answered after it is not progress of the recovered one.
        progress = sorted(
            [(a.received or a.at, a.event_id) for a in self.fn.arrivals if a.delivered]
            + [(e.at, e.event_id) for e in dead if e.at is not None]
        )
        worst: float | None = None
        for mark in self.faults:
            if mark.ended is None:
                continue
            before = {i for t, i in progress if t < mark.ended}
            after = next((t for t, i in progress if t >= mark.ended and i not in before), None)
            if after is None:
                continue
            took = round(after - mark.ended, 3)
            worst = took if worst is None else max(worst, took)
        return worst

    def _max_gap(self) -> float:
        """The longest time between two consecutive deliveries (the worst stall)."""
        times = sorted(a.at for a in self.fn.arrivals if a.delivered)
        return round(max((b - a for a, b in itertools.pairwise(times)), default=0.0), 3)

    async def report(
        self, dead: DeadLetters | None = None, *, duplicate_bound: int = 0,
        publish: bool = True, **extra: Any,
    ) -> Report:
        """Account for every sent event; ``publish`` prints the ``PROBE`` JSON line."""
        entries = await dead.entries() if dead is not None else []
        sent = set(self.sent)
        delivered = Counter(a.event_id for a in self.fn.arrivals if a.delivered)
        dead_counts = Counter(e.event_id for e in entries)
        unexpected = sorted((set(delivered) | set(dead_counts)) - sent)
        bodies = [(a.event_id, a.body) for a in self.fn.arrivals if a.delivered]
        bodies += [(e.event_id, e.body) for e in entries]
        unexpected += sorted({i for i, b in bodies if i in sent and b != self.sent[i]})
        delivered_ids = set(delivered) & sent
        dead_ids = set(dead_counts) & sent
        missing = sorted(sent - delivered_ids - dead_ids, key=lambda i: self.numbers[i])
        duplicated = sum(c - 1 for c in delivered.values()) + sum(
            c - 1 for c in dead_counts.values()
        )
        report = Report(
            fault=self.fault, sent=len(sent), delivered=len(delivered_ids),
            missing=len(missing), duplicated=duplicated, dead_lettered=len(dead_ids),
            unexpected=len(unexpected), recovery_s=self._recovery(entries),
            duplicate_bound=duplicate_bound,
            extra={"attempts": len(self.fn.arrivals), "faults": len(self.faults),
                   "max_gap_s": self._max_gap(), **extra},
            missing_ids=missing, unexpected_ids=unexpected, dead_ids=dead_ids,
            both_ids=delivered_ids & dead_ids,
        )
        if publish:
            print("PROBE " + report.line())
        return report


# --- senders --------------------------------------------------------------------------


class KafkaSender:
    """Produces numbered records (acks=all) and records their ids in the ledger."""

    def __init__(self, probe: Prober, bootstrap: str, topic: str, keys: int = 16) -> None:
        self.probe = probe
        self.topic = topic
        self.keys = keys
        self._bootstrap = bootstrap
        self._producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> KafkaSender:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap, acks="all", linger_ms=5,
            max_request_size=8 * 1024 * 1024,
        )
        await self._producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def send(
        self, count: int, *, tag: Callable[[int], str] = lambda n: "", size: int = 0,
        rate: float | None = None, key: Callable[[int], str] | None = None,
    ) -> list[str]:
        """Send ``count`` records (``rate`` per second, or as fast as acks come); the key
        of record ``n`` is ``key(n)``, by default ``k<n mod keys>``."""
        assert self._producer is not None
        pending = []
        for _ in range(count):
            number, body = self.probe.next_body(tag, size)
            key_text = key(number) if key is not None else f"k{number % self.keys}"
            key_bytes = key_text.encode()
            future = await self._producer.send(self.topic, value=body, key=key_bytes)
            pending.append((number, body, future))
            if rate:
                await asyncio.sleep(1 / rate)
        ids = []
        for number, body, future in pending:
            meta = await future
            event_id = f"{self.topic}/{meta.partition}/{meta.offset}"
            self.probe.sent_event(event_id, number, body)
            ids.append(event_id)
        return ids


class RabbitSender:
    """Publishes numbered persistent messages with ``message_id`` = ``<run>-<n>``."""

    def __init__(self, probe: Prober, broker: Broker, queue: str) -> None:
        self.probe = probe
        self.broker = broker
        self.queue = queue

    async def send(
        self, count: int, *, tag: Callable[[int], str] = lambda n: "", size: int = 0,
        rate: float | None = None, batch: int = 100,
    ) -> list[str]:
        ids: list[str] = []
        pending: list[Awaitable[None]] = []
        for _ in range(count):
            number, body = self.probe.next_body(tag, size)
            event_id = f"{self.probe.run}-{number}"
            pending.append(self._publish(event_id, number, body))
            ids.append(event_id)
            if rate:
                await asyncio.gather(*pending)
                pending = []
                await asyncio.sleep(1 / rate)
            elif len(pending) >= batch:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        return ids

    async def _publish(self, event_id: str, number: int, body: bytes) -> None:
        await self.broker.publish(self.queue, body, message_id=event_id)
        self.probe.sent_event(event_id, number, body)


# --- configs for the daemon under test ---------------------------------------------------


def daemon_config(
    function_url: str, trigger: dict[str, Any], dead_letter: dict[str, Any], *,
    retry: dict[str, Any] | None = None, timeout: str = "5s", concurrency: int = 8,
) -> str:
    """A config file: one function ``fn`` and one trigger ``probe`` (``trigger`` gives
    its source, e.g. ``{"kafka": {...}}``)."""
    document = {
        "defaults": {
            "timeout": timeout,
            "retry": retry or {"max_attempts": 3, "initial_backoff": "20ms",
                               "max_backoff": "100ms"},
            "dead_letter": dead_letter,
        },
        "functions": {"fn": {"url": function_url}},
        "triggers": [{"name": "probe", "function": "fn", "concurrency": concurrency,
                      **trigger}],
    }
    return yaml.safe_dump(document, sort_keys=False)


def file_sink(workdir: Path) -> dict[str, Any]:
    """The file dead-letter sink the probes read back (:func:`file_dead_letters`)."""
    return {"file": {"path": str(workdir / "dead-letters.jsonl")}}


def file_dead_letters(workdir: Path) -> FileDeadLetters:
    return FileDeadLetters(workdir / "dead-letters.jsonl")


def kafka_source(bootstrap: str, topic: str, **options: Any) -> dict[str, Any]:
    """A Kafka source with short group timings (rebalances take seconds, not minutes)."""
    source = {
        "bootstrap_servers": bootstrap, "topics": [topic], "group_id": f"g-{topic}",
        "ordering": "key", "session_timeout": "3s", "heartbeat_interval": "300ms",
        "commit_interval": "200ms", "revoke_timeout": "1500ms", **options,
    }
    return {"kafka": source}
