"""A function's ``headers`` values are secrets (issue 15 leftover, next to item 14).

They often carry tokens (``Authorization: Bearer ${TOKEN}``). Through the real daemon
and its real log output:

- a function that answers with an error body quoting the token it refused (many APIs
  do; aiohttp's own server quotes a header line it cannot read): the retry warning,
  the dead-letter error line and the dead-letter record keep the rest of the body and
  lose the token, the key and every 4-character piece of them, although the function
  received both;
- a header value of the wrong type (a number written straight into the file) is
  refused by ``validate`` and by a reload (the file watched) without echoing it, as
  every ``SecretStr`` field now is too (SASL and TLS key passwords, AMQP URLs).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.integration.test_url_secrets import leaks
from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply

#: Letters only: a 4-digit piece would also match a port, a pid or a timestamp.
TOKEN = "tok-QhXvLmZpRwYsFj"
KEY = "kY-GbNtJdKfWcMeHq"
#: Digits: looked for as a whole.
NUMERIC = "918273645546"


def refuse_quoting_the_token(call: Call, attempt: int) -> Reply:
    body = (f"refused: Authorization {call.headers.get('Authorization')} "
            f"X-Api-Key {call.headers.get('X-Api-Key')}")
    return Reply(status=503 if attempt == 1 else 400, body=body)


def config(tmp: Path, url: str, authorization: str = '"Bearer ${TOKEN}"') -> str:
    return f"""
defaults:
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn:
    url: "{url}"
    headers: {{Authorization: {authorization}, X-Api-Key: "${{KEY}}"}}
triggers:
  - name: tick
    function: fn
    cron: {{schedule: "* * * * * *"}}
    retry: {{max_attempts: 2, initial_backoff: 50ms, jitter: false}}
"""


def logged(bridge: BridgeProcess, event: str) -> list[dict[str, object]]:
    return [e for e in bridge.logs() if e.get("event") == event]


async def wait_until(
    predicate: Callable[[], object], bridge: BridgeProcess, timeout: float = 15
) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("not reached:\n" + "\n".join(bridge.log_lines[-20:]))


async def test_an_error_body_quoting_the_token_is_logged_without_it(tmp_path: Path) -> None:
    env = {"TOKEN": TOKEN, "KEY": KEY}
    async with (
        RecordingFunction(refuse_quoting_the_token) as fn,
        BridgeProcess(config(tmp_path, fn.url), tmp_path, env) as bridge,
    ):
        await wait_until(lambda: logged(bridge, "dead-lettered"), bridge)
        assert await bridge.terminate() == 0
    assert fn.calls[0].headers["Authorization"] == f"Bearer {TOKEN}"  # it was sent
    assert fn.calls[0].headers["X-Api-Key"] == KEY
    [retry, *_] = logged(bridge, "invocation failed, will retry")
    [dead, *_] = logged(bridge, "dead-lettered")
    for line in (retry, dead):
        assert str(line["detail"]).startswith("refused: Authorization ***"), line
        assert "X-Api-Key ***" in str(line["detail"]), line
    record = json.loads((tmp_path / "dl.jsonl").read_text().splitlines()[0])
    assert record["bridge-error-detail"].startswith("refused: Authorization ***"), record
    everything = "\n".join(bridge.log_lines) + (tmp_path / "dl.jsonl").read_text()
    assert leaks(everything, [TOKEN, KEY]) == []


def test_a_header_value_of_the_wrong_type_is_refused_without_showing_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(config(tmp_path, "http://127.0.0.1:9/", authorization=NUMERIC) + f"""
  - name: stream
    function: fn
    kafka:
      bootstrap_servers: ["127.0.0.1:9092"]
      topics: [t]
      group_id: g
      security_protocol: SASL_SSL
      sasl: {{username: bob, password: {NUMERIC}1}}
      tls: {{key_password: {NUMERIC}2}}
  - {{name: queue, function: fn, rabbitmq: {{url: {NUMERIC}3, queue: q}}}}
""")
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "validate", "--config", str(path)],
        env={**clean, "TOKEN": TOKEN, "KEY": KEY}, capture_output=True, text=True,
        timeout=30, check=False,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "functions.fn.headers.Authorization: expected a string, got a number (not shown: "
        "a secret)",
        "triggers[1].kafka.sasl.password: expected a string, got a number (not shown: "
        "a secret)",
        "triggers[1].kafka.tls.key_password: expected a string, got a number (not shown: "
        "a secret)",
        "triggers[2].rabbitmq.url: expected a string, got a number (not shown: a secret)",
    ]
    assert leaks(done.stdout + done.stderr, [NUMERIC], piece=len(NUMERIC)) == []


async def test_a_reload_rejected_for_a_header_value_does_not_log_it(tmp_path: Path) -> None:
    env = {"TOKEN": TOKEN, "KEY": KEY, "BRIDGE_RELOAD_INTERVAL": "100ms"}
    rejected = "config reload rejected; the running config stays"
    async with (
        RecordingFunction() as fn,
        BridgeProcess(config(tmp_path, fn.url), tmp_path, env) as bridge,
    ):
        bridge.config_path.write_text(config(tmp_path, fn.url, authorization=NUMERIC))
        await wait_until(lambda: logged(bridge, rejected), bridge)
        assert await bridge.terminate() == 0
    [line] = logged(bridge, rejected)
    assert line["problem"] == (
        "functions.fn.headers.Authorization: expected a string, got a number (not shown: "
        "a secret)"
    )
    assert leaks("\n".join(bridge.log_lines), [TOKEN, KEY]) == []
    assert leaks("\n".join(bridge.log_lines), [NUMERIC], piece=len(NUMERIC)) == []
