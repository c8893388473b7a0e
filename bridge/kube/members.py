"""Cluster membership: every replica's entry in one ``coordination.k8s.io/v1`` Lease.

The Lease ``<BRIDGE_LEASE_NAME>-members`` is only a container: each replica keeps its
own annotation on it, ``member.triggerbridge.dev/<identity>`` = ``{"holderIdentity",
"renewTime", "leaseDurationSeconds", "shards"}`` (JSON), written every
``retry_period`` with a JSON merge patch of that one key -- patches of different keys
never conflict, and the answer is the whole Lease, so one call per round both renews
our entry and reads everyone's. A replica is live while its entry changed within its
``leaseDurationSeconds`` -- timed on *our* monotonic clock from when we saw it change,
as :mod:`bridge.kube.lease` does, so clock skew between nodes does not matter.

Why one Lease with a known name: RBAC can then name it (``resourceNames``) and the
bridge needs no ``list`` or ``delete`` on Leases; a Lease per pod would be named after
the pod, which no Role can name in advance. Why a Lease and not the bridge Service's
EndpointSlices: a slice lists pods by readiness and a crashed node's pods stay in it
until the node is evicted (minutes); a replica that is not ready (one broken trigger)
still invokes functions. An entry says exactly "this process is alive and counts
itself in", expires one lease duration after its process died wherever it died, and
uses the timings the cron Lease already has.

Our own membership is *current* while our last successful round began less than
``renew_deadline`` ago (a timer flips the view the moment it passes, whatever the API
call is doing), and *settled* (we take quota shares) once it has been current for one
``lease_duration``: by then every live replica has seen us and shrunk its share. A
graceful stop removes our entry after the drain (:meth:`close`), so the others grow
their shares at once; a killed replica's entry expires after one lease duration and is
removed, two lease durations after it expired, by whoever sees it.
"""

from __future__ import annotations

import asyncio
import json
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
from bridge.kube.lease import micro_time
from bridge.logs import Logger
from bridge.metrics import Metrics

MEMBER_PREFIX = "member.triggerbridge.dev/"
MERGE_PATCH = "application/merge-patch+json"


