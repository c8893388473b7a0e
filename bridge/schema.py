"""JSON Schema of the config file and the Trigger CRD's schema, both from the models.

``trigger-bridge schema`` prints the JSON Schema (draft 2020-12) of the config file,
generated from :class:`bridge.config.BridgeConfig`, for editors (yaml-language-server)
to validate and complete trigger files. What pydantic cannot see is added here:

- durations are numbers of seconds *or* strings such as ``250ms`` (pydantic only sees the
  float the ``parse_duration`` validator makes), and broker lists may be one
  comma-separated string;
- ``${ENV_VAR}`` may stand in for any number or boolean (it is replaced before
  validation), so those also accept a string holding ``${...}``;
- a trigger name's pattern, and "exactly one of" for a trigger's source, a function's
  target and a dead-letter sink;
- descriptions: a class's docstring, a field's ``#:`` comment in bridge/config/, or
  :data:`DESCRIPTIONS` below.

``trigger-bridge schema --crd`` prints deploy/crds/triggers.triggerbridge.dev.yaml: the
Trigger spec is :class:`~bridge.config.TriggerConfig` without ``name``, with ``function``
a name or an inline :class:`~bridge.config.FunctionConfig`, converted to the structural
subset Kubernetes accepts: ``$ref`` inlined, no ``anyOf`` carrying types (number or
string becomes ``x-kubernetes-int-or-string``, other mixtures and free-form values
``x-kubernetes-preserve-unknown-fields``), no ``default`` (the API server would store
it, and the config file's ``defaults`` must still apply), no ``uniqueItems`` (a
``set`` list instead), ``additionalProperties: false`` dropped (the API server prunes
unknown fields and ``kubectl`` refuses them). A test regenerates both and fails when
deploy/crds/ drifts from the models.
"""

from __future__ import annotations

import ast
import copy
import inspect
import json
import textwrap
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from bridge import config as config_module
from bridge.config import SOURCE_KINDS, BridgeConfig
from bridge.config import TriggerConfig as _TriggerConfig
from bridge.durations import parse_duration

SCHEMA_ID = "https://triggerbridge.dev/schemas/config.schema.json"
#: What parse_duration reads: a number of seconds, or number+unit parts (ms s m h d).
DURATION_PATTERN = r"^\s*(\d+(\.\d+)?(ms|s|m|h|d))+\s*$|^\s*\d+(\.\d+)?([eE][+-]?\d+)?\s*$"
ENV_REF_PATTERN = r"\$\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\}"
NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

#: "exactly one of these keys", by model title.
EXACTLY_ONE = {
    "TriggerConfig": SOURCE_KINDS,
    "DeadLetterConfig": ("file", "kafka", "rabbitmq"),
    "SinkConfig": ("file", "kafka", "rabbitmq"),
    "FunctionConfig": ("url", "urls", "kubernetes"),
    "ReplyConfig": ("kafka", "rabbitmq"),
}

