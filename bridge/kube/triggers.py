"""Trigger custom resources (``triggerbridge.dev/v1alpha1``, kind ``Trigger``), live.

A Trigger's ``spec`` is one entry of the config file's ``triggers`` list without
``name`` (the object's ``metadata.name`` is the trigger name), where ``function`` is
either the name of a function in the config file or an inline function (the config
file's function schema: ``url`` | ``urls`` | ``kubernetes``, ``max_concurrency``,
``timeout``, ``overflow``, ``headers``). An inline function is named
``<namespace>/<name>`` (metrics, dead letters) and its ``kubernetes.namespace``
defaults to the Trigger's namespace. Triggers inherit the config file's ``defaults``.

The watcher (:mod:`bridge.kube.trigger_watch`) validates every object with the code
that validates the config file's triggers (:func:`bridge.config.validate_trigger`:
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
Applied``) per change of that condition (:mod:`bridge.kube.trigger_status`). With
leader election on, only the leader writes statuses and Events.

This module holds what a Trigger object amounts to (:class:`TriggerState`) and its
validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from bridge.config import (
    BridgeConfig,
    ConfigError,
    ConfigProblem,
    FunctionConfig,
    TriggerConfig,
    problems_from,
)
from bridge.config import validate_trigger as config_validate_trigger

_MESSAGE_MAX = 1024


@dataclass(slots=True)
class TriggerState:
    """What one Trigger object amounts to at one generation: the trigger it declares
    (or why it is invalid) and, once applied, why the runtime could not build it. Its
    Ready condition (reason, message) follows from these."""

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

    def same_spec(self, other: TriggerState) -> bool:
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



def state_of(obj: dict[str, Any], base: BridgeConfig) -> TriggerState:
    """Validate one Trigger object against ``base`` (the config file)."""
    generation = int((obj.get("metadata") or {}).get("generation") or 0)
    try:
        trigger, functions = validate_trigger(obj, base)
    except ConfigError as err:
        problems = tuple(str(p) for p in err.problems)
    except Exception as err:  # a validator bug must not stop the other Triggers
        # (its text may quote the spec, secrets included: only the type)
        problems = (f"spec: cannot be validated: {type(err).__name__}",)
    else:
        return TriggerState(generation, trigger, functions)
    return TriggerState(generation, problems=problems)
