"""A small Kubernetes API emulator over real HTTP, for the bridge's Kubernetes code.

It keeps the contract ``bridge.kube`` relies on, nothing more:

- namespaced collections under ``/api/v1/...`` and ``/apis/<group>/<version>/...``:
  list (``labelSelector`` equality terms), watch streams (``watch``, ``resourceVersion``,
  ``timeoutSeconds``, ``allowWatchBookmarks``; replay of history after the given
  version), get, create (409 AlreadyExists), replace (409 Conflict on a stale
  ``metadata.resourceVersion``), patch, delete. Boolean query parameters are read as
  the API server reads them (Go's ``strconv.ParseBool``: ``true``, ``True``, ``1``...;
  anything else is 400). PATCH takes ``application/merge-patch+json`` (RFC 7386) and,
  on built-in resources, ``application/strategic-merge-patch+json`` (merged the same
  way: the bridge patches no lists); a custom resource refuses strategic merge (415)
  and a JSON patch whose body is not a list is 400, as on a real API server (a JSON
  patch list is not emulated: 415);
- one global, increasing ``resourceVersion``; ``metadata.generation`` bumped when a
  ``spec`` changes; the ``status`` subresource (PUT/PATCH ``.../status`` change only
  ``status``, the main resource ignores ``status``);
- ``compact()`` forgets history, so a watch from an older version gets 410 Gone (as an
  ERROR event, like the real server); ``disconnect_watches()`` drops every open stream;
  ``bookmark()`` sends a BOOKMARK (the current resourceVersion) to every watch that
  allowed them;
- ``forbid(verb, resource)`` answers 403 with the API server's wording;
  ``fail_next(status, count, retry_after)`` injects 429/5xx answers;
  ``garble_next(body, count, resource)`` answers 200 with a body of the test's choice
  (broken JSON, a malformed object); ``hang()`` holds every request unanswered, its
  connection open, until ``resume()`` (then it is served: a write may land late, as on
  a real API server whose answer was lost).

Tests drive it directly (``put``, ``delete``, ``get``) from the same event loop and
point the bridge at it with :meth:`KubeApi.kubeconfig`.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)


_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_FALSE = ("0", "f", "F", "FALSE", "false", "False")


class BadRequest(Exception):
    """A request the API server would answer 400."""


def parse_bool(query: Any, name: str) -> bool:
    """A boolean query parameter as the API server parses it (Go's strconv.ParseBool)."""
    value = query.get(name)
    if value is None or value in _FALSE:
        return False
    if value in _TRUE:
        return True
    raise BadRequest(f'strconv.ParseBool: parsing "{value}": invalid syntax ({name})')


@dataclass(eq=False)
class _Watch:
    resource: str
    namespace: str
    selector: dict[str, str]
    bookmarks: bool = False
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)


