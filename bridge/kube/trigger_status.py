"""The status and Events of Trigger objects (see :mod:`bridge.kube.triggers`).

:class:`TriggerStatusWriter` writes, for each change of a Trigger's
:class:`~bridge.kube.triggers.TriggerState`, its ``status`` (the ``Ready`` condition and
``observedGeneration``, a JSON merge patch of the status subresource) and an Event;
and, when no change waits, the ``lastScheduleTime`` of cron Triggers whose last fired
tick moved. Only the replica that leads for the Trigger writes its status
(``leadership.for_trigger(name)``: the cron Lease, or with cron shards the holder of
the Trigger's shard, which is also the replica firing its ticks and so the one that
knows its ``lastScheduleTime``); a new leader rewrites them all; a write the API
refused is tried again after ``interval``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes_asyncio.client import CoreV1Api, CustomObjectsApi

from bridge.cron_control import ControlError, ScheduleControl
from bridge.kube.client import EVENTS, TRIGGER_GROUP, TRIGGER_VERSION, TRIGGERS, KubeClient
from bridge.kube.errors import KubeError, log_api_error
from bridge.kube.triggers import TriggerState
from bridge.leadership import Leadership
from bridge.logs import Logger

API_VERSION = f"{TRIGGER_GROUP}/{TRIGGER_VERSION}"
MERGE_PATCH = "application/merge-patch+json"


#: The control of a running cron trigger (``Runtime.schedule_control``).
ControlLookup = Callable[[str], tuple[ScheduleControl, str]]


class TriggerStates(Protocol):
    """Where the writer reads the objects and their states (the watcher)."""

    def current(self, name: str) -> tuple[dict[str, Any], TriggerState] | None: ...

    def names(self) -> list[str]: ...


class TriggerStatusWriter:
    def __init__(
        self,
        kube: KubeClient,
        states: TriggerStates,
        leadership: Leadership,
        last_schedule_time: Callable[[str], datetime | None],
        log: Logger,
        *,
        namespace: str | None = None,
        identity: str = "trigger-bridge",
        interval: float = 2.0,
        control: ControlLookup | None = None,
    ) -> None:
        self._kube = kube
        self._control = control
        self._states = states
        self._leadership = leadership
        self._last_schedule_time = last_schedule_time
        self._log = log
        self._namespace = namespace
        self._identity = identity
        self._interval = interval
        self._pending: asyncio.Queue[str] = asyncio.Queue()
        self._reported: dict[str, tuple[int, str, str]] = {}
        self._schedules: dict[str, str] = {}
        #: What the cron status last said, by trigger: (paused event id, backfill json).
        self._cron: dict[str, tuple[str | None, str | None]] = {}
        self._failed: set[str] = set()
        leadership.on_change(self._on_leadership)

    @property
    def namespace(self) -> str:
        return self._namespace or self._kube.namespace

    def changed(self, name: str) -> None:
        """The state of ``name`` changed: write its status."""
        self._pending.put_nowait(name)

    def forget(self, name: str) -> None:
        self._failed.discard(name)
        self._reported.pop(name, None)
        self._schedules.pop(name, None)
        self._cron.pop(name, None)

    async def run(self) -> None:
        """Write statuses as states change; when idle for ``interval``, retry the
        refused ones and write schedule times. Until cancelled."""
        while True:
            try:
                async with asyncio.timeout(self._interval):  # the wait only, not a write
                    name = await self._pending.get()
            except TimeoutError:
                for name in self._failed:
                    self._pending.put_nowait(name)
                self._failed.clear()
                await self._report_schedules()
                await self._report_cron()
                continue
            await self._report(name)

    def _on_leadership(self, leader: bool) -> None:
        if leader:
            self._reported.clear()
            self._schedules.clear()
            self._cron.clear()
            for name in self._states.names():
                self._pending.put_nowait(name)

    async def _report(self, name: str) -> None:
        current = self._states.current(name)
        if current is None or not self._leadership.for_trigger(name).is_leader:
            return
        obj, state = current
        if self._reported.get(name) == state.key:
            return
        try:
            paused = self._cron_state(name)[0]
            await self._patch_status(name, {"status": ready_status(obj, state, paused)})
            await self._kube.call("create", EVENTS, CoreV1Api.create_namespaced_event,
                                  namespace=self.namespace,
                                  body=self._event(obj, state))
        except KubeError as err:
            log_api_error(self._log, err, f"status of Trigger {name}", self._interval)
            self._failed.add(name)
            return
        self._reported[name] = state.key

    async def patch(self, name: str, status: dict[str, Any]) -> None:
        """Merge ``status`` into the Trigger's status (KubeError if refused)."""
        await self._patch_status(name, {"status": status})

    def _cron_state(self, name: str) -> tuple[str | None, str | None]:
        """(paused event id, backfill progress as JSON) of cron trigger ``name``."""
        if self._control is None:
            return None, None
        try:
            control, _ = self._control(name)
        except ControlError:
            return None, None
        progress = control.backfill_progress
        return control.paused, None if progress is None else json.dumps(
            progress.to_json() | {"summary": progress.summary}, sort_keys=True)

    async def _report_cron(self) -> None:
        """Write the ``Paused`` condition and backfill progress of cron Triggers whose
        pause or backfill changed (each by the replica leading that trigger)."""
        for name in self._states.names():
            current = self._states.current(name)
            if current is None or not current[1].ok:
                continue
            if not self._leadership.for_trigger(name).is_leader:
                continue
            cron = self._cron_state(name)
            if self._cron.get(name, (None, None)) == cron:
                continue
            obj, state = current
            status: dict[str, Any] = {"conditions": ready_status(obj, state, cron[0])[
                "conditions"]}
            if cron[1] is not None:
                status["backfill"] = {k: v for k, v in json.loads(cron[1]).items()
                                      if k not in ("done_after", "trigger") and v is not None}
            try:
                await self._patch_status(name, {"status": status})
            except KubeError as err:
                log_api_error(self._log, err, f"status of Trigger {name}", None)
                continue
            self._cron[name] = cron

    async def _patch_status(self, name: str, body: dict[str, Any]) -> None:
        await self._kube.call(
            "patch", TRIGGERS, CustomObjectsApi.patch_namespaced_custom_object_status,
            group=TRIGGER_GROUP, version=TRIGGER_VERSION, namespace=self.namespace,
            plural=TRIGGERS.plural, name=name, body=body, _content_type=MERGE_PATCH,
        )

    def _event(self, obj: dict[str, Any], state: TriggerState) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        name, now = str(meta.get("name") or ""), _seconds(datetime.now(UTC))
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": API_VERSION, "kind": "Trigger", "name": name,
                "namespace": self.namespace, "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": state.reason,
            "message": state.message,
            "type": "Normal" if state.ok else "Warning",
            "source": {"component": "trigger-bridge"},
            "reportingComponent": "trigger-bridge", "reportingInstance": self._identity,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }

    async def _report_schedules(self) -> None:
        """Write ``lastScheduleTime`` of cron Triggers whose last fired tick changed."""
        for name in self._states.names():
            if not self._leadership.for_trigger(name).is_leader:
                continue
            current = self._states.current(name)
            last = self._last_schedule_time(name)
            if current is None or not current[1].ok or last is None:
                continue
            stamp = _seconds(last)
            if self._schedules.get(name) == stamp:
                continue
            try:
                await self._patch_status(name, {"status": {"lastScheduleTime": stamp}})
            except KubeError as err:
                log_api_error(self._log, err, f"status of Trigger {name}", None)
                continue
            self._schedules[name] = stamp


