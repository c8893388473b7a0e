"""Trigger objects, watched and fed to the running config (see :mod:`bridge.kube.triggers`).

:class:`TriggerWatcher` is a :class:`~bridge.reload.TriggerSource`: a reflector keeps
the Trigger objects of one namespace; every add, change (new ``metadata.generation``)
and delete asks for a recomposition (``refresh``), which calls :meth:`contribute`
(validate each object, hand over the valid ones) and then :meth:`applied` (which ones
the runtime could not build). Each change of an object's :class:`TriggerState` is
queued for :attr:`status`, the writer of its status and Events.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from kubernetes_asyncio.client import CustomObjectsApi

from bridge.config import BridgeConfig, FunctionConfig, TriggerConfig, secrets_of
from bridge.cron_control import (
    BACKFILL_POLICIES,
    BackfillPolicy,
    BackfillProgress,
    ControlError,
    ScheduleControl,
)
from bridge.errors import describe
from bridge.events import format_time
from bridge.kube.client import TRIGGER_GROUP, TRIGGER_VERSION, TRIGGERS, KubeClient
from bridge.kube.errors import KubeError, log_api_error
from bridge.kube.reflector import Reflector, object_name
from bridge.kube.trigger_status import ControlLookup, TriggerStatusWriter
from bridge.kube.triggers import TriggerState, state_of
from bridge.leadership import Leadership
from bridge.logs import Logger, redact


class TriggerWatcher:
    """Watches Trigger objects in one namespace and feeds them to the composer."""

    def __init__(
        self,
        kube: KubeClient,
        log: Logger,
        *,
        refresh: Callable[[], Awaitable[object]],
        leadership: Leadership,
        last_schedule_time: Callable[[str], datetime | None],
        namespace: str | None = None,
        identity: str = "trigger-bridge",
        status_interval: float = 2.0,
        control: ControlLookup | None = None,
    ) -> None:
        self._refresh_config = refresh
        self._control = control
        self._interval = status_interval
        self._wake = asyncio.Event()
        #: Annotation values acted on here (before the status says so), by (name, kind).
        self._acted: dict[tuple[str, str], str] = {}
        #: Triggers whose object showed a Paused condition (its removal resumes).
        self._paused_seen: set[str] = set()
        self._log = log.bind(component="triggers")
        self._objects: dict[str, dict[str, Any]] = {}
        self._states: dict[str, TriggerState] = {}
        self._reflector = Reflector(
            kube, TRIGGERS, CustomObjectsApi.list_namespaced_custom_object, namespace,
            params={"group": TRIGGER_GROUP, "version": TRIGGER_VERSION, "plural": "triggers"},
            on_sync=self._on_sync, on_change=self._on_change, log=self._log,
        )
        #: Writes the objects' status and Events (its own loop: ``status.run()``).
        self.status = TriggerStatusWriter(
            kube, self, leadership, last_schedule_time, self._log, namespace=namespace,
            identity=identity, interval=status_interval, control=control,
        )
        leadership.on_change(lambda leader: self._wake.set())

    @property
    def ready(self) -> bool:
        return self._reflector.ready

    async def run(self) -> None:
        """Watch the Trigger objects and act on their annotations until cancelled
        (``status.run`` is the other loop)."""
        async with asyncio.TaskGroup() as loops:  # one failing cancels the other
            loops.create_task(self._reflector.run())
            loops.create_task(self._act_loop())

    # --- annotations: run now, backfill; a removed Paused condition ---------------------

    async def _act_loop(self) -> None:
        """Act on what the objects ask, at each change, leadership change and, while
        something could not be done yet (the trigger is starting), every interval."""
        if self._control is None:
            return
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            for name, obj in list(self._objects.items()):
                try:
                    await self._act(name, obj)
                except KubeError as err:
                    log_api_error(self._log, err, f"status of Trigger {name}", self._interval)

    async def _act(self, name: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        status = obj.get("status") or {}
        paused = any(c.get("type") == "Paused" for c in status.get("conditions") or [])
        if paused:
            self._paused_seen.add(name)
        elif name in self._paused_seen:
            self._paused_seen.discard(name)
            await self._resume(name)
        run_now = annotations.get(RUN_NOW)
        if run_now and run_now != (status.get("runNow") or {}).get("value") and (
                self._acted.get((name, "run-now")) != run_now):
            await self._run_now(name, str(run_now))
        backfill = annotations.get(BACKFILL)
        if backfill and backfill != (status.get("backfill") or {}).get("value") and (
                self._acted.get((name, "backfill")) != backfill):
            await self._backfill(name, str(backfill))

    def _lookup(self, name: str) -> tuple[ScheduleControl, str] | None:
        assert self._control is not None
        try:
            return self._control(name)
        except ControlError:
            return None  # not (yet) a running cron trigger here

    async def _run_now(self, name: str, value: str) -> None:
        found = self._lookup(name)
        if found is None or not found[0].leads:
            return
        requested = datetime.now(UTC)
        event_id = f"{name}/manual/{format_time(requested)}"
        # recorded first: a restart or a new leader never runs this value again
        await self.status.patch(name, {"runNow": {
            "value": value, "eventId": event_id, "time": format_time(requested)}})
        self._acted[(name, "run-now")] = value
        try:
            found[0].run_now(requested)
        except ControlError as err:
            self._log.warning("run-now annotation not acted on", trigger=name,
                              error=err.message)

    async def _backfill(self, name: str, value: str) -> None:
        found = self._lookup(name)
        if found is None or not found[0].leads:
            return
        control, zone = found
        self._acted[(name, "backfill")] = value
        # a merge patch: the previous backfill's fields are cleared explicitly
        cleared: dict[str, Any] = dict.fromkeys(
            [*BackfillProgress.__dataclass_fields__, "summary", "error"])
        cleared.pop("done_after")
        cleared.pop("trigger")
        try:
            start, end, policy = parse_backfill(value, zone)
            await self.status.patch(name, {"backfill": cleared | {"value": value}})
            progress = await control.backfill(start, end, policy)
        except ControlError as err:
            self._log.warning("backfill annotation refused", trigger=name, error=err.message)
            await self.status.patch(name, {"backfill": cleared | {
                "value": value, "error": err.message}})
            return
        self._log.info("backfill annotation acted on", trigger=name, summary=progress.summary)

    async def _resume(self, name: str) -> None:
        found = self._lookup(name)
        if found is None or not found[0].leads or found[0].paused is None:
            return
        with contextlib.suppress(ControlError):
            if await found[0].resume():
                self._log.info("Paused condition removed: trigger resumed", trigger=name)

    # --- what the status writer reads ---------------------------------------------------

    def current(self, name: str) -> tuple[dict[str, Any], TriggerState] | None:
        """The object named ``name`` and its state, if both are known."""
        obj, state = self._objects.get(name), self._states.get(name)
        return None if obj is None or state is None else (obj, state)

    def names(self) -> list[str]:
        return list(self._states)

    # --- TriggerSource ------------------------------------------------------------------

    def contribute(
        self, base: BridgeConfig
    ) -> tuple[dict[str, FunctionConfig], list[TriggerConfig]]:
        functions: dict[str, FunctionConfig] = {}
        triggers: list[TriggerConfig] = []
        for name, obj in sorted(self._objects.items()):
            state = state_of(obj, base)
            if state.problems:
                self._log.warning("invalid Trigger resource", trigger=name,
                                  problems=list(state.problems))
            previous = self._states.get(name)
            if previous is not None and previous.trigger is not None and state.same_spec(
                previous
            ):
                state.failure = previous.failure  # the runtime retries only on a change
            if previous is None or previous.key != state.key:
                self.status.changed(name)
            self._states[name] = state
            if state.trigger is not None and state.functions is not None:
                functions.update(state.functions)
                triggers.append(state.trigger)
        return functions, triggers

    def applied(self, failures: Mapping[str, str]) -> None:
        """Triggers the runtime could not build get ``Ready=False`` (``StartFailed``)."""
        for name, state in self._states.items():
            failure = failures.get(name) if state.trigger is not None else None
            if failure != state.failure:
                state.failure = failure
                self.status.changed(name)

    # --- watch --------------------------------------------------------------------------

    async def _on_sync(self, items: list[dict[str, Any]]) -> None:
        self._wake.set()
        objects = {object_name(o): o for o in items}
        changed = _generations(objects) != _generations(self._objects)
        self._objects = objects
        for name in list(self._states):
            if name not in objects:
                self._forget(name)
        if changed:
            await self._refresh()

    async def _on_change(self, kind: str, obj: dict[str, Any]) -> None:
        self._wake.set()
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
        self._paused_seen.discard(name)
        self._acted.pop((name, "run-now"), None)
        self._acted.pop((name, "backfill"), None)
        self._states.pop(name, None)
        self.status.forget(name)

    async def _refresh(self) -> None:
        try:
            await self._refresh_config()
        except Exception as err:
            secrets = secrets_of(*(s.trigger for s in self._states.values()),
                                 *(f for s in self._states.values()
                                   for f in (s.functions or {}).values()))
            self._log.error("applying Trigger resources failed",
                            error=redact(describe(err, None), secrets)[:400])


RUN_NOW = "triggerbridge.dev/run-now"
BACKFILL = "triggerbridge.dev/backfill"


def parse_backfill(value: str, zone: str) -> tuple[datetime, datetime, BackfillPolicy]:
    """``<from>/<to>[/<policy>]``: ISO 8601 times (no offset: in ``zone``)."""
    parts = value.strip().split("/")
    if len(parts) not in (2, 3):
        raise ControlError(400, f"{BACKFILL}: expected <from>/<to>[/<policy>], got {value!r}")
    policy = parts[2] if len(parts) == 3 else "BufferAll"
    if policy not in BACKFILL_POLICIES:
        raise ControlError(400, f"{BACKFILL}: policy must be one of "
                                f"{', '.join(BACKFILL_POLICIES)}, got {policy!r}")
    moments = []
    for text in parts[:2]:
        try:
            moment = datetime.fromisoformat(text.strip())
        except ValueError:
            raise ControlError(400, f"{BACKFILL}: not an ISO 8601 time: {text!r}") from None
        moments.append(moment if moment.tzinfo else moment.replace(tzinfo=ZoneInfo(zone)))
    return moments[0], moments[1], "Allow" if policy == "Allow" else "BufferAll"


def _generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def _generations(objects: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: _generation(obj) for name, obj in objects.items()}
