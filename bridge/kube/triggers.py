"""Trigger custom resources (``triggerbridge.dev/v1alpha1``, kind ``Trigger``), live.

A Trigger's ``spec`` is one entry of the config file's ``triggers`` list without
``name`` (the object's ``metadata.name`` is the trigger name), where ``function`` is
either the name of a function in the config file or an inline function (the config
file's function schema: ``url`` | ``urls`` | ``kubernetes``, ``max_concurrency``,
``timeout``, ``overflow``, ``headers``). An inline function is named
``<namespace>/<name>`` (metrics, dead letters) and its ``kubernetes.namespace``
defaults to the Trigger's namespace. Triggers inherit the config file's ``defaults``.

The watcher (a :class:`~bridge.reload.TriggerSource`) validates every object with the
code that validates the config file's triggers (:func:`bridge.config.validate_trigger`:
the same models and the same cross-checks, dead-letter sink included, against the
file's defaults and functions); the valid ones join the running config next to the
file's triggers (a name the file already uses is refused), and each add, change (new
``metadata.generation``) and delete is applied at once, per trigger: one that the
runtime cannot build does not hold back the others. Each object gets a status:

- ``conditions[type=Ready]``: ``True`` (reason ``Applied``) or ``False``: reason
  ``InvalidSpec`` (message = the validation problems, one per line, with their paths
  such as ``spec.cron.schedule``) or ``StartFailed`` (valid, but its connector or
  dead-letter sink could not be built: the reason, without secrets; tried again when
  the Trigger or the config file changes); ``observedGeneration``;
- ``lastScheduleTime`` for cron triggers (like a CronJob's), from the replica firing;

and a Kubernetes Event (``Warning InvalidSpec``, ``Warning StartFailed`` or ``Normal
Applied``) per change of that condition. With leader election on, only the leader
writes statuses and Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from bridge.config import (
    BridgeConfig,
    ConfigError,
    ConfigProblem,
    FunctionConfig,
    TriggerConfig,
    problems_from,
    secrets_of,
)
from bridge.config import validate_trigger as config_validate_trigger
from bridge.kube.client import (
    EVENTS,
    TRIGGER_GROUP,
    TRIGGER_VERSION,
    TRIGGERS,
    KubeClient,
    KubeError,
    Reflector,
    log_api_error,
    object_name,
)
from bridge.kube.lease import micro_time
from bridge.logs import Logger, redact

if TYPE_CHECKING:
    from bridge.leadership import Leadership
    from bridge.reload import Composer

API_VERSION = f"{TRIGGER_GROUP}/{TRIGGER_VERSION}"
_MESSAGE_MAX = 1024


@dataclass(slots=True)
class Verdict:
    """One Trigger object's result at one generation: validated, then built or not."""

    generation: int
    trigger: TriggerConfig | None = None
    functions: dict[str, FunctionConfig] | None = None
    problems: tuple[str, ...] = ()
    #: Why the runtime could not build the (valid) trigger; None while it runs.
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.trigger is not None and self.failure is None

    @property
    def reason(self) -> str:
        if self.trigger is None:
            return "InvalidSpec"
        return "Applied" if self.failure is None else "StartFailed"

    @property
    def message(self) -> str:
        if self.trigger is None:
            return "\n".join(self.problems)[:_MESSAGE_MAX]
        if self.failure is not None:
            return f"cannot be started: {self.failure}"[:_MESSAGE_MAX]
        return "trigger applied"

    @property
    def key(self) -> tuple[int, str, str]:
        """What a status and an Event are written for (once per change of it)."""
        return self.generation, self.reason, self.message

    def same_spec(self, other: Verdict) -> bool:
        return (other.trigger, other.functions) == (self.trigger, self.functions)


def validate_trigger(
    obj: dict[str, Any], base: BridgeConfig
) -> tuple[TriggerConfig, dict[str, FunctionConfig]]:
    """The trigger (and inline function) a Trigger object declares; ConfigError if invalid.

    The spec is checked by :func:`bridge.config.validate_trigger`, the code that checks
    each trigger of the config file (with the file's defaults and functions), so a
    Trigger is valid exactly when the same entry in the file would be.
    """
    meta = obj.get("metadata") or {}
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise ConfigError([ConfigProblem("spec", "must be a mapping (the trigger's settings)")])
    fields = {k: v for k, v in spec.items() if k not in ("function", "name")}
    problems: list[ConfigProblem] = []
    if "name" in spec:
        problems.append(ConfigProblem("spec.name", "not allowed: the name is metadata.name"))
    reported = len(problems)
    function_name, functions = _function(spec.get("function"), name, namespace, problems)
    function_ok = len(problems) == reported  # else "unknown function" would repeat it
    if any(t.name == name for t in base.triggers):
        problems.append(ConfigProblem(
            "metadata.name", f"a trigger named {name!r} is already defined in the config file"
        ))
    trigger = None
    try:
        trigger = config_validate_trigger(
            {**fields, "name": name, "function": function_name}, base, "spec", functions
        )
    except ConfigError as err:
        problems.extend(
            _respell(p) for p in err.problems
            if function_ok or not p.path.startswith("spec.function")
        )
    if problems or trigger is None:
        raise ConfigError(problems)
    return trigger, functions


