"""The command line: schedule output, user errors (exit 2, one line, no traceback), version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import __version__
from bridge.cli import main

GOOD = """\
defaults: {dead_letter: {file: {path: /tmp/dl.jsonl}}}
functions: {f: {url: "http://127.0.0.1:8080/"}}
triggers: [{name: t, function: f, cron: {schedule: "@hourly"}}]
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_"):
            monkeypatch.delenv(name)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], list[str]]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


# --- schedule --------------------------------------------------------------------------


def test_schedule_skips_the_spring_forward_gap(capsys: pytest.CaptureFixture[str]) -> None:
    # 2026-03-08 is the second Sunday of March: New York jumps from 02:00 EST to 03:00 EDT,
    # so 02:30 does not exist that day and the schedule does not fire on it.
    code, out, err = run(
        ["schedule", "30 2 * * *", "--time-zone", "America/New_York",
         "--from", "2026-03-07T00:00:00", "--count", "3"],
        capsys,
    )
    assert (code, err) == (0, [])
    assert out == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
    ]


def test_schedule_fires_once_in_the_fall_back_overlap(capsys: pytest.CaptureFixture[str]) -> None:
    # 2026-10-25: Berlin goes from 03:00 CEST back to 02:00 CET; 02:30 happens twice.
    code, out, _ = run(
        ["schedule", "30 2 * * *", "--time-zone", "Europe/Berlin",
         "--from", "2026-10-24T12:00:00", "--count", "3"],
        capsys,
    )
    assert code == 0
    assert out == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
        "2026-10-27T02:30:00+01:00",
    ]


def test_schedule_is_strictly_after_from(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["schedule", "0 * * * *", "--from", "2026-01-01T10:00:00+00:00", "--count", "2"], capsys
    )
    assert code == 0
    assert out == ["2026-01-01T11:00:00+00:00", "2026-01-01T12:00:00+00:00"]


def test_schedule_from_with_an_offset_prints_in_the_schedule_zone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(
        ["schedule", "0 9 * * MON-FRI", "--time-zone", "Asia/Tokyo",
         "--from", "2026-01-02T00:00:00Z", "--count", "2"],
        capsys,
    )
    assert code == 0
    # 2026-01-02 00:00Z is 09:00 in Tokyo: strictly after it, the next weekday is Monday
    assert out == ["2026-01-05T09:00:00+09:00", "2026-01-06T09:00:00+09:00"]


def test_schedule_seconds_field_and_every(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["schedule", "*/20 * * * * *", "--from", "2026-01-01T00:00:00+00:00", "--count", "3"],
        capsys,
    )
    assert code == 0
    assert out == [
        "2026-01-01T00:00:20+00:00", "2026-01-01T00:00:40+00:00", "2026-01-01T00:01:00+00:00"
    ]
    code, out, _ = run(
        ["schedule", "@every 90m", "--from", "2026-01-01T00:00:00+00:00", "--count", "2"], capsys
    )
    assert code == 0
    assert out == ["2026-01-01T01:30:00+00:00", "2026-01-01T03:00:00+00:00"]


