"""The daemon, run through its CLI, firing cron triggers at a real local HTTP function."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from pathlib import Path

from cloudevents.http import from_http

from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply, always


def config(
    url: str,
    dead_letters: Path,
    cron: str,
    *,
    timeout: str = "5s",
    retry: str = "{max_attempts: 4, initial_backoff: 50ms, max_backoff: 200ms}",
    trigger_extra: str = "",
) -> str:
    return f"""
defaults:
  timeout: {timeout}
  retry: {retry}
  dead_letter: {{file: {{path: "{dead_letters}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - name: tick
    function: fn
    {trigger_extra}
    cron: {cron}
"""


EVERY_SECOND = '{schedule: "* * * * * *"}'


async def test_failing_n_times_then_succeeding_gets_n_plus_one_calls(tmp_path: Path) -> None:
    def fail_twice(call: Call, attempt: int) -> Reply:
        return Reply(503 if attempt <= 2 else 200)

    async with RecordingFunction(fail_twice) as fn:
        dl = tmp_path / "dl.jsonl"
        async with BridgeProcess(config(fn.url, dl, EVERY_SECOND), tmp_path) as bridge:
            await fn.wait_for(lambda: 200 in _statuses_seen(fn), timeout=15)
            first = fn.calls[0].event_id
            await asyncio.sleep(1.0)
            assert fn.attempts[first] == 3
            assert [c.headers["bridge-attempt"] for c in fn.calls if c.event_id == first] == [
                "1", "2", "3",
            ]
            assert bridge.metric("bridge_retries_total", trigger="tick") >= 2
            assert await bridge.terminate() == 0
        assert not dl.exists()


def _statuses_seen(fn: RecordingFunction) -> set[int]:
    return {200 for c in fn.calls if fn.attempts[c.event_id] >= 3}


async def test_permanent_4xx_is_dead_lettered_without_retry(tmp_path: Path) -> None:
    async with RecordingFunction(always(422)) as fn:
        dl = tmp_path / "dl.jsonl"
        cron = '{schedule: "* * * * * *", data: {report: daily}}'
        async with BridgeProcess(config(fn.url, dl, cron), tmp_path) as bridge:
            await fn.wait_calls(2)
            await asyncio.sleep(0.5)
            assert await bridge.terminate() == 0
    assert all(n == 1 for n in fn.attempts.values())
    records = [json.loads(line) for line in dl.read_text().splitlines()]
    assert {r["cloudevent"]["id"] for r in records} == set(fn.attempts)
    record = records[0]
    assert record["bridge-trigger"] == "tick"
    assert record["bridge-function"] == "fn"
    assert record["bridge-error"] == "http_422"
    assert record["bridge-attempts"] == 1
    assert record["bridge-last-status"] == 422
    assert record["bridge-source"] == "schedule * * * * * * (UTC)"
    assert record["bridge-error-detail"] == "ok"
    assert json.loads(base64.b64decode(record["body"])) == {"report": "daily"}
    assert record["cloudevent"]["type"] == "dev.triggerbridge.cron.tick"
    assert record["cloudevent"]["source"] == "/cron/tick"


async def test_timeout_is_retried_and_frees_the_slot(tmp_path: Path) -> None:
    def hang_first(call: Call, attempt: int) -> Reply:
        return Reply(200, delay=3.0 if attempt == 1 else 0.0)

    async with RecordingFunction(hang_first) as fn:
        dl = tmp_path / "dl.jsonl"
        cfg = config(fn.url, dl, '{schedule: "*/10 * * * * *"}', timeout="300ms",
                     trigger_extra="concurrency: 1")
        async with BridgeProcess(cfg, tmp_path) as bridge:
            await fn.wait_for(lambda: any(n >= 2 for n in fn.attempts.values()), timeout=20)
            assert bridge.metric("bridge_invocations_total", outcome="retryable") >= 1
            await bridge.terminate()
        assert not dl.exists()


async def test_sigterm_drains_in_flight_work_and_exits_zero(tmp_path: Path) -> None:
    async with RecordingFunction(always(200, delay=1.5)) as fn:
        dl = tmp_path / "dl.jsonl"
        async with BridgeProcess(config(fn.url, dl, EVERY_SECOND), tmp_path) as bridge:
            await fn.wait_for(lambda: fn.in_flight > 0, timeout=10)
            in_flight = fn.in_flight
            started = asyncio.get_running_loop().time()
            assert await bridge.terminate() == 0
            took = asyncio.get_running_loop().time() - started
        # every request that was in flight at SIGTERM completed with its 200
        assert len(fn.calls) >= in_flight
        assert fn.in_flight == 0
        assert took < 5
        stopped = [entry for entry in bridge.logs() if entry.get("event") == "stopped"]
        assert stopped
        assert stopped[0]["drained"] is True


async def test_forbid_skips_ticks_while_the_previous_run_is_active(tmp_path: Path) -> None:
    async with RecordingFunction(always(200, delay=2.5)) as fn:
        cron = '{schedule: "* * * * * *", concurrency_policy: Forbid}'
        async with BridgeProcess(config(fn.url, tmp_path / "dl", cron), tmp_path) as bridge:
            await fn.wait_calls(2, timeout=15)
            assert fn.max_in_flight == 1
            assert bridge.metric("bridge_cron_ticks_skipped_total", reason="forbid") >= 2
            await bridge.terminate()


async def test_allow_runs_overlapping_ticks(tmp_path: Path) -> None:
    async with RecordingFunction(always(200, delay=2.5)) as fn:
        cron = '{schedule: "* * * * * *", concurrency_policy: Allow}'
        async with BridgeProcess(config(fn.url, tmp_path / "dl", cron), tmp_path) as bridge:
            await fn.wait_calls(1, timeout=15)
            assert fn.max_in_flight >= 2
            await bridge.terminate()


async def test_replace_cancels_the_running_invocation(tmp_path: Path) -> None:
    async with RecordingFunction(always(200, delay=4)) as fn:
        cron = '{schedule: "* * * * * *", concurrency_policy: Replace}'
        dl = tmp_path / "dl.jsonl"
        async with BridgeProcess(config(fn.url, dl, cron), tmp_path) as bridge:
            await until(lambda: bridge.metric("bridge_cron_runs_replaced_total") >= 2)
            assert bridge.metric("bridge_cron_runs_replaced_total", trigger="tick") >= 2
            assert bridge.metric("bridge_events_settled_total", disposition="abandoned") >= 2
            assert bridge.metric("bridge_in_flight", trigger="tick") <= 1
            await bridge.terminate()
        assert not dl.exists(), "a replaced run is not a failure"


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll ``condition`` (e.g. a metric read) until it holds, or fail."""
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110 - polls over HTTP
            await asyncio.sleep(0.2)


async def test_tick_that_cannot_start_within_the_deadline_is_skipped(tmp_path: Path) -> None:
    async with RecordingFunction(always(200, delay=3)) as fn:
        cron = '{schedule: "* * * * * *", starting_deadline: 1s}'
        cfg = config(fn.url, tmp_path / "dl", cron, trigger_extra="concurrency: 1")
        async with BridgeProcess(cfg, tmp_path) as bridge:
            await fn.wait_calls(1, timeout=15)
            await asyncio.sleep(1.5)
            skipped = bridge.metric("bridge_cron_ticks_skipped_total", reason="missed_deadline")
            assert skipped >= 1
            await bridge.terminate()
        assert fn.max_in_flight == 1


async def test_requests_are_cloudevents_the_sdk_parses(tmp_path: Path) -> None:
    async with RecordingFunction() as fn:
        cron = '{schedule: "* * * * * *", data: {"ünïcode": "ok", n: 1}}'
        async with BridgeProcess(config(fn.url, tmp_path / "dl", cron), tmp_path) as bridge:
            [call, *_] = await fn.wait_calls(1, timeout=15)
            await bridge.terminate()
    event = from_http(call.headers, call.body)
    assert event["specversion"] == "1.0"
    assert event["id"] == call.event_id
    assert event["id"].startswith("tick/")
    assert event["id"].endswith("Z")
    assert event["source"] == "/cron/tick"
    assert event["type"] == "dev.triggerbridge.cron.tick"
    assert event["time"] == event["id"].removeprefix("tick/")
    assert event.data == {"ünïcode": "ok", "n": 1}
    assert call.headers["Content-Type"] == "application/json"


async def test_unreachable_function_is_retried_then_dead_lettered(tmp_path: Path) -> None:
    dl = tmp_path / "dl.jsonl"
    cfg = config("http://127.0.0.1:9/", dl, '{schedule: "*/2 * * * * *"}',
                 retry="{max_attempts: 2, initial_backoff: 50ms}")
    async with BridgeProcess(cfg, tmp_path) as bridge:
        for _ in range(100):
            if dl.exists() and dl.read_text().strip():
                break
            await asyncio.sleep(0.1)
        assert bridge.get_status("/healthz") == 200
        assert await bridge.terminate() == 0
    record = json.loads(dl.read_text().splitlines()[0])
    assert record["bridge-error"] == "connect_error"
    assert record["bridge-attempts"] == 2
    assert record["bridge-last-status"] is None
