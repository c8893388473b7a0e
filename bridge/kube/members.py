"""Cluster membership over one ``coordination.k8s.io/v1`` Lease per replica.

Each replica writes its own *member Lease*, ``<BRIDGE_LEASE_NAME>-member-<identity>``,
labelled ``triggerbridge.dev/member-of=<BRIDGE_LEASE_NAME>``, and renews it every
``retry_period``; in the same round it lists the member Leases of its group. A
replica is live while its record (holder, renewTime) changed within its
``leaseDurationSeconds`` -- timed on *our* monotonic clock from when we saw it change,
as :mod:`bridge.kube.lease` does, so clock skew between nodes does not matter.

Why Leases and not the bridge Service's EndpointSlices: an EndpointSlice lists pods
by readiness and a crashed node's pods stay in it until the node is evicted (minutes);
a replica that is not ready (one broken trigger) still invokes functions. A Lease
says exactly "this process is alive and counting itself in", expires after one lease
duration wherever the process died, and uses the timings the cron Lease already has.

Our own membership is *current* while the last round that renewed our Lease *and*
listed the others began less than ``renew_deadline`` ago (a timer flips the view the
moment it passes, whatever the API call is doing), and *settled* (we take quota
shares) once it has been current for one ``lease_duration``: by then every live
replica has listed us and shrunk its share.
A graceful stop deletes our Lease after the drain (:meth:`close`), so the others
grow their shares at once; a killed replica's Lease expires after one lease duration.
A member Lease expired for two lease durations is deleted by whoever sees it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio.client import CoordinationV1Api

from bridge.cluster import Members
from bridge.errors import describe
from bridge.kube.client import LEASES, KubeClient, KubeConfigError
from bridge.kube.errors import KubeError, log_api_error
from bridge.kube.lease import lease_spec, micro_time
from bridge.logs import Logger
from bridge.metrics import Metrics

GROUP_LABEL = "triggerbridge.dev/member-of"
SHARDS_ANNOTATION = "triggerbridge.dev/cron-shards"


def member_lease_name(group: str, identity: str) -> str:
    """A valid object name for ``identity``'s member Lease (DNS subdomain)."""
    cleaned = re.sub(r"[^a-z0-9.-]+", "-", identity.lower()).strip("-.") or "replica"
    return f"{group}-member-{cleaned}"[:253].rstrip("-.")