def member_key(identity: str) -> str:
    """The annotation key of ``identity``'s entry (a valid qualified name)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", identity)[:63].strip("-._") or "replica"
    return MEMBER_PREFIX + cleaned


def members_lease_name(group: str) -> str:
    return f"{group}-members"


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
        self.name = members_lease_name(group)
        self.key = member_key(identity)
        self._namespace = namespace
        self._duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry = retry_period
        self._shards = shard_count
        self._log = log.bind(lease=self.name, identity=identity)
        self._metrics = metrics
        self._members = Members(identity)
        self._callbacks: list[Callable[[Members], None]] = []
        #: Monotonic time our last successful round was sent; when we joined.
        self._renewed_at: float | None = None
        self._joined_at: float | None = None
        #: identity -> ((renewTime, duration), first seen with that record).
        self._observed: dict[str, tuple[tuple[Any, ...], float]] = {}
        self._others: dict[str, int] = {}
        #: Members whose entry we saw expire (or removed after expiring), until they renew.
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
        """Seen to expire: its entry did not change for its lease duration on our
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
        """Renew our entry and read the others' every retry period, until cancelled."""
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
        """Leave: remove our entry (bounded by the renew deadline)."""
        self._disarm()
        self._renewed_at = self._joined_at = None
        self._update()
        try:
            async with asyncio.timeout(self._renew_deadline):
                await self._patch({self.key: None})
            self._log.info("left the cluster: member entry removed")
        except KubeError as err:
            if err.kind != "not_found":
                self._failed(err)
        except Exception as err:
            self._failed(err)

    # --- one round ------------------------------------------------------------------

    async def _round(self) -> None:
        """Write our entry; the answer (the whole Lease) holds everyone's."""
        entry = json.dumps({
            "holderIdentity": self.identity, "renewTime": micro_time(datetime.now(UTC)),
            "leaseDurationSeconds": max(1, round(self._duration)), "shards": self._shards,
        }, separators=(",", ":"))
        sent = time.monotonic()
        try:
            lease = await self._patch({self.key: entry})
        except KubeError as err:
            if err.kind != "not_found":
                raise
            lease = await self._create({self.key: entry})
        self._renewed(sent)
        await self._observe(lease)

    async def _patch(self, annotations: dict[str, str | None]) -> dict[str, Any]:
        return await self._kube.call(
            "patch", LEASES, CoordinationV1Api.patch_namespaced_lease,
            name=self.name, namespace=self.namespace,
            body={"metadata": {"annotations": annotations}}, _content_type=MERGE_PATCH)

    async def _create(self, annotations: dict[str, str]) -> dict[str, Any]:
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace,
                         "annotations": annotations},
            "spec": {},
        }
        try:
            created = await self._kube.call("create", LEASES,
                                            CoordinationV1Api.create_namespaced_lease,
                                            namespace=self.namespace, body=body)
        except KubeError as err:
            if err.kind != "conflict":
                raise
            return await self._patch(dict(annotations))  # another replica created it first
        self._log.info("created the members lease")
        return created

    def _renewed(self, sent: float) -> None:
        self._renewed_at = sent
        if self._joined_at is None:
            self._joined_at = sent
            self._log.info("joined the cluster")
        self._disarm()
        self._watchdog = asyncio.get_running_loop().call_later(
            max(0.0, sent + self._renew_deadline - time.monotonic()), self._deadline_passed)

    def _deadline_passed(self) -> None:
        """Our entry was not renewed within the renew deadline: share nothing and lead
        no shard until we have been a member again for a lease duration."""
        self._watchdog = None
        self._renewed_at = self._joined_at = None
        self._log.warning("member entry not renewed within the renew deadline; "
                          "taking no share until it is", renew_deadline=self._renew_deadline)
        self._update()

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    async def _observe(self, lease: dict[str, Any]) -> None:
        """Record every entry; the live others and their shard counts; remove those
        expired for two lease durations."""
        now = time.monotonic()
        annotations = (lease.get("metadata") or {}).get("annotations") or {}
        seen, others, stale = set(), {}, []
        for key, text in annotations.items():
            if not key.startswith(MEMBER_PREFIX) or key == self.key:
                continue
            entry = _entry(text)
            holder = entry.get("holderIdentity")
            if not isinstance(holder, str) or not holder:
                continue
            seen.add(holder)
            record = (entry.get("renewTime"), entry.get("leaseDurationSeconds"))
            previous = self._observed.get(holder)
            if previous is None or previous[0] != record:
                self._observed[holder] = previous = (record, now)
                self._expired.discard(holder)
            duration = _number(entry.get("leaseDurationSeconds"), self._duration)
            if now < previous[1] + duration:
                others[holder] = int(_number(entry.get("shards"), -1))
                continue
            self._expired.add(holder)
            if now > previous[1] + 2 * duration:
                stale.append((holder, key))
        for holder in set(self._observed) - seen:
            del self._observed[holder]
        self._others = others
        if stale:
            await self._patch(dict.fromkeys((key for _, key in stale), None))
            for holder, _ in stale:
                self._observed.pop(holder, None)
            self._log.info("removed expired member entries",
                           members=[holder for holder, _ in stale])

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
            log_api_error(self._log, err, f"member entry on lease {self.name}", self._retry)
            return
        if isinstance(err, KubeConfigError):
            self._ready = False
        self._log.error("member lease round failed", kind=kind, error=describe(err, 400),
                        retry_in=self._retry, exc_info=kind == "internal")


def _entry(text: object) -> dict[str, Any]:
    """A member entry; an unreadable one is an empty entry (ignored)."""
    try:
        entry = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return entry if isinstance(entry, dict) else {}


def _number(value: object, default: float) -> float:
    """A JSON number (not a bool), else ``default`` (an unreadable shard count is -1:
    it disagrees with every replica, so no cron fires; logged by the shards)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return default
