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
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes_asyncio.client import CoreV1Api, CustomObjectsApi

from bridge.kube.client import EVENTS, TRIGGER_GROUP, TRIGGER_VERSION, TRIGGERS, KubeClient
from bridge.kube.errors import KubeError, log_api_error
from bridge.kube.triggers import TriggerState
from bridge.leadership import Leadership
from bridge.logs import Logger

API_VERSION = f"{TRIGGER_GROUP}/{TRIGGER_VERSION}"
MERGE_PATCH = "application/merge-patch+json"


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
    ) -> None:
        self._kube = kube
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
                continue
            await self._report(name)

    def _on_leadership(self, leader: bool) -> None:
        if leader:
            self._reported.clear()
            self._schedules.clear()
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
            await self._patch_status(name, {"status": ready_status(obj, state)})
            await self._kube.call("create", EVENTS, CoreV1Api.create_namespaced_event,
                                  namespace=self.namespace,
                                  body=self._event(obj, state))
        except KubeError as err:
            log_api_error(self._log, err, f"status of Trigger {name}", self._interval)
            self._failed.add(name)
            return
        self._reported[name] = state.key

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


def ready_status(obj: dict[str, Any], state: TriggerState) -> dict[str, Any]:
    """The ``status`` a Trigger object gets for ``state``: its Ready condition (whose
    ``lastTransitionTime`` moves only when its status does)."""
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
    return {"observedGeneration": state.generation, "conditions": [condition]}


def _seconds(moment: datetime) -> str:
    """RFC 3339 in whole seconds, UTC (a Kubernetes Time)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