class MemberLeases:
    """The :class:`~bridge.cluster.Cluster` of the replicas sharing ``group``."""

    def __init__(
        self,
        kube: KubeClient,
        group: str,
        identity: str,
        log: Logger,
        *,
        namespace: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        shard_count: int = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self._kube = kube
        self.group = group
        self.identity = identity
        self.name = member_lease_name(group, identity)
        self._namespace = namespace
        self._duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry = retry_period
        self._shards = shard_count
        self._log = log.bind(lease=self.name, identity=identity)
        self._metrics = metrics
        self._members = Members(identity)
        self._callbacks: list[Callable[[Members], None]] = []
        self._own: dict[str, Any] | None = None
        #: Monotonic time our last successful write was sent; when we joined.
        self._renewed_at: float | None = None
        self._joined_at: float | None = None
        #: identity -> ((holder, renewTime, duration), first seen with that record).
        self._observed: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._others: dict[str, int] = {}
        #: Members whose Lease we saw expire (or deleted after expiring), until they renew.
        self._expired: set[str] = set()
        self._watchdog: asyncio.TimerHandle | None = None
        self._ready = True

    # --- the Cluster contract -------------------------------------------------------

    @property
    def members(self) -> Members:
        return self._members

    def on_change(self, callback: Callable[[Members], None]) -> None:
        self._callbacks.append(callback)

    def gone(self, identity: str) -> bool:
        """Seen to expire: its record did not change for its lease duration on our
        clock, so (renew deadline < lease duration) it stopped acting as a member."""
        return identity in self._expired

    @property
    def ready(self) -> bool:
        """False while the API refuses us (403) or the kubeconfig cannot be used."""
        return self._ready

    @property
    def namespace(self) -> str:
        return self._namespace or self._kube.namespace

    async def run(self) -> None:
        """Renew our Lease and list the others' every retry period, until cancelled."""
        while True:
            try:
                async with asyncio.timeout(self._renew_deadline - self._retry / 2):
                    await self._round()
                self._ready = True
            except Exception as err:
                self._failed(err)
            self._update()
            await asyncio.sleep(self._retry)

    async def close(self) -> None:
        """Leave: delete our member Lease (bounded by the renew deadline)."""
        self._disarm()
        self._renewed_at = self._joined_at = None
        self._update()
        try:
            async with asyncio.timeout(self._renew_deadline):
                await self._kube.call("delete", LEASES,
                                      CoordinationV1Api.delete_namespaced_lease,
                                      name=self.name, namespace=self.namespace)
            self._log.info("left the cluster: member lease deleted")
        except KubeError as err:
            if err.kind != "not_found":
                self._failed(err)
        except Exception as err:
            self._failed(err)

    # --- one round ------------------------------------------------------------------

    async def _round(self) -> None:
        """Renew, then list: our view counts as current only when both succeeded (a
        replica that can renew but not list would act on a stale view)."""
        sent = await self._renew()
        listed = await self._kube.call(
            "list", LEASES, CoordinationV1Api.list_namespaced_lease,
            namespace=self.namespace, label_selector=f"{GROUP_LABEL}={self.group}",
        )
        self._renewed(sent)
        await self._observe(listed.get("items") or [])

    async def _renew(self) -> float:
        """Write our Lease (create it on first use or when it was deleted); the monotonic
        time the successful write was sent."""
        now = micro_time(datetime.now(UTC))
        if self._own is None:
            try:
                self._own = await self._kube.call(
                    "get", LEASES, CoordinationV1Api.read_namespaced_lease,
                    name=self.name, namespace=self.namespace)
            except KubeError as err:
                if err.kind != "not_found":
                    raise
                return await self._create(now)
        lease = self._own
        spec = lease_spec(lease)
        spec.update(holderIdentity=self.identity, renewTime=now,
                    leaseDurationSeconds=max(1, round(self._duration)))
        lease["spec"] = spec
        lease.setdefault("metadata", {}).setdefault("annotations", {})[SHARDS_ANNOTATION] = (
            str(self._shards))
        sent = time.monotonic()
        try:
            self._own = await self._kube.call(
                "update", LEASES, CoordinationV1Api.replace_namespaced_lease,
                name=self.name, namespace=self.namespace, body=lease)
        except KubeError as err:
            self._own = None  # read it again next round (409: written elsewhere; 404: gone)
            if err.kind == "not_found":
                return await self._create(now)
            raise
        return sent

    async def _create(self, now: str) -> float:
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "labels": {GROUP_LABEL: self.group},
                         "annotations": {SHARDS_ANNOTATION: str(self._shards)}},
            "spec": {"holderIdentity": self.identity, "renewTime": now, "acquireTime": now,
                     "leaseDurationSeconds": max(1, round(self._duration))},
        }
        sent = time.monotonic()
        self._own = await self._kube.call("create", LEASES,
                                          CoordinationV1Api.create_namespaced_lease,
                                          namespace=self.namespace, body=body)
        self._log.info("joined the cluster: member lease created")
        return sent

    def _renewed(self, sent: float) -> None:
        self._renewed_at = sent
        if self._joined_at is None:
            self._joined_at = sent
        self._disarm()
        self._watchdog = asyncio.get_running_loop().call_later(
            max(0.0, sent + self._renew_deadline - time.monotonic()), self._deadline_passed)

    def _deadline_passed(self) -> None:
        """Our membership was not renewed within the renew deadline: share nothing
        until we have been a member again for a lease duration."""
        self._watchdog = None
        self._renewed_at = self._joined_at = None
        self._log.warning("member lease not renewed within the renew deadline; "
                          "taking no quota share until it is", renew_deadline=self._renew_deadline)
        self._update()

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _observe(self, items: list[dict[str, Any]]) -> None:
        """Record every member Lease's record; the live others and their shard counts;
        delete those expired for two lease durations."""
        now = time.monotonic()
        seen, others, stale = set(), {}, []
        for item in items:
            spec = lease_spec(item)
            holder = spec.get("holderIdentity")
            name = (item.get("metadata") or {}).get("name")
            if not holder or not isinstance(name, str) or holder == self.identity:
                continue
            seen.add(holder)
            record = (spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            previous = self._observed.get(holder)
            if previous is None or previous[0] != record:
                self._observed[holder] = previous = (record, now)
                self._expired.discard(holder)
            duration = float(spec.get("leaseDurationSeconds") or self._duration)
            if now < previous[1] + duration:
                others[holder] = _shard_count(item)
                continue
            self._expired.add(holder)
            if now > previous[1] + 2 * duration:
                stale.append((holder, name))
        for holder in set(self._observed) - seen:
            del self._observed[holder]
        self._others = others
        for holder, name in stale:
            await self._delete_stale(holder, name)

    async def _delete_stale(self, holder: str, name: str) -> None:
        try:
            await self._kube.call("delete", LEASES, CoordinationV1Api.delete_namespaced_lease,
                                  name=name, namespace=self.namespace)
            self._log.info("deleted an expired member lease", member=holder, member_lease=name)
        except KubeError as err:
            if err.kind != "not_found":
                raise
        self._observed.pop(holder, None)

    # --- the view -------------------------------------------------------------------

    def _update(self) -> None:
        now = time.monotonic()
        current = self._renewed_at is not None and now < self._renewed_at + self._renew_deadline
        live = dict(self._others)
        if current:
            live[self.identity] = self._shards
        settled = current and self._joined_at is not None and now >= (
            self._joined_at + self._duration)
        members = Members(self.identity, tuple(sorted(live)), settled, live)
        if self._metrics is not None:
            self._metrics.cluster_members.set(len(live))
        if members == self._members:
            return
        previous, self._members = self._members, members
        if previous.identities != members.identities or previous.settled != members.settled:
            self._log.info("cluster members changed", members=list(members.identities),
                           settled=settled)
        for callback in list(self._callbacks):
            try:
                callback(members)
            except Exception as err:
                self._log.error("cluster change callback failed", error=describe(err, 400),
                                exc_info=True)

    def _failed(self, err: Exception) -> None:
        kind = ("config" if isinstance(err, KubeConfigError) else
                "api" if isinstance(err, KubeError) else
                "timeout" if isinstance(err, TimeoutError) else
                "malformed" if isinstance(err, ValueError) else "internal")
        if self._metrics is not None:
            self._metrics.lease_failures.labels(lease=self.name, kind=kind).inc()
        if isinstance(err, KubeError):
            self._ready = err.kind != "forbidden"
            log_api_error(self._log, err, f"member lease {self.name}", self._retry)
            return
        if isinstance(err, KubeConfigError):
            self._ready = False
        self._log.error("member lease round failed", kind=kind, error=describe(err, 400),
                        retry_in=self._retry, exc_info=kind == "internal")


def _shard_count(lease: dict[str, Any]) -> int:
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(SHARDS_ANNOTATION, 0))
    except (TypeError, ValueError):
        return -1  # unreadable: disagrees with every replica (no cron fires; logged there)
