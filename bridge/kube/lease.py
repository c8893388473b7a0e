"""Leadership for cron over a ``coordination.k8s.io/v1`` Lease (client-go's algorithm).

The algorithm is ours, not ``kubernetes_asyncio.leaderelection``, because that one
checks the renew deadline only between calls that have no timeout (a hanging call
keeps a stale leader firing) and has no previous renewTime for ``handover_since``, no
release after the drain, no failure counts and no retry period under 1 s.

Every replica runs :class:`LeaseLeadership`; at most one holds the Lease at a time:

- every ``retry_period`` a replica reads the Lease (creating it on 404). If another
  holder's record is younger than ``leaseDurationSeconds`` -- measured on *our* clock
  from when we last saw the record change, so clock skew between nodes does not
  matter -- it waits. Otherwise it writes itself in as ``holderIdentity`` (new
  ``acquireTime``, ``leaseTransitions`` + 1), sending the resourceVersion it read: a
  409 Conflict means another replica won the race, and it stays a follower.
- the leader renews ``renewTime`` every ``retry_period``. A renewal counts from the
  moment its write was *sent* (the API may apply it long before its answer comes back,
  and the other replicas time the record from when they see it change, which is later).
- it stops leading ``renew_deadline`` after its last successful renewal, on its own
  monotonic clock, whatever its call is doing: a timer fires at that moment and
  :attr:`is_leader` checks the clock itself, and every round is cut off by a timeout
  ending before the deadline, so a hanging API cannot keep a stale leader firing.
  ``renew_deadline`` < ``lease_duration``, so it has stopped before any other replica
  may consider the Lease expired: two leaders never overlap.
- any failure of a round (API error, timeout, a malformed Lease, bad JSON, a bug) is
  logged with its cause and counted (``bridge_lease_failures_total{kind}``); the loop
  goes on, as a follower when the failure was not an ordinary API error. It never dies
  while its replica leads.
- a graceful stop is two steps (see :mod:`bridge.leadership`): :meth:`stop_leading`
  when intake stops (no tick fires any more, the Lease stays held and renewed so no
  other replica starts a run while ours drain), then :meth:`close` (after :meth:`run`
  is cancelled) once the triggers have drained, which releases the Lease (empty
  holder, 1 s duration) so the next replica takes over at once. The released
  record's ``renewTime`` is the moment this replica stopped firing (earlier if a tick
  due before it was not fired), so the next leader fires the ticks after it.

``handover_since`` tells the cron connector from when it is responsible: the previous
holder's last ``renewTime`` (it may have fired ticks up to then, not after it stopped
renewing). ``handover_window`` bounds how far back that can matter: a holder that
stopped renewing has stopped firing within ``renew_deadline``, and another replica
takes over within ``lease_duration`` + ``retry_period`` of its last renewal. A Lease
left behind long ago (every replica down over a weekend) therefore brings no backlog.
The scheduled-time event id lets functions drop a duplicate of a tick the old leader
fired between its last renewal and its death.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes_asyncio.client import CoordinationV1Api

from bridge.errors import describe
from bridge.kube.client import LEASES, KubeClient, KubeConfigError
from bridge.kube.errors import KubeError, log_api_error
from bridge.logs import Logger
from bridge.metrics import Metrics

_MICROSECOND = timedelta(microseconds=1)


class MalformedLease(ValueError):
    """The Lease object does not have the shape of a coordination.k8s.io/v1 Lease."""


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


def lease_spec(lease: dict[str, Any]) -> dict[str, Any]:
    """A copy of the Lease's spec, its fields checked; :class:`MalformedLease` if not."""
    spec = lease.get("spec")
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise MalformedLease(f"spec is a {type(spec).__name__}, not an object")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise MalformedLease(f"spec.holderIdentity is a {type(holder).__name__}")
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int | float) or duration < 0
    ):
        raise MalformedLease(f"spec.leaseDurationSeconds is {duration!r}")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (isinstance(transitions, bool)
                                    or not isinstance(transitions, int)):
        raise MalformedLease(f"spec.leaseTransitions is {transitions!r}")
    return dict(spec)


