"""The function misbehaves for a while mid-stream; nothing is lost, nothing dead-lettered.

One RabbitMQ trigger (the fastest source to start) per case, 200 numbered messages;
after 50 deliveries the function, for 2 s: answers 500; answers 429 with
``Retry-After: 1``; hangs past the invocation timeout (300 ms); resets every
connection; or is down entirely (listener closed, then back on the same port). The
retry policy (20 attempts, 100-400 ms backoff with jitter: at least 3.7 s of retrying)
outlasts the 2 s, so every message must be delivered, none dead-lettered, and each
case checks its own promise (Retry-After honoured, a hang costs the timeout and not
the hang).

Duplicate bound: 0, except "down", where a request the function answered 2xx just as
its listener closed never reaches the bridge and is retried: at most the trigger's
concurrency.
"""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from tests.faults.prober import (
    Answer,
    Arrival,
    Fault,
    FileDeadLetters,
    Prober,
    RabbitSender,
    Request,
    daemon_config,
)
from tests.support.daemon import BridgeProcess
from tests.support.rabbitmq import BROKER_URL, Broker

pytestmark = pytest.mark.faults

AFTER = 50
OUTAGE_S = 2.0
TIMEOUT_S = 0.3
HANG_S = 1.5
CONCURRENCY = 8

FAULTY = {
    "500s": Answer(status=500),
    "429 Retry-After": Answer(status=429, headers={"Retry-After": "1"}),
    "hang past the timeout": Answer(status=504, delay=HANG_S),
    "connection resets": Answer(reset=True),
}


class Outage:
    """Opens after ``AFTER`` deliveries and lasts ``OUTAGE_S``."""

    def __init__(self, probe: Prober, label: str) -> None:
        self.probe = probe
        self.label = label
        self.mark: Fault | None = None

    def active(self) -> bool:
        if self.mark is None and len(self.probe.fn.delivered_ids()) >= AFTER:
            self.mark = self.probe.fault_began(self.label)
            self.mark.ended = self.mark.began + OUTAGE_S
        return self.mark is not None and time.monotonic() < self.mark.began + OUTAGE_S


@pytest.mark.parametrize("case", [*FAULTY, "down entirely"])
async def test_function_fault_mid_stream(case: str, tmp_path: Path) -> None:
    async with Broker() as broker, Prober(f"function: {case}") as probe:
        outage = Outage(probe, case)
        faulty = FAULTY.get(case)

        def behaviour(request: Request, attempt: int) -> Answer:
            return faulty if faulty is not None and outage.active() else Answer(delay=0.01)

        probe.fn.behaviour = behaviour
        queue = await broker.queue(durable=True)
        await RabbitSender(probe, broker, queue).send(200)
        trigger = {"rabbitmq": {"url": BROKER_URL, "queue": queue, "prefetch": 20}}
        config = daemon_config(
            probe.fn.url, trigger, {"file": {"path": str(tmp_path / "dl.jsonl")}},
            retry={"max_attempts": 20, "initial_backoff": "100ms", "max_backoff": "400ms"},
            timeout=f"{TIMEOUT_S}s", concurrency=CONCURRENCY,
        )
        dead = FileDeadLetters(tmp_path / "dl.jsonl")
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            if faulty is None:
                await probe.wait_deliveries(AFTER)
                mark = probe.fault_began(case)
                await probe.fn.go_down()
                await asyncio.sleep(OUTAGE_S)
                await probe.fn.come_back()
                probe.fault_ended()
                assert mark.ended is not None
            await probe.wait_handled(dead, timeout=60, bridge=bridge)
            retries = bridge.metric("bridge_retries_total", trigger="probe")
            assert await bridge.terminate() == 0
        assert len(probe.faults) == 1, "the fault happened"
        bound = CONCURRENCY if faulty is None else 0
        report = await probe.report(dead, duplicate_bound=bound, retries=int(retries))
    report.check()
    assert retries > 0
    fault = probe.faults[0]
    assert fault.ended is not None
    hit = [a for a in probe.fn.arrivals if fault.began <= a.received < fault.ended]
    if faulty is not None:
        assert hit, "attempts reached the failing function"
        assert not any(a.delivered for a in hit), "the function failed throughout"
    if case == "429 Retry-After":
        for gap in _retry_gaps(probe.fn.arrivals, status=429):
            assert gap >= 1.0 - 0.05, f"Retry-After: 1 honoured, retried after {gap:.3f}s"
    if case == "hang past the timeout":
        gaps = _retry_gaps(probe.fn.arrivals, status=504, from_received=True)
        assert gaps
        assert min(gaps) >= TIMEOUT_S, "an attempt waits for its timeout"
        # Each hung attempt frees its slot at the timeout: more attempts start during the
        # hang than the slots would allow if they waited for the function (39 measured).
        waiting = CONCURRENCY * math.ceil(OUTAGE_S / HANG_S)
        assert len(hit) > waiting, f"{len(hit)} attempts during the hang"
        print("hang retry gaps", sorted(round(g, 2) for g in gaps))


def _retry_gaps(
    arrivals: list[Arrival], status: int, from_received: bool = False
) -> list[float]:
    """Per failed attempt with ``status``: time until the same id's next attempt came in."""
    gaps = []
    for failed in (a for a in arrivals if a.status == status):
        start = failed.received if from_received else failed.at
        later = [a.received for a in arrivals
                 if a.event_id == failed.event_id and a.received > failed.received]
        if later:
            gaps.append(min(later) - start)
    return gaps
