"""Leadership for cron over a ``coordination.k8s.io/v1`` Lease (client-go's algorithm).

Every replica runs :class:`LeaseLeadership`; at most one holds the Lease at a time:

- every ``retry_period`` a replica reads the Lease (creating it on 404). If another
  holder's record is younger than ``leaseDurationSeconds`` -- measured on *our* clock
  from when we last saw the record change, so clock skew between nodes does not
  matter -- it waits. Otherwise it writes itself in as ``holderIdentity`` (new
  ``acquireTime``, ``leaseTransitions`` + 1), sending the resourceVersion it read: a
  409 Conflict means another replica won the race, and it stays a follower.
- the leader renews ``renewTime`` every ``retry_period``; if no renewal succeeds for
  ``renew_deadline`` it steps down, before any other replica can consider the lease
  expired (``renew_deadline`` < ``lease_duration``), so two leaders never overlap.
- on a graceful stop the leader releases the Lease (empty holder, 1 s duration), so a
  rolling update hands cron over at once instead of after the lease duration.

``handover_since`` tells the cron connector from when it is responsible: the previous
holder's last ``renewTime`` (it may have fired ticks up to then, not after it stopped
renewing). The connector fires the ticks after it that are still within their starting
deadline; the scheduled-time event id lets functions drop a duplicate of a tick the old
leader fired between its last renewal and its death.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bridge.kube.client import LEASES, KubeClient, KubeError, log_api_error
from bridge.logs import Logger


def micro_time(moment: datetime) -> str:
    """Kubernetes MicroTime: RFC 3339 with microseconds, UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class LeaseLeadership:
    """The :class:`~bridge.leadership.Leadership` of one replica, backed by a Lease."""

    def __init__(
        self,
        client: KubeClient,
        name: str,
        identity: str,
        log: Logger,
        *,
        namespace: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ) -> None:
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("lease timings need retry_period < renew_deadline < lease_duration")
        self._client = client
        self.name = name
        self.identity = identity
        self._namespace = namespace
        self._duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry = retry_period
        self._log = log.bind(lease=name, identity=identity)
        self._leader = False
        self._renewed_at = 0.0
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._callbacks: list[Callable[[bool], None]] = []
        self._became_leader = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: The previous holder's last renewTime when we took over (None: a new Lease).
        self.handover_since: datetime | None = None
        #: False while the API refuses us (403): feeds readiness.
        self.ready = True

    @property
    def is_leader(self) -> bool:
        return self._leader

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    async def wait_leader(self) -> None:
        await self._became_leader.wait()

    @property
    def namespace(self) -> str:
        return self._namespace or self._client.namespace

    async def start(self) -> None:
        if self._task is None or self._task.done():
            await self._client.connect()
            self._task = asyncio.create_task(self._run(), name=f"lease:{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._leader:
            self._set_leader(False)
            await self._release()

    # --- the loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                held = await self._try_acquire_or_renew()
                failures = 0
                self.ready = True
            except KubeError as err:
                held = False
                failures += 1
                self.ready = err.kind != "forbidden"
                log_api_error(self._log, err, f"lease {self.name}", self._retry)
            now = time.monotonic()
            if held:
                self._renewed_at = now
                if not self._leader:
                    self._set_leader(True)
            elif self._leader and now - self._renewed_at >= self._renew_deadline:
                self._log.warning("lease not renewed within the renew deadline; stepping down",
                                  renew_deadline=self._renew_deadline)
                self._set_leader(False)
            await asyncio.sleep(self._retry)

    async def _try_acquire_or_renew(self) -> bool:
        now = datetime.now(UTC)
        try:
            lease = await self._client.request("get", LEASES, self.namespace, name=self.name)
        except KubeError as err:
            if err.kind != "not_found":
                raise
            return await self._create(now)
        spec = dict(lease.get("spec") or {})
        holder = spec.get("holderIdentity") or None
        self._observe(spec)
        duration = float(spec.get("leaseDurationSeconds") or self._duration)
        if holder not in (None, self.identity) and time.monotonic() < self._observed_at + duration:
            return False
        previous_renew = parse_time(spec.get("renewTime"))
        if holder != self.identity:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
            spec["holderIdentity"] = self.identity
        spec["renewTime"] = micro_time(now)
        spec["leaseDurationSeconds"] = max(1, round(self._duration))
        lease["spec"] = spec
        try:
            updated = await self._client.request(
                "update", LEASES, self.namespace, name=self.name, body=lease
            )
        except KubeError as err:
            if err.kind == "conflict":
                self._log.debug("lease update conflicted: another replica won")
                return False
            raise
        self._observe(updated.get("spec") or {})
        if not self._leader:
            self.handover_since = previous_renew
            if holder not in (None, self.identity):
                self._log.info("took over an expired lease", previous_holder=holder,
                               previous_renew=spec.get("renewTime"))
        return True

    async def _create(self, now: datetime) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, round(self._duration)),
                "acquireTime": micro_time(now),
                "renewTime": micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            created = await self._client.request("create", LEASES, self.namespace, body=body)
        except KubeError as err:
            if err.kind == "conflict":
                return False
            raise
        self._observe(created.get("spec") or {})
        self.handover_since = None
        return True

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (spec.get("holderIdentity"), spec.get("renewTime"),
                  spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    def _set_leader(self, leader: bool) -> None:
        self._leader = leader
        if leader:
            self._became_leader.set()
        else:
            self._became_leader.clear()
        self._log.info("cron leadership " + ("acquired" if leader else "lost"),
                       handover_since=None if self.handover_since is None
                       else micro_time(self.handover_since))
        for callback in list(self._callbacks):
            try:
                callback(leader)
            except Exception as err:
                self._log.error("leadership callback failed", error=str(err)[:300])

    async def _release(self) -> None:
        """Give the Lease up at once (graceful stop), if we still hold it."""
        try:
            lease = await self._client.request("get", LEASES, self.namespace, name=self.name)
            spec = dict(lease.get("spec") or {})
            if spec.get("holderIdentity") != self.identity:
                return
            now = micro_time(datetime.now(UTC))
            spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=now)
            lease["spec"] = spec
            await self._client.request("update", LEASES, self.namespace, name=self.name,
                                       body=lease)
            self._log.info("lease released")
        except KubeError as err:
            log_api_error(self._log, err, f"lease {self.name} release", None)
