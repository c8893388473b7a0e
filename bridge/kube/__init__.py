"""Kubernetes integration: in-cluster function pools, Lease leadership, Trigger resources.

Everything here imports ``kubernetes_asyncio``. Only the daemon's assembly
(:mod:`bridge.daemon`) imports this package, and only when a Kubernetes feature is
configured (a function with a ``kubernetes`` target, ``BRIDGE_LEADER_ELECTION`` or
``BRIDGE_WATCH_TRIGGERS``): an all-queue daemon keeps its idle memory small.

- :mod:`bridge.kube.client`: config loading (in-cluster service account or kubeconfig),
  requests, list+watch streams, and the one place that classifies API errors;
- :mod:`bridge.kube.pool`: a function's endpoints from its EndpointSlices;
- :mod:`bridge.kube.lease`: leadership for cron over a ``coordination.k8s.io/v1`` Lease;
- :mod:`bridge.kube.triggers`: Trigger custom resources applied live to the runtime.
"""

