"""One invocation attempt: an HTTP POST in CloudEvents binary content mode.

The request carries the event's context attributes as ``ce-*`` headers, its data as
the body (bytes unchanged) and ``Content-Type`` = the data's content type. Header
values are percent-encoded as the CloudEvents HTTP binding requires (space, ``"``,
``%`` and anything outside printable ASCII), so CR/LF in a value can never become an
extra header. The message's own headers travel as HTTP headers only when their name
is a valid token and their value is safe; everything else is dropped (it still lands
in a dead-letter record untouched).

Answers are read only as far as they matter: the status, ``Retry-After`` (ASCII
delta-seconds or an HTTP date; anything else is ignored), the first 512 bytes of a
refused answer's body as the error detail, and at most ``BODY_BOUND`` (64 KiB) of a
2xx body, dropped. A longer body is never read: its connection is closed instead of
reused, so no answer can grow the bridge's memory. A trigger with a ``reply`` keeps a
2xx body up to its ``reply.max_size`` instead (``Outcome.answer``, see
:mod:`bridge.replies`).

The result is an :class:`~bridge.outcome.Outcome`; this module never raises for a
failed attempt. :meth:`Invoker.invoke_batch` is the same exchange for a body already
encoded by :mod:`bridge.batches` (batched mode), returning the 2xx answer it reads.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Mapping

import aiohttp

from bridge import __version__
from bridge.cloudevents import CORE, is_attribute_name
from bridge.deadlines import Deadlines
from bridge.events import Event, format_time
from bridge.headers import is_header_name, is_reserved
from bridge.logs import Redactor
from bridge.outcome import (
    DEFAULT_RETRYABLE_STATUSES,
    Answer,
    Outcome,
    OutcomeKind,
    classify_status,
    parse_retry_after,
)
from bridge.pools import NoEndpoints, Target

_UNSAFE = re.compile(r'[^\x21\x23-\x24\x26-\x7e]')
#: The start of a refused answer's body kept as ``bridge-error-detail``; the rest is unread.
_DETAIL_BYTES = 512
#: A 2xx answer's body is read up to this many bytes and dropped (none of it is used):
#: a short body read to its end keeps the connection for the next request; a longer one
#: is left unread and its connection closed, so a function answering with gigabytes
#: costs no memory and no time.
BODY_BOUND = 64 * 1024
_NO_HEADERS: Mapping[str, str] = {}
_NOTHING: frozenset[str] = frozenset()
#: Sent on every invocation (a function's own ``headers`` may replace it).
USER_AGENT = f"trigger-bridge/{__version__}"


def percent_encode(value: str) -> str:
    """CloudEvents HTTP binding header encoding (UTF-8, then %XX for unsafe bytes).

    A lone surrogate (undecodable bytes smuggled into a str) is encoded as ``?``.
    """
    if not _UNSAFE.search(value):
        return value
    return _UNSAFE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "replace")), value
    )


def build_headers(
    event: Event, attempt: int, static: Mapping[str, str] = _NO_HEADERS
) -> dict[str, str]:
    """The request headers; every name appears once (case-insensitively).

    Precedence: the bridge's own headers, then ``ce-*`` attributes, then ``static``
    (the function's configured headers), then the message's ``http_headers``, which are
    dropped when unsafe (invalid name, non-printable or non-ASCII value) or taken.
    Built directly (no intermediate attribute dict): this runs on every attempt.
    """
    headers: dict[str, str] = {}
    if event.http_headers:
        taken = {n.lower() for n in static} if static else _NOTHING
        for name, value in event.http_headers.items():
            if _passes_through(name, value) and name.lower() not in taken:
                headers[name] = value
    if static:
        headers.update(static)
    headers["ce-specversion"] = "1.0"
    headers["ce-id"] = percent_encode(event.id)
    headers["ce-source"] = percent_encode(event.source)
    headers["ce-type"] = percent_encode(event.type)
    if event.time is not None:
        headers["ce-time"] = format_time(event.time)
    if event.subject is not None:
        headers["ce-subject"] = percent_encode(event.subject)
    for name, value in event.extensions.items():
        if name not in CORE and is_attribute_name(name):
            headers["ce-" + name] = percent_encode(value)
    if event.content_type:
        headers["Content-Type"] = _printable(event.content_type)
    headers["bridge-trigger"] = event.trigger
    headers["bridge-attempt"] = str(attempt)
    return headers


def _trace_headers(headers: dict[str, str], trace: Mapping[str, str]) -> None:
    """Set the trace headers, dropping other spellings of their names first."""
    for name in [n for n in headers if n.lower() in trace and n not in trace]:
        del headers[name]
    headers.update(trace)


def _printable(text: str) -> str:
    if text.isascii() and text.isprintable():
        return text
    return "".join(c for c in text if " " <= c <= "~")


def _passes_through(name: str, value: str) -> bool:
    """A message header reaches the function: a valid name the bridge does not write
    itself (:mod:`bridge.headers`), a printable ASCII value."""
    return (is_header_name(name) and not is_reserved(name)
            and value.isascii() and value.isprintable())


class Invoker:
    """Posts events to function targets over one pooled aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        #: One timer per timeout length (see bridge.deadlines), shared by its triggers.
        self._deadlines: dict[float, Deadlines] = {}

    @classmethod
    def new_session(cls, limit: int = 0) -> aiohttp.ClientSession:
        """The shared session: no global connection cap (quotas live in Target)."""
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=30, enable_cleanup_closed=True)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            headers={"User-Agent": USER_AGENT},
        )

    async def invoke(
        self,
        target: Target,
        event: Event,
        attempt: int,
        timeout: float,
        retryable: Collection[int] = DEFAULT_RETRYABLE_STATUSES,
        *,
        answer_bytes: int = 0,
        trace: Mapping[str, str] | None = None,
    ) -> Outcome:
        """One attempt; ``timeout`` bounds the HTTP exchange, not the wait for a slot.

        ``answer_bytes`` > 0 (a trigger with a ``reply``): a 2xx answer's body, up to that
        many bytes, and its ``Content-Type`` and ``ce-*`` headers are kept in
        ``Outcome.answer``; otherwise the body is dropped unread (see the module docs).
        ``trace``: the W3C ``traceparent``/``tracestate`` headers of this attempt
        (tracing on, :mod:`bridge.tracing`); they replace any of those names.
        """
        try:
            route = await target.acquire()
        except NoEndpoints as err:
            return Outcome(OutcomeKind.RETRYABLE, "no_endpoints", detail=str(err))
        deadlines = self._deadlines.get(timeout) or self._deadlines.setdefault(
            timeout, Deadlines(timeout)
        )
        started = time.monotonic()
        expiry = None
        outcome = None
        try:
            headers = build_headers(event, attempt, target.headers)
            if trace is not None:
                _trace_headers(headers, trace)
            expiry = deadlines.start()
            # A redirect is an answer, not delivery: following a 301/302 would turn the
            # POST into a GET without the event and count that GET's 2xx as delivered.
            async with self._session.post(
                route.url, data=event.data, headers=headers, allow_redirects=False
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    answer = await _read_answer(response, answer_bytes) if answer_bytes else None
                    if answer is None:
                        await _skip_body(response.content)
                    outcome = Outcome(OutcomeKind.DELIVERED, "ok", status,
                                      duration=time.monotonic() - started,
                                      overflow=route.overflow, answer=answer)
                else:
                    outcome = await _error_status_outcome(
                        response, retryable, started, route.overflow, target.redact)
                return outcome
        except asyncio.CancelledError:
            if expiry is None or not deadlines.expired(expiry):
                raise
            outcome = _failed("timeout", _no_response(timeout), started, route.overflow)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:
            outcome = _attempt_failure(err, timeout, started, route.overflow, target.redact)
        finally:
            if expiry is not None:
                deadlines.finish(expiry)
            target.release(route, outcome)
        return outcome

    async def invoke_batch(
        self,
        target: Target,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float,
        retryable: Collection[int],
        answer_bound: int,
    ) -> tuple[Outcome, bytes | None]:
        """One request carrying a batch (``body``, already encoded; ``headers`` the
        bridge's own, the function's configured headers added): its outcome and, for a
        2xx, the answer's body (None: longer than ``answer_bound`` bytes, left unread).
        Everything else is as :meth:`invoke`: the quota slot and endpoint, the timeout,
        the classification of failures; it never raises for a failed attempt."""
        try:
            route = await target.acquire()
        except NoEndpoints as err:
            return Outcome(OutcomeKind.RETRYABLE, "no_endpoints", detail=str(err)), b""
        deadlines = self._deadlines.get(timeout) or self._deadlines.setdefault(
            timeout, Deadlines(timeout)
        )
        started = time.monotonic()
        expiry = None
        outcome = None
        answer: bytes | None = b""
        try:
            expiry = deadlines.start()
            async with self._session.post(
                route.url, data=body, headers={**target.headers, **headers},
                allow_redirects=False,
            ) as response:
                status = response.status
                if 200 <= status < 300:
                    read = await _read_answer(response, answer_bound)
                    answer = None if read.truncated else read.body
                    outcome = Outcome(OutcomeKind.DELIVERED, "ok", status,
                                      duration=time.monotonic() - started,
                                      overflow=route.overflow)
                else:
                    outcome = await _error_status_outcome(
                        response, retryable, started, route.overflow, target.redact)
                return outcome, answer
        except asyncio.CancelledError:
            if expiry is None or not deadlines.expired(expiry):
                raise
            outcome = _failed("timeout", _no_response(timeout), started, route.overflow)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:
            outcome = _attempt_failure(err, timeout, started, route.overflow, target.redact)
        finally:
            if expiry is not None:
                deadlines.finish(expiry)
            target.release(route, outcome)
        return outcome, b""


def _failed(reason: str, detail: str, started: float, overflow: bool,
            kind: OutcomeKind = OutcomeKind.RETRYABLE) -> Outcome:
    """An attempt that got no answer (or could not be sent)."""
    return Outcome(kind, reason, detail=detail, duration=time.monotonic() - started,
                   overflow=overflow)


async def _error_status_outcome(
    response: aiohttp.ClientResponse, retryable: Collection[int], started: float, overflow: bool,
    redact: Redactor,
) -> Outcome:
    """A non-2xx answer: retryable or permanent, with the start of its body as detail
    (without the function's secrets: a body may echo the token it refused)."""
    status = response.status
    body = await response.content.read(_DETAIL_BYTES)
    return Outcome(
        classify_status(status, retryable), f"http_{status}", status=status,
        detail=redact(body.decode("utf-8", "replace").strip()),
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
        duration=time.monotonic() - started, overflow=overflow,
    )


async def _read_answer(response: aiohttp.ClientResponse, limit: int) -> Answer:
    """A 2xx answer for a reply: at most ``limit`` bytes of body (a longer one is left
    unread, ``truncated``, its connection closed) and the headers a reply uses."""
    content = response.content
    chunks: list[bytes] = []
    size = 0
    while size <= limit and not content.at_eof():
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    headers = {
        lower: value for name, value in response.headers.items()
        if (lower := name.lower()) == "content-type" or lower.startswith("ce-")
    }
    if size > limit:
        return Answer(b"", headers, truncated=True)
    return Answer(b"".join(chunks), headers)


async def _skip_body(content: aiohttp.StreamReader) -> None:
    """Read and drop at most BODY_BOUND bytes of a body (aiohttp buffers at most its
    read-ahead window of the rest; closing the response drops it with the connection)."""
    left = BODY_BOUND
    while left > 0 and not content.at_eof():
        chunk = await content.read(left)
        if not chunk:
            return
        left -= len(chunk)


def _no_response(timeout: float) -> str:
    return f"no response within {timeout:g}s"


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text[:300]


def _attempt_failure(err: Exception, timeout: float, started: float, overflow: bool,
                     redact: Redactor) -> Outcome:
    """The Outcome of an attempt that raised ``err`` before an answer (one classification
    for single and batch invocations)."""
    if isinstance(err, TimeoutError):
        return _failed("timeout", _no_response(timeout), started, overflow)
    if isinstance(err, aiohttp.ClientConnectorError):
        return _failed("connect_error", redact(_short(err)), started, overflow)
    if isinstance(err, aiohttp.ClientError | OSError):
        return _failed("connection_error", redact(_short(err)), started, overflow)
    # ValueError: a request that cannot be sent; sending again won't help
    return _failed("invalid_request", redact(_short(err)), started, overflow,
                   OutcomeKind.PERMANENT)
