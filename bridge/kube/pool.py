"""A function's in-cluster endpoints, from the EndpointSlices of its Service.

The pool watches ``discovery.k8s.io/v1`` EndpointSlices labelled
``kubernetes.io/service-name=<service>`` in the function's namespace (the target's
``namespace``, else the bridge's own). Each ready endpoint (``conditions.ready`` not
``false``) becomes ``http://<address>:<port><path>``; the port is resolved per slice:

- a named port (``port: http``) is the slice port of that name (the Service port's
  name); a Service with one unnamed port matches any name;
- a numbered port (``port: 8080``) is the pod's port: the slice port with that number,
  else the number itself.

Every watch event is applied at once to the :class:`~bridge.pools.BalancedPool` it
extends (fewest outstanding requests), so invocations follow pods as they come, turn
unready or go, without a restart. Endpoints that turn unready are kept (not picked) so
their outstanding counts survive; vanished ones are dropped.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio.client import DiscoveryV1Api

from bridge.config import KubernetesTarget
from bridge.kube.client import ENDPOINT_SLICES, KubeClient
from bridge.kube.reflector import Reflector, object_name
from bridge.logs import Logger
from bridge.pools import BalancedPool

SERVICE_LABEL = "kubernetes.io/service-name"


class KubernetesPool(BalancedPool):
    """A :class:`~bridge.pools.WatchedPool` over a Service's EndpointSlices."""

    def __init__(
        self,
        function_name: str,
        target: KubernetesTarget,
        kube: KubeClient,
        log: Logger,
    ) -> None:
        super().__init__()
        self._target = target
        self._slices: dict[str, dict[str, Any]] = {}
        self._log = log.bind(function=function_name, service=target.service)
        self._reflector = Reflector(
            kube, ENDPOINT_SLICES, DiscoveryV1Api.list_namespaced_endpoint_slice,
            target.namespace, on_sync=self._on_sync, on_change=self._on_change, log=self._log,
            label_selector=f"{SERVICE_LABEL}={target.service}",
        )

    @property
    def ready(self) -> bool:
        """True once the EndpointSlices are listed (and the API lets us watch them)."""
        return self._reflector.ready

    async def run(self) -> None:
        """Follow the EndpointSlices until cancelled (the runtime's supervisor runs it
        as ``endpoints:<function>``)."""
        await self._reflector.run()

    def _on_sync(self, items: list[dict[str, Any]]) -> None:
        self._slices = {object_name(s): s for s in items}
        self._publish()

    def _on_change(self, kind: str, obj: dict[str, Any]) -> None:
        name = object_name(obj)
        if kind == "DELETED":
            self._slices.pop(name, None)
        else:
            self._slices[name] = obj
        self._publish()

    def _publish(self) -> None:
        urls: dict[str, bool] = {}
        for endpoint_slice in self._slices.values():
            for url, ready in endpoint_urls(endpoint_slice, self._target):
                urls[url] = urls.get(url, False) or ready
        before = {e.url for e in self.endpoints if e.ready}
        self.replace(urls)
        after = {url for url, ready in urls.items() if ready}
        if before != after:
            self._log.info(
                "endpoints changed", ready=len(after), added=sorted(after - before),
                removed=sorted(before - after),
            )


def endpoint_urls(
    endpoint_slice: dict[str, Any], target: KubernetesTarget
) -> list[tuple[str, bool]]:
    """``(url, ready)`` for every endpoint address of one EndpointSlice."""
    port = resolve_port(endpoint_slice.get("ports") or [], target.port)
    if port is None:
        return []
    path = target.path if target.path.startswith("/") else f"/{target.path}"
    found = []
    for endpoint in endpoint_slice.get("endpoints") or []:
        conditions = endpoint.get("conditions") or {}
        ready = conditions.get("ready") is not False
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ":" in address else address
            found.append((f"http://{host}:{port}{path}", ready))
    return found


def resolve_port(ports: list[dict[str, Any]], wanted: int | str) -> int | None:
    """The pod port for ``wanted`` (a Service port name, or a number) in a slice's ports."""
    if isinstance(wanted, int) or (isinstance(wanted, str) and wanted.isdigit()):
        number = int(wanted)
        return next((int(p["port"]) for p in ports if p.get("port") == number), number)
    for port in ports:
        if port.get("name") == wanted and port.get("port") is not None:
            return int(port["port"])
    if len(ports) == 1 and not ports[0].get("name") and ports[0].get("port") is not None:
        return int(ports[0]["port"])
    return None