#: Field descriptions the models do not carry as ``#:`` comments ("Model.field").
DESCRIPTIONS = {
    "BridgeConfig.defaults": "Settings every trigger inherits, field by field.",
    "BridgeConfig.functions": "Functions by name: where invocations go.",
    "BridgeConfig.triggers": "Sources (kafka, rabbitmq or cron) bound to a function.",
    "Defaults.timeout": "Timeout of one HTTP attempt (trigger > function > defaults).",
    "Defaults.concurrency": "In-flight invocations per trigger.",
    "Defaults.dead_letter": "Dead-letter sink of triggers without their own.",
    "TriggerConfig.name": "Unique trigger name: lower-case letters, digits and '-'.",
    "TriggerConfig.function": "Name of a function in 'functions'.",
    "TriggerConfig.concurrency": "In-flight invocations for this trigger.",
    "TriggerConfig.timeout": "Timeout of one HTTP attempt.",
    "TriggerConfig.retry": "Retry policy (overrides defaults.retry field by field).",
    "TriggerConfig.dead_letter": "Where events go that cannot be delivered.",
    "TriggerConfig.reply": "Publish the function's answer as a CloudEvent (Kafka topic or "
                           "RabbitMQ exchange) before the event is settled.",
    "TriggerConfig.kafka": "Consume Kafka topics.",
    "TriggerConfig.rabbitmq": "Consume a RabbitMQ queue.",
    "TriggerConfig.cron": "Fire on a schedule (Kubernetes CronJob semantics).",
    "FunctionConfig.url": "One static endpoint (http:// or https://).",
    "FunctionConfig.urls": "Static endpoints; the one with fewest outstanding requests wins.",
    "FunctionConfig.kubernetes": "Pods of a Service, found through its EndpointSlices.",
    "FunctionConfig.timeout": "Timeout of one HTTP attempt.",
    "FunctionConfig.overflow": "Secondary pool used when the cluster pool has no capacity.",
    "KubernetesTarget.service": "Service name.",
    "KubernetesTarget.namespace": "Service namespace (default: the bridge's).",
    "KubernetesTarget.port": "Port name or number.",
    "KubernetesTarget.path": "HTTP path of the invocation.",
    "CronSource.schedule": "Cron expression: 5 fields (or 6 with seconds), macros such as "
                           "@daily, @every 5m. Check with: trigger-bridge schedule EXPR.",
    "CronSource.time_zone": "IANA time zone the schedule is read in, e.g. Asia/Shanghai.",
    "CronSource.concurrency_policy": "Allow; Forbid (skip a tick while the previous run is "
                                     "unsettled); Replace (cancel it, start the new one); "
                                     "BufferOne (one tick waits, later ones are skipped); "
                                     "BufferAll (ticks wait in order, max_buffered at most).",
    "CronSource.starting_deadline": "A tick that cannot start within this long after its "
                                    "time is skipped.",
    "CronSource.suspend": "Keep the trigger but fire nothing.",
    "CronSource.max_buffered": "BufferAll: ticks that may wait; past it the newest is skipped.",
    "CronSource.pause_on_failure": "Pause the trigger after a run ends dead-lettered, until "
                                   "resumed (trigger-bridge resume, a settings change).",
    "CronSource.jitter": "Delay each tick by a pseudo-random time below this (id and ce-time "
                         "keep the scheduled time); shorter than the schedule's interval.",
    "CronSource.start_at": "No tick before this time (ISO 8601; no offset: in time_zone).",
    "CronSource.end_at": "No tick after this time (ISO 8601; no offset: in time_zone).",
    "CronSource.exclude": "Days not to fire: dates (2026-12-25) or cron expressions (every "
                          "day they fire on, e.g. '* * * * SAT,SUN').",
    "CronSource.data": "Sent as the event data, JSON-encoded.",
    "CronSource.content_type": "Content-Type of the request when there is data.",
    "KafkaConnection.bootstrap_servers": "host:port list, or one comma-separated string.",
    "KafkaSource.bootstrap_servers": "host:port list, or one comma-separated string.",
    "KafkaSource.topics": "Topics to consume.",
    "KafkaSource.group_id": "Consumer group.",
    "KafkaSource.ordering": "key: in order per key; partition: one at a time per partition; "
                            "none: fully parallel.",
    "RabbitSource.url": "amqp:// or amqps:// URL; put the password in ${ENV}.",
    "RabbitSource.queue": "Queue to consume.",
    "RabbitSource.ordering": "key: in order per routing key (or ordering_header); none.",
    "RetryConfig.max_attempts": "Attempts in all, the first included.",
    "RetryConfig.initial_backoff": "Delay before the first retry.",
    "RetryConfig.max_backoff": "Largest delay between attempts.",
    "RetryConfig.multiplier": "Growth of the delay per attempt.",
    "RetryConfig.jitter": "Randomise delays (full jitter).",
    "FileSinkConfig.path": "JSON-lines file of dead letters.",
    "FileSinkConfig.fsync": "fsync after every record (the write is confirmed only then).",
    "KafkaSinkConfig.topic": "Dead-letter topic.",
    "KafkaReplyConfig.topic": "Topic the replies go to (it must exist).",
    "ReplyConfig.kafka": "Publish replies to a Kafka topic.",
    "ReplyConfig.rabbitmq": "Publish replies to a RabbitMQ exchange.",
    "RabbitReplyConfig.exchange": "Exchange the replies go to ('' is the default exchange).",
    "RabbitReplyConfig.routing_key": "Routing key of the replies.",
}