def test_schedule_default_count_is_five_from_now(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["schedule", "@hourly"], capsys)
    assert code == 0
    assert len(out) == 5
    assert all(line.endswith(":00:00+00:00") for line in out)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["schedule", "30 2 * *"], "schedule: expected 5 or 6 fields, got 4"),
        (["schedule", "61 * * * *"], "schedule: field 'minute': value 61 out of range 0-59"),
        (["schedule", "@sometimes"], "schedule: unknown macro '@sometimes'"),
        (["schedule", "@hourly", "--time-zone", "Nowhere/City"],
         "schedule: unknown time zone 'Nowhere/City'"),
        (["schedule", "@hourly", "--from", "next tuesday"],
         "--from: not an ISO 8601 time: 'next tuesday'"),
        (["schedule", "@hourly", "--from", "2026-02-30T00:00:00"],
         "--from: not an ISO 8601 time: '2026-02-30T00:00:00'"),
        (["schedule", "@hourly", "--count", "0"], "--count: must be at least 1, got 0"),
        (["schedule", "@hourly", "--count", "-4"], "--count: must be at least 1, got -4"),
        (["schedule", "30 2 * * *", "--from", "9999-12-31T00:00:00", "--count", "3"],
         "schedule: no fire time after 9999-12-31T02:30:00+00:00 within years 1-9999"),
    ],
)
def test_schedule_user_errors(
    argv: list[str], line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == 2
    assert err == [line]
    assert len(out) <= 1  # only the 9999 case prints the one time it found


def test_schedule_non_numeric_count_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["schedule", "@hourly", "--count", "x"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "argument --count: invalid int value: 'x'" in err
    assert "Traceback" not in err


# --- process settings (BRIDGE_*) --------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"BRIDGE_ADMIN_PORT": "abc"}, "BRIDGE_ADMIN_PORT: expected a whole number, got 'abc'"),
        ({"BRIDGE_ADMIN_PORT": "70000"}, "BRIDGE_ADMIN_PORT: must be at most 65535, got '70000'"),
        ({"BRIDGE_LOG_LEVEL": "loud"},
         "BRIDGE_LOG_LEVEL: must be 'debug', 'info', 'warning' or 'error'; got 'loud'"),
        ({"BRIDGE_LOG_FORMAT": "xml"}, "BRIDGE_LOG_FORMAT: must be 'json' or 'console'; got 'xml'"),
        ({"BRIDGE_DRAIN_TIMEOUT": "soon"}, "BRIDGE_DRAIN_TIMEOUT: invalid duration 'soon'"),
        ({"BRIDGE_DRAIN_TIMEOUT": "-3s"}, "BRIDGE_DRAIN_TIMEOUT: duration must"),
        ({"BRIDGE_CRON_SHARDS": "-1"}, "BRIDGE_CRON_SHARDS: must be at least 0, got '-1'"),
        ({"BRIDGE_CRON_SHARDS": "many"}, "BRIDGE_CRON_SHARDS: expected a whole number"),
        ({"BRIDGE_CLUSTER_QUOTAS": "perhaps"}, "BRIDGE_CLUSTER_QUOTAS: "),
    ],
)
@pytest.mark.parametrize("command", ["run", "validate"])
def test_bad_settings_name_the_variable(
    command: str, env: dict[str, str], line: str, *, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(GOOD)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, out, err = run([command, "--config", str(config)], capsys)
    assert code == 2
    assert out == []
    assert len(err) == 1
    assert err[0].startswith(line)


def test_every_bad_setting_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_ADMIN_PORT", "abc")
    monkeypatch.setenv("BRIDGE_LOG_LEVEL", "loud")
    code, _, err = run(["run", "--config", str(tmp_path / "none.yaml")], capsys)
    assert code == 2
    assert sorted(line.split(":")[0] for line in err) == ["BRIDGE_ADMIN_PORT", "BRIDGE_LOG_LEVEL"]


# --- run / validate --------------------------------------------------------------------


def test_run_with_a_bad_config_exits_2_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(GOOD.replace('"@hourly"', '"@often"'))
    code, out, err = run(["run", "--config", str(config)], capsys)
    assert code == 2
    assert out == []
    assert err == ["triggers[0].cron.schedule: unknown macro '@often'"]


def test_run_without_a_config(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["run"], capsys)
    assert code == 2
    assert err == ["no config file: pass --config FILE or set BRIDGE_CONFIG"]


def test_config_from_bridge_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(GOOD)
    monkeypatch.setenv("BRIDGE_CONFIG", str(config))
    code, out, _ = run(["validate"], capsys)
    assert code == 0
    assert out == [f"ok: {config}: 1 trigger(s) (1 cron), 1 function(s)"]
    other = tmp_path / "other.yaml"
    other.write_text("functions: {}\n")
    code, out, _ = run(["validate", "--config", str(other)], capsys)  # the flag wins
    assert out == [f"ok: {other}: 0 trigger(s), 0 function(s)"]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])
    assert caught.value.code == 0
    assert capsys.readouterr().out == f"trigger-bridge {__version__}\n"


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])
    assert caught.value.code == 2
    assert "usage: trigger-bridge" in capsys.readouterr().err


def test_as_a_process_user_errors_have_no_traceback(tmp_path: Path) -> None:
    """The real entry point (``python -m bridge``), as a platform engineer runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    config = tmp_path / "c.yaml"
    config.write_text(GOOD)
    cases = [
        (["run", "--config", str(config)], {"BRIDGE_ADMIN_PORT": "abc"}, "BRIDGE_ADMIN_PORT: "),
        (["schedule", "* * *"], {}, "schedule: expected 5 or 6 fields, got 3"),
        (["validate", "--config", str(tmp_path / "missing.yaml")], {}, "cannot read "),
    ]
    for argv, extra, start in cases:
        done = subprocess.run(
            [sys.executable, "-m", "bridge", *argv], env={**env, **extra},
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(start)
        assert len(done.stderr.splitlines()) == 1
        assert "Traceback" not in done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "schedule", "0 0 1 1 *", "--from",
         "2026-06-01T00:00:00+00:00", "--count", "1"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    assert done.stdout == "2027-01-01T00:00:00+00:00\n"


def test_run_with_a_function_joining_an_unknown_quota_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(GOOD.replace('url: "http://127.0.0.1:8080/"',
                                   'url: "http://127.0.0.1:8080/", quota: payments')
                      + "quotas: {reports: {max_concurrency: 4}}\n")
    code, out, err = run(["run", "--config", str(config)], capsys)
    assert code == 2
    assert out == []
    assert err == ["functions.f.quota: unknown quota 'payments' (known: reports)"]
