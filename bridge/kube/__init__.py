"""Kubernetes integration: in-cluster function pools, Lease leadership, Trigger resources.

Everything here imports ``kubernetes_asyncio``. Only the daemon's assembly
(:mod:`bridge.daemon`) imports this package, and only when a Kubernetes feature is
configured (a function with a ``kubernetes`` target, ``BRIDGE_LEADER_ELECTION`` or
``BRIDGE_WATCH_TRIGGERS``): an all-queue daemon keeps its idle memory small.

- :mod:`bridge.kube.client`: config loading (in-cluster service account or kubeconfig)
  and calls through kubernetes_asyncio's typed APIs;
- :mod:`bridge.kube.errors`: the one place that classifies API failures;
- :mod:`bridge.kube.reflector`: list + watch (``kubernetes_asyncio.watch.Watch``) of one
  resource, resumed from its resourceVersion, relisted on 410 Gone;
- :mod:`bridge.kube.pool`: a function's endpoints from its EndpointSlices;
- :mod:`bridge.kube.lease`: leadership for cron over a ``coordination.k8s.io/v1`` Lease;
- :mod:`bridge.kube.triggers`: Trigger custom resources (validation, state), watched by
  :mod:`bridge.kube.trigger_watch` and reported by :mod:`bridge.kube.trigger_status`.

Each background part exposes ``async def run()`` (until cancelled) and, where it has
final cleanup, ``async def close()``; the daemon runs them under its supervisor.
"""
