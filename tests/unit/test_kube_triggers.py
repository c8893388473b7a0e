"""Trigger resource validation (same models as the config file) and the cron connector's
behaviour on a leadership handover."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import yaml

from bridge.config import BridgeConfig, ConfigError, parse_config, validate_tree
from bridge.kube.triggers import validate_trigger
from bridge.logs import get_logger
from bridge.metrics import Metrics
from connectors.base import ConnectorContext
from connectors.cron import CronConnector

BASE = parse_config("""
defaults:
  dead_letter: {file: {path: /tmp/dl.jsonl}}
functions:
  report: {url: "http://127.0.0.1:9/"}
triggers:
  - {name: from-file, function: report, cron: {schedule: "@hourly"}}
""")


def obj(name: str, spec: Any, namespace: str = "jobs") -> dict[str, Any]:
    return {"apiVersion": "triggerbridge.dev/v1alpha1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": namespace, "generation": 1}, "spec": spec}


def problems(resource: dict[str, Any], base: BridgeConfig = BASE) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_trigger(resource, base)
    return [str(p) for p in caught.value.problems]


def test_reference_to_a_file_function() -> None:
    trigger, functions = validate_trigger(
        obj("nightly", {"function": "report", "cron": {"schedule": "0 2 * * *"}}), BASE
    )
    assert trigger.name == "nightly"
    assert trigger.function == "report"
    assert functions == {}


def test_inline_function_gets_the_trigger_namespace() -> None:
    trigger, functions = validate_trigger(obj("orders", {
        "function": {"kubernetes": {"service": "orders"}, "max_concurrency": 4,
                     "overflow": {"url": "https://x.example/", "after": "100ms"}},
        "concurrency": 8,
        "rabbitmq": {"url": "amqp://guest:guest@127.0.0.1:5672/", "queue": "orders"},
    }), BASE)
    assert trigger.function == "jobs/orders"
    function = functions["jobs/orders"]
    assert function.kubernetes is not None
    assert function.kubernetes.namespace == "jobs"
    assert function.overflow is not None
    assert function.overflow.after == 0.1


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"function": "report", "cron": {"schedule": "61 * * * *"}}, "spec.cron.schedule: "),
        ({"function": "nope", "cron": {"schedule": "@daily"}}, "spec.function: unknown function"),
        ({"cron": {"schedule": "@daily"}}, "spec.function: required"),
        ({"function": {"kubernetes": {"service": "x"}, "max_concurrency": 0},
          "cron": {"schedule": "@daily"}}, "spec.function.max_concurrency: "),
        ({"function": "report"}, "spec: needs exactly one source"),
        ({"function": "report", "cron": {"schedule": "@daily"}, "bogus": 1}, "spec.bogus: "),
        ({"function": "report", "name": "x", "cron": {"schedule": "@daily"}}, "spec.name: "),
        ("not a mapping", "spec: must be a mapping"),
        ({"function": {"url": "http://x.example/", "quota": "team-x"},
          "cron": {"schedule": "@daily"}},
         "spec.function.quota: unknown quota 'team-x' (known: none defined)"),
    ],
)
def test_invalid_specs_name_the_path(spec: Any, expected: str) -> None:
    found = problems(obj("bad", spec))
    assert any(p.startswith(expected) for p in found), found


def test_a_name_the_file_uses_is_refused() -> None:
    found = problems(obj("from-file", {"function": "report", "cron": {"schedule": "@daily"}}))
    assert found == ["metadata.name: a trigger named 'from-file' is already defined in the "
                     "config file"]


def test_invalid_metadata_name_is_reported_as_metadata() -> None:
    found = problems(obj("Bad_Name", {"function": "report", "cron": {"schedule": "@daily"}}))
    assert found
    assert found[0].startswith("metadata.name: ")


def test_dead_letter_needed_when_the_file_has_no_default() -> None:
    base = parse_config("""
functions:
  report: {url: "http://127.0.0.1:9/"}