def _respell(problem: ConfigProblem) -> ConfigProblem:
    if problem.path == "spec.name":
        return ConfigProblem("metadata.name", problem.message)
    return problem


def _function(
    spec: object, name: str, namespace: str, problems: list[ConfigProblem]
) -> tuple[str, dict[str, FunctionConfig]]:
    """The function a spec names (checked with the others) or declares inline."""
    if isinstance(spec, str):
        return spec, {}
    if not isinstance(spec, dict):
        problems.append(ConfigProblem(
            "spec.function",
            "required: the name of a function in the config file, or an inline function "
            "(url, urls or kubernetes, with max_concurrency, timeout, overflow)",
        ))
        return "", {}
    inline = f"{namespace}/{name}"
    try:
        function = FunctionConfig.model_validate(spec)
    except ValidationError as err:
        problems.extend(problems_from(err, prefix="spec.function"))
        return inline, {}
    if function.kubernetes is not None and function.kubernetes.namespace is None:
        target = function.kubernetes.model_copy(update={"namespace": namespace})
        function = function.model_copy(update={"kubernetes": target})
    return inline, {inline: function}


class TriggerWatcher:
    """Watches Trigger objects in one namespace and feeds them to the composer."""

    def __init__(
        self,
        client: KubeClient,
        composer: Composer,
        leadership: Leadership,
        last_schedule_time: Callable[[str], datetime | None],
        log: Logger,
        *,
        namespace: str | None = None,
        identity: str = "trigger-bridge",
        status_interval: float = 2.0,
    ) -> None:
        self._client = client
        self._composer = composer
        #: The scheduled time of the last tick a trigger fired here (cron), by name.
        self._last_schedule_time = last_schedule_time
        self._leadership = leadership
        self._log = log.bind(component="triggers")
        self._identity = identity
        self._interval = status_interval
        self._objects: dict[str, dict[str, Any]] = {}
        self._verdicts: dict[str, Verdict] = {}
        self._reported: dict[str, tuple[int, str, str]] = {}
        self._schedules: dict[str, str] = {}
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._failed: set[str] = set()
        self._reflector = Reflector(client, TRIGGERS, namespace, on_sync=self._on_sync,
                                    on_change=self._on_change, log=self._log)
        self._leadership.on_change(self._on_leadership)

    @property
    def ready(self) -> bool:
        return self._reflector.synced

    async def run(self) -> None:
        """Watch the Trigger objects until cancelled."""
        await self._reflector.run()

    # --- TriggerSource ----------------------------------------------------------------

    def contribute(
        self, base: BridgeConfig
    ) -> tuple[dict[str, FunctionConfig], list[TriggerConfig]]:
        functions: dict[str, FunctionConfig] = {}
        triggers: list[TriggerConfig] = []
        for name, obj in sorted(self._objects.items()):
            verdict = self._judge(obj, base)
            previous = self._verdicts.get(name)
            if previous is not None and previous.trigger is not None and verdict.same_spec(
                previous
            ):
                verdict.failure = previous.failure  # the runtime retries only on a change
            if previous is None or previous.key != verdict.key:
                self._pending.put_nowait(name)
            self._verdicts[name] = verdict
            if verdict.trigger is not None and verdict.functions is not None:
                functions.update(verdict.functions)
                triggers.append(verdict.trigger)
        return functions, triggers

    def applied(self, failures: Mapping[str, str]) -> None:
        """Triggers the runtime could not build get ``Ready=False`` (``StartFailed``)."""
        for name, verdict in self._verdicts.items():
            failure = failures.get(name) if verdict.trigger is not None else None
            if failure != verdict.failure:
                verdict.failure = failure
                self._pending.put_nowait(name)

    def _judge(self, obj: dict[str, Any], base: BridgeConfig) -> Verdict:
        generation = int((obj.get("metadata") or {}).get("generation") or 0)
        try:
            trigger, functions = validate_trigger(obj, base)
        except ConfigError as err:
            problems = tuple(str(p) for p in err.problems)
        except Exception as err:  # a validator bug must not stop the other Triggers
            # (its text may quote the spec, secrets included: only the type)
            problems = (f"spec: cannot be validated: {type(err).__name__}",)
        else:
            return Verdict(generation, trigger, functions)
        self._log.warning("invalid Trigger resource", trigger=object_name(obj),
                          problems=list(problems))
        return Verdict(generation, problems=problems)

    # --- watch ------------------------------------------------------------------------

    async def _on_sync(self, items: list[dict[str, Any]]) -> None:
        objects = {object_name(o): o for o in items}
        changed = _generations(objects) != _generations(self._objects)
        self._objects = objects
        for name in list(self._verdicts):
            if name not in objects:
                self._forget(name)
        if changed:
            await self._refresh()

    async def _on_change(self, kind: str, obj: dict[str, Any]) -> None:
        name = object_name(obj)
        if kind == "DELETED":
            self._objects.pop(name, None)
            self._forget(name)
            self._log.info("Trigger deleted", trigger=name)
            await self._refresh()
            return
        old = self._objects.get(name)
        self._objects[name] = obj
        if old is None or _generation(old) != _generation(obj):
            self._log.info("Trigger " + ("added" if old is None else "changed"), trigger=name,
                           generation=_generation(obj))
            await self._refresh()

    def _forget(self, name: str) -> None:
        self._failed.discard(name)
        self._verdicts.pop(name, None)
        self._reported.pop(name, None)
        self._schedules.pop(name, None)

    async def _refresh(self) -> None:
        try:
            await self._composer.refresh()
        except Exception as err:
            secrets = secrets_of(*(v.trigger for v in self._verdicts.values()),
                                 *(f for v in self._verdicts.values()
                                   for f in (v.functions or {}).values()))
            self._log.error("applying Trigger resources failed",
                            error=redact(f"{type(err).__name__}: {err}", secrets)[:400])

    def _on_leadership(self, leader: bool) -> None:
        if leader:
            self._reported.clear()
            self._schedules.clear()
            for name in self._verdicts:
                self._pending.put_nowait(name)

    # --- status and events ------------------------------------------------------------

    async def write_statuses(self) -> None:
        """Write the statuses and Events of changed Triggers (and the ``lastScheduleTime``
        of cron Triggers every ``status_interval``), until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    name = await self._pending.get()
                    await self._report(name)
                    continue
            for name in self._failed:
                self._pending.put_nowait(name)
            self._failed.clear()
            await self._report_schedules()

    async def _report(self, name: str) -> None:
        verdict, obj = self._verdicts.get(name), self._objects.get(name)
        if verdict is None or obj is None or not self._leadership.is_leader:
            return
        key = verdict.key
        if self._reported.get(name) == key:
            return
        try:
            await self._patch_status(obj, verdict)
            await self._event(obj, verdict)
        except KubeError as err:
            log_api_error(self._log, err, f"status of Trigger {name}", self._interval)
            self._failed.add(name)
            return
        self._reported[name] = key

    async def _patch_status(self, obj: dict[str, Any], verdict: Verdict) -> None:
        now = micro_time(datetime.now(UTC)).split(".")[0] + "Z"
        status = "True" if verdict.ok else "False"
        old: dict[str, Any] = next((c for c in (obj.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready"), {})
        condition = {
            "type": "Ready", "status": status,
            "reason": verdict.reason,
            "message": verdict.message, "observedGeneration": verdict.generation,
            "lastTransitionTime": old.get("lastTransitionTime", now)
            if old.get("status") == status else now,
        }
        body = {"status": {"observedGeneration": verdict.generation, "conditions": [condition]}}
        await self._client.request(
            "patch", TRIGGERS, self._reflector.namespace, name=object_name(obj), sub="status",
            body=body, content_type="application/merge-patch+json",
        )

    async def _event(self, obj: dict[str, Any], verdict: Verdict) -> None:
        meta = obj.get("metadata") or {}
        now = micro_time(datetime.now(UTC)).split(".")[0] + "Z"
        name = object_name(obj)
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}",
                         "namespace": self._reflector.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": "Trigger", "name": name,
                "namespace": self._reflector.namespace, "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": verdict.reason,
            "message": verdict.message,
            "type": "Normal" if verdict.ok else "Warning",
            "source": {"component": "trigger-bridge"},
            "reportingComponent": "trigger-bridge", "reportingInstance": self._identity,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        await self._client.request("create", EVENTS, self._reflector.namespace, body=body)

    async def _report_schedules(self) -> None:
        """Write ``lastScheduleTime`` of cron Triggers whose last fired tick changed."""
        if not self._leadership.is_leader:
            return
        for name, verdict in list(self._verdicts.items()):
            last = self._last_schedule_time(name) if verdict.ok else None
            if last is None:
                continue
            stamp = last.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if self._schedules.get(name) == stamp:
                continue
            try:
                await self._client.request(
                    "patch", TRIGGERS, self._reflector.namespace, name=name, sub="status",
                    body={"status": {"lastScheduleTime": stamp}},
                    content_type="application/merge-patch+json",
                )
            except KubeError as err:
                log_api_error(self._log, err, f"status of Trigger {name}", None)
                continue
            self._schedules[name] = stamp


def _generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def _generations(objects: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: _generation(obj) for name, obj in objects.items()}
