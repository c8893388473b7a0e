"""Fixtures of the fault suite, and the table of probe reports at the end of a run.

Every test prints its prober report as one ``PROBE {...}`` JSON line; this plugin
collects those lines from the captured output and prints them as a table in the
terminal summary (``reliability probes``), so one run shows every fault's figures.
"""

from __future__ import annotations

import json

import pytest

from tests.support import kafka as kafka_support

#: The session's Tansu broker (see tests/support/kafka.py).
kafka_broker = kafka_support.kafka_broker

_COLUMNS = ("fault", "sent", "missing", "duplicated", "duplicate_bound", "dead_lettered",
            "unexpected", "recovery_s", "max_gap_s")


class _ProbeTable:
    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Each phase's report repeats the earlier phases' output: read only its own.
        own = f"Captured stdout {report.when}"
        for title, text in report.sections:
            if title != own:
                continue
            for line in text.splitlines():
                if line.startswith("PROBE "):
                    self.rows.append(json.loads(line[len("PROBE "):]))

    def pytest_terminal_summary(self, terminalreporter: object) -> None:
        if not self.rows:
            return
        writer = terminalreporter
        writer.section("reliability probes")  # type: ignore[attr-defined]
        writer.write_line(" | ".join(_COLUMNS))  # type: ignore[attr-defined]
        for row in self.rows:
            writer.write_line(" | ".join(str(row.get(c)) for c in _COLUMNS))  # type: ignore[attr-defined]


def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("faults-probe-table"):
        config.pluginmanager.register(_ProbeTable(), "faults-probe-table")
