"""Acting on cron triggers from outside the schedule, through the daemon and the CLI
(``trigger-bridge run-now|backfill|resume`` against ``trigger-bridge run``): run now,
pause on failure and resume, backfill (and its resumption after a restart), and the
control token."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration.test_cron_daemon import until
from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply, always

TOKEN = "test-token-Zq8/+=-1234"


def config(url: str, tmp: Path, triggers: str, retry: str = "{max_attempts: 1}") -> str:
    return f"""
defaults:
  retry: {retry}
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
{triggers}
  - name: queue
    function: fn
    rabbitmq: {{url: "amqp://guest:guest@127.0.0.1:1/", queue: never-used}}
"""


NIGHTLY = """
  - name: nightly
    function: fn
    cron: {schedule: "0 3 * * *", data: {report: nightly}}
"""


def control_env(tmp: Path, **extra: str) -> dict[str, str]:
    token = tmp / "control-token"
    token.write_text(TOKEN + "\n")
    return {"BRIDGE_CONTROL_TOKEN_FILE": str(token), **extra}


async def cli(bridge: BridgeProcess, *argv: str, token_file: Path | None = None
              ) -> tuple[int, str, str]:
    """Run ``trigger-bridge ARGV`` against ``bridge`` as an operator would."""
    env = {**bridge.env}
    if token_file is not None:
        env["BRIDGE_CONTROL_TOKEN_FILE"] = str(token_file)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *argv, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def logged(bridge: BridgeProcess, event: str) -> list[dict[str, Any]]:
    return [e for e in bridge.logs() if str(e.get("event", "")).startswith(event)]


def tick_of(event_id: str) -> datetime:
    return datetime.fromisoformat(event_id.split("/", 1)[1].replace("Z", "+00:00"))


# --- run now ------------------------------------------------------------------------


async def test_run_now_fires_once_with_the_data_retries_and_a_manual_id(tmp_path: Path) -> None:
    def fail_once(call: Call, attempt: int) -> Reply:
        return Reply(503 if attempt == 1 else 200)

    async with (
        RecordingFunction(fail_once) as fn,
        BridgeProcess(config(fn.url, tmp_path, NIGHTLY, retry="{max_attempts: 3, "
                             "initial_backoff: 50ms}"), tmp_path, env=control_env(tmp_path),
                      ) as bridge,
    ):
        before = datetime.now(UTC)
        code, out, err = await cli(bridge, "run-now", "nightly")
        after = datetime.now(UTC)
        assert (code, err) == (0, "")
        calls = await fn.wait_calls(2)
        assert bridge.metric("bridge_cron_manual_runs_total", trigger="nightly") == 1
        assert await bridge.terminate() == 0
    event_id = calls[0].event_id
    assert out.strip() == f"nightly: running now as {event_id}"
    assert event_id.startswith("nightly/manual/")
    requested = datetime.fromisoformat(event_id.rsplit("/", 1)[1].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= requested <= after
    assert calls[0].headers["ce-time"].replace("Z", "+00:00") == requested.isoformat()
    assert json.loads(calls[1].body) == {"report": "nightly"}
    assert [c.event_id for c in calls] == [event_id, event_id]  # retried, same id
    assert [c.headers["bridge-attempt"] for c in calls] == ["1", "2"]


async def test_run_now_that_fails_for_good_is_dead_lettered(tmp_path: Path) -> None:
    async with (
        RecordingFunction(always(422)) as fn,
        BridgeProcess(config(fn.url, tmp_path, NIGHTLY), tmp_path,
                      env=control_env(tmp_path)) as bridge,
    ):
        code, _, _ = await cli(bridge, "run-now", "nightly")
        assert code == 0
        await fn.wait_calls(1)
        await until((tmp_path / "dl.jsonl").exists)
        assert await bridge.terminate() == 0
    record = json.loads((tmp_path / "dl.jsonl").read_text().splitlines()[0])
    assert record["cloudevent"]["id"] == fn.calls[0].event_id


async def test_run_now_refuses_unknown_and_non_cron_triggers(tmp_path: Path) -> None:
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(fn.url, tmp_path, NIGHTLY), tmp_path,
                      env=control_env(tmp_path)) as bridge,
    ):
        unknown = await cli(bridge, "run-now", "nope")
        queue = await cli(bridge, "run-now", "queue")
        resume = await cli(bridge, "resume", "queue")
        await asyncio.sleep(0.5)
        assert await bridge.terminate() == 0
    assert unknown == (2, "", "nope: refused (404): no trigger named 'nope'\n")
    assert queue == (2, "", "queue: refused (409): trigger 'queue' is a rabbitmq trigger: "
                            "only cron triggers run now, backfill or resume\n")
    assert resume[0] == 2
    assert fn.calls == []


async def test_a_wrong_or_missing_token_is_401_and_nothing_runs(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text(TOKEN[:-1] + "5")
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(fn.url, tmp_path, NIGHTLY), tmp_path,
                      env=control_env(tmp_path)) as bridge,
    ):
        refused = await cli(bridge, "run-now", "nightly", token_file=wrong)
        backfill = await cli(bridge, "backfill", "nightly", "--from", "2026-01-01T00:00:00",
                             "--to", "2026-01-03T00:00:00", token_file=wrong)
        resume = await cli(bridge, "resume", "nightly", token_file=wrong)
        path = "/control/triggers/nightly/run-now"
        status, headers = await asyncio.to_thread(_post, bridge, path, None)
        odd, _ = await asyncio.to_thread(_post, bridge, path, TOKEN[:-1] + "\u00e9")
        await asyncio.sleep(1.0)
        unauthorized = bridge.metric("bridge_control_requests_total", code="401")
        assert await bridge.terminate() == 0
    assert refused == (2, "", "nightly: refused (401): missing or wrong control token\n")
    assert backfill[0] == resume[0] == 2
    assert (status, headers.get("WWW-Authenticate")) == (401, "Bearer")
    assert odd == 401
    assert unauthorized == 5
    assert fn.calls == []
    assert TOKEN not in "\n".join(bridge.log_lines)


async def test_without_a_token_file_control_is_off(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(fn.url, tmp_path, NIGHTLY), tmp_path) as bridge,
    ):
        refused = await cli(bridge, "run-now", "nightly", token_file=token)
        await asyncio.sleep(0.5)
        assert await bridge.terminate() == 0
    assert refused == (2, "", "nightly: refused (403): control is disabled: set "
                              "BRIDGE_CONTROL_TOKEN_FILE\n")
    assert fn.calls == []


def _post(bridge: BridgeProcess, path: str, token: str | None) -> tuple[int, dict[str, str]]:
    import urllib.error
    import urllib.request

    headers = {} if token is None else {"Authorization": f"Bearer {token}".encode().decode(
        "latin-1")}
    request = urllib.request.Request(f"http://127.0.0.1:{bridge.admin_port}{path}", data=b"",
                                     method="POST", headers=headers)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


# --- pause on failure ----------------------------------------------------------------


async def test_pause_on_failure_stops_ticks_until_resumed_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    failing = {"on": True}

    def answer(call: Call, attempt: int) -> Reply:
        return Reply(500 if failing["on"] else 200)

    triggers = """
  - name: guarded
    function: fn
    cron: {schedule: "* * * * * *", pause_on_failure: true}
