"""Talking to the Kubernetes API: config, requests, list+watch, error classification.

One :class:`KubeClient` per process (shared through ``ConnectorContext.shared``) holds
the ``kubernetes_asyncio`` API client. Configuration is found in this order:

1. ``BRIDGE_KUBECONFIG`` (a kubeconfig file, its current context);
2. in-cluster: the pod's service account (``KUBERNETES_SERVICE_HOST`` is set);
3. the default kubeconfig (``$KUBECONFIG`` or ``~/.kube/config``).

The namespace is ``BRIDGE_NAMESPACE``, else the pod's own namespace (service account),
else the kubeconfig context's namespace, else ``default``.

Requests go through ``ApiClient.call_api`` unparsed (plain JSON dicts), which keeps one
code path for every resource, custom or built in. :func:`classify` is the one place
that turns an API failure into a :class:`KubeError` with a kind: ``forbidden`` (403:
logged naming the missing RBAC verb and resource), ``conflict`` (409), ``gone`` (410:
the watch's resourceVersion is too old, relist), ``not_found`` (404), ``retryable``
(429, 5xx, connection errors: retried honouring ``Retry-After``) or ``invalid``.

:class:`Reflector` is the list+watch loop (client-go's reflector, small): list, hand
the items over, watch from the list's resourceVersion, resume the watch after a
disconnect from the last resourceVersion seen, relist on 410 Gone, back off on errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bridge.logs import Logger, redact_url
from bridge.outcome import parse_retry_after
from bridge.retry import RetryPolicy, backoff
from bridge.settings import Settings
from bridge.urls import url_problem

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Retries of one request on 429 / 5xx / connection errors, before the caller sees it.
_REQUEST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.2, max_backoff=5.0)
#: Backoff of a reflector between failed list/watch rounds.
_WATCH_RETRY = RetryPolicy(max_attempts=1, initial_backoff=0.5, max_backoff=30.0)
_REQUEST_TIMEOUT = 30.0
#: Server-side watch timeout; the watch is resumed after it.
WATCH_SECONDS = 290


@dataclass(frozen=True, slots=True)
class Resource:
    """A namespaced API resource: ``group`` is ``""`` for the core group."""

    group: str
    version: str
    plural: str

    @property
    def name(self) -> str:
        """``endpointslices.discovery.k8s.io`` (the form RBAC and kubectl use)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        if name is not None:
            path += f"/{name}"
        if sub is not None:
            path += f"/{sub}"
        return path


ENDPOINT_SLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
LEASES = Resource("coordination.k8s.io", "v1", "leases")
EVENTS = Resource("", "v1", "events")
TRIGGER_GROUP, TRIGGER_VERSION = "triggerbridge.dev", "v1alpha1"
TRIGGERS = Resource(TRIGGER_GROUP, TRIGGER_VERSION, "triggers")


