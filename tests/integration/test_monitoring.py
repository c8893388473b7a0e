"""Every metric that deploy/monitoring/ (the Grafana dashboard and the PrometheusRule)
names exists in a real scrape of the real daemon, run through its CLI with cron triggers,
a Kafka trigger and leader election (against the API emulator);
``bridge_cron_leader``, which the leader alerts sum, follows the Lease across replicas."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support import kafka as kafka_support
from tests.support.daemon import BridgeProcess
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.kafka import KafkaBroker, wait_until
from tests.support.kube_api import KubeApi

kafka_broker = kafka_support.kafka_broker
MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
LEASES = "leases.coordination.k8s.io"


def named_metrics() -> dict[str, set[str]]:
    """bridge_* sample names each file refers to."""
    board = json.loads((MONITORING / "dashboard.json").read_text())
    queries = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    queries += " ".join(v["definition"] for v in board["templating"]["list"]
                        if "definition" in v)
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    exprs = " ".join(r["expr"] for g in rules["spec"]["groups"] for r in g["rules"])
    pattern = re.compile(r"\bbridge_[a-z_]+")
    return {"dashboard.json": set(pattern.findall(queries)),
            "alerts.yaml": set(pattern.findall(exprs))}


def scraped(bridge: BridgeProcess) -> dict[str, list[Any]]:
    """Sample name (with _total, _bucket, ... suffixes) -> its samples."""
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(bridge.get("/metrics")):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def behaviour(call: Call, attempt: int) -> Reply:
    trigger = call.headers.get("bridge-trigger")
    if trigger == "flaky":
        return Reply(503 if attempt == 1 else 200)
    if trigger == "refused":
        return Reply(422)
    if trigger == "slow":
        return Reply(200, delay=1.5)
    return Reply(200)


def config(url: str, tmp: Path, kafka: KafkaBroker, topic: str) -> str:
    return f"""
defaults:
  retry: {{max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms}}
  dead_letter: {{file: {{path: "{tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {{url: "{url}"}}
triggers:
  - {{name: flaky, function: fn, cron: {{schedule: "* * * * * *"}}}}
  - {{name: refused, function: fn, cron: {{schedule: "* * * * * *"}}}}
  - {{name: guarded, function: fn, cron: {{schedule: "* * * * * *", pause_on_failure: true}}}}
  - name: slow
    function: fn
    cron: {{schedule: "* * * * * *", concurrency_policy: Forbid}}
  - name: orders
    function: fn
    kafka:
      bootstrap_servers: {kafka.bootstrap}
      topics: [{topic}]
      group_id: g-{topic}
      session_timeout: 6s
      heartbeat_interval: 300ms
      commit_interval: 200ms
"""


@pytest.fixture
async def api() -> AsyncIterator[KubeApi]:
    async with KubeApi() as emulator:
        yield emulator


def lease_env(api: KubeApi, tmp: Path) -> dict[str, str]:
    return {"BRIDGE_KUBECONFIG": str(api.kubeconfig(tmp)),
            "BRIDGE_LEADER_ELECTION": "true", "BRIDGE_LEASE_DURATION": "2s",
            "BRIDGE_LEASE_RENEW_DEADLINE": "1500ms", "BRIDGE_LEASE_RETRY_PERIOD": "250ms"}


async def test_every_metric_of_the_dashboard_and_alerts_is_scraped(
    kafka_broker: KafkaBroker, api: KubeApi, tmp_path: Path
) -> None:
    topic = kafka_broker.topic(partitions=2)
    await kafka_broker.produce(topic, [(b"k%d" % i, b"v%d" % i, []) for i in range(6)])
    async with RecordingFunction(behaviour) as fn, BridgeProcess(
            config(fn.url, tmp_path, kafka_broker, topic), tmp_path, lease_env(api, tmp_path),
            wait_ready=True) as bridge:

        def seen(name: str, **labels: str) -> float:
            return bridge.metric(name, **labels)

        await wait_until(lambda: (
            seen("bridge_retries_total", trigger="flaky") >= 1
            and seen("bridge_dead_letters_total", trigger="refused") >= 1
            and seen("bridge_cron_ticks_skipped_total", trigger="slow", reason="forbid") >= 1
            and seen("bridge_events_settled_total", trigger="orders",
                     disposition="delivered") >= 6
            and seen("bridge_kafka_commits_total", trigger="orders") >= 1
        ), timeout=30, what="retries, dead letters, a forbid skip and Kafka commits")
        # lag is measured every 5 s (the connector's probe)
        await wait_until(lambda: bridge.get("/metrics").count("bridge_kafka_consumer_lag{") == 2
                         and seen("bridge_kafka_consumer_lag") == 0, timeout=15,
                         what="the lag of both partitions, all consumed")
        samples = scraped(bridge)
        assert await bridge.terminate() == 0

    for source, names in named_metrics().items():
        missing = sorted(names - set(samples))
        assert missing == [], f"{source} names metrics the daemon does not export: {missing}"
    assert len(named_metrics()["dashboard.json"]) >= 15
    [leader] = samples["bridge_cron_leader"]
    assert (leader.labels, leader.value) == ({"lease": "trigger-bridge"}, 1.0)  # the only replica
    lag = {s.labels["partition"]: s.value for s in samples["bridge_kafka_consumer_lag"]}
    assert lag == {"0": 0.0, "1": 0.0}  # every record consumed


async def test_cron_leader_gauge_follows_the_lease(api: KubeApi, tmp_path: Path) -> None:
    env = lease_env(api, tmp_path)
    text = f"""
defaults: {{dead_letter: {{file: {{path: "{tmp_path / 'dl.jsonl'}"}}}}}}
functions: {{fn: {{url: "http://127.0.0.1:9/"}}}}
triggers: [{{name: nightly, function: fn, cron: {{schedule: "0 2 * * *"}}}}]
"""

    def holder() -> str | None:
        lease = api.get(LEASES, "trigger-bridge")
        return None if lease is None else lease["spec"].get("holderIdentity")

    async with BridgeProcess(text, tmp_path, {**env, "BRIDGE_INSTANCE": "a"}) as a, \
            BridgeProcess(text, tmp_path, {**env, "BRIDGE_INSTANCE": "b"}) as b:
        await wait_until(lambda: holder() in ("a", "b"), timeout=10, what="a leader")
        await asyncio.sleep(0.5)
        replicas = {"a": a, "b": b}
        values = {name: p.metric("bridge_cron_leader") for name, p in replicas.items()}
        leader = holder()
        assert leader is not None
        assert values == {name: float(name == leader) for name in replicas}
        other = "b" if leader == "a" else "a"
        started = time.monotonic()
        assert await replicas[leader].terminate() == 0  # releases the Lease
        await wait_until(lambda: replicas[other].metric("bridge_cron_leader") == 1.0,
                         timeout=5, what="the other replica's gauge")
        assert time.monotonic() - started < 5
