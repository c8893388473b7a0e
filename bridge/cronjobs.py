"""``trigger-bridge import-cronjobs``: Kubernetes CronJobs -> cron triggers.

Reads CronJob manifests (``kubectl get cronjobs -A -o yaml`` Lists, multi-document YAML or
JSON; ``batch/v1`` and ``batch/v1beta1``) and writes either a config file (``triggers:``
plus ``functions:`` stubs and a dead-letter default, so it validates as it is) or Trigger
resources (``--as-crd``). What carries over:

==================================  ===========================================
CronJob                              trigger
==================================  ===========================================
``spec.schedule``                    ``cron.schedule``, the expression unchanged
``CRON_TZ=``/``TZ=`` prefix          ``cron.time_zone`` (prefix removed)
``spec.timeZone``                    ``cron.time_zone``
``spec.concurrencyPolicy``           ``cron.concurrency_policy``
``spec.startingDeadlineSeconds``     ``cron.starting_deadline``
``spec.suspend``                     ``cron.suspend``
``jobTemplate.spec.backoffLimit``    ``retry.max_attempts`` = backoffLimit + 1
==================================  ===========================================

Everything else of the CronJob (the pod template's containers, image, command, args,
env, resources; the history limits; ``activeDeadlineSeconds`` ...) is named in the
report, never dropped silently. The function comes from the CronJob's annotation
``triggerbridge.dev/function``, else ``--function``, else ``--function-template``
(default ``{name}``).

The conversion is pure: :func:`import_cronjobs` takes text and returns the output, the
report lines and the exit status; the CLI only reads the input and prints.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from bridge.config import NAME_MAX
from bridge.schedule import ScheduleError, parse_schedule

FUNCTION_ANNOTATION = "triggerbridge.dev/function"
DEFAULT_FUNCTION_TEMPLATE = "{name}"
#: Exit statuses (documented in docs/cronjob-import.md).
EXIT_ALL_CONVERTED, EXIT_SOME_NOT_CONVERTED, EXIT_BAD_INPUT = 0, 1, 2

_TZ_PREFIX = re.compile(r"^\s*(CRON_TZ|TZ)=(\S*)\s+(.*)$", re.DOTALL)
_TEMPLATE_FIELDS = ("namespace", "name")
#: spec keys the importer maps (everything else of spec is reported)
_MAPPED_SPEC = ("schedule", "timeZone", "concurrencyPolicy", "startingDeadlineSeconds",
                "suspend", "jobTemplate")
_POLICIES = ("Allow", "Forbid", "Replace")
_RETRY_MAX = 1000


class ImportFailure(Exception):
    """The input cannot be read at all (not YAML, bad options): one line, exit 2."""


@dataclass(frozen=True, slots=True)
class ImportOptions:
    function: str | None = None
    function_template: str | None = None
    as_crd: bool = False
    #: Trigger resources' metadata.namespace (--as-crd); None leaves it to kubectl -n.
    namespace: str | None = None
    #: Zone of CronJobs without timeZone or prefix (the kube-controller-manager's zone).
    time_zone: str = "UTC"
    #: Trigger names; default {name}, or {namespace}-{name} when namespaces are mixed.
    name_template: str | None = None
    dead_letter_file: str = "dead-letters.jsonl"

    def check(self) -> None:
        for flag, template in (("--function-template", self.function_template),
                               ("--name-template", self.name_template)):
            if template is not None:
                _check_template(flag, template)
        if self.function is not None and not self.function.strip():
            raise ImportFailure("--function: must not be empty")
        try:
            parse_schedule("@hourly", self.time_zone)
        except ScheduleError as err:
            raise ImportFailure(f"--time-zone: {err}") from None


@dataclass(slots=True)
class CronJob:
    """One CronJob found in the input."""

    where: str  # "doc 2", "doc 1 items[3]"
    namespace: str
    name: str
    api_version: str
    obj: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name or '(no metadata.name)'}"


@dataclass(slots=True)
class Converted:
    job: CronJob
    trigger: str
    function: str
    function_source: str
    cron: dict[str, Any]
    retry: dict[str, Any] | None
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ImportResult:
    output: str
    report: list[str]
    exit_code: int


def import_cronjobs(text: str, source: str, options: ImportOptions) -> ImportResult:
    """Convert every CronJob in ``text``; raise ImportFailure if the input is unreadable."""
    options.check()
    entries = list(_entries(_documents(text, source), source))
    jobs = [e for e in entries if isinstance(e, CronJob)]
    mixed = len({job.namespace for job in jobs}) > 1
    per_namespace = "{namespace}-{name}" if mixed else "{name}"
    names = _Naming(options.name_template or per_namespace,
                    options.function_template or per_namespace)
    report: list[str] = []
    converted: list[Converted] = []
    for entry in entries:
        if isinstance(entry, str):
            report.append(entry)
            continue
        try:
            item = _convert(entry, options, names)
        except _NotConvertible as err:
            report.append(f"{source}: {entry.where} CronJob {entry.ref}: NOT CONVERTED: {err}")
            continue
        converted.append(item)
        report.extend(_conversion_lines(source, item))
    if options.as_crd:
        output = _render_crds(converted, source, options)
    else:
        output = _render_config(converted, source, options, report)
    failed = len(jobs) - len(converted)
    report.insert(0, f"{source}: {len(jobs)} CronJob(s): {len(converted)} converted, "
                     f"{failed} not converted")
    if not jobs:
        report.append(f"{source}: no CronJob found")
    code = EXIT_SOME_NOT_CONVERTED if failed or not jobs else EXIT_ALL_CONVERTED
    return ImportResult(output, report, code)


# --- reading -----------------------------------------------------------------------


def _documents(text: str, source: str) -> list[Any]:
    loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return list(yaml.load_all(text, Loader=loader))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ImportFailure(f"{where}: invalid YAML: {problem}") from None


def _entries(docs: list[Any], source: str) -> Iterator[CronJob | str]:
    """Every CronJob in document order, and a report line for everything skipped."""
    for number, doc in enumerate(docs, 1):
        if doc is None:
            continue
        yield from _objects(doc, f"doc {number}", source)


def _objects(obj: Any, where: str, source: str) -> Iterator[CronJob | str]:
    if not isinstance(obj, dict):
        yield f"{source}: {where}: skipped: not a Kubernetes object (a mapping)"
        return
    kind, api = str(obj.get("kind") or ""), str(obj.get("apiVersion") or "")
    if kind.endswith("List") and "items" in obj:
        items = obj.get("items")
        if not isinstance(items, list):
            yield f"{source}: {where}: skipped: {kind} without an items list"
            return
        for index, item in enumerate(items):
            yield from _objects(item, f"{where} items[{index}]", source)
        return
    meta = _dig(obj, "metadata")
    name = str(meta.get("name") or "")
    label = f"{kind or '(no kind)'}/{name or '(no name)'}"
    if kind != "CronJob" or not api.startswith("batch/"):
        yield (f"{source}: {where}: skipped {label} ({api or 'no apiVersion'}): "
               "not a CronJob")
        return
    namespace = str(meta.get("namespace") or "default")
    yield CronJob(where, namespace, name, api, obj)


# --- converting --------------------------------------------------------------------


class _NotConvertible(Exception):
    pass


@dataclass(slots=True)
class _Naming:
    """Trigger and function names from the templates; trigger names kept unique."""

    trigger_template: str
    function_template: str
    taken: set[str] = field(default_factory=set)


def _convert(job: CronJob, options: ImportOptions, names: _Naming) -> Converted:
    if not job.name:
        raise _NotConvertible("no metadata.name")
    spec = job.obj.get("spec")
    if not isinstance(spec, dict):
        raise _NotConvertible("no spec")
    expression, zone, notes = _schedule(spec, options)
    cron: dict[str, Any] = {"schedule": expression, "time_zone": zone}
    policy = spec.get("concurrencyPolicy")
    if policy is not None:
        if policy not in _POLICIES:
            raise _NotConvertible(
                f"spec.concurrencyPolicy {policy!r}: must be Allow, Forbid or Replace")
        cron["concurrency_policy"] = policy
    deadline = spec.get("startingDeadlineSeconds")
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, int) or deadline < 0:
            raise _NotConvertible(
                f"spec.startingDeadlineSeconds {deadline!r}: must be a whole number >= 0")
        if deadline == 0:
            notes.append("spec.startingDeadlineSeconds 0: every tick would miss it; "
                         "imported as 1s")
        cron["starting_deadline"] = f"{max(deadline, 1)}s"
    suspend = spec.get("suspend")
    if suspend is not None:
        if not isinstance(suspend, bool):
            raise _NotConvertible(f"spec.suspend {suspend!r}: must be true or false")
        cron["suspend"] = suspend
    retry = _retry(spec, notes)
    notes.extend(_leftovers(job, spec, options.as_crd))
    function, function_source = _function(job, options, names.function_template)
    trigger = _unique(_dns_label(_fill(names.trigger_template, job)), names.taken, notes)
    return Converted(job, trigger, function, function_source, cron, retry, notes)


def _schedule(spec: dict[str, Any], options: ImportOptions) -> tuple[str, str, list[str]]:
    raw = spec.get("schedule")
    if not isinstance(raw, str) or not raw.strip():
        raise _NotConvertible("spec.schedule: missing or not a string")
    notes: list[str] = []
    expression, zone = raw.strip(), spec.get("timeZone")
    prefix = _TZ_PREFIX.match(raw)
    if prefix:
        if zone is not None:
            raise _NotConvertible(
                f"spec.schedule {raw!r}: a {prefix.group(1)}= prefix and spec.timeZone "
                "together (Kubernetes refuses this)")
        expression, zone = prefix.group(3).strip(), prefix.group(2)
        notes.append(f"spec.schedule: {prefix.group(1)}={zone} prefix -> time_zone")
    elif zone is None:
        zone = options.time_zone
        notes.append(f"no time zone (the CronJob ran in kube-controller-manager's zone): "
                     f"imported as {zone}")
    if not isinstance(zone, str):
        raise _NotConvertible(f"spec.timeZone {zone!r}: must be a string")
    fields = expression.split()
    if not expression.startswith("@") and len(fields) != 5:
        raise _NotConvertible(
            f"spec.schedule {raw!r}: expected 5 fields, got {len(fields)} "
            "(Kubernetes accepts exactly 5)")
    try:
        parse_schedule(expression, zone)
    except ScheduleError as err:
        if str(err).startswith(("unknown time zone", "time zone must")):
            where = f"{prefix.group(1)}= prefix" if prefix else "spec.timeZone"
            raise _NotConvertible(f"{where} {zone!r}: {err}") from None
        raise _NotConvertible(f"spec.schedule {raw!r}: {err}") from None
    if expression.lower().startswith("@every"):
        notes.append("@every: ticks at multiples of the interval since the Unix epoch (a "
                     "CronJob counts from its last run); see docs/cronjob-import.md")
    return expression, zone, notes


def _retry(spec: dict[str, Any], notes: list[str]) -> dict[str, Any] | None:
    job_spec = _dig(spec, "jobTemplate", "spec")
    limit = job_spec.get("backoffLimit")
    if limit is None:
        notes.append("jobTemplate.spec.backoffLimit not set (Kubernetes default 6 pod "
                      "retries): the bridge's retry defaults apply")
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        notes.append(f"jobTemplate.spec.backoffLimit {limit!r} is not a whole number >= 0: "
                     "not carried over (retry defaults apply)")
        return None
    attempts = limit + 1
    if attempts > _RETRY_MAX:
        notes.append(f"jobTemplate.spec.backoffLimit {limit} -> retry.max_attempts "
                     f"{_RETRY_MAX} (the bridge's limit)")
        attempts = _RETRY_MAX
    else:
        notes.append(f"jobTemplate.spec.backoffLimit {limit} -> retry.max_attempts {attempts}")
    return {"max_attempts": attempts}


def _leftovers(job: CronJob, spec: dict[str, Any], as_crd: bool) -> Iterator[str]:
    """What the trigger cannot carry: one 'not carried over' note per field."""
    lost = "not carried over"
    for key, value in spec.items():
        if key not in _MAPPED_SPEC:
            yield f"{lost}: spec.{key}: {_short(value)}"
    job_template = _dig(spec, "jobTemplate")
    for key, value in job_template.items():
        if key != "spec" and not _empty(value):
            yield f"{lost}: spec.jobTemplate.{key}: {_short(value)}"
    job_spec = _dig(job_template, "spec")
    for key, value in job_spec.items():
        if key not in ("template", "backoffLimit"):
            yield f"{lost}: spec.jobTemplate.spec.{key}: {_short(value)}"
    pod = _dig(job_spec, "template")
    for key, value in pod.items():
        if key != "spec" and not _empty(value):
            yield f"{lost}: spec.jobTemplate.spec.template.{key}: {_short(value)}"
    pod_spec = _dig(pod, "spec")
    for key in ("initContainers", "containers"):
        containers = pod_spec.get(key)
        for index, container in enumerate(containers if isinstance(containers, list) else []):
            yield f"{lost}: {_container(f'pod {key}[{index}]', container)}"
    others = [k for k in pod_spec if k not in ("containers", "initContainers")]
    if others:
        yield f"{lost}: pod spec {', '.join(others)}"
    labels = _dig(job.obj, "metadata", "labels")
    if labels and not as_crd:  # Trigger resources keep them
        yield f"{lost}: metadata.labels {_short(labels)}"


def _empty(value: Any) -> bool:
    """Nothing to lose: ``{}``, or kubectl's ``metadata: {creationTimestamp: null}``."""
    return not value or (isinstance(value, dict) and all(v is None for v in value.values()))


