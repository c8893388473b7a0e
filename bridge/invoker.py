"""One invocation attempt: an HTTP POST in CloudEvents binary content mode.

The request carries the event's context attributes as ``ce-*`` headers, its data as
the body (bytes unchanged) and ``Content-Type`` = the data's content type. Header
values are percent-encoded as the CloudEvents HTTP binding requires (space, ``"``,
``%`` and anything outside printable ASCII), so CR/LF in a value can never become an
extra header. The message's own headers travel as HTTP headers only when their name
is a valid token and their value is safe; everything else is dropped (it still lands
in a dead-letter record untouched).

The result is an :class:`~bridge.outcome.Outcome`; this module never raises for a
failed attempt.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Mapping

import aiohttp

from bridge.events import Event
from bridge.outcome import (
    DEFAULT_RETRYABLE_STATUSES,
    Outcome,
    Verdict,
    classify_status,
    parse_retry_after,
)
from bridge.pools import NoEndpoints, Target

_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_UNSAFE = re.compile(r'[^\x21\x23-\x24\x26-\x7e]')
_DETAIL_BYTES = 512
#: Headers a message may not set on the request; the bridge owns them.
_RESERVED = frozenset({"content-type", "content-length", "host", "transfer-encoding", "connection"})
#: Set last by the bridge; a message header of the same name (any case) is dropped.
_BRIDGE_OWNED = frozenset({"bridge-trigger", "bridge-attempt"})
#: CloudEvents attribute names: lower-case ASCII letters and digits.
_ATTRIBUTE_NAME = re.compile(r"^[a-z0-9]+$")


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
    event: Event, attempt: int, static: Mapping[str, str] = {}
) -> dict[str, str]:
    """The request headers; every name appears once (case-insensitively).

    Precedence: the bridge's own headers, then ``ce-*`` attributes, then ``static``
    (the function's configured headers), then the message's ``http_headers``, which are
    dropped when unsafe (invalid name, non-printable or non-ASCII value) or taken.
    """
    taken = {name.lower() for name in static} | _BRIDGE_OWNED
    headers = {
        name: value
        for name, value in event.http_headers.items()
        if name.lower() not in taken and _passes_through(name, value)
    }
    headers.update(static)
    for name, value in event.ce_attributes().items():
        if name != "datacontenttype" and _ATTRIBUTE_NAME.match(name):
            headers[f"ce-{name}"] = percent_encode(value)
    if event.content_type:
        headers["Content-Type"] = "".join(c for c in event.content_type if " " <= c <= "~")
    headers["bridge-trigger"] = event.trigger
    headers["bridge-attempt"] = str(attempt)
    return headers


def _passes_through(name: str, value: str) -> bool:
    lower = name.lower()
    return (
        bool(_TOKEN.match(name))
        and lower not in _RESERVED
        and not lower.startswith("ce-")
        and value.isascii()
        and value.isprintable()
    )


class Invoker:
    """Posts events to function targets over one pooled aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @classmethod
    def session(cls, limit: int = 0) -> aiohttp.ClientSession:
        """The shared session: no global connection cap (quotas live in Target)."""
        connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=30, enable_cleanup_closed=True)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )

    async def invoke(
        self,
        target: Target,
        event: Event,
        attempt: int,
        timeout: float,
        retryable: Collection[int] = DEFAULT_RETRYABLE_STATUSES,
    ) -> Outcome:
        """One attempt; ``timeout`` bounds the HTTP exchange, not the wait for a slot."""
        try:
            async with target.route() as route:
                started = time.monotonic()
                outcome = await self._post(route.url, target, event, attempt, timeout, retryable)
                elapsed = time.monotonic() - started
        except NoEndpoints as err:
            return Outcome(Verdict.RETRYABLE, "no_endpoints", detail=str(err))
        return Outcome(
            outcome.verdict,
            outcome.reason,
            status=outcome.status,
            detail=outcome.detail,
            retry_after=outcome.retry_after,
            duration=elapsed,
            overflow=route.overflow,
        )

    async def _post(  # noqa: PLR0917 - private, called once
        self,
        url: str,
        target: Target,
        event: Event,
        attempt: int,
        timeout: float,
        retryable: Collection[int],
    ) -> Outcome:
        try:
            headers = build_headers(event, attempt, target.headers)
            async with asyncio.timeout(timeout):
                # A redirect is an answer, not delivery: following a 301/302 would turn the
                # POST into a GET without the event and count that GET's 2xx as delivered.
                async with self._session.post(
                    url, data=event.data, headers=headers, allow_redirects=False
                ) as response:
                    return await _judge(response, retryable)
        except TimeoutError:
            return Outcome(
                Verdict.RETRYABLE, "timeout", detail=f"no response within {timeout:g}s"
            )
        except aiohttp.ClientConnectorError as err:
            return Outcome(Verdict.RETRYABLE, "connect_error", detail=_short(err))
        except (aiohttp.ClientError, OSError) as err:
            return Outcome(Verdict.RETRYABLE, "connection_error", detail=_short(err))
        except ValueError as err:  # a request that cannot be sent; sending again won't help
            return Outcome(Verdict.PERMANENT, "invalid_request", detail=_short(err))


async def _judge(response: aiohttp.ClientResponse, retryable: Collection[int]) -> Outcome:
    status = response.status
    verdict = classify_status(status, retryable)
    if verdict is Verdict.DELIVERED:
        await response.read()
        return Outcome(verdict, "ok", status=status)
    body = await response.content.read(_DETAIL_BYTES)
    detail = body.decode("utf-8", "replace").strip()
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    return Outcome(verdict, f"http_{status}", status=status, detail=detail, retry_after=retry_after)


def _short(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return text[:300]
