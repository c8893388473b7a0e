"""Kubernetes integration: in-cluster function pools, Lease leadership, Trigger resources.

Everything here imports ``kubernetes_asyncio``, so nothing in the engine imports this
package unless a Kubernetes feature is configured (a function with a ``kubernetes``
target, ``BRIDGE_LEADER_ELECTION`` or ``BRIDGE_WATCH_TRIGGERS``): an all-queue daemon
keeps its idle memory small.

- :mod:`bridge.kube.client`: config loading (in-cluster service account or kubeconfig),
  requests, list+watch streams, and the one place that classifies API errors;
- :mod:`bridge.kube.pool`: a function's endpoints from its EndpointSlices;
- :mod:`bridge.kube.lease`: leadership for cron over a ``coordination.k8s.io/v1`` Lease;
- :mod:`bridge.kube.triggers`: Trigger custom resources applied live to the runtime.
"""

from __future__ import annotations

import socket
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.reload import Composer
    from bridge.runtime import Runtime


def attach(runtime: Runtime, composer: Composer) -> None:
    """Add the enabled Kubernetes features to ``runtime`` (before ``runtime.start()``).

    ``BRIDGE_LEADER_ELECTION``: a Lease decides which replica fires cron ticks.
    ``BRIDGE_WATCH_TRIGGERS``: Trigger resources join the composed config.
    The Lease is the runtime's leadership (started after the triggers; on a stop it
    stops firing first and is released last, after the triggers drained); the Trigger
    watch is a runtime service (started after the triggers, stopped first). Both add a
    readiness probe (false while the API refuses the service account).
    """
    from bridge.kube.client import KubeClient
    from bridge.kube.lease import LeaseLeadership
    from bridge.kube.triggers import TriggerWatcher

    settings = runtime.settings
    client = runtime.context.shared(KubeClient, lambda: KubeClient(settings, runtime.log))
    identity = settings.instance or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
    if settings.leader_election:
        lease = LeaseLeadership(
            client, settings.lease_name, identity, runtime.log,
            lease_duration=settings.lease_duration,
            renew_deadline=settings.lease_renew_deadline,
            retry_period=settings.lease_retry_period, metrics=runtime.metrics,
        )
        runtime.context.leadership = lease  # started after the triggers, released last
        runtime.probes["lease"] = lambda: lease.ready
    if settings.watch_triggers:
        watcher = TriggerWatcher(client, composer, runtime, runtime.log, identity=identity)
        composer.add_source(watcher)
        runtime.services.append(watcher)
        runtime.probes["trigger-resources"] = lambda: watcher.ready
