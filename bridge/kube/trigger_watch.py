"""Trigger objects, watched and fed to the running config (see :mod:`bridge.kube.triggers`).

:class:`TriggerWatcher` is a :class:`~bridge.reload.TriggerSource`: a reflector keeps
the Trigger objects of one namespace; every add, change (new ``metadata.generation``)
and delete asks for a recomposition (``refresh``), which calls :meth:`contribute`
(validate each object, hand over the valid ones) and then :meth:`applied` (which ones
the runtime could not build). Each change of an object's :class:`TriggerState` is
queued for :attr:`status`, the writer of its status and Events.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

from kubernetes_asyncio.client import CustomObjectsApi

from bridge.config import BridgeConfig, FunctionConfig, TriggerConfig, secrets_of
from bridge.errors import describe
from bridge.kube.client import TRIGGER_GROUP, TRIGGER_VERSION, TRIGGERS, KubeClient
from bridge.kube.reflector import Reflector, object_name
from bridge.kube.trigger_status import TriggerStatusWriter
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
    ) -> None:
        self._refresh_config = refresh
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
            identity=identity, interval=status_interval,
        )

    @property
    def ready(self) -> bool:
        return self._reflector.ready

    async def run(self) -> None:
        """Watch the Trigger objects until cancelled (``status.run`` is the other loop)."""
        await self._reflector.run()

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
        objects = {object_name(o): o for o in items}
        changed = _generations(objects) != _generations(self._objects)
        self._objects = objects
        for name in list(self._states):
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


def _generation(obj: dict[str, Any]) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 0)


def _generations(objects: dict[str, dict[str, Any]]) -> dict[str, int]:
    return {name: _generation(obj) for name, obj in objects.items()}