def _container(where: str, container: Any) -> str:
    if not isinstance(container, dict):
        return f"{where}: {_short(container)}"
    name = container.get("name", "?")
    parts = [f"image {container.get('image', '(none)')}"]
    for key in ("command", "args"):
        if key in container:
            parts.append(f"{key} {_short(container[key])}")
    if "env" in container:
        env = container["env"]
        parts.append(f"env {len(env) if isinstance(env, list) else '?'} variable(s)")
    rest = [k for k in container if k not in ("name", "image", "command", "args", "env")]
    if rest:
        parts.append(", ".join(rest))
    return f"{where} {name!r}: " + ", ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dig(obj: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else {}


def _function(job: CronJob, options: ImportOptions, template: str) -> tuple[str, str]:
    annotation = _dig(job.obj, "metadata", "annotations").get(FUNCTION_ANNOTATION)
    if annotation is not None:
        if not isinstance(annotation, str) or not annotation.strip():
            raise _NotConvertible(f"annotation {FUNCTION_ANNOTATION}: must name a function")
        return annotation.strip(), f"annotation {FUNCTION_ANNOTATION}"
    if options.function is not None:
        return options.function, "--function"
    flag = "--function-template" if options.function_template else "default template"
    return _dns_label(_fill(template, job)), f"{flag} {template!r}"