class _Generator(GenerateJsonSchema):
    """pydantic's generator, told what the before/after validators accept."""

    def function_before_schema(
        self, schema: core_schema.BeforeValidatorFunctionSchema
    ) -> JsonSchemaValue:
        function = schema["function"]["function"]
        if function is parse_duration:
            return {"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": DURATION_PATTERN},
                              {"type": "string", "pattern": ENV_REF_PATTERN}],
                    "description": "Duration: 250ms, 30s, 5m, 1h30m, 1d, or seconds."}
        inner = super().function_before_schema(schema)
        if getattr(function, "__name__", "") in ("as_list", "_topics_list"):
            return {"anyOf": [inner, {"type": "string"}]}
        return inner

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        inner = super().function_after_schema(schema)
        if getattr(schema["function"]["function"], "__name__", "") == "_check_name":
            return {**inner, "pattern": NAME_PATTERN, "maxLength": 63}
        return inner


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file."""
    schema = BridgeConfig.model_json_schema(schema_generator=_Generator)
    for name, definition in schema.get("$defs", {}).items():
        _annotate(definition, name)
    _annotate(schema, "BridgeConfig")
    _strip_titles(schema)
    _allow_env_refs(schema)
    schema.pop("title", None)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": SCHEMA_ID,
            "title": "trigger-bridge config file", **schema}


def _annotate(model_schema: dict[str, Any], title: str) -> None:
    model = _model(title)
    if model is not None:
        if model.__doc__:
            model_schema["description"] = _first_paragraph(model.__doc__)
        comments = _field_comments(model)
        for field, prop in model_schema.get("properties", {}).items():
            text = comments.get(field) or _description(model, field)
            if text and "description" not in prop:
                prop["description"] = text
    keys = EXACTLY_ONE.get(title)
    if keys:
        model_schema["oneOf"] = [{"required": [k]} for k in keys]


def _model(title: str) -> type[BaseModel] | None:
    found = getattr(config_module, title, None)
    return found if isinstance(found, type) and issubclass(found, BaseModel) else None


def _description(model: type[BaseModel], field: str) -> str | None:
    for klass in model.__mro__:
        text = DESCRIPTIONS.get(f"{klass.__name__}.{field}")
        if text:
            return text
    return None


def _first_paragraph(doc: str) -> str:
    text = " ".join(textwrap.dedent(doc).strip().split("\n\n")[0].split())
    return text.replace("``", "")


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """``#:`` comment lines right above a field in the class body (Sphinx style)."""
    found: dict[str, str] = {}
    for klass in reversed(model.__mro__):
        if not (isinstance(klass, type) and issubclass(klass, BaseModel)) or klass is BaseModel:
            continue
        try:
            lines, _ = inspect.getsourcelines(klass)
        except (OSError, TypeError):
            continue
        source = textwrap.dedent("".join(lines))
        body = ast.parse(source).body[0]
        assert isinstance(body, ast.ClassDef)
        text_lines = source.splitlines()
        for node in body.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                comment = _comment_above(text_lines, node.lineno - 1)
                if comment:
                    found[node.target.id] = comment
    return found


def _comment_above(lines: list[str], index: int) -> str:
    parts: list[str] = []
    while index > 0 and lines[index - 1].strip().startswith("#:"):
        index -= 1
        parts.insert(0, lines[index].strip()[2:].strip())
    return " ".join(parts).replace("``", "")


def _strip_titles(node: Any) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict):
            for prop in props.values():
                if isinstance(prop, dict):
                    prop.pop("title", None)
        for value in node.values():
            _strip_titles(value)
    elif isinstance(node, list):
        for value in node:
            _strip_titles(value)


def _allow_env_refs(node: Any) -> None:
    """Every number/boolean property may be a ``${VAR}`` string instead."""
    if isinstance(node, list):
        for value in node:
            _allow_env_refs(value)
        return
    if not isinstance(node, dict):
        return
    for key, value in list(node.items()):
        if key == "properties" and isinstance(value, dict):
            for name, prop in value.items():
                value[name] = _with_env_ref(prop)
        _allow_env_refs(value)


def _with_env_ref(prop: Any) -> Any:
    if not isinstance(prop, dict):
        return prop
    env = {"type": "string", "pattern": ENV_REF_PATTERN}
    if prop.get("type") in ("integer", "number", "boolean"):
        keep = {k: prop.pop(k) for k in ("description", "default") if k in prop}
        return {"anyOf": [prop, env], **keep}
    if "anyOf" in prop and any(
        isinstance(m, dict) and m.get("type") in ("integer", "number", "boolean")
        for m in prop["anyOf"]
    ):
        return {**prop, "anyOf": [*prop["anyOf"], env]}
    return prop


# --- the CRD ---------------------------------------------------------------------------

CRD_HEADER = """\
# Generated by `trigger-bridge schema --crd` from the config models (bridge/config/):
# do not edit; regenerate after changing the models (a test fails when this file drifts):
#   python -m bridge schema --crd > deploy/crds/triggers.triggerbridge.dev.yaml
# Trigger: one trigger of the config file as a namespaced resource (docs/kubernetes.md).
# The API server checks the structure (unknown keys, types, enums); the bridge validates
# the spec with the config file's own models and reports problems in status (Ready=False,
# reason InvalidSpec, with the path of each problem) and as a Warning Event.
"""

_FUNCTION_DESCRIPTION = (
    "The name of a function in the config file (a string), or an inline function: "
    "{url | urls | kubernetes: {service, namespace, port, path}, max_concurrency, "
    "concurrency: {adaptive: {min, max}}, timeout, overflow: {url, after}, headers}."
)

