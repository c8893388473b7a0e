"""Runtime.apply is per trigger: one trigger that cannot be built (its connector refuses
its settings) is reported and left out, every other trigger still stops, starts or runs
on; at start-up the same failure is a config problem (exit 2, one line, no secret).

The failing connector is a test double registered for ``cron`` (``explode-*`` triggers
raise in the constructor, as a connector parsing a bad URL did); the rest is real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bridge.config import BridgeConfig, ConfigError, ResolvedTrigger, load_config, parse_config
from bridge.daemon import Daemon
from bridge.runtime import Runtime
from bridge.settings import Settings
from connectors import base
from connectors.base import Connector, ConnectorContext
from connectors.cron import CronConnector

ROOT = Path(__file__).resolve().parents[2]
SECRET = "Sup3rS3cretPw"
FACTORY = "tests.unit.test_runtime_apply:connector_or_explode"
built: list[str] = []


def connector_or_explode(trigger: ResolvedTrigger, context: ConnectorContext) -> Connector:
    built.append(trigger.name)
    if trigger.name.startswith("explode"):
        # what yarl said about a raw password: a piece of it in the message
        raise ValueError(f"invalid literal for int() with base 10: '{SECRET[:7]}'")
    return CronConnector(trigger, context)


TEXT = f"""
defaults:
  dead_letter: {{{{file: {{{{path: /tmp/dl.jsonl}}}}}}}}
functions:
  fn: {{{{url: "http://127.0.0.1:9/"}}}}
  secret: {{{{url: "http://bob:{SECRET}@127.0.0.1:9/"}}}}
triggers:
{{triggers}}"""


def entries(triggers: dict[str, str]) -> str:
    return "".join(
        f"  - {{name: {name}, function: {'secret' if name.startswith('explode') else 'fn'}, "
        f'cron: {{schedule: "@hourly", data: {data}}}}}\n'
        for name, data in triggers.items()
    )


def config(triggers: dict[str, str]) -> BridgeConfig:
    return parse_config(TEXT.format(triggers=entries(triggers)))


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Runtime:
    monkeypatch.setitem(base.SOURCES, "cron", FACTORY)
    built.clear()
    return Runtime(config({"a": "1", "b": "1"}),
                   Settings(admin_port=0, admin_host="127.0.0.1"))


def running(runtime: Runtime) -> dict[str, Any]:
    return {name: running for name, running in runtime.triggers.items()
            if running.pump is not None and not running.pump.done()}


async def test_a_trigger_that_cannot_be_built_leaves_the_others_running(
    runtime: Runtime,
) -> None:
    await runtime.start()
    try:
        a = runtime.triggers["a"]
        failures = await runtime.apply(
            config({"a": "1", "b": "2", "explode-1": "1", "c": "1"})
        )
        assert list(failures) == ["explode-1"]
        assert failures["explode-1"] == (
            "ValueError: invalid literal for int() with base 10: '***'"
        )
        assert sorted(running(runtime)) == ["a", "b", "c"]  # changed and new ones too
        assert runtime.triggers["a"] is a  # unchanged: not restarted
        assert runtime.readiness()["explode-1"] is False

        attempts = built.count("explode-1")
        await runtime.apply(config({"a": "1", "b": "2", "explode-1": "1", "c": "1", "d": "1"}))
        assert built.count("explode-1") == attempts  # same settings: not tried again
        assert "d" in running(runtime)
        failures = await runtime.apply(config({"a": "1", "explode-1": "2"}))
        assert built.count("explode-1") == attempts + 1  # changed: tried again
        assert list(failures) == ["explode-1"]
        assert sorted(running(runtime)) == ["a"]
        assert await runtime.apply(config({"a": "1"})) == {}
        assert "explode-1" not in runtime.readiness()
    finally:
        await runtime.shutdown()


async def test_at_start_up_it_is_a_config_problem_and_nothing_starts(
    runtime: Runtime,
) -> None:
    runtime.config = config({"a": "1", "explode-0": "1", "b": "1"})
    with pytest.raises(ConfigError) as caught:
        await runtime.start()
    assert [str(p) for p in caught.value.problems] == [
        "triggers[1]: cannot be started: ValueError: invalid literal for int() with base 10: "
        "'***'"
    ]
    assert runtime.triggers == {}
    assert runtime.admin.port is not None  # it was up, and is closed again:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", runtime.admin.port), timeout=2).close()
    await runtime.shutdown()


def test_run_exits_2_with_one_line_and_no_secret(tmp_path: Path) -> None:
    """The real CLI entry point, with the exploding connector registered."""
    path = tmp_path / "bridge.yaml"
    path.write_text(f"""
defaults:
  dead_letter: {{file: {{path: "{tmp_path / 'dl.jsonl'}"}}}}
functions:
  secret: {{url: "http://bob:{SECRET}@127.0.0.1:9/"}}
triggers:
  - {{name: explode-0, function: secret, cron: {{schedule: "@hourly"}}}}
""")
    code = (
        "import sys; from connectors import base; "
        f"base.SOURCES['cron'] = {FACTORY!r}; "
        "from bridge.cli import main; sys.exit(main(['run', '--config', sys.argv[1]]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True,
        env={**env, "BRIDGE_ADMIN_PORT": "0", "BRIDGE_ADMIN_HOST": "127.0.0.1"},
        timeout=30, check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        "triggers[0]: cannot be started: ValueError: invalid literal for int() with base "
        "10: '***'"
    ]
    assert SECRET[:4] not in done.stderr


async def test_a_reloaded_file_applies_every_trigger_it_can(
    runtime: Runtime, tmp_path: Path
) -> None:
    """The config file reloaded with a trigger that cannot be built: logged, the rest
    applied (a changed trigger restarts, a new one starts)."""
    path = tmp_path / "bridge.yaml"
    path.write_text(TEXT.format(triggers=entries({"a": "1", "b": "1"})))
    daemon = Daemon(load_config(path), runtime.settings, str(path))
    runtime, composer, reloader = daemon.runtime, daemon.composer, daemon.reloader
    assert reloader is not None
    await runtime.start()
    try:
        path.write_text(TEXT.format(
            triggers=entries({"a": "1", "b": "2", "explode-1": "1", "c": "1"})))
        with capture_logs() as logs:
            assert await reloader.reload()
        [reloaded] = [e for e in logs if e["event"] == "config reloaded"]
        assert reloaded["failed"] == ["explode-1"]
        assert reloaded["changed"] == ["b"]
        [error] = [e for e in logs if e["event"].startswith("trigger cannot be started")]
        assert error["log_level"] == "error"
        assert error["trigger"] == "explode-1"
        assert SECRET[:4] not in str(logs)
        assert sorted(running(runtime)) == ["a", "b", "c"]
        assert [t.name for t in composer.file.triggers] == ["a", "b", "explode-1", "c"]
    finally:
        await runtime.shutdown()


def test_an_admin_port_in_use_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(TEXT.format(triggers=entries({"a": "1"})))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "bridge", "run", "--config", str(path)], cwd=ROOT,
            env={**env, "BRIDGE_ADMIN_PORT": str(port), "BRIDGE_ADMIN_HOST": "127.0.0.1"},
            capture_output=True, text=True, timeout=30, check=False,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        f"BRIDGE_ADMIN_PORT: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