""")
    found = problems(obj("t", {"function": "report", "cron": {"schedule": "@daily"}}), base)
    assert found[0].startswith("spec.dead_letter: no dead-letter sink")


# --- the same checks as a file trigger -------------------------------------------------

RABBIT = {"url": "amqp://guest:guest@127.0.0.1:5672/", "queue": "q"}
KAFKA = {"bootstrap_servers": "127.0.0.1:9092", "topics": ["t"], "group_id": "g"}

#: Trigger entries (without name and function): each must get the same verdict, with the
#: same problems at the same place, in a config file and as a Trigger resource.
ENTRIES = {
    "cron-rabbit-sink-without-url": {
        "cron": {"schedule": "@daily"}, "dead_letter": {"rabbitmq": {"exchange": "x"}}},
    "cron-rabbit-sink-reject": {
        "cron": {"schedule": "@daily"}, "dead_letter": {"rabbitmq": {"reject": True}}},
    "cron-fallback-rabbit-without-url": {
        "cron": {"schedule": "@daily"},
        "dead_letter": {"file": {"path": "/tmp/dl.jsonl"},
                        "fallback": {"rabbitmq": {"exchange": "x"}}}},
    "cron-kafka-sink-without-servers": {
        "cron": {"schedule": "@daily"}, "dead_letter": {"kafka": {"topic": "dlq"}}},
    "kafka-sink-security-mismatch": {
        "kafka": {**KAFKA, "security_protocol": "SASL_PLAINTEXT",
                  "sasl": {"username": "u", "password": "p"}},
        "dead_letter": {"kafka": {"topic": "dlq", "security_protocol": "PLAINTEXT"}}},
    "raw-password-in-url": {
        "rabbitmq": {**RABBIT, "url": "amqp://bob:Sup3r/Secr@t:pw#1@127.0.0.1/"}},
    "bad-bootstrap-server": {"kafka": {**KAFKA, "bootstrap_servers": "k:0"}},
    "two-sources": {"cron": {"schedule": "@daily"}, "rabbitmq": RABBIT},
    "rabbit-with-own-sink": {"rabbitmq": RABBIT, "dead_letter": {"rabbitmq": {"reject": True}}},
    "valid-cron": {"cron": {"schedule": "@daily"}},
}


def file_problems(entry: dict[str, Any], base_text: str) -> list[str]:
    raw = yaml.safe_load(base_text)
    raw["triggers"] = [{"name": "t", "function": "report", **entry}]
    try:
        validate_tree(raw)
    except ConfigError as err:
        return [str(p).replace("triggers[0]", "spec", 1) for p in err.problems]
    return []


def resource_problems(entry: dict[str, Any], base: BridgeConfig) -> list[str]:
    try:
        validate_trigger(obj("t", {"function": "report", **entry}), base)
    except ConfigError as err:
        return [str(p) for p in err.problems]
    return []


BASE_TEXT = """
defaults:
  dead_letter: {file: {path: /tmp/dl.jsonl}}
functions:
  report: {url: "http://127.0.0.1:9/"}
"""
RABBIT_DEFAULT_TEXT = """
defaults:
  dead_letter: {rabbitmq: {exchange: dlx}}
functions:
  report: {url: "http://127.0.0.1:9/"}