"""
    env = control_env(tmp_path, BRIDGE_STATE_FILE=str(tmp_path / "state.json"))
    async with (
        RecordingFunction(answer) as fn,
        BridgeProcess(config(fn.url, tmp_path, triggers), tmp_path, env=env) as bridge,
    ):
        await fn.wait_calls(1)
        await until(lambda: bridge.metric("bridge_cron_paused", trigger="guarded") == 1)
        ready = json.loads(await asyncio.to_thread(_readyz, bridge))
        assert ready["triggers"]["paused:guarded"] is False
        assert ready["triggers"]["guarded"] is True
        assert ready["ready"] is False
        await asyncio.sleep(2.5)
        assert len(fn.calls) == 1, "a paused trigger fired"
        assert bridge.metric("bridge_cron_ticks_skipped_total", reason="paused") >= 2
        paused_log = logged(bridge, "cron trigger paused")
        assert paused_log[0]["event_id"] == fn.calls[0].event_id
        # a restart keeps it paused (BRIDGE_STATE_FILE)
        assert await bridge.terminate() == 0
        await bridge.start()
        await asyncio.sleep(2.5)
        assert len(fn.calls) == 1, "the restart resumed a paused trigger"
        assert bridge.metric("bridge_cron_paused", trigger="guarded") == 1
        failing["on"] = False
        code, out, _ = await cli(bridge, "resume", "guarded")
        assert (code, out) == (0, "guarded: resumed\n")
        await fn.wait_calls(3)
        assert bridge.metric("bridge_cron_paused", trigger="guarded") == 0
        ready = json.loads(await asyncio.to_thread(_readyz, bridge))
        assert "paused:guarded" not in ready["triggers"]
        again = await cli(bridge, "resume", "guarded")
        assert again[:2] == (0, "guarded: was not paused\n")
        assert await bridge.terminate() == 0


def _readyz(bridge: BridgeProcess) -> str:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{bridge.admin_port}/readyz") as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as err:
        return str(err.read().decode())


async def test_a_change_of_the_trigger_resumes_it(tmp_path: Path) -> None:
    failing = {"on": True}

    def answer(call: Call, attempt: int) -> Reply:
        return Reply(500 if failing["on"] else 200)

    triggers = """
  - name: guarded
    function: fn
    cron: {schedule: "* * * * * *", pause_on_failure: true}
