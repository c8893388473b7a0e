"""The prober's accounting can fail: missing, duplicated, unexpected and foreign bodies
are each caught, the duplicate bound counts the in-flight window, recovery is measured."""

from __future__ import annotations

import time

import aiohttp
import pytest

from tests.faults.prober import Answer, Arrival, DeadEntry, Prober

pytestmark = pytest.mark.faults


class Dead:
    def __init__(self, entries: list[DeadEntry]) -> None:
        self._entries = entries

    async def entries(self) -> list[DeadEntry]:
        return self._entries

    async def close(self) -> None:
        """Nothing to close."""


def arrive(probe: Prober, event_id: str, status: int = 200, at: float | None = None,
           body: bytes | None = None) -> None:
    body = probe.sent.get(event_id, b"?") if body is None else body
    probe.fn.arrivals.append(
        Arrival(event_id, body, status, 1, time.monotonic() if at is None else at, (), "/")
    )


def ledger(count: int) -> Prober:
    probe = Prober("unit")
    for _ in range(count):
        number, body = probe.next_body()
        probe.sent_event(f"e{number}", number, body)
    return probe


async def test_clean_run_passes() -> None:
    probe = ledger(3)
    for i in range(3):
        arrive(probe, f"e{i}")
    report = await probe.report(publish=False)
    report.check()
    assert (report.sent, report.delivered, report.missing, report.duplicated) == (3, 3, 0, 0)


async def test_missing_failed_attempts_and_dead_letters_are_told_apart() -> None:
    probe = ledger(4)
    arrive(probe, "e0")
    arrive(probe, "e1", status=503)  # an attempt is not a delivery
    dead = Dead([DeadEntry("e2", probe.sent["e2"], "http_422", None)])
    report = await probe.report(dead, publish=False)
    assert report.missing_ids == ["e1", "e3"]
    assert report.dead_lettered == 1
    with pytest.raises(AssertionError, match="2 missing"):
        report.check(dead_lettered={"e2"})


async def test_duplicates_beyond_the_bound_fail() -> None:
    probe = ledger(2)
    for event_id in ("e0", "e0", "e0", "e1"):
        arrive(probe, event_id)
    report = await probe.report(duplicate_bound=1, publish=False)
    assert report.duplicated == 2
    with pytest.raises(AssertionError, match="2 duplicates > bound 1"):
        report.check()


async def test_unexpected_ids_and_foreign_bodies_fail() -> None:
    probe = ledger(2)
    arrive(probe, "e0")
    arrive(probe, "e1", body=b"not what was sent")
    arrive(probe, "stranger", body=b"x")
    report = await probe.report(publish=False)
    assert report.unexpected_ids == ["stranger", "e1"]
    with pytest.raises(AssertionError, match="unexpected"):
        report.check()


async def test_unexpected_dead_letters_fail() -> None:
    probe = ledger(2)
    arrive(probe, "e0")
    dead = Dead([DeadEntry("e1", probe.sent["e1"], "http_500", None)])
    report = await probe.report(dead, publish=False)
    with pytest.raises(AssertionError, match="dead-lettered"):
        report.check()


async def test_bound_counts_in_flight_plus_recent_deliveries_and_recovery() -> None:
    probe = ledger(6)
    now = time.monotonic()
    arrive(probe, "e0", at=now - 5)
    arrive(probe, "e1", at=now - 0.5)
    arrive(probe, "e2", at=now - 0.1)
    mark = probe.fault_began("kill")
    mark.began = now
    probe.fault_ended()
    assert probe.faults[0].ended is not None
    probe.faults[0].ended = now + 1.0
    arrive(probe, "e2", at=now + 1.2)  # a redelivery: not progress
    arrive(probe, "e3", at=now + 1.5)
    assert probe.duplicate_bound(in_flight=4, uncommitted_s=1.0) == 4 + 2
    report = await probe.report(publish=False)
    assert report.recovery_s == pytest.approx(0.5, abs=0.01)


async def test_function_records_raw_headers_and_answers_as_told() -> None:
    answers = iter([Answer(status=503, headers={"Retry-After": "1"}), Answer()])
    probe = Prober("http", lambda request, attempt: next(answers))
    async with probe, aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.post(probe.fn.url, data=b"b", headers={"ce-id": "x"}) as reply:
                await reply.read()
        assert reply.status == 200
    assert [a.status for a in probe.fn.arrivals] == [503, 200]
    assert probe.fn.arrivals[0].header("CE-ID") == "x"
    assert (b"ce-id", b"x") in {(k.lower(), v) for k, v in probe.fn.arrivals[0].raw_headers}