@dataclass
class Request:
    method: str
    path: str
    verb: str
    resource: str
    status: int = 0
    #: The query parameters as received (watch, resourceVersion, labelSelector...).
    query: dict[str, str] = field(default_factory=dict)
    #: When it arrived (time.monotonic()).
    at: float = field(default_factory=time.monotonic)


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeApi:
    """``async with KubeApi() as api: api.kubeconfig(path); api.put(...)``."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self.store: dict[str, dict[Key, Obj]] = {}
        self.history: list[tuple[int, str, str, Obj]] = []
        self.compacted = 0
        self.requests: list[Request] = []
        self._rv = itertools.count(1)
        self._version = 0
        self._watches: set[_Watch] = set()
        self._forbidden: set[tuple[str, str]] = set()
        self._failures: list[tuple[int, str | None]] = []
        self._garbage: list[tuple[bytes, str | None]] = []
        self._open = asyncio.Event()
        self._open.set()
        #: Requests that arrived while hung.
        self.held = 0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> KubeApi:
        app = web.Application()
        app.router.add_route("*", "/api/{version}/namespaces/{ns}/{plural}", self._collection)
        app.router.add_route("*", "/api/{version}/namespaces/{ns}/{plural}/{name}", self._item)
        app.router.add_route(
            "*", "/apis/{group}/{version}/namespaces/{ns}/{plural}", self._collection
        )
        app.router.add_route(
            "*", "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}", self._item
        )
        app.router.add_route(
            "*", "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}/{sub}", self._item
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.resume()
        self.disconnect_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, directory: Path, namespace: str | None = None) -> Path:
        """A kubeconfig file pointing at this emulator (token auth, given namespace)."""
        path = directory / f"kubeconfig-{self.port}.yaml"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "bridge", "user": {"token": "test-token"}}],
            "contexts": [{
                "name": "emulator",
                "context": {"cluster": "emulator", "user": "bridge",
                            "namespace": namespace or self.namespace},
            }],
            "current-context": "emulator",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # --- test controls ----------------------------------------------------------------

    def put(self, resource: str, obj: Obj) -> Obj:
        """Create or replace ``obj`` (status kept unless given); notifies watches."""
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", self.namespace)
        key = (meta["namespace"], meta["name"])
        current = self.store.get(resource, {}).get(key)
        if current is None:
            return self._create(resource, obj)
        return self._replace(resource, key, obj, keep_status="status" not in obj)

    def get(self, resource: str, name: str, namespace: str | None = None) -> Obj | None:
        found = self.store.get(resource, {}).get((namespace or self.namespace, name))
        return copy.deepcopy(found) if found is not None else None

    def delete(self, resource: str, name: str, namespace: str | None = None) -> None:
        key = (namespace or self.namespace, name)
        obj = self.store.get(resource, {}).pop(key, None)
        if obj is not None:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._next_rv())
            self._record(resource, "DELETED", obj)

    def items(self, resource: str) -> list[Obj]:
        return [copy.deepcopy(o) for o in self.store.get(resource, {}).values()]

    def compact(self) -> None:
        """Forget history: watches from an older resourceVersion now get 410 Gone."""
        self.history.clear()
        self.compacted = self._version

    def disconnect_watches(self) -> None:
        for watch in list(self._watches):
            watch.queue.put_nowait(None)

    def bookmark(self) -> None:
        """Send every watch that allowed bookmarks the current resourceVersion."""
        event = {"kind": "Bookmark", "metadata": {"resourceVersion": str(self._version)}}
        for watch in list(self._watches):
            if watch.bookmarks:
                watch.queue.put_nowait(("BOOKMARK", copy.deepcopy(event)))

    def forbid(self, verb: str, resource: str) -> None:
        self._forbidden.add((verb, resource))

    def allow(self, verb: str, resource: str) -> None:
        self._forbidden.discard((verb, resource))

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None) -> None:
        self._failures.extend([(status, retry_after)] * count)

    def garble_next(
        self, body: bytes = b'{"kind": "Lease", "spec": {', count: int = 1,
        resource: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests (for ``resource`` only, if given) 200 with
        ``body`` instead of doing them."""
        self._garbage.extend([(body, resource)] * count)

    def hang(self) -> None:
        """From now on, hold every request unanswered until :meth:`resume`."""
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    @property
    def open_watches(self) -> int:
        return len(self._watches)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    # --- storage ----------------------------------------------------------------------

    def _next_rv(self) -> int:
        self._version = next(self._rv)
        return self._version

    def _create(self, resource: str, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj["metadata"]
        meta.update(
            uid=str(uuid.uuid4()), resourceVersion=str(self._next_rv()), generation=1,
            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        self.store.setdefault(resource, {})[(meta["namespace"], meta["name"])] = obj
        self._record(resource, "ADDED", obj)
        return copy.deepcopy(obj)

    def _replace(self, resource: str, key: Key, obj: Obj, keep_status: bool,
                 status_only: bool = False) -> Obj:
        current = self.store[resource][key]
        new = copy.deepcopy(current if status_only else obj)
        if status_only:
            new["status"] = copy.deepcopy(obj.get("status"))
        elif keep_status and "status" in current:
            new["status"] = copy.deepcopy(current["status"])
        meta = new.setdefault("metadata", {})
        for fixed in ("uid", "creationTimestamp", "namespace", "name"):
            meta[fixed] = current["metadata"][fixed]
        generation = int(current["metadata"].get("generation", 1))
        if not status_only and new.get("spec") != current.get("spec"):
            generation += 1
        meta["generation"] = generation
        meta["resourceVersion"] = str(self._next_rv())
        self.store[resource][key] = new
        self._record(resource, "MODIFIED", new)
        return copy.deepcopy(new)

    def _record(self, resource: str, kind: str, obj: Obj) -> None:
        self.history.append((self._version, resource, kind, copy.deepcopy(obj)))
        for watch in list(self._watches):
            if watch.resource == resource and _matches(obj, watch.namespace, watch.selector):
                watch.queue.put_nowait((kind, copy.deepcopy(obj)))
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # --- HTTP -------------------------------------------------------------------------

    def _resource(self, request: web.Request) -> tuple[str, str]:
        info = request.match_info
        group = info.get("group")
        plural = info["plural"]
        return (f"{plural}.{group}" if group else plural), (group or "")

    def _gate(self, request: web.Request, verb: str) -> web.Response | None:
        resource, group = self._resource(request)
        sub = request.match_info.get("sub")
        rbac = f"{resource.partition('.')[0]}/{sub}" if sub else resource.partition(".")[0]
        self.requests.append(
            Request(request.method, request.path, verb, resource, query=dict(request.query))
        )
        full = f"{rbac}.{group}" if group else rbac
        if (verb, full) in self._forbidden or (verb, resource) in self._forbidden:
            ns = request.match_info["ns"]
            message = (
                f'{resource} is forbidden: User "system:serviceaccount:{ns}:trigger-bridge" '
                f'cannot {verb} resource "{rbac}" in API group "{group}" in the namespace "{ns}"'
            )
            return _status(403, "Forbidden", message)
        for index, (body, only) in enumerate(self._garbage):
            if only is None or only == resource:
                del self._garbage[index]
                return web.Response(status=200, body=body, content_type="application/json")
        if self._failures:
            status, retry_after = self._failures.pop(0)
            response = _status(status, "TooManyRequests" if status == 429 else "InternalError",
                               "injected failure")
            if retry_after is not None:
                response.headers["Retry-After"] = retry_after
            return response
        return None

    async def _held(self) -> None:
        if not self._open.is_set():
            self.held += 1
            await self._open.wait()

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        await self._held()
        resource, _ = self._resource(request)
        ns = request.match_info["ns"]
        if request.method == "GET":
            try:
                watching = parse_bool(request.query, "watch")
            except BadRequest as err:
                return _status(400, "BadRequest", str(err))
            denied = self._gate(request, "watch" if watching else "list")
            if denied is not None:
                return denied
            selector = _selector(request.query.get("labelSelector", ""))
            if watching:
                return await self._watch(request, resource, ns, selector)
            items = [copy.deepcopy(o) for (n, _), o in self.store.get(resource, {}).items()
                     if n == ns and _matches(o, ns, selector)]
            return web.json_response({
                "kind": "List", "apiVersion": "v1", "items": items,
                "metadata": {"resourceVersion": str(self._version)},
            })
        if request.method == "POST":
            denied = self._gate(request, "create")
            if denied is not None:
                return denied
            body = await request.json()
            body.setdefault("metadata", {})["namespace"] = ns
            name = body["metadata"].get("name")
            if not name:
                return _status(422, "Invalid", "metadata.name is required")
            if (ns, name) in self.store.get(resource, {}):
                return _status(409, "AlreadyExists", f'{resource} "{name}" already exists')
            body.pop("status", None) if resource.startswith("triggers.") else None
            return web.json_response(self._create(resource, body), status=201)
        return _status(405, "MethodNotAllowed", request.method)

    async def _item(self, request: web.Request) -> web.StreamResponse:
        await self._held()
        resource, _ = self._resource(request)
        ns, name = request.match_info["ns"], request.match_info["name"]
        sub = request.match_info.get("sub")
        verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            request.method, request.method.lower()
        )
        denied = self._gate(request, verb)
        if denied is not None:
            return denied
        current = self.store.get(resource, {}).get((ns, name))
        if current is None:
            return _status(404, "NotFound", f'{resource} "{name}" not found')
        if request.method == "GET":
            return web.json_response(copy.deepcopy(current))
        if request.method == "DELETE":
            self.delete(resource, name, ns)
            return web.json_response(_status_body(200, "Success", "deleted"))
        body = await request.json()
        if request.method == "PATCH":
            refused = _patch_refused(request.content_type, body, custom="." in resource and
                                     not resource.endswith(_BUILT_IN_GROUPS))
            if refused is not None:
                return refused
            body = merge_patch(current, body)
        else:
            sent = (body.get("metadata") or {}).get("resourceVersion")
            if sent and sent != current["metadata"]["resourceVersion"]:
                return _status(
                    409, "Conflict",
                    f'Operation cannot be fulfilled on {resource} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
        status_only = sub == "status"
        updated = self._replace(resource, (ns, name), body, keep_status=True,
                                status_only=status_only)
        return web.json_response(updated)

    async def _watch(
        self, request: web.Request, resource: str, ns: str, selector: dict[str, str]
    ) -> web.StreamResponse:
        try:
            bookmarks = parse_bool(request.query, "allowWatchBookmarks")
        except BadRequest as err:
            return _status(400, "BadRequest", str(err))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        since = request.query.get("resourceVersion") or ""
        timeout = float(request.query.get("timeoutSeconds") or 1800)
        if since and since != "0" and int(since) < self.compacted:
            gone = _status_body(410, "Expired", f"too old resource version: {since}")
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        watch = _Watch(resource, ns, selector, bookmarks)
        if not since or since == "0":
            for (n, _), obj in self.store.get(resource, {}).items():
                if n == ns and _matches(obj, ns, selector):
                    watch.queue.put_nowait(("ADDED", copy.deepcopy(obj)))
        else:
            for version, res, kind, obj in self.history:
                if version > int(since) and res == resource and _matches(obj, ns, selector):
                    watch.queue.put_nowait((kind, copy.deepcopy(obj)))
        self._watches.add(watch)
        try:
            async with asyncio.timeout(timeout):
                while (item := await watch.queue.get()) is not None:
                    kind, obj = item
                    line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                    await response.write(line)
        except (TimeoutError, ConnectionResetError):
            pass
        finally:
            self._watches.discard(watch)
        return response


_BUILT_IN_GROUPS = (".coordination.k8s.io", ".discovery.k8s.io", ".apps", ".batch")


def _patch_refused(content_type: str, body: Any, *, custom: bool) -> web.Response | None:
    """The API server's answer to a PATCH it cannot apply (None: merge it)."""
    if content_type == "application/merge-patch+json":
        return None
    if content_type == "application/strategic-merge-patch+json" and not custom:
        return None
    if content_type == "application/json-patch+json" and not isinstance(body, list):
        return _status(400, "BadRequest", "json: cannot unmarshal object into Go value of "
                       "type jsonpatch.Patch")
    return _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown "
                   f"format - accepted media types include: application/json-patch+json, "
                   f"application/merge-patch+json (got {content_type})")


def _selector(text: str) -> dict[str, str]:
    terms = [t for t in text.split(",") if t]
    return dict(t.split("=", 1) for t in terms)


def _matches(obj: Obj, namespace: str, selector: dict[str, str]) -> bool:
    meta = obj.get("metadata") or {}
    if meta.get("namespace") != namespace:
        return False
    labels = meta.get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def _status_body(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Success" if code < 300 else "Failure",
        "message": message, "reason": reason, "code": code,
    }


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(_status_body(code, reason, message), status=code)


def endpoint_slice(
    service: str,
    endpoints: list[tuple[str, bool]],
    port: int | list[tuple[str, int]],
    name: str | None = None,
    namespace: str = "default",
) -> Obj:
    """An EndpointSlice for ``service``: ``endpoints`` = [(address, ready)], ``port`` =
    one unnamed number or [(name, number)]."""
    ports = [{"port": port, "protocol": "TCP"}] if isinstance(port, int) else [
        {"name": n, "port": p, "protocol": "TCP"} for n, p in port
    ]
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name or f"{service}-abc12",
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [
            {"addresses": [address], "conditions": {"ready": ready}}
            for address, ready in endpoints
        ],
        "ports": ports,
    }