def ready_status(
    obj: dict[str, Any], state: TriggerState, paused: str | None = None
) -> dict[str, Any]:
    """The ``status`` a Trigger object gets for ``state``: its Ready condition (whose
    ``lastTransitionTime`` moves only when its status does) and, while the cron trigger
    is paused after a failure, a ``Paused`` condition (``paused``: the dead-lettered
    event). The list is written whole (a merge patch replaces lists)."""
    now = _seconds(datetime.now(UTC))
    status = "True" if state.ok else "False"
    old: dict[str, Any] = next((c for c in (obj.get("status") or {}).get("conditions") or []
                                if c.get("type") == "Ready"), {})
    condition = {
        "type": "Ready", "status": status, "reason": state.reason, "message": state.message,
        "observedGeneration": state.generation,
        "lastTransitionTime": old.get("lastTransitionTime", now)
        if old.get("status") == status else now,
    }
    conditions = [condition]
    if paused is not None:
        was: dict[str, Any] = next((c for c in (obj.get("status") or {}).get("conditions")
                                    or [] if c.get("type") == "Paused"), {})
        conditions.append({
            "type": "Paused", "status": "True", "reason": "RunDeadLettered",
            "message": f"run {paused} was dead-lettered (pause_on_failure): fix the cause, "
                       "then delete this condition or run trigger-bridge resume",
            "observedGeneration": state.generation,
            "lastTransitionTime": was.get("lastTransitionTime", now),
        })
    return {"observedGeneration": state.generation, "conditions": conditions}


def _seconds(moment: datetime) -> str:
    """RFC 3339 in whole seconds, UTC (a Kubernetes Time)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
