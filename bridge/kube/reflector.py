"""List + watch of one resource, handed to callbacks (client-go's reflector, small).

:class:`Reflector` lists, hands the items over, then watches from the list's
resourceVersion through ``kubernetes_asyncio.watch.Watch`` (which parses the stream,
raises ``ERROR`` events and tracks the resourceVersion of every event, BOOKMARKs
included). When the server ends the watch (its ``timeoutSeconds``) or the connection
drops, the watch resumes from the last resourceVersion seen; on ``410 Gone`` (that
version is too old) it relists; on other errors it backs off and relists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio.watch import Watch

from bridge.kube.client import ApiMethod, KubeClient, Resource
from bridge.kube.errors import CALL_ERRORS, KubeError, failure, log_api_error
from bridge.logs import Logger
from bridge.retry import Backoff

#: Backoff of a reflector between failed list/watch rounds.
_WATCH_BACKOFF = Backoff(initial=0.5, maximum=30.0)
_CONNECT_TIMEOUT = 30.0
#: Server-side watch timeout; the watch is resumed after it.
WATCH_SECONDS = 290

Sync = Callable[[list[dict[str, Any]]], Awaitable[None] | None]
Change = Callable[[str, dict[str, Any]], Awaitable[None] | None]


def object_name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


class _Watch(Watch):
    """kubernetes_asyncio's ``Watch``, its events' objects left as the API sent them.

    ``Watch()`` builds an API client of its own (an aiohttp session and an SSL context
    loading the system CAs, held while the watch is open; its cost: docs/benchmarks.md,
    *Kubernetes*) only to decode each event into a model; here nothing is decoded (the
    objects stay dicts, without a JSON round trip per event) and the watch holds only
    its stream.
    """

    def __init__(self) -> None:  # not Watch.__init__: no API client of its own
        self._raw_return_type = None
        self._stop = False
        self.resource_version = None
        self.resp = None

    def get_return_type(self, func: object) -> str:
        return ""  # no model to decode into

    async def close(self) -> None:
        """Let go of the stream."""
        if self.resp is not None:
            self.resp.release()
            self.resp = None


class Reflector:
    """List, then watch; resume on disconnect, relist on 410 Gone, back off on errors.

    ``lister`` is the typed API's list method (it watches with ``watch=True``), called
    with ``params`` and the namespace. ``on_sync(items)`` receives the full set after
    every (re)list; ``on_change(type, object)`` each ADDED / MODIFIED / DELETED event.
    :attr:`ready` is False until the first list succeeds and while the API refuses us
    (403): it feeds readiness.
    """

    def __init__(
        self,
        kube: KubeClient,
        resource: Resource,
        lister: ApiMethod,
        namespace: str | None,
        *,
        on_sync: Sync,
        on_change: Change,
        log: Logger,
        params: dict[str, Any] | None = None,
        label_selector: str | None = None,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self._kube = kube
        self._resource = resource
        self._lister = lister
        self._namespace = namespace
        self._on_sync = on_sync
        self._on_change = on_change
        self._log = log
        self._params = {**(params or {}), "label_selector": label_selector}
        self._watch_seconds = watch_seconds
        self._ready = False
        self.failures = 0
        #: The resourceVersion to resume a watch from (None: relist).
        self._version: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def namespace(self) -> str:
        return self._namespace or self._kube.namespace

    async def run(self) -> None:
        """List and watch until cancelled; never raises otherwise."""
        try:
            while True:
                delay = await self._round()
                if delay:
                    await asyncio.sleep(delay)
        finally:
            self._ready = False

    async def _round(self) -> float:
        """One list (when needed) and one watch; the seconds to wait before the next."""
        try:
            if self._version is None:
                await self._relist()
            await self._watch()
            return 0.0  # the server ended the watch (its timeout): resume from the version
        except KubeError as err:
            if err.kind == "gone":
                self._log.info("watch expired (410 Gone); relisting",
                               resource=self._resource.name)
                self._version = None
                return 0.0
            if err.kind == "forbidden":
                self._ready = False
            if not (err.status == 0 and err.verb == "watch"):
                self._version = None  # a disconnect resumes; anything else relists
            return self._failed(err, err.retry_after)
        except Exception as err:
            self._version = None
            return self._failed(err, None)

    def _failed(self, err: Exception, retry_after: float | None) -> float:
        self.failures += 1
        delay = _WATCH_BACKOFF.delay(self.failures, retry_after)
        log_api_error(self._log, err, f"watch {self._resource.name}", delay)
        return delay

    async def _relist(self) -> None:
        data = await self._kube.call("list", self._resource, self._lister,
                                     namespace=self.namespace, **self._params)
        await _maybe_await(self._on_sync(list(data.get("items") or [])))
        self._version = str((data.get("metadata") or {}).get("resourceVersion") or "")
        self._ready = True
        self.failures = 0

    async def _watch(self) -> None:
        """Watch from ``self._version`` until the server ends the stream."""
        watch = _Watch()
        stream = watch.stream(
            self._open, resource_version=self._version, allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds,
            _request_timeout=aiohttp.ClientTimeout(
                sock_connect=_CONNECT_TIMEOUT, sock_read=self._watch_seconds + 30
            ),
        )
        try:
            async for event in stream:
                await self._event(event)
                self._version = watch.resource_version or self._version
        except CALL_ERRORS as err:
            raise failure(err, verb="watch", resource=self._resource.name,
                          namespace=self.namespace) from err
        finally:
            await watch.close()

    async def _open(self, **params: Any) -> aiohttp.ClientResponse:
        return await self._kube.open("watch", self._resource, self._lister,
                                     namespace=self.namespace, **self._params, **params)

    async def _event(self, event: object) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise KubeError(0, f"malformed watch event: {str(event)[:200]!r}", verb="watch",
                            resource=self._resource.name, namespace=self.namespace)
        if event.get("type") != "BOOKMARK":
            await _maybe_await(self._on_change(str(event["type"]), event["object"]))
        self.failures = 0


async def _maybe_await(result: Awaitable[None] | None) -> None:
    if result is not None:
        await result
