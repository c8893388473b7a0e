"""``trigger-bridge schema``: the config file's JSON Schema and the Trigger CRD, both from
the models. The schema accepts what the models accept (every example, every option),
refuses structural mistakes the models refuse, and the committed files are what the
models generate (regenerate: ``python -m bridge schema --crd > deploy/crds/...``)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from bridge.config import BridgeConfig, ConfigError, parse_config
from bridge.schema import DESCRIPTIONS

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "deploy" / "crds" / "triggers.triggerbridge.dev.yaml"
SCHEMA_FILE = ROOT / "examples" / "trigger-bridge.schema.json"
EXAMPLE_ENV = {"API_TOKEN": "token", "KAFKA_PASSWORD": "secret", "TLS_KEY_PASSWORD": "pw"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=ROOT)


def cli(*args: str) -> str:
    result = run(*args)
    assert (result.returncode, result.stderr) == (0, "")
    return result.stdout


def imported(*args: str) -> str:
    """import-cronjobs' output (its report goes to stderr)."""
    result = run("import-cronjobs", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    printed: dict[str, Any] = json.loads(cli("schema"))
    jsonschema.Draft202012Validator.check_schema(printed)
    return printed


@pytest.fixture(scope="module")
def crd_text() -> str:
    return cli("schema", "--crd")


def test_committed_crd_is_what_the_models_generate(crd_text: str) -> None:
    assert CRD_FILE.read_text() == crd_text, (
        "deploy/crds/ drifted from bridge/config/: regenerate with "
        "python -m bridge schema --crd > deploy/crds/triggers.triggerbridge.dev.yaml")


def test_committed_json_schema_is_what_the_models_generate(schema: dict[str, Any]) -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == schema, (
        "examples/trigger-bridge.schema.json drifted: regenerate with "
        "python -m bridge schema > examples/trigger-bridge.schema.json")


def config_errors(schema: dict[str, Any], tree: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(tree)]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_example_passes_the_schema(path: Path, schema: dict[str, Any]) -> None:
    # as an editor sees it: before ${ENV} interpolation
    assert config_errors(schema, yaml.safe_load(path.read_text())) == []
    assert path.read_text().splitlines()[0] == (
        "# yaml-language-server: $schema=./trigger-bridge.schema.json")


def test_import_cronjobs_output_passes_the_schema(schema: dict[str, Any]) -> None:
    out = imported("tests/data/cronjobs/list-all-namespaces.yaml")
    assert config_errors(schema, yaml.safe_load(out)) == []


HEAD = {"defaults": {"dead_letter": {"file": {"path": "dl.jsonl"}}},
        "functions": {"f": {"url": "http://127.0.0.1:8080/"}}}
CRON = {"schedule": "*/5 * * * *"}


def config_with(trigger: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {**HEAD, "triggers": [{"name": "t", "function": "f", **trigger}], **top}


#: (what, config tree, accepted by the models and the schema alike?)
CASES = [
    ("minimal cron", config_with({"cron": CRON}), True),
    ("durations as strings and numbers",
     config_with({"timeout": "250ms", "cron": {**CRON, "starting_deadline": 300}},
                 defaults={"timeout": "1h30m", "retry": {"max_backoff": "2d"},
                           "dead_letter": {"file": {"path": "dl"}}}), True),
    ("${ENV} for a number and a boolean",
     config_with({"concurrency": "${CONCURRENCY:-8}",
                  "cron": {**CRON, "suspend": "${SUSPEND:-false}"}}), True),
    ("brokers as one comma-separated string",
     config_with({"kafka": {"bootstrap_servers": "a:9092,b:9092", "topics": "t1,t2",
                            "group_id": "g"}}), True),
    ("port as a name or a number",
     {**HEAD, "functions": {"f": {"kubernetes": {"service": "s", "port": 8080}}},
      "triggers": [{"name": "t", "function": "f", "cron": CRON}]}, True),
    ("a typo in cron", config_with({"cron": {"schedul": "* * * * *"}}), False),
    ("an unknown top-level key", {**config_with({"cron": CRON}), "trigger": []}, False),
    ("two sources", config_with({"cron": CRON, "rabbitmq": {
        "url": "amqp://h/", "queue": "q"}}), False),
    ("no source", config_with({}), False),
    ("a name with capitals", {**HEAD, "triggers": [
        {"name": "Orders", "function": "f", "cron": CRON}]}, False),
    ("a duration in words", config_with({"timeout": "5 minutes", "cron": CRON}), False),
    ("a policy in lower case", config_with({"cron": {**CRON, "concurrency_policy": "forbid"}}),
     False),
    ("two dead-letter sinks", config_with({"cron": CRON, "dead_letter": {
        "file": {"path": "a"}, "kafka": {"topic": "t", "bootstrap_servers": ["k:1"]}}}), False),
    ("a function with two targets", {**HEAD, "functions": {"f": {
        "url": "http://a/", "urls": ["http://b/"]}},
        "triggers": [{"name": "t", "function": "f", "cron": CRON}]}, False),
    ("retry attempts out of range", config_with({"cron": CRON, "retry": {"max_attempts": 0}}),
     False),
]


@pytest.mark.parametrize(("what", "tree", "valid"), CASES, ids=[c[0] for c in CASES])
def test_schema_and_models_agree(
    what: str, tree: dict[str, Any], valid: bool, schema: dict[str, Any]
) -> None:
    errors = config_errors(schema, tree)
    assert (errors == []) is valid, errors
    try:
        parse_config(yaml.safe_dump(tree), env={})
    except ConfigError:
        assert not valid
    else:
        assert valid


def test_fields_carry_descriptions(schema: dict[str, Any]) -> None:
    cron = schema["$defs"]["CronSource"]["properties"]
    assert "robfig" not in json.dumps(cron)
    assert all(prop.get("description") for prop in cron.values())
    kafka = schema["$defs"]["KafkaSource"]["properties"]
    assert "backpressure" in kafka["max_unsettled"]["description"]  # from its #: comment
    assert "Duration" in json.dumps(schema["$defs"]["RetryConfig"]["properties"]["max_backoff"])


def test_every_description_key_names_a_field() -> None:
    models = {m.__name__: m for m in _models(BridgeConfig)}
    for key in DESCRIPTIONS:
        model, field = key.split(".")
        assert field in models[model].model_fields, key


def _models(root: type[Any]) -> set[type[Any]]:
    found, pending = set(), [root]
    while pending:
        model = pending.pop()
        for klass in model.__mro__:
            if hasattr(klass, "model_fields") and klass not in found and klass.__name__ not in (
                    "BaseModel", "Strict"):
                found.add(klass)
                for field in klass.model_fields.values():
                    pending.extend(_nested(field.annotation))
    return found


def _nested(annotation: Any) -> list[type[Any]]:
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _nested(arg)]


# --- the CRD -----------------------------------------------------------------------------


def spec_schema(crd_text: str) -> dict[str, Any]:
    crd = yaml.safe_load(crd_text)
    [version] = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def structural_problems(node: Any, path: str = "", in_junctor: bool = False) -> list[str]:
    """The rules of a structural schema (Kubernetes docs, 'Specifying a structural
    schema'), checked on every node."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path}: not a schema"]
    for banned in ("$ref", "anyOf", "default", "uniqueItems", "nullable", "writeOnly",
                   "title", "exclusiveMinimum", "const"):
        if banned in node and not (banned == "anyOf" and in_junctor):
            problems.append(f"{path}: has {banned}")
    if in_junctor:
        for banned in ("type", "description", "additionalProperties", "properties"):
            if banned in node:
                problems.append(f"{path}: {banned} inside a junctor")
        return problems
    free = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-int-or-string")
    if "type" not in node and not free:
        problems.append(f"{path}: no type")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: properties and additionalProperties")
    for name, child in (node.get("properties") or {}).items():
        problems.extend(structural_problems(child, f"{path}.{name}"))
    if "items" in node:
        problems.extend(structural_problems(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        problems.extend(structural_problems(node["additionalProperties"], f"{path}{{}}"))
    for junctor in ("oneOf", "allOf", "anyOf", "not"):
        members = node.get(junctor)
        for index, member in enumerate(members if isinstance(members, list) else []):
            problems.extend(structural_problems(member, f"{path}.{junctor}[{index}]", True))
            for required in member.get("required", []):
                if required not in (node.get("properties") or {}):
                    problems.append(f"{path}.{junctor}: {required} not in properties")
    return problems


def test_crd_schema_is_structural(crd_text: str) -> None:
    schema = spec_schema(crd_text)
    assert structural_problems(schema) == []
    assert structural_problems({"anyOf": [{"type": "string"}]}) != []  # the check can fail


def test_crd_spec_mirrors_the_trigger_model(crd_text: str) -> None:
    spec = spec_schema(crd_text)["properties"]["spec"]
    assert set(spec["properties"]) == set(
        BridgeConfig.model_fields["triggers"].annotation.__args__[0].model_fields) - {"name"}
    cron = spec["properties"]["cron"]
    assert cron["properties"]["concurrency_policy"]["enum"] == [
        "Allow", "Forbid", "Replace", "BufferOne", "BufferAll"]
    assert cron["properties"]["starting_deadline"] == {
        "description": "A tick that cannot start within this long after its time is skipped.",
        "x-kubernetes-int-or-string": True}
    assert cron["properties"]["data"]["x-kubernetes-preserve-unknown-fields"] is True
    assert spec["properties"]["function"]["x-kubernetes-preserve-unknown-fields"] is True
    assert not re.search(r"^\s*default:", crd_text, re.M)  # the API server would store them


def crd_errors(crd_text: str, obj: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(spec_schema(crd_text))
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)]


def test_crd_schema_takes_the_examples_and_imported_triggers(crd_text: str) -> None:
    docs = [d for d in yaml.safe_load_all(
        (ROOT / "deploy" / "examples" / "triggers.yaml").read_text()) if d]
    for fixture in ("timezone-field.yaml", "policies.yaml"):
        docs += [d for d in yaml.safe_load_all(imported(
            "--as-crd", f"tests/data/cronjobs/{fixture}")) if d]
    assert len(docs) >= 4
    for obj in docs:
        assert crd_errors(crd_text, obj) == [], obj["metadata"]["name"]


def test_crd_schema_refuses_structural_mistakes(crd_text: str) -> None:
    base = {"apiVersion": "triggerbridge.dev/v1alpha1", "kind": "Trigger",
            "metadata": {"name": "t"}}
    assert crd_errors(crd_text, {**base, "spec": {"function": "f", "cron": CRON}}) == []
    for spec in ({"function": "f"},                                        # no source
                 {"function": "f", "cron": CRON, "rabbitmq": {"url": "amqp://h/",
                                                               "queue": "q"}},
                 {"function": "f", "cron": {**CRON, "concurrency_policy": "forbid"}},
                 {"function": "f", "cron": CRON, "concurrency": 0},
                 {"cron": CRON}):                                          # no function
        assert crd_errors(crd_text, {**base, "spec": spec}) != [], spec
