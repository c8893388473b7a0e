"""Secrets in URLs, as a new user writes them (issue 15, item 14).

A password put into a URL through ``${ENV}`` as it is (``Sup3r/Secr@t:pw#1``) used to
pass ``validate`` and then kill ``run`` with a traceback that printed a piece of it.
Through the real CLI (``python -m bridge validate`` and ``run``) and the real log output:

- every URL-bearing field with a raw secret is refused by ``validate`` and by ``run``
  (exit 2, one line per field naming its path and how to write it), and no output holds
  the secret or any 4-character piece of it;
- written percent-encoded, the same secrets work (an http function receives them as
  Basic credentials, decoded), and a daemon whose brokers refuse them logs why without
  any piece of them, in its log lines and its ``/readyz`` body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction
from tests.support.kafka import start_broker, stop_broker

#: (id, secret): the issue's example, then one per character a URL cannot hold as it is.
SECRETS = [
    ("example", "Sup3r/Secr@t:pw#1"),
    ("at", "p@ss"),
    ("colon", "a:b"),
    ("hash", "x#y"),
    ("bad-escape", "%zz"),
    ("query-slash", "wh?t/n0w"),
    ("non-ascii", "pässwört-€uro"),
    ("space", "tw0 w0rds"),
]

#: Field paths of the config below that hold the secret in a URL.
URL_FIELDS = [
    "functions.single.url",
    "functions.pool.urls[1]",
    "functions.spill.overflow.url",
    "triggers[0].rabbitmq.url",
    "triggers[1].dead_letter.rabbitmq.url",
]


def leaks(output: str, secrets: Iterable[str], piece: int = 4) -> list[str]:
    """Every secret, or piece of one ``piece`` characters long, found in ``output``.

    JSON log lines are read decoded too (``\\u00e4`` is an ``ä``)."""
    texts = [output]
    for line in output.splitlines():
        try:
            texts.append(json.dumps(json.loads(line), ensure_ascii=False))
        except ValueError:
            continue
    found = []
    for secret in secrets:
        size = min(piece, len(secret))
        pieces = {secret[i : i + size] for i in range(len(secret) - size + 1)}
        found += [p for p in sorted(pieces) if any(p in text for text in texts)]
    return found


def raw_config(tmp: Path) -> str:
    return f"""
defaults:
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  single: {{url: "http://bob:${{PW}}@127.0.0.1:8080/fn"}}
  pool: {{urls: ["http://127.0.0.1:8081/", "http://bob:${{PW}}@127.0.0.1:8082/"]}}
  spill:
    kubernetes: {{service: spill, namespace: jobs}}
    overflow: {{url: "https://bob:${{PW}}@fallback.example.com/fn"}}
triggers:
  - name: queue
    function: single
    rabbitmq: {{url: "amqp://bob:${{PW}}@127.0.0.1:5672/", queue: q}}
  - name: tick
    function: pool
    cron: {{schedule: "@hourly"}}
    dead_letter: {{rabbitmq: {{exchange: dlx, url: "amqps://bob:${{PW}}@127.0.0.1:5671/"}}}}
  - name: stream
    function: spill
    kafka:
      bootstrap_servers: ["127.0.0.1:9092", "bob:${{PW}}@kafka:9092"]
      topics: [t]
      group_id: g
      security_protocol: SASL_PLAINTEXT
      sasl: {{username: bob, password: "${{PW}}"}}