class KubeError(Exception):
    """A failed API request, classified."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        verb: str,
        resource: str,
        namespace: str,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{verb} {resource} in {namespace}: HTTP {status}: {message}")
        self.status = status
        self.message = message
        self.verb = verb
        self.resource = resource
        self.namespace = namespace
        self.retry_after = retry_after

    @property
    def kind(self) -> str:
        if self.status == 403:
            return "forbidden"
        if self.status == 404:
            return "not_found"
        if self.status == 409:
            return "conflict"
        if self.status == 410:
            return "gone"
        if self.status in (0, 429) or self.status >= 500:
            return "retryable"
        return "invalid"

    @property
    def retryable(self) -> bool:
        return self.kind == "retryable"


def classify(
    status: int,
    body: bytes | str | dict[str, Any] | None,
    *,
    verb: str,
    resource: Resource | str,
    namespace: str,
    retry_after: str | None = None,
) -> KubeError:
    """The one place an API failure becomes a :class:`KubeError`."""
    message = _status_message(body)
    name = resource.name if isinstance(resource, Resource) else resource
    return KubeError(
        status, message or f"HTTP {status}", verb=verb, resource=name, namespace=namespace,
        retry_after=parse_retry_after(retry_after),
    )


def _status_message(body: bytes | str | dict[str, Any] | None) -> str:
    if body is None:
        return ""
    if isinstance(body, dict):
        return str(body.get("message") or body.get("reason") or "")
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        parsed = json.loads(text)
    except ValueError:
        return text.strip()[:300]
    return _status_message(parsed) if isinstance(parsed, dict) else text.strip()[:300]


def log_api_error(log: Logger, err: BaseException, what: str, retry_in: float | None) -> None:
    """Log a failed API call once, clearly; a 403 names the missing RBAC rule."""
    delay = None if retry_in is None else round(retry_in, 2)
    if isinstance(err, KubeError) and err.kind == "forbidden":
        group = err.resource.partition(".")[2]
        plural = err.resource.partition(".")[0]
        log.error(
            f"kubernetes permission denied: the service account may not {err.verb!r} "
            f"{err.resource} in namespace {err.namespace!r}; grant it in the Role",
            component=what, verb=err.verb, resource=err.resource, namespace=err.namespace,
            rbac_rule=f"apiGroups: [{group!r}], resources: [{plural}], verbs: [{err.verb}]",
            detail=err.message[:300], retry_in=delay,
        )
        return
    log.warning(
        "kubernetes api call failed", component=what, error=_describe(err), retry_in=delay,
        **({"status": err.status, "kind": err.kind} if isinstance(err, KubeError) else {}),
    )


def _describe(err: BaseException) -> str:
    text = redact_url(str(err))
    return f"{type(err).__name__}: {text}"[:400] if text else type(err).__name__


class KubeConfigError(Exception):
    """The kubeconfig cannot be used; the message says why, without its values."""


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
                namespace = await self._load(configuration)
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

    # --- requests ---------------------------------------------------------------------

    async def request(
        self,
        verb: str,
        resource: Resource,
        namespace: str,
        *,
        name: str | None = None,
        sub: str | None = None,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API call (RBAC ``verb`` for errors), retried on 429 / 5xx / disconnects."""
        method = _METHODS[verb]
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._once(
                    method, verb, resource, namespace, name=name, sub=sub, body=body,
                    query=query, content_type=content_type,
                )
            except KubeError as err:
                if not err.retryable or attempt >= _REQUEST_RETRY.max_attempts:
                    raise
                await asyncio.sleep(backoff(_REQUEST_RETRY, attempt, err.retry_after))

    async def _once(
        self, method: str, verb: str, resource: Resource, namespace: str, *, name: str | None,
        sub: str | None, body: dict[str, Any] | None, query: dict[str, str] | None,
        content_type: str,
    ) -> dict[str, Any]:
        response = await self._call(
            method, resource.path(namespace, name, sub), verb=verb, resource=resource,
            namespace=namespace, body=body, query=query, content_type=content_type,
            timeout=aiohttp.ClientTimeout(total=_REQUEST_TIMEOUT),
        )
        try:
            data = await response.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise KubeError(0, _describe(err), verb=verb, resource=resource.name,
                            namespace=namespace) from err
        finally:
            response.release()
        if not 200 <= response.status < 300:
            raise classify(response.status, data, verb=verb, resource=resource,
                           namespace=namespace, retry_after=response.headers.get("Retry-After"))
        parsed = json.loads(data) if data else {}
        return parsed if isinstance(parsed, dict) else {}

    async def _call(
        self, method: str, path: str, *, verb: str, resource: Resource, namespace: str,
        body: dict[str, Any] | None = None, query: dict[str, str] | None = None,
        content_type: str = "application/json", timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        api = await self.connect()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        try:
            response: aiohttp.ClientResponse = await api.call_api(
                path, method, query_params=list((query or {}).items()), header_params=headers,
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise KubeError(0, _describe(err), verb=verb, resource=resource.name,
                            namespace=namespace) from err
        return response

    async def list(
        self, resource: Resource, namespace: str, label_selector: str | None = None
    ) -> tuple[list[dict[str, Any]], str]:
        """Every object (and the list's resourceVersion, to watch from)."""
        query = {"labelSelector": label_selector} if label_selector else None
        data = await self.request("list", resource, namespace, query=query)
        items = data.get("items") or []
        return items, str((data.get("metadata") or {}).get("resourceVersion") or "")

    async def watch(
        self,
        resource: Resource,
        namespace: str,
        resource_version: str,
        label_selector: str | None = None,
        seconds: int = WATCH_SECONDS,
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """``(type, object)`` events (BOOKMARK included) until the server ends the watch.

        Raises :class:`KubeError` with kind ``gone`` when ``resource_version`` is too old.
        """
        query = {
            "watch": "true", "resourceVersion": resource_version,
            "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        response = await self._call(
            "GET", resource.path(namespace), verb="watch", resource=resource,
            namespace=namespace, query=query,
            timeout=aiohttp.ClientTimeout(sock_connect=_REQUEST_TIMEOUT, sock_read=seconds + 30),
        )
        try:
            if response.status != 200:
                raise classify(response.status, await response.read(), verb="watch",
                               resource=resource, namespace=namespace,
                               retry_after=response.headers.get("Retry-After"))
            while line := await response.content.readline():
                if not line.strip():
                    continue
                kind, obj = _watch_event(line, resource, namespace)
                yield kind, obj
        except (aiohttp.ClientError, OSError, TimeoutError) as err:
            raise KubeError(0, _describe(err), verb="watch", resource=resource.name,
                            namespace=namespace) from err
        finally:
            response.release()


_METHODS = {
    "get": "GET", "list": "GET", "create": "POST", "update": "PUT", "patch": "PATCH",
    "delete": "DELETE",
}


def _watch_event(line: bytes, resource: Resource, namespace: str) -> tuple[str, dict[str, Any]]:
    try:
        event = json.loads(line)
        kind, obj = str(event["type"]), event["object"]
    except (ValueError, KeyError, TypeError):
        raise KubeError(0, f"malformed watch event: {line[:200]!r}", verb="watch",
                        resource=resource.name, namespace=namespace) from None
    if kind == "ERROR":
        raise classify(int(obj.get("code") or 500), obj, verb="watch", resource=resource,
                       namespace=namespace)
    return kind, obj


def resource_version(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def object_name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


Sync = Callable[[list[dict[str, Any]]], Awaitable[None] | None]
Change = Callable[[str, dict[str, Any]], Awaitable[None] | None]


class Reflector:
    """List, then watch; resume on disconnect, relist on 410 Gone, back off on errors.

    ``on_sync(items)`` receives the full set after every (re)list; ``on_change(type,
    object)`` each ADDED / MODIFIED / DELETED event. ``synced`` is False until the first
    list succeeds and while the API refuses us (403): it feeds readiness.
    """

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        namespace: str | None,
        *,
        on_sync: Sync,
        on_change: Change,
        log: Logger,
        label_selector: str | None = None,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self._client = client
        self._resource = resource
        self._namespace = namespace
        self._on_sync = on_sync
        self._on_change = on_change
        self._log = log
        self._selector = label_selector
        self._watch_seconds = watch_seconds
        self.synced = False
        self.failures = 0
        self._version: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def namespace(self) -> str:
        return self._namespace or self._client.namespace

    def start(self) -> None:
        """Run the loop in a task this object owns (repeat-safe)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"watch:{self._resource.plural}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.synced = False

    async def run(self) -> None:
        """List, then watch, until cancelled (``synced`` is False again after)."""
        try:
            await self._loop()
        finally:
            self.synced = False

    async def _loop(self) -> None:
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._relist()
                version = await self._watch(version)
                continue  # the server ended the watch (its timeout): resume from version
            except asyncio.CancelledError:
                raise
            except KubeError as err:
                version = self._after_error(err, version)
                if err.kind == "gone":
                    continue
                self.failures += 1
                delay = backoff(_WATCH_RETRY, self.failures, err.retry_after)
                log_api_error(self._log, err, f"watch {self._resource.name}", delay)
            except Exception as err:
                version = None
                self.failures += 1
                delay = backoff(_WATCH_RETRY, self.failures)
                log_api_error(self._log, err, f"watch {self._resource.name}", delay)
            await asyncio.sleep(delay)

    def _after_error(self, err: KubeError, version: str | None) -> str | None:
        """The version to resume from: kept after a disconnect, dropped (relist) otherwise."""
        if err.kind == "gone":
            self._log.info("watch expired (410 Gone); relisting", resource=self._resource.name)
            return None
        if err.kind == "forbidden":
            self.synced = False
        if err.status == 0 and err.verb == "watch":
            return self._version or version
        return None

    async def _relist(self) -> str:
        items, version = await self._client.list(self._resource, self.namespace, self._selector)
        await _maybe_await(self._on_sync(items))
        self.synced = True
        self.failures = 0
        return version

    async def _watch(self, version: str) -> str:
        self._version = version
        async for kind, obj in self._client.watch(
            self._resource, self.namespace, version, self._selector, self._watch_seconds
        ):
            version = resource_version(obj) or version
            self._version = version
            if kind != "BOOKMARK":
                await _maybe_await(self._on_change(kind, obj))
            self.failures = 0
        return version


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result