def _fill(template: str, job: CronJob) -> str:
    return template.format(namespace=job.namespace, name=job.name)


def _dns_label(raw: str) -> str:
    """A Kubernetes-style name: [a-z0-9-], at most 63, a hash suffix when shortened."""
    name = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-") or "cronjob"
    if len(name) > NAME_MAX:
        digest = hashlib.sha256(raw.encode()).hexdigest()[:8]
        name = name[: NAME_MAX - 9].rstrip("-") + "-" + digest
    return name


def _unique(name: str, taken: set[str], notes: list[str]) -> str:
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        suffix = f"-{n}"
        candidate = name[: NAME_MAX - len(suffix)].rstrip("-") + suffix
    if candidate != name:
        notes.append(f"trigger name {name!r} already taken: named {candidate!r}")
    taken.add(candidate)
    return candidate


def _check_template(flag: str, template: str) -> None:
    try:
        template.format(**dict.fromkeys(_TEMPLATE_FIELDS, "x"))
    except (KeyError, IndexError, ValueError) as err:
        allowed = ", ".join("{" + f + "}" for f in _TEMPLATE_FIELDS)
        raise ImportFailure(f"{flag} {template!r}: {err!s} (allowed: {allowed})") from None


def _conversion_lines(source: str, item: Converted) -> Iterator[str]:
    yield (f"{source}: {item.job.where} CronJob {item.job.ref} ({item.job.api_version}) -> "
           f"trigger {item.trigger!r}, function {item.function!r} ({item.function_source})")
    for note in item.notes:
        yield f"  {note}"