"""


@pytest.mark.parametrize("base_text", [BASE_TEXT, RABBIT_DEFAULT_TEXT], ids=["file", "rabbit"])
@pytest.mark.parametrize("entry", list(ENTRIES.values()), ids=list(ENTRIES))
def test_a_trigger_resource_gets_exactly_the_file_verdict(
    entry: dict[str, Any], base_text: str
) -> None:
    expected = file_problems(entry, base_text)
    assert resource_problems(entry, parse_config(base_text)) == expected


def test_cron_trigger_with_a_rabbitmq_sink_needs_its_url() -> None:
    found = problems(obj("t", {"function": "report", "cron": {"schedule": "@daily"},
                               "dead_letter": {"rabbitmq": {"exchange": "x"}}}))
    assert found == ["spec.dead_letter.rabbitmq.url: required: trigger 't' is a cron trigger, "
                     "so there is no RabbitMQ connection to default to"]


def test_an_inherited_sink_the_trigger_cannot_use_is_named() -> None:
    base = parse_config(RABBIT_DEFAULT_TEXT)
    found = problems(obj("t", {"function": "report", "cron": {"schedule": "@daily"}}), base)
    assert found == ["defaults.dead_letter.rabbitmq.url: required: trigger 't' is a cron "
                     "trigger, so there is no RabbitMQ connection to default to (inherited by "
                     "trigger 't')"]


def test_an_invalid_inline_function_is_reported_once() -> None:
    found = problems(obj("t", {"function": {"url": "ftp://x/"}, "cron": {"schedule": "@daily"}}))
    assert found == ["spec.function.url: expected an http:// or https:// URL"]


# --- cron on a leadership handover ------------------------------------------------------


class Handover:
    """A Leadership whose state the test sets; ``handover_since`` as the Lease gives it."""

    handover_window = timedelta(seconds=30)

    def __init__(self) -> None:
        self.is_leader = False
        self.handover_since: datetime | None = None
        self._callbacks: list[Callable[[bool], None]] = []

    async def start(self) -> None:
        return None

    def stop_leading(self) -> None:
        self.is_leader = False

    def note_unfired(self, scheduled: datetime) -> None:
        return None

    async def stop(self) -> None:
        self.is_leader = False

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    async def wait_leader(self) -> None:
        return None

    def become_leader(self, since: datetime | None) -> None:
        self.is_leader, self.handover_since = True, since
        for callback in self._callbacks:
            callback(True)


def connector(leadership: Handover, cron: str) -> CronConnector:
    config = parse_config(f"""
defaults:
  dead_letter: {{file: {{path: /tmp/dl.jsonl}}}}
functions:
  f: {{url: "http://127.0.0.1:9/"}}
triggers:
  - {{name: tick, function: f, cron: {cron}}}
""")
    context = ConnectorContext(Metrics(), get_logger(), leadership)
    return CronConnector(config.resolve(config.triggers[0]), context)


def queued(cron: CronConnector) -> list[str]:
    ids = [event.id for event in cron._mailbox._items]
    cron._mailbox._items.clear()
    return ids


async def test_new_leader_fires_every_tick_after_the_handover_within_the_deadline() -> None:
    leadership = Handover()
    cron = connector(leadership, '{schedule: "* * * * * *", starting_deadline: 5s}')
    await cron.start()
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        leadership.become_leader(now - timedelta(seconds=3))
        fired = queued(cron)
        # ticks strictly after the old leader's last renewal, up to now
        assert len(fired) in (3, 4)  # 3, or 4 if the clock crossed a second meanwhile
        first = (now - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert fired[0] == f"tick/{first}"
        assert cron.last_schedule_time is not None
        cron._fire(cron.last_schedule_time)  # the clock's own tick for a caught-up time
        assert queued(cron) == []  # not twice
    finally:
        await cron.stop()
        await cron._clock.close()


async def test_handover_is_bounded_by_the_starting_deadline() -> None:
    leadership = Handover()
    cron = connector(leadership, '{schedule: "* * * * * *", starting_deadline: 2s}')
    await cron.start()
    try:
        leadership.become_leader(datetime.now(UTC) - timedelta(seconds=30))
        assert 1 <= len(queued(cron)) <= 3
    finally:
        await cron.stop()
        await cron._clock.close()


async def test_a_fresh_lease_runs_only_the_latest_tick_like_a_cronjob() -> None:
    leadership = Handover()
    cron = connector(leadership, '{schedule: "* * * * * *", starting_deadline: 30s}')
    await cron.start()
    try:
        leadership.become_leader(None)
        assert len(queued(cron)) == 1
    finally:
        await cron.stop()
        await cron._clock.close()
