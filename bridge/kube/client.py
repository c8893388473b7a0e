"""The process's connection to the Kubernetes API, and the one way to call it.

One :class:`KubeClient` per process (the daemon's, made when a Kubernetes feature is
configured) holds the ``kubernetes_asyncio`` API client. Configuration is found in this
order:

1. ``BRIDGE_KUBECONFIG`` (a kubeconfig file, its current context);
2. in-cluster: the pod's service account (``KUBERNETES_SERVICE_HOST`` is set);
3. the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``).

The namespace is ``BRIDGE_NAMESPACE``, else the pod's own namespace (service account),
else the kubeconfig context's namespace, else ``default``.

Requests go through the library's typed APIs (``CoordinationV1Api``,
``DiscoveryV1Api``, ``CoreV1Api``, ``CustomObjectsApi``), which build the URL, the query
and the auth. Their answers are read as the API sent them (plain dicts), not as the
library's models: its deserializer turns a body that is not JSON into an empty model
(a Lease without a holder) where the Lease loop must see the garbage and refuse it.
Failures are classified by :mod:`bridge.kube.errors`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bridge.errors import describe
from bridge.kube.errors import CALL_ERRORS, KubeError, classify, failure
from bridge.logs import Logger, redact_url
from bridge.retry import Backoff
from bridge.settings import Settings
from bridge.urls import url_problem

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Attempts of one request on 429 / 5xx / connection errors, before the caller sees it.
_REQUEST_ATTEMPTS = 4
_REQUEST_BACKOFF = Backoff(initial=0.2, maximum=5.0)
_REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=30.0)

#: An unbound method of a typed API class, e.g. ``CoordinationV1Api.read_namespaced_lease``.
ApiMethod = Callable[..., Awaitable[Any]]


@dataclass(frozen=True, slots=True)
class Resource:
    """A namespaced API resource and the typed API class that serves it."""

    group: str  # "" for the core group
    plural: str
    api: type[Any]

    @property
    def name(self) -> str:
        """``endpointslices.discovery.k8s.io`` (the form RBAC and kubectl use)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


TRIGGER_GROUP, TRIGGER_VERSION = "triggerbridge.dev", "v1alpha1"
ENDPOINT_SLICES = Resource("discovery.k8s.io", "endpointslices", k8s.DiscoveryV1Api)
LEASES = Resource("coordination.k8s.io", "leases", k8s.CoordinationV1Api)
EVENTS = Resource("", "events", k8s.CoreV1Api)
TRIGGERS = Resource(TRIGGER_GROUP, "triggers", k8s.CustomObjectsApi)


class KubeConfigError(Exception):
    """The kubeconfig (or service account) cannot be used; the message says why,
    without its values."""


class KubeClient:
    """The process's API client (lazy: connects on first use, ``close()`` repeatable)."""

    def __init__(
        self, settings: Settings, log: Logger, service_account: Path = SERVICE_ACCOUNT_DIR
    ) -> None:
        self._settings = settings
        self._log = log
        self._service_account = service_account
        self._api: k8s.ApiClient | None = None
        self._namespace: str | None = settings.namespace
        self._lock = asyncio.Lock()

    @property
    def namespace(self) -> str:
        """The bridge's own namespace (valid after :meth:`connect`)."""
        return self._namespace or "default"

    async def connect(self) -> k8s.ApiClient:
        async with self._lock:
            if self._api is None:
                configuration = k8s.Configuration()
                try:
                    namespace = await self._load(configuration)
                except (OSError, ValueError, TypeError, KeyError, AttributeError,
                        k8s_config.ConfigException) as err:
                    raise KubeConfigError(
                        f"cannot load {self._source()}: {redact_url(describe(err, None))}"[:400]
                    ) from err
                problem = url_problem(str(configuration.host), ("https", "http"))
                if problem:  # the value may hold credentials: never shown
                    raise KubeConfigError(f"the API server URL of the kubeconfig {problem}")
                self._namespace = self._settings.namespace or namespace or "default"
                self._api = k8s.ApiClient(configuration)
                self._log.info(
                    "kubernetes api configured", host=redact_url(str(configuration.host)),
                    namespace=self._namespace,
                )
            return self._api

    def _source(self) -> str:
        if self._settings.kubeconfig is not None:
            return f"the kubeconfig {self._settings.kubeconfig} (BRIDGE_KUBECONFIG)"
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            return f"the service account in {self._service_account}"
        return "the default kubeconfig ($KUBECONFIG or ~/.kube/config)"

    async def _load(self, configuration: k8s.Configuration) -> str | None:
        """Fill ``configuration``; return the namespace the environment implies."""
        path = self._settings.kubeconfig
        if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration,
                token_filename=str(self._service_account / "token"),
                cert_filename=str(self._service_account / "ca.crt"),
            )
            ns_file = self._service_account / "namespace"
            return ns_file.read_text().strip() if ns_file.exists() else None
        loader = await k8s_config.load_kube_config(
            config_file=path, client_configuration=configuration, persist_config=False
        )
        context = loader.current_context or {}
        namespace = (context.get("context") or {}).get("namespace")
        return str(namespace) if namespace else None

    async def close(self) -> None:
        async with self._lock:
            if self._api is not None:
                await self._api.close()
                self._api = None

    async def call(
        self, verb: str, resource: Resource, method: ApiMethod, **params: Any
    ) -> dict[str, Any]:
        """``method(**params)`` on ``resource``'s typed API: its answer as a dict.

        ``verb`` is the RBAC verb, for the error; ``params`` include ``namespace``.
        Retried on 429 / 5xx / disconnects (honouring Retry-After); the last failure is
        raised as a :class:`~bridge.kube.errors.KubeError`. A 2xx body that is not
        JSON raises ``json.JSONDecodeError``.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                data = await self._read(verb, resource, method, params)
                break
            except KubeError as err:
                if not err.retryable or attempt >= _REQUEST_ATTEMPTS:
                    raise
                await asyncio.sleep(_REQUEST_BACKOFF.delay(attempt, err.retry_after))
        parsed = json.loads(data) if data else {}
        return parsed if isinstance(parsed, dict) else {}

    async def _read(
        self, verb: str, resource: Resource, method: ApiMethod, params: dict[str, Any]
    ) -> bytes:
        response = await self.open(verb, resource, method, **params)
        try:
            return await response.read()
        except CALL_ERRORS as err:
            raise failure(err, verb=verb, resource=resource.name,
                          namespace=params["namespace"]) from err
        finally:
            response.release()

    async def open(
        self, verb: str, resource: Resource, method: ApiMethod, **params: Any
    ) -> aiohttp.ClientResponse:
        """The unread response of a 2xx answer (a watch stream), else a KubeError."""
        params = {"_request_timeout": _REQUEST_TIMEOUT, **params, "_preload_content": False}
        namespace = params["namespace"]
        api = resource.api(await self.connect())
        try:
            response: aiohttp.ClientResponse = await method(api, **params)
        except CALL_ERRORS as err:
            raise failure(err, verb=verb, resource=resource.name, namespace=namespace) from err
        if 200 <= response.status < 300:
            return response
        try:
            body = await response.read()
        except CALL_ERRORS:
            body = b""
        finally:
            response.release()
        raise classify(response.status, body, verb=verb, resource=resource.name,
                       namespace=namespace, retry_after=response.headers.get("Retry-After"))