"""
    env = control_env(tmp_path, BRIDGE_STATE_FILE=str(tmp_path / "state.json"),
                      BRIDGE_RELOAD_INTERVAL="0")
    async with (
        RecordingFunction(answer) as fn,
        BridgeProcess(config(fn.url, tmp_path, triggers), tmp_path, env=env) as bridge,
    ):
        await until(lambda: bridge.metric("bridge_cron_paused", trigger="guarded") == 1)
        failing["on"] = False
        bridge.config_path.write_text(config(fn.url, tmp_path, triggers.replace(
            "pause_on_failure: true", "pause_on_failure: true, data: {fixed: true}")))
        assert bridge.process is not None
        bridge.process.send_signal(1)  # SIGHUP: reload the file
        await fn.wait_for(lambda: any(c.body for c in fn.calls), timeout=15)
        assert bridge.metric("bridge_cron_paused", trigger="guarded") == 0
        assert await bridge.terminate() == 0


# --- backfill ------------------------------------------------------------------------


HOURLY = """
  - name: hourly
    function: fn
    concurrency: 4
    cron: {schedule: "0 * * * *", exclude: ["2026-01-02"]}
"""


async def test_backfill_fires_every_tick_in_order_with_its_own_id(tmp_path: Path) -> None:
    async with (
        RecordingFunction(always(200, delay=0.05)) as fn,
        BridgeProcess(config(fn.url, tmp_path, HOURLY), tmp_path,
                      env=control_env(tmp_path)) as bridge,
    ):
        code, out, err = await cli(bridge, "backfill", "hourly", "--from", "2026-01-01T20:00:00",
                                   "--to", "2026-01-03T02:00:00Z", "--wait")
        assert (code, err) == (0, "")
        status = await cli(bridge, "backfill", "hourly", "--status")
        assert await bridge.terminate() == 0
    # 20..23 on the 1st, the 2nd is excluded, 00..02 on the 3rd
    expected = [datetime(2026, 1, 1, h, tzinfo=UTC) for h in range(20, 24)] + [
        datetime(2026, 1, 3, h, tzinfo=UTC) for h in range(3)]
    assert [tick_of(c.event_id) for c in fn.calls] == expected
    assert [c.headers["ce-time"] for c in fn.calls] == [
        t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in expected]
    assert fn.max_in_flight == 1  # default: one after another
    assert out.splitlines()[0].startswith(
        "backfill 2026-01-01T20:00:00Z .. 2026-01-03T02:00:00Z (BufferAll): running, 0/7")
    assert out.splitlines()[-1] == ("backfill 2026-01-01T20:00:00Z .. 2026-01-03T02:00:00Z "
                                    "(BufferAll): done, 7/7 settled (7 delivered, "
                                    "0 dead-lettered)")
    assert status[1].strip() == out.splitlines()[-1]
    assert logged(bridge, "backfill finished")


async def test_backfill_with_allow_runs_ticks_side_by_side(tmp_path: Path) -> None:
    async with (
        RecordingFunction(always(200, delay=0.5)) as fn,
        BridgeProcess(config(fn.url, tmp_path, HOURLY), tmp_path,
                      env=control_env(tmp_path)) as bridge,
    ):
        code, out, _ = await cli(bridge, "backfill", "hourly", "--from", "2026-01-01T00:00:00Z",
                                 "--to", "2026-01-01T11:00:00Z", "--policy", "Allow", "--wait")
        assert code == 0
        assert await bridge.terminate() == 0
    assert len(fn.calls) == 12
    assert len(set(fn.ids())) == 12
    assert fn.max_in_flight == 4  # the trigger's concurrency
    assert out.splitlines()[-1].endswith("done, 12/12 settled (12 delivered, 0 dead-lettered)")


async def test_backfill_resumes_after_a_restart_and_fires_nothing_settled_twice(
    tmp_path: Path,
) -> None:
    env = control_env(tmp_path, BRIDGE_STATE_FILE=str(tmp_path / "state.json"))
    async with (
        RecordingFunction(always(200, delay=0.2)) as fn,
        BridgeProcess(config(fn.url, tmp_path, HOURLY), tmp_path, env=env) as bridge,
    ):
        code, _, _ = await cli(bridge, "backfill", "hourly", "--from", "2026-01-03T00:00:00Z",
                               "--to", "2026-01-03T23:00:00Z")
        assert code == 0
        await fn.wait_calls(6)
        assert await bridge.terminate() == 0  # in the middle of it
        done_before = len(fn.calls)
        assert done_before < 24
        await bridge.start()
        await fn.wait_calls(24, timeout=30)
        await asyncio.sleep(0.5)
        status = await cli(bridge, "backfill", "hourly", "--status")
        assert await bridge.terminate() == 0
    ids = fn.ids()
    assert len(ids) == 24, "a tick fired twice (or one is missing)"
    assert sorted(tick_of(i) for i in ids) == [
        datetime(2026, 1, 3, h, tzinfo=UTC) for h in range(24)]
    assert status[1].strip().endswith("done, 24/24 settled (24 delivered, 0 dead-lettered)")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["hourly"]["backfill"]["state"] == "done"
    assert state["hourly"]["backfill"]["done_until"] == "2026-01-03T23:00:00Z"
    resumed = logged(bridge, "backfill resumed")
    assert resumed
    assert resumed[0]["done_until"] == f"2026-01-03T{done_before - 1:02d}:00:00Z"


async def test_bad_backfill_ranges_are_refused_with_a_reason(tmp_path: Path) -> None:
    seconds = """
  - name: every-second
    function: fn
    cron: {schedule: "* * * * * *"}