"""


def cli(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "bridge", *argv], env={**clean, **env},
        capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.parametrize(("secret"), [s for _, s in SECRETS], ids=[i for i, _ in SECRETS])
def test_raw_secrets_in_urls_are_refused_by_validate_and_run(
    secret: str, tmp_path: Path
) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(raw_config(tmp_path))
    env = {"PW": secret, "BRIDGE_ADMIN_PORT": "0", "BRIDGE_ADMIN_HOST": "127.0.0.1"}
    validated = cli("validate", "--config", str(config), env=env)
    ran = cli("run", "--config", str(config), env=env)
    for done in (validated, ran):
        assert done.returncode == 2, done.stdout + done.stderr
        assert done.stdout == ""
        assert "Traceback" not in done.stderr
        lines = done.stderr.splitlines()
        for field in URL_FIELDS:
            [line] = [x for x in lines if x.startswith(f"{field}: ")]
            assert "percent-encode" in line or "%25" in line, line
        assert any(x.startswith("triggers[2].kafka.bootstrap_servers[1]: ") for x in lines)
        assert len(lines) == len(URL_FIELDS) + 1, lines  # the SASL password is fine as it is
        assert leaks(done.stdout + done.stderr, [secret]) == []
    assert ran.stderr == validated.stderr


def encoded_config(tmp: Path, fn: RecordingFunction, kafka: str, secrets: list[str]) -> str:
    functions, triggers = [], []
    for index, secret in enumerate(secrets):
        written = quote(secret, safe="")
        amqp = f"amqp://bob:{written}@127.0.0.1:5672/"
        functions.append(
            f'  fn-{index}: {{url: "http://bob:{written}@127.0.0.1:{fn.port}/{index}"}}'
        )
        triggers += [
            f"  - name: tick-{index}\n    function: fn-{index}\n"
            f'    cron: {{schedule: "* * * * * *"}}\n'
            f'    dead_letter: {{rabbitmq: {{exchange: dlx, url: "{amqp}"}}}}',
            f"  - name: queue-{index}\n    function: fn-{index}\n"
            f'    rabbitmq: {{url: "{amqp}", queue: secrets-{index}}}',
            f"  - name: stream-{index}\n    function: fn-{index}\n"
            f"    kafka:\n      bootstrap_servers: {kafka}\n      topics: [t]\n"
            f"      group_id: g-{index}\n      security_protocol: SASL_PLAINTEXT\n"
            f"      sasl: {{mechanism: SCRAM-SHA-512, username: bob, "
            f"password: {json.dumps(secret)}}}",
        ]
    return (
        "defaults:\n"
        f'  dead_letter: {{file: {{path: "{tmp / "dl.jsonl"}"}}}}\n'
        "functions:\n" + "\n".join(functions) + "\ntriggers:\n" + "\n".join(triggers) + "\n"
    )


async def wait(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.05)


async def test_encoded_secrets_work_and_never_show(tmp_path: Path) -> None:
    # Basic credentials are Latin-1 (validate refuses the '€' for http URLs)
    secrets = [s.replace("€", "e") for _, s in SECRETS]
    broker = start_broker(tmp_path / "auth.log", "--authentication")
    try:
        async with RecordingFunction() as fn:
            text = encoded_config(tmp_path, fn, broker.bootstrap, secrets)
            checked = cli("validate", "--config", str(_write(tmp_path, text)), env={})
            assert checked.returncode == 0, checked.stderr
            async with BridgeProcess(text, tmp_path) as bridge:
                def failed(trigger: str) -> bool:
                    return any(e.get("trigger") == trigger and e.get("event") in (
                        "source failed", "dead-letter sink not available yet")
                        for e in bridge.logs())

                names = [f"{kind}-{i}" for i in range(len(secrets))
                         for kind in ("tick", "queue", "stream")]
                await wait(lambda: all(failed(n) for n in names if not n.startswith("tick"))
                           and {c.path for c in fn.calls} >= {f"/{i}" for i in
                                                               range(len(secrets))}, 30)
                readyz = await asyncio.to_thread(_body, bridge, "/readyz")
                assert await bridge.terminate() == 0
            output = "\n".join(bridge.log_lines) + readyz
    finally:
        stop_broker(broker)
    for index, secret in enumerate(secrets):
        call = next(c for c in fn.calls if c.path == f"/{index}")
        expected = base64.b64encode(f"bob:{secret}".encode("latin-1")).decode()
        assert call.headers["Authorization"] == f"Basic {expected}", secret
    logs = [json.loads(line) for line in bridge.log_lines if line.startswith("{")]
    refused = [e for e in logs if "refused the login" in str(e.get("error", ""))]
    assert {e["trigger"] for e in refused} >= {f"queue-{i}" for i in range(len(secrets))}
    sasl = [e for e in logs if "authentication with Kafka brokers" in str(e.get("error", ""))]
    assert {e["trigger"] for e in sasl} == {f"stream-{i}" for i in range(len(secrets))}
    sinks = [e for e in logs if e.get("event") == "dead-letter sink not available yet"]
    assert {e["trigger"] for e in sinks} == {f"tick-{i}" for i in range(len(secrets))}
    assert '"ready": false' in readyz
    written = [quote(s, safe="") for s in secrets]
    assert leaks(output, [*secrets, *written]) == []


def _write(tmp: Path, text: str) -> Path:
    path = tmp / "encoded.yaml"
    path.write_text(text)
    return path


def _body(bridge: BridgeProcess, path: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{bridge.admin_port}{path}") as reply:
            return str(reply.read().decode())
    except urllib.error.HTTPError as err:
        return str(err.read().decode())
