"""deploy/monitoring/: the PrometheusRule passes ``promtool check rules`` and its alerts
fire (and stay quiet) on synthetic series under ``promtool test rules``; every dashboard
query is valid PromQL; the optional kustomization builds apart from the base.
(That every metric named here exists in a real scrape: tests/integration/test_monitoring.py.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
ALERT_TESTS = ROOT / "tests" / "data" / "monitoring" / "alerts-test.yaml"
K8S_VERSION = "1.30.0"


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: scripts/test installs it (apt-get install prometheus)"
    return found


def rule(expr_groups: list[dict[str, Any]], folder: Path, name: str = "rules.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({"groups": expr_groups}, sort_keys=False))
    return path


def alert_groups() -> list[dict[str, Any]]:
    obj = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    assert obj["kind"] == "PrometheusRule"
    groups: list[dict[str, Any]] = obj["spec"]["groups"]
    return groups


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    result = check_rules(rule(alert_groups(), tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_promtool_check_can_fail(tmp_path: Path) -> None:
    groups = alert_groups()
    groups[0]["rules"][0]["expr"] = "sum by (trigger) (rate(bridge_retries_total[5m]"
    result = check_rules(rule(groups, tmp_path))
    assert result.returncode != 0


def test_alerts_fire_on_synthetic_series(tmp_path: Path) -> None:
    groups = alert_groups()
    for group in groups:
        for item in group["rules"]:
            item["annotations"].pop("description")  # the tests compare summaries only
    rule(groups, tmp_path)
    shutil.copy(ALERT_TESTS, tmp_path / "alerts-test.yaml")
    result = subprocess.run([promtool(), "test", "rules", "alerts-test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tested = {t["alertname"] for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
              for t in test["alert_rule_test"]}
    assert tested == {r["alert"] for g in alert_groups() for r in g["rules"]}


def test_every_alert_has_severity_summary_and_description() -> None:
    for group in alert_groups():
        for item in group["rules"]:
            assert item["labels"]["severity"] in ("critical", "warning"), item["alert"]
            assert item["annotations"]["summary"], item["alert"]
            assert item["annotations"]["description"], item["alert"]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((MONITORING / "dashboard.json").read_text())
    return loaded


def dashboard_queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def concrete(expr: str) -> str:
    """A dashboard query as Grafana sends it (variables filled in)."""
    return (expr.replace("$__rate_interval", "2m").replace('"$namespace"', '".*"')
            .replace('"$trigger"', '".*"'))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25
    records = [{"record": f"dashboard:query_{i}", "expr": concrete(q)}
               for i, q in enumerate(queries)]
    result = check_rules(rule([{"name": "dashboard", "rules": records}], tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert all("$" not in concrete(q) for q in queries)


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] == "trigger-bridge"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "trigger"}
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"]
            assert panel["description"]
            for query in panel["targets"]:
                if "bridge_cron_leader" not in query["expr"]:  # per replica, not per trigger
                    assert 'trigger=~"$trigger"' in query["expr"], query["expr"]


def test_dashboard_covers_what_operators_watch() -> None:
    text = " ".join(dashboard_queries())
    for metric in ("bridge_events_received_total", "bridge_invocations_total",
                   "bridge_dead_letters_total", "bridge_retries_total",
                   "bridge_dead_letter_write_failures_total", "bridge_kafka_consumer_lag",
                   "bridge_cron_fire_lag_seconds_bucket", "bridge_cron_ticks_skipped_total",
                   "bridge_unsettled_events", "bridge_connector_ready", "bridge_cron_leader",
                   "bridge_invocation_duration_seconds_bucket"):
        assert metric in text, metric


def test_monitoring_is_a_separate_kustomization() -> None:
    for path in (ROOT / "deploy" / "kustomization.yaml",
                 ROOT / "deploy" / "base" / "kustomization.yaml"):
        assert not any("monitoring" in r for r in yaml.safe_load(path.read_text())["resources"])
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl)")
    out = subprocess.run([kubectl, "kustomize", str(MONITORING)], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    objects = {o["kind"]: o for o in yaml.safe_load_all(out) if o}
    assert set(objects) == {"ConfigMap", "ServiceMonitor", "PrometheusRule"}
    assert all(o["metadata"]["namespace"] == "trigger-bridge" for o in objects.values())
    configmap = objects["ConfigMap"]
    kubernetes_validate.validate(configmap, K8S_VERSION, strict=True)
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["dashboard.json"]) == dashboard()
    # the ServiceMonitor finds the metrics Service of the base, on its named port
    service = yaml.safe_load((ROOT / "deploy" / "base" / "service.yaml").read_text())
    monitor = objects["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert 'job="' + service["metadata"]["name"] + '"' in (MONITORING / "alerts.yaml").read_text()
