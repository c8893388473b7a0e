"""Cron state shared by every replica: annotations on a Lease nobody holds.

With leader election a pause or a backfill must outlive a leader change, so it cannot
stay in one process or one pod's file. :class:`LeaseStateStore` keeps each trigger's
document (:mod:`bridge.cron_control`) as the annotation
``cron.triggerbridge.dev/<trigger>`` of the Lease ``<lease name>-state`` in the bridge's
namespace: the RBAC the cron Lease already has (get, create, update on leases) is
enough, it is not the Lease being renewed every retry period (no write conflicts with
leader election), and a Lease is cheap and namespaced. Writes are read-modify-write
with the resourceVersion read (a 409 reads again), so two triggers' saves never undo
each other. Reads are cached for a second: a start-up of many cron triggers reads the
Lease once, not once per trigger.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from kubernetes_asyncio.client import CoordinationV1Api

from bridge.kube.client import LEASES, KubeClient
from bridge.kube.errors import KubeError
from bridge.logs import Logger

PREFIX = "cron.triggerbridge.dev/"
_CACHE_SECONDS = 1.0
_CONFLICT_ATTEMPTS = 5


def state_lease_name(lease: str) -> str:
    """The Lease holding the cron state of a bridge whose cron Lease is ``lease``."""
    return f"{lease}-state"


class LeaseStateStore:
    durable = True

    def __init__(self, kube: KubeClient, name: str, log: Logger) -> None:
        self._kube = kube
        self.name = name
        self._log = log.bind(component="cron-state", lease=name)
        self._cached: tuple[float, dict[str, str]] | None = None
        self._reading: asyncio.Future[dict[str, str]] | None = None
        self._lock = asyncio.Lock()

    async def load(self, trigger: str) -> dict[str, Any]:
        annotations = await self._annotations()
        text = annotations.get(PREFIX + trigger)
        if not text:
            return {}
        try:
            document = json.loads(text)
        except ValueError:
            self._log.error("cron state annotation is not JSON; ignored", trigger=trigger)
            return {}
        return document if isinstance(document, dict) else {}

    async def save(self, trigger: str, state: dict[str, Any]) -> None:
        key = PREFIX + trigger
        async with self._lock:
            for attempt in range(1, _CONFLICT_ATTEMPTS + 1):
                lease = await self._get()
                if lease is None:
                    if not state:
                        return
                    try:
                        await self._create({key: json.dumps(state, sort_keys=True)})
                    except KubeError as err:
                        if err.kind != "conflict" or attempt == _CONFLICT_ATTEMPTS:
                            raise
                        continue
                    break
                meta = lease.setdefault("metadata", {})
                annotations = dict(meta.get("annotations") or {})
                if state:
                    annotations[key] = json.dumps(state, sort_keys=True)
                elif key not in annotations:
                    break
                else:
                    annotations.pop(key)
                meta["annotations"] = annotations
                try:
                    await self._kube.call(
                        "update", LEASES, CoordinationV1Api.replace_namespaced_lease,
                        name=self.name, namespace=self._kube.namespace, body=lease)
                except KubeError as err:
                    if err.kind != "conflict" or attempt == _CONFLICT_ATTEMPTS:
                        raise
                    continue
                break
            self._cached = None

    async def _annotations(self) -> dict[str, str]:
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
            return cached[1]
        if self._reading is None:
            self._reading = asyncio.ensure_future(self._read_annotations())
        reading = self._reading
        try:
            return await asyncio.shield(reading)
        finally:
            if reading.done() and self._reading is reading:
                self._reading = None

    async def _read_annotations(self) -> dict[str, str]:
        lease = await self._get()
        annotations = {} if lease is None else dict(
            (lease.get("metadata") or {}).get("annotations") or {})
        self._cached = (time.monotonic(), annotations)
        return annotations

    async def _get(self) -> dict[str, Any] | None:
        try:
            return await self._kube.call("get", LEASES, CoordinationV1Api.read_namespaced_lease,
                                         name=self.name, namespace=self._kube.namespace)
        except KubeError as err:
            if err.kind == "not_found":
                return None
            raise

    async def _create(self, annotations: dict[str, str]) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self._kube.namespace,
                         "annotations": annotations},
            "spec": {},
        }
        await self._kube.call("create", LEASES, CoordinationV1Api.create_namespaced_lease,
                              namespace=self._kube.namespace, body=body)