class LeaseLeadership:
    """The :class:`~bridge.leadership.Leadership` of one replica, backed by a Lease."""

    def __init__(
        self,
        kube: KubeClient,
        name: str,
        identity: str,
        log: Logger,
        *,
        namespace: str | None = None,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        metrics: Metrics | None = None,
        holder_gone: Callable[[str], bool] | None = None,
    ) -> None:
        """``holder_gone(identity)``: True when that holder is known to have stopped
        firing (cron shards: its member entry was seen to expire), so an unexpired
        record of it need not be waited out."""
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("lease timings need retry_period < renew_deadline < lease_duration")
        self._kube = kube
        self.name = name
        self.identity = identity
        self._namespace = namespace
        self._duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry = retry_period
        self._log = log.bind(lease=name, identity=identity)
        self._metrics = metrics
        #: Our last write of the Lease succeeded less than renew_deadline ago.
        self._held = False
        #: We fire ticks: held, not stepped down after a failure, not stopping.
        self._leading = False
        self._stopping = False
        #: Monotonic time the last successful write of the Lease was sent.
        self._renewed_at = 0.0
        self._watchdog: asyncio.TimerHandle | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._callbacks: list[Callable[[bool], None]] = []
        self._became_leader = asyncio.Event()
        self._handover_since: datetime | None = None
        #: When this replica stopped firing (stop_leading): the released renewTime.
        self._fired_until: datetime | None = None
        self._ready = True
        #: False while this Lease is assigned to another replica (a cron shard): we do
        #: not take it, and hand it back if we hold it (see :meth:`set_wanted`).
        self._wanted = True
        self._handing_back = False
        self._wake = asyncio.Event()
        self._holder_gone = holder_gone
        self._set_gauge()

    # --- the Leadership contract --------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading and time.monotonic() < self._renewed_at + self._renew_deadline

    @property
    def handover_since(self) -> datetime | None:
        """The previous holder's last renewTime when we took over (None: a new Lease)."""
        return self._handover_since

    @property
    def handover_window(self) -> timedelta:
        return timedelta(seconds=self._duration + self._renew_deadline + self._retry)

    def on_change(self, callback: Callable[[bool], None]) -> None:
        self._callbacks.append(callback)

    def for_trigger(self, name: str) -> LeaseLeadership:
        """One Lease decides for every trigger."""
        return self

    def set_wanted(self, wanted: bool) -> None:
        """Whether this replica should hold the Lease (a cron shard assigned to it).

        Not wanted: never taken; if held, handed back in two rounds as at a graceful
        stop: first no tick fires any more (the Lease is still renewed, so a tick the
        clock was late for is noted as unfired), then the Lease is released with
        ``renewTime`` = the moment we stopped firing, and the next holder fires the
        ticks after it. Firing stops at once; being wanted starts a round at once."""
        if wanted == self._wanted:
            return
        self._wanted = wanted
        if wanted:
            if not self._stopping:
                self._fired_until = None
            self._wake.set()
        elif self._leading:
            self._fired_until = datetime.now(UTC)
            self._set_leading(False, "shard assigned to another replica; handing it back")

    async def wait_leader(self) -> None:
        await self._became_leader.wait()

    @property
    def ready(self) -> bool:
        """False while the API refuses us (403): feeds readiness."""
        return self._ready

    @property
    def namespace(self) -> str:
        return self._namespace or self._kube.namespace

    def stop_leading(self) -> None:
        """Fire no tick from now on, but keep holding (and renewing) the Lease: the
        triggers drain before :meth:`close` releases it."""
        if self._stopping:
            return
        self._stopping = True
        self._fired_until = datetime.now(UTC)
        if self._leading:
            self._set_leading(False, "stopping: the Lease is kept until the triggers drained")

    def note_unfired(self, scheduled: datetime) -> None:
        """A tick due at ``scheduled`` was not fired because we did not lead. While
        stopping, a tick due before :meth:`stop_leading` (the clock was a little late)
        moves the released renewTime back before it, so the next leader fires it."""
        if self._fired_until is not None and scheduled <= self._fired_until:
            self._fired_until = scheduled - _MICROSECOND

    async def close(self) -> None:
        """Release the Lease if we hold it (bounded: renew deadline), once :meth:`run`
        was cancelled and the triggers drained."""
        self.stop_leading()
        self._disarm()
        if self._held:
            self._held = False
            try:
                async with asyncio.timeout(self._renew_deadline):
                    await self._release()
            except Exception as err:
                self._failed(err, "release")
        self._set_gauge()

    # --- the loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Acquire or renew every retry period until cancelled; never raises otherwise."""
        while True:
            started = time.monotonic()
            self._wake.clear()
            try:
                async with asyncio.timeout(self._round_budget(started)):
                    sent = await self._round()
                self._ready = True
                if sent is not None:
                    self._renewed(sent)
            except Exception as err:
                self._failed(err, "renew" if self._held else "acquire")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retry):
                    await self._wake.wait()

    async def _round(self) -> float | None:
        """Acquire or renew; or, while not wanted, hand the Lease back: the first round
        after firing stopped (in :meth:`set_wanted`) still renews it, so a tick the clock
        was late for is noted as unfired; the next one releases it."""
        if self._wanted or self._stopping:
            self._handing_back = False
            return await self._try_acquire_or_renew()
        if not self._held:
            return None
        if not self._handing_back:
            self._handing_back = True
            return await self._try_acquire_or_renew()
        self._held = self._handing_back = False
        self._disarm()
        await self._release()
        self._fired_until = None
        self._set_gauge()
        return None

    def _round_budget(self, started: float) -> float:
        """Seconds a round may take: it ends before the renew deadline of the last
        renewal (half a retry period early, so a slow success does not flap)."""
        margin = self._renew_deadline - self._retry / 2
        if self._held and self._renewed_at + margin > started:
            return self._renewed_at + margin - started
        return margin

    def _renewed(self, sent: float) -> None:
        self._renewed_at = sent
        self._held = True
        self._disarm()
        self._watchdog = asyncio.get_running_loop().call_later(
            max(0.0, sent + self._renew_deadline - time.monotonic()), self._deadline_passed
        )
        if not self._leading and not self._stopping and self._wanted:
            self._set_leading(True, "lease acquired")

    def _deadline_passed(self) -> None:
        """The watchdog: no renewal succeeded within the renew deadline."""
        self._watchdog = None
        self._held = False
        if self._leading:
            self._count("renew_deadline")
            self._log.warning("lease not renewed within the renew deadline; stepping down",
                              renew_deadline=self._renew_deadline)
            self._set_leading(False, "renew deadline passed")
        self._set_gauge()

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _failed(self, err: Exception, during: str) -> None:
        """Log and count a failed round. An API error or a timeout leaves leadership to
        the renew deadline; anything else (malformed Lease, bad JSON, a bug) makes this
        replica a follower at once: its view of the Lease cannot be trusted. A kubeconfig
        that cannot be loaded (no connection was ever made) keeps it unready."""
        if isinstance(err, KubeConfigError):
            self._count("config")
            self._ready = False
            self._log.error("kubernetes config cannot be used", during=during,
                            error=describe(err, 400), retry_in=self._retry)
            return
        if isinstance(err, KubeError):
            self._count("api")
            self._ready = err.kind != "forbidden"
            log_api_error(self._log, err, f"lease {self.name} {during}", self._retry)
            return
        if isinstance(err, TimeoutError):
            self._count("timeout")
            self._log.warning("lease call timed out", during=during, leading=self._leading,
                              retry_in=self._retry)
            return
        kind = "malformed" if isinstance(err, ValueError) else "internal"
        self._count(kind)
        self._log.error(
            "lease round failed; going on as a follower", during=during, kind=kind,
            error=describe(err, 400), retry_in=self._retry,
            exc_info=kind == "internal",
        )
        if self._leading:
            self._set_leading(False, f"lease round failed ({kind})")

    def _count(self, kind: str) -> None:
        if self._metrics is not None:
            self._metrics.lease_failures.labels(lease=self.name, kind=kind).inc()

    def _set_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.cron_leader.labels(lease=self.name).set(1 if self._leading else 0)

    async def _try_acquire_or_renew(self) -> float | None:
        """One round: the monotonic time our successful write was sent, or None."""
        now = datetime.now(UTC)
        try:
            lease = await self._get()
        except KubeError as err:
            if err.kind != "not_found":
                raise
            wanted = self._wanted and not self._stopping
            return await self._create(now) if wanted else None
        spec = lease_spec(lease)
        holder = spec.get("holderIdentity") or None
        self._observe(spec)
        if holder != self.identity and (self._stopping or not self._wanted):
            return None  # never take a Lease while stopping or assigned elsewhere
        duration = float(spec.get("leaseDurationSeconds") or self._duration)
        if (holder not in (None, self.identity)
                and time.monotonic() < self._observed_at + duration
                and not (self._holder_gone is not None and self._holder_gone(holder))):
            return None
        previous_renew = parse_time(spec.get("renewTime"))
        if holder != self.identity:
            spec["acquireTime"] = micro_time(now)
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + (1 if holder else 0)
            spec["holderIdentity"] = self.identity
        spec["renewTime"] = micro_time(now)
        spec["leaseDurationSeconds"] = max(1, round(self._duration))
        lease["spec"] = spec
        sent = time.monotonic()
        try:
            updated = await self._replace(lease)
        except KubeError as err:
            if err.kind == "conflict":
                self._log.debug("lease update conflicted: another replica won")
                return None
            raise
        self._observe(lease_spec(updated))
        if not self._leading:
            self._handover_since = previous_renew
            if holder not in (None, self.identity):
                self._log.info("took over an expired lease", previous_holder=holder,
                               previous_renew=spec.get("renewTime"))
        return sent

    async def _create(self, now: datetime) -> float | None:
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
        sent = time.monotonic()
        try:
            created = await self._kube.call("create", LEASES,
                                            CoordinationV1Api.create_namespaced_lease,
                                            namespace=self.namespace, body=body)
        except KubeError as err:
            if err.kind == "conflict":
                return None
            raise
        self._observe(lease_spec(created))
        self._handover_since = None
        return sent

    def _observe(self, spec: dict[str, Any]) -> None:
        record = (spec.get("holderIdentity"), spec.get("renewTime"),
                  spec.get("leaseDurationSeconds"))
        if record != self._observed:
            self._observed = record
            self._observed_at = time.monotonic()

    def _set_leading(self, leading: bool, reason: str) -> None:
        self._leading = leading
        if leading:
            self._became_leader.set()
        else:
            self._became_leader.clear()
        self._set_gauge()
        self._log.info("cron leadership " + ("acquired" if leading else "lost"), reason=reason,
                       handover_since=None if self._handover_since is None
                       else micro_time(self._handover_since))
        for callback in list(self._callbacks):
            try:
                callback(leading)
            except Exception as err:
                self._log.error("leadership callback failed", error=describe(err, 400))

    async def _release(self) -> None:
        """Give the Lease up at once (graceful stop), if we still hold it. Its renewTime
        becomes the moment we stopped firing: the next leader fires the ticks after it."""
        lease = await self._get()
        spec = lease_spec(lease)
        if spec.get("holderIdentity") != self.identity:
            return
        stopped = self._fired_until or datetime.now(UTC)
        spec.update(holderIdentity=None, leaseDurationSeconds=1, renewTime=micro_time(stopped))
        lease["spec"] = spec
        await self._replace(lease)
        self._log.info("lease released", fired_until=micro_time(stopped))

    async def _get(self) -> dict[str, Any]:
        return await self._kube.call("get", LEASES, CoordinationV1Api.read_namespaced_lease,
                                     name=self.name, namespace=self.namespace)

    async def _replace(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Write ``lease`` with the resourceVersion it was read at (409: someone else
        wrote it since)."""
        return await self._kube.call("update", LEASES, CoordinationV1Api.replace_namespaced_lease,
                                     name=self.name, namespace=self.namespace, body=lease)