# --- writing -----------------------------------------------------------------------


def _trigger_fields(item: Converted) -> dict[str, Any]:
    fields: dict[str, Any] = {"function": item.function}
    if item.retry is not None:
        fields["retry"] = item.retry
    fields["cron"] = item.cron
    return fields


def _dump(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True,
                          width=100)


def _render_config(items: list[Converted], source: str, options: ImportOptions,
                   report: list[str]) -> str:
    functions: dict[str, dict[str, Any]] = {}
    shared: set[str] = set()
    for item in items:
        stub = functions.setdefault(item.function, {"kubernetes": {
            "service": _dns_label(item.function), "namespace": item.job.namespace,
            "port": "http", "path": "/",
        }})
        if stub["kubernetes"]["namespace"] != item.job.namespace and item.function not in shared:
            shared.add(item.function)
            report.append(f"function {item.function!r} serves CronJobs of several namespaces; "
                          f"its stub points at namespace {stub['kubernetes']['namespace']!r}")
    if functions:
        report.append(f"review the function stubs (a Service of the function's name in the "
                      f"CronJob's namespace): {', '.join(functions)}")
    report.append(f"dead letters go to the file {options.dead_letter_file!r} "
                  "(defaults.dead_letter): review")
    head = _dump({"defaults": {"dead_letter": {"file": {"path": options.dead_letter_file}}},
                  "functions": functions})
    lines = [f"# Imported from {source} by trigger-bridge import-cronjobs.",
             "# Review the function stubs and the dead-letter sink before use.",
             head.rstrip("\n")]
    if not items:
        lines.append("triggers: []")
        return "\n".join(lines) + "\n"
    lines.append("triggers:")
    for item in items:
        lines.append(f"# from CronJob {item.job.ref}")
        body = _dump([{"name": item.trigger, **_trigger_fields(item)}])
        lines.append(body.rstrip("\n"))
    return "\n".join(lines) + "\n"


def _render_crds(items: list[Converted], source: str, options: ImportOptions) -> str:
    docs = [f"# Imported from {source} by trigger-bridge import-cronjobs.\n"
            "# Each Trigger names a function of the bridge's config file: define those first."]
    for item in items:
        metadata: dict[str, Any] = {"name": item.trigger}
        if options.namespace:
            metadata["namespace"] = options.namespace
        labels = _dig(item.job.obj, "metadata", "labels")
        if labels:
            metadata["labels"] = labels
        metadata["annotations"] = {"triggerbridge.dev/imported-from": f"CronJob {item.job.ref}"}
        obj = {"apiVersion": "triggerbridge.dev/v1alpha1", "kind": "Trigger",
               "metadata": metadata, "spec": _trigger_fields(item)}
        docs.append(f"---\n# from CronJob {item.job.ref}\n" + _dump(obj).rstrip("\n"))
    return "\n".join(docs) + "\n"