"""
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(fn.url, tmp_path, NIGHTLY + seconds), tmp_path,
                      env=control_env(tmp_path)) as bridge,
    ):
        reversed_ = await cli(bridge, "backfill", "nightly", "--from", "2026-02-01T00:00:00Z",
                              "--to", "2026-01-01T00:00:00Z")
        huge = await cli(bridge, "backfill", "every-second", "--from", "2026-01-01T00:00:00Z",
                         "--to", "2026-02-01T00:00:00Z")
        empty = await cli(bridge, "backfill", "nightly", "--from", "2026-01-01T04:00:00Z",
                          "--to", "2026-01-01T05:00:00Z")
        missing = await cli(bridge, "backfill", "nightly", "--from", "2026-01-01T04:00:00Z")
        bad_time = await cli(bridge, "backfill", "nightly", "--from", "yesterday",
                             "--to", "2026-01-01T05:00:00Z")
        unknown = await cli(bridge, "backfill", "nope", "--from", "2026-01-01T04:00:00Z",
                            "--to", "2026-01-01T05:00:00Z")
        assert await bridge.terminate() == 0
    assert reversed_ == (2, "", "nightly: refused (400): backfill range in the wrong order: "
                                "--from 2026-02-01T00:00:00Z is after --to "
                                "2026-01-01T00:00:00Z\n")
    assert huge[0] == 2
    assert "backfill range holds about 2,6" in huge[2]
    assert "ticks of '* * * * * *', more than 1,000,000: split it into smaller ranges" in huge[2]
    assert empty[0] == 2
    assert "no tick of '0 3 * * *' fires between" in empty[2]
    assert missing == (2, "", "backfill: --from and --to are required (or --status, --cancel)\n")
    assert bad_time == (2, "", "nightly: refused (400): from: not an ISO 8601 time: "
                               "'yesterday'\n")
    assert unknown[0] == 2
    assert [c for c in fn.calls if not c.event_id.startswith("every-second/")] == []
    assert not any(c.event_id.startswith("every-second/2026-01") for c in fn.calls)