_STATUS = {
    "type": "object",
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "lastScheduleTime": {"type": "string", "format": "date-time"},
        "runNow": {
            "type": "object",
            "description": "The last triggerbridge.dev/run-now annotation value acted on.",
            "properties": {
                "value": {"type": "string"},
                "eventId": {"type": "string"},
                "time": {"type": "string", "format": "date-time"},
            },
        },
        "backfill": {
            "type": "object",
            "description": "The backfill asked by the triggerbridge.dev/backfill annotation "
                           "(value acted on) and its progress, or why it was refused.",
            "properties": {
                "value": {"type": "string"},
                "error": {"type": "string"},
                "state": {"type": "string", "enum": ["running", "done", "cancelled"]},
                "policy": {"type": "string"},
                "start": {"type": "string"},
                "end": {"type": "string"},
                "total": {"type": "integer"},
                "exact": {"type": "boolean"},
                "settled": {"type": "integer"},
                "delivered": {"type": "integer"},
                "dead_lettered": {"type": "integer"},
                "done_until": {"type": "string"},
                "started_at": {"type": "string"},
                "finished_at": {"type": "string"},
                "summary": {"type": "string"},
            },
        },
        "conditions": {
            "type": "array",
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
            "items": {
                "type": "object",
                "required": ["type", "status"],
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "observedGeneration": {"type": "integer", "format": "int64"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}

_PRINTER_COLUMNS = [
    {"name": "Ready", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Schedule", "type": "string", "jsonPath": ".spec.cron.schedule"},
    {"name": "Last Schedule", "type": "date", "jsonPath": ".status.lastScheduleTime"},
    {"name": "Paused", "type": "string", "priority": 1,
     "jsonPath": '.status.conditions[?(@.type=="Paused")].status'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

#: Keywords of JSONSchemaProps (apiextensions.k8s.io/v1) that the conversion keeps.
_KEPT = {"type", "format", "description", "properties", "items", "required", "enum",
         "minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems", "pattern",
         "oneOf", "additionalProperties"}


def trigger_spec_schema() -> dict[str, Any]:
    """The structural openAPIV3Schema of a Trigger's ``spec``."""
    schema = _TriggerConfig.model_json_schema(schema_generator=_Generator)
    defs = schema.pop("$defs", {})
    for name, definition in defs.items():
        _annotate(definition, name)
    _annotate(schema, "TriggerConfig")
    spec = _structural(schema, defs)
    spec["properties"].pop("name")
    spec["required"] = [r for r in spec.get("required", []) if r != "name"]
    spec["properties"]["function"] = {
        "description": _FUNCTION_DESCRIPTION, "x-kubernetes-preserve-unknown-fields": True,
    }
    spec["description"] = (
        "A trigger of the config file without 'name' (metadata.name is the name): function, "
        "exactly one source (kafka, rabbitmq, cron) and optional concurrency, timeout, "
        "retry, dead_letter. Defaults come from the config file."
    )
    return spec


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        return _structural({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    if "anyOf" in node:
        return _union(node, defs)
    out: dict[str, Any] = {}
    if node.get("type") == "array" and node.get("uniqueItems"):
        out["x-kubernetes-list-type"] = "set"
    for key, value in node.items():
        if key not in _KEPT:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
        else:
            out[key] = value
    if "type" not in out and "properties" not in out:  # Any: a free-form value
        return {**({"description": out["description"]} if "description" in out else {}),
                "x-kubernetes-preserve-unknown-fields": True}
    if out.get("type") == "object" and "properties" not in out and (
        "additionalProperties" not in out
    ):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return dict(sorted(out.items(), key=lambda kv: _ORDER.get(kv[0], 50)))


#: Key order in the CRD: what a reader wants first.
_ORDER = {"type": 0, "description": 1, "required": 60, "oneOf": 61, "items": 70,
          "additionalProperties": 71, "properties": 80}


def _union(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    members = [m for m in node["anyOf"] if m.get("type") != "null"]
    described = {"description": node["description"]} if "description" in node else {}
    if len(members) == 1:
        return _structural({**members[0], **described}, defs)
    types = {m.get("type") for m in members}
    if types <= {"integer", "number", "string"} and "string" in types:
        return {**described, "x-kubernetes-int-or-string": True}
    return {**described, "x-kubernetes-preserve-unknown-fields": True}


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "triggers.triggerbridge.dev"},
        "spec": {
            "group": "triggerbridge.dev",
            "scope": "Namespaced",
            "names": {"kind": "Trigger", "listKind": "TriggerList", "plural": "triggers",
                      "singular": "trigger", "shortNames": ["trig"],
                      "categories": ["triggerbridge"]},
            "versions": [{
                "name": "v1alpha1", "served": True, "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _PRINTER_COLUMNS,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": trigger_spec_schema(),
                        "status": _STATUS,
                    },
                }},
            }],
        },
    }


def crd_yaml() -> str:
    return CRD_HEADER + yaml.safe_dump(crd(), sort_keys=False, width=100, allow_unicode=True)


def config_schema_json() -> str:
    return json.dumps(config_schema(), indent=2, ensure_ascii=False) + "\n"

