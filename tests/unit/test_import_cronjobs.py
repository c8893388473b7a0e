"""``trigger-bridge import-cronjobs`` through the real CLI on the manifests in
tests/data/cronjobs/: the output validates with ``trigger-bridge validate``, each imported
schedule gives the CronJob's next fire times with ``trigger-bridge schedule``, and what
cannot be carried over is in the report."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import parse_config
from bridge.kube.triggers import validate_trigger

DATA = Path(__file__).resolve().parents[1] / "data" / "cronjobs"
ROOT = DATA.parents[2]
Imports = dict[str, tuple[Path, str]]
FIXTURES = sorted(p.name for p in DATA.iterdir() if p.name not in (
    "not-yaml.yaml", "invalid-schedules.yaml"))


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                          text=True, input=stdin, timeout=60, check=False, cwd=ROOT)


def cronjobs(path: Path) -> list[dict[str, Any]]:
    """The CronJobs of a fixture, read independently of the importer."""
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        for obj in (doc or {}).get("items", [doc]) if isinstance(doc, dict) else []:
            if obj and obj.get("kind") == "CronJob":
                found.append(obj)
    return found


def expected_schedule(job: dict[str, Any]) -> tuple[str, str]:
    """(expression, zone) a CronJob runs on: CRON_TZ=/TZ= prefix or timeZone, else UTC."""
    text = job["spec"]["schedule"]
    prefix = re.match(r"(?:CRON_TZ|TZ)=(\S+) (.*)", text)
    if prefix:
        return prefix.group(2), prefix.group(1)
    return text, job["spec"].get("timeZone", "UTC")


@pytest.fixture(scope="module")
def imports(tmp_path_factory: pytest.TempPathFactory) -> Imports:
    """Each fixture imported once: name -> (output file, report)."""
    folder = tmp_path_factory.mktemp("imported")
    done = {}
    for fixture in FIXTURES:
        out = folder / f"{fixture}.out.yaml"
        result = cli("import-cronjobs", str(DATA / fixture), "-o", str(out))
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
        done[fixture] = out, result.stderr
    return done


@pytest.mark.parametrize("fixture", FIXTURES)
def test_fixture_imports_validates_and_keeps_every_schedule(
    fixture: str, imports: Imports
) -> None:
    out, report = imports[fixture]
    jobs = cronjobs(DATA / fixture)
    check = cli("validate", "--config", str(out))
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith(f"ok: {out}: {len(jobs)} trigger(s) ({len(jobs)} cron)")
    triggers = yaml.safe_load(out.read_text())["triggers"]
    assert len(triggers) == len(jobs)
    for job, trigger in zip(jobs, triggers, strict=True):
        expression, zone = expected_schedule(job)
        assert (trigger["cron"]["schedule"], trigger["cron"]["time_zone"]) == (expression, zone)
        spec = job["spec"]
        assert trigger["cron"].get("concurrency_policy") == spec.get("concurrencyPolicy")
        assert trigger["cron"].get("suspend") == spec.get("suspend")
        deadline = spec.get("startingDeadlineSeconds")
        assert trigger["cron"].get("starting_deadline") == (
            None if deadline is None else f"{deadline}s")
        assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", trigger["name"])
        ref = f"{job['metadata'].get('namespace', 'default')}/{job['metadata']['name']}"
        assert f"CronJob {ref} " in report
    assert len({t["name"] for t in triggers}) == len(triggers)


#: Next fire times worked out by hand from the CronJob rules (robfig/cron, as Kubernetes):
#: trigger -> (--from in the schedule's zone, the next times).
EXPECTED_NEXT = {
    "us-batch": ("2026-03-07T00:00:00", [  # CRON_TZ=; 2026-03-08 02:30 does not exist
        "2026-03-07T02:30:00-05:00", "2026-03-09T02:30:00-04:00", "2026-03-10T02:30:00-04:00"]),
    "tokyo-open": ("2026-03-06T10:00:00", [  # TZ= prefix, Friday 10:00 -> Monday
        "2026-03-09T09:00:00+09:00", "2026-03-10T09:00:00+09:00", "2026-03-11T09:00:00+09:00"]),
    "berlin-settlement": ("2026-03-28T00:00:00", [  # timeZone; 2026-03-29 02:30 is skipped
        "2026-03-28T02:30:00+01:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00"]),
    "first-or-sunday": ("2026-03-29T10:00:00", [  # both day fields set: the 1st OR Sundays
        "2026-04-01T09:00:00+00:00", "2026-04-05T09:00:00+00:00", "2026-04-12T09:00:00+00:00"]),
    "quarter-close-reminder": ("2026-03-01T00:00:00", [  # day-of-month '*': weekdays only
        "2026-04-01T08:30:00+00:00", "2026-04-02T08:30:00+00:00", "2026-04-03T08:30:00+00:00",
        "2026-04-06T08:30:00+00:00"]),
    "odd-days": ("2026-03-01T03:00:00", [  # '*/2' is not a star: odd days OR Fridays
        "2026-03-03T03:00:00+00:00", "2026-03-05T03:00:00+00:00", "2026-03-06T03:00:00+00:00",
        "2026-03-07T03:00:00+00:00"]),
    "midweek-report": ("2026-03-01T00:00:00", [  # '?' is '*': Wednesdays
        "2026-03-04T12:00:00+00:00", "2026-03-11T12:00:00+00:00", "2026-03-18T12:00:00+00:00"]),
    "month-start": ("2026-03-01T06:00:00", [
        "2026-04-01T06:00:00+00:00", "2026-05-01T06:00:00+00:00", "2026-06-01T06:00:00+00:00"]),
    "business-hours-sync": ("2026-03-06T17:50:00", [  # hour 17 is in; Friday 17:50 -> Monday
        "2026-03-09T09:00:00+00:00", "2026-03-09T09:15:00+00:00", "2026-03-09T09:30:00+00:00"]),
    "six-hourly-export": ("2026-03-01T00:00:00", [
        "2026-03-01T06:00:00+00:00", "2026-03-01T12:00:00+00:00", "2026-03-01T18:00:00+00:00"]),
    "offset-ten-minutes": ("2026-03-01T00:00:00", [
        "2026-03-01T00:05:00+00:00", "2026-03-01T00:15:00+00:00", "2026-03-01T00:25:00+00:00"]),
    "weekly-digest": ("2026-03-01T00:00:00", [  # @weekly in Los Angeles, across DST
        "2026-03-08T00:00:00-08:00", "2026-03-15T00:00:00-07:00", "2026-03-22T00:00:00-07:00"]),
    "yearly-archive": ("2026-03-01T00:00:00", [
        "2027-01-01T00:00:00+00:00", "2028-01-01T00:00:00+00:00", "2029-01-01T00:00:00+00:00"]),
    "legacy-export": ("2026-03-01T00:00:00", [  # weekday 0 = Sunday
        "2026-03-01T23:45:00+00:00", "2026-03-08T23:45:00+00:00", "2026-03-15T23:45:00+00:00"]),
}


def test_imported_schedules_give_the_cronjobs_next_times(
    imports: Imports,
) -> None:
    triggers: dict[str, dict[str, Any]] = {}
    for out, _ in imports.values():
        triggers.update({t["name"]: t for t in yaml.safe_load(out.read_text())["triggers"]})
    assert set(EXPECTED_NEXT) <= set(triggers)
    for name, (start, times) in EXPECTED_NEXT.items():
        cron = triggers[name]["cron"]
        result = cli("schedule", cron["schedule"], "--time-zone", cron["time_zone"],
                     "--from", start, "--count", str(len(times)))
        assert (result.returncode, result.stderr) == (0, ""), name
        assert result.stdout.splitlines() == times, name


def test_report_names_everything_not_carried_over(imports: Imports) -> None:
    out, report = imports["list-all-namespaces.yaml"]
    first = report.split("doc 1 items[1]")[0]
    for lost in ("image registry.example.com/billing/reconcile:2.14.0",
                 'command ["/app/reconcile"]', 'args ["--date=yesterday","--commit"]',
                 "env 1 variable(s)", "resources", "spec.successfulJobsHistoryLimit: 3",
                 "spec.failedJobsHistoryLimit: 1",
                 "spec.jobTemplate.spec.activeDeadlineSeconds: 3600", "restartPolicy"):
        assert lost in first, lost
    assert "jobTemplate.spec.backoffLimit 2 -> retry.max_attempts 3" in first
    assert "creationTimestamp" not in report  # kubectl's empty metadata is not noise
    config = yaml.safe_load(out.read_text())
    by_name = {t["name"]: t for t in config["triggers"]}
    # three namespaces: names carry the namespace, the two nightly-reconcile stay apart
    assert set(by_name) == {"billing-nightly-reconcile", "ops-probe-checkout",
                            "billing-eu-nightly-reconcile"}
    assert by_name["billing-nightly-reconcile"]["retry"] == {"max_attempts": 3}
    assert by_name["ops-probe-checkout"]["retry"] == {"max_attempts": 1}  # backoffLimit 0
    assert "retry" not in by_name["billing-eu-nightly-reconcile"]
    stubs = config["functions"]
    assert stubs["billing-eu-nightly-reconcile"]["kubernetes"]["namespace"] == "billing-eu"
    assert "imported as UTC" in report.split("doc 1 items[1]")[1]


def test_backoff_limit_beyond_the_retry_limit_is_capped_and_said(imports: Imports) -> None:
    out, report = imports["policies.yaml"]
    by_name = {t["name"]: t for t in yaml.safe_load(out.read_text())["triggers"]}
    assert by_name["feed-refresh"]["retry"] == {"max_attempts": 1000}
    assert "backoffLimit 5000 -> retry.max_attempts 1000 (the bridge's limit)" in report
    assert by_name["feed-refresh"]["cron"]["concurrency_policy"] == "Replace"
    assert by_name["index-rebuild"]["cron"]["concurrency_policy"] == "Forbid"


def test_other_documents_are_reported_as_skipped(imports: Imports) -> None:
    out, report = imports["mixed-stream.yaml"]
    lines = report.splitlines()
    for skipped in ("doc 1: skipped ConfigMap/shop-config (v1)",
                    "doc 2: skipped Deployment/shop (apps/v1)",
                    "doc 5: skipped Service/shop (v1)"):
        assert any(skipped in line for line in lines), skipped
    [trigger] = yaml.safe_load(out.read_text())["triggers"]
    assert trigger["function"] == "cart-mailer"  # from the annotation
    assert "annotation triggerbridge.dev/function" in report


def test_v1beta1_and_init_containers(imports: Imports) -> None:
    out, report = imports["v1beta1.yaml"]
    assert "CronJob platform/db-backup (batch/v1beta1)" in report
    assert "pod initContainers[0] 'wait-db': image busybox:1.36" in report
    assert "pod containers[0] 'backup': image postgres:16" in report
    assert "volumeMounts" in report
    assert "pod spec volumes, restartPolicy" in report
    assert yaml.safe_load(out.read_text())["triggers"][0]["retry"] == {"max_attempts": 7}


def test_invalid_cronjobs_are_named_and_the_others_converted(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    result = cli("import-cronjobs", str(DATA / "invalid-schedules.yaml"), "-o", str(out))
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines[0].endswith("6 CronJob(s): 1 converted, 5 not converted")
    refused = {line.split("CronJob ")[1].split(":")[0]: line.split("NOT CONVERTED: ")[1]
               for line in lines if "NOT CONVERTED" in line}
    assert refused == {
        "qa/minute-out-of-range":
            "spec.schedule '61 * * * *': field 'minute': value 61 out of range 0-59",
        "qa/with-seconds": "spec.schedule '0 */5 * * * *': expected 5 fields, got 6 "
                           "(Kubernetes accepts exactly 5)",
        "qa/prefix-and-field": "spec.schedule 'CRON_TZ=UTC 0 0 * * *': a CRON_TZ= prefix and "
                               "spec.timeZone together (Kubernetes refuses this)",
        "qa/unknown-zone": "spec.timeZone 'Mars/Olympus_Mons': unknown time zone "
                           "'Mars/Olympus_Mons'",
        "qa/never-fires": "spec.schedule '0 0 30 2 *': schedule never fires: day-of-month "
                          "'30' does not exist in month '2'",
    }
    check = cli("validate", "--config", str(out))
    assert check.returncode == 0, check.stderr
    assert [t["name"] for t in yaml.safe_load(out.read_text())["triggers"]] == ["good"]


def test_not_yaml_is_one_line_with_file_line_and_column() -> None:
    result = cli("import-cronjobs", "tests/data/cronjobs/not-yaml.yaml")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "tests/data/cronjobs/not-yaml.yaml:6:9: invalid YAML: did not find expected ',' or ']'"
    ]


def test_missing_file_and_bad_template_are_usage_errors() -> None:
    result = cli("import-cronjobs", "no/such/file.yaml")
    assert (result.returncode, result.stderr) == (
        2, "cannot read no/such/file.yaml: No such file or directory\n")
    result = cli("import-cronjobs", str(DATA / "names.yaml"), "--function-template", "{team}")
    assert result.returncode == 2
    assert result.stderr.startswith("--function-template '{team}': 'team' (allowed: ")
    assert "Traceback" not in result.stderr


def test_function_flag_template_and_stdin() -> None:
    text = (DATA / "list-all-namespaces.yaml").read_text()
    result = cli("import-cronjobs", "-", "--function", "jobs-runner", stdin=text)
    assert result.returncode == 0, result.stderr
    config = parse_config(result.stdout, env={})
    assert {t.function for t in config.triggers} == {"jobs-runner"}
    assert list(config.functions) == ["jobs-runner"]
    assert "<stdin>: 3 CronJob(s): 3 converted" in result.stderr
    result = cli("import-cronjobs", "-", "--function-template", "fn-{name}",
                 "--name-template", "{name}", stdin=text)
    assert result.returncode == 0, result.stderr
    config = parse_config(result.stdout, env={})
    # same CronJob name in two namespaces: the second trigger gets a suffix, said so
    assert [t.name for t in config.triggers] == [
        "nightly-reconcile", "probe-checkout", "nightly-reconcile-2"]
    assert "trigger name 'nightly-reconcile' already taken: named 'nightly-reconcile-2'" in (
        result.stderr)
    assert {t.function for t in config.triggers} == {"fn-nightly-reconcile", "fn-probe-checkout"}
    assert "serves CronJobs of several namespaces" in result.stderr


def test_long_names_are_shortened_to_valid_unique_names() -> None:
    long = "a" * 52
    manifest = "\n---\n".join(
        f"apiVersion: batch/v1\nkind: CronJob\nmetadata: {{name: {long}, namespace: {ns}}}\n"
        f"spec: {{schedule: '@daily', jobTemplate: {{spec: {{template: {{spec: {{}}}}}}}}}}"
        for ns in ("team-one", "team-two"))
    result = cli("import-cronjobs", "-", stdin=manifest)
    assert result.returncode == 0, result.stderr
    names = [t.name for t in parse_config(result.stdout, env={}).triggers]
    assert len(set(names)) == 2
    assert all(len(n) <= 63 and n.startswith("team-") for n in names)


def test_as_crd_writes_trigger_resources_the_bridge_accepts() -> None:
    result = cli("import-cronjobs", str(DATA / "timezone-field.yaml"), "--as-crd",
                 "--namespace", "trigger-bridge", "--function", "settle")
    assert result.returncode == 0, result.stderr
    [obj] = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert obj["apiVersion"] == "triggerbridge.dev/v1alpha1"
    assert obj["kind"] == "Trigger"
    assert obj["metadata"]["namespace"] == "trigger-bridge"
    assert obj["metadata"]["labels"] == {"app": "settlement"}  # kept on the resource
    assert "metadata.labels" not in result.stderr
    base = parse_config(
        "defaults: {dead_letter: {file: {path: dl.jsonl}}}\n"
        "functions: {settle: {url: 'http://settle.payments.svc/'}}\n", env={})
    trigger, _ = validate_trigger(obj, base)
    assert trigger.name == "berlin-settlement"
    assert trigger.cron is not None
    assert (trigger.cron.schedule, trigger.cron.time_zone) == ("30 2 * * *", "Europe/Berlin")
    assert trigger.cron.starting_deadline == 300
    assert trigger.retry is not None
    assert trigger.retry.max_attempts == 4
