"""Kubernetes API failures, classified in one place.

Every failed call, whatever raised it (an answer that is not 2xx, an ``ERROR`` event in
a watch stream, the library's ``ApiException``, a dropped connection, a timeout), ends
here as a :class:`KubeError` whose ``kind`` tells the caller what to do:

========== ================================ ===============================================
kind       status                           what the bridge does
========== ================================ ===============================================
forbidden  403                              logs the missing RBAC rule, turns readiness
                                            false, retries with backoff
not_found  404                              the Lease is created; otherwise retried
conflict   409                              another writer won (a Lease update: stay a
                                            follower)
gone       410                              the watch's resourceVersion is too old: relist
retryable  0 (no answer), 429, 5xx          the request is retried, honouring Retry-After
invalid    any other                        logged; the loop retries with backoff
========== ================================ ===============================================
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from bridge.errors import describe
from bridge.logs import Logger, redact_url
from bridge.outcome import parse_retry_after

#: What a call to the API may raise besides an answer: the library's exception, the
#: transport's, a timeout.
CALL_ERRORS = (ApiException, aiohttp.ClientError, OSError, TimeoutError)

_KINDS = {403: "forbidden", 404: "not_found", 409: "conflict", 410: "gone"}


class KubeError(Exception):
    """A failed API request, classified (``status`` 0: no answer)."""

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
        if self.status in _KINDS:
            return _KINDS[self.status]
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
    resource: str,
    namespace: str,
    retry_after: str | None = None,
) -> KubeError:
    """An API answer that is not 2xx (its ``Status`` body, its ``Retry-After``)."""
    return KubeError(
        status, _status_message(body) or f"HTTP {status}", verb=verb, resource=resource,
        namespace=namespace, retry_after=parse_retry_after(retry_after),
    )


def failure(err: BaseException, *, verb: str, resource: str, namespace: str) -> KubeError:
    """The :class:`KubeError` for anything in :data:`CALL_ERRORS` (status 0: no answer)."""
    if isinstance(err, KubeError):
        return err
    if isinstance(err, ApiException):  # an answer, or an ERROR event of a watch stream
        body = err.body if err.body else str(err.reason or "")
        retry_after = err.headers.get("Retry-After") if err.headers else None
        return classify(int(err.status or 0), body, verb=verb, resource=resource,
                        namespace=namespace, retry_after=retry_after)
    return KubeError(0, redacted(err), verb=verb, resource=resource, namespace=namespace)


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
        plural, _, group = err.resource.partition(".")
        log.error(
            f"kubernetes permission denied: the service account may not {err.verb!r} "
            f"{err.resource} in namespace {err.namespace!r}; grant it in the Role",
            component=what, verb=err.verb, resource=err.resource, namespace=err.namespace,
            rbac_rule=f"apiGroups: [{group!r}], resources: [{plural}], verbs: [{err.verb}]",
            detail=err.message[:300], retry_in=delay,
        )
        return
    log.warning(
        "kubernetes api call failed", component=what, error=redacted(err), retry_in=delay,
        **({"status": err.status, "kind": err.kind} if isinstance(err, KubeError) else {}),
    )


def redacted(err: BaseException) -> str:
    """:func:`bridge.errors.describe` without a URL's password (the API server's URL may
    carry one), cut at 400 characters."""
    return redact_url(describe(err, None))[:400]
