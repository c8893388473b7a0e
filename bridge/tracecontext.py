"""W3C Trace Context (``traceparent``, ``tracestate``): parsing, new traces, and the
context a source message brought (:func:`context_of`; the rules are in
:mod:`bridge.tracing`). Shared by the propagation-only tracer and the OpenTelemetry one
(:mod:`bridge.otel`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from bridge.events import Event

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: ``version-traceid-parentid-flags`` (version 00; a later version may add fields).
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace>[0-9a-f]{32})-(?P<span>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})(?P<rest>-.*)?\Z"
)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A W3C trace context: ``traceparent`` parsed, ``tracestate`` as it came."""

    trace_id: str
    span_id: str
    flags: str = "01"
    state: str | None = None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def headers(self) -> dict[str, str]:
        """The HTTP headers that carry it."""
        out = {TRACEPARENT: self.traceparent}
        if self.state:
            out[TRACESTATE] = self.state
        return out

    @classmethod
    def new(cls) -> TraceContext:
        """A new trace (random ids, sampled)."""
        return cls(os.urandom(16).hex(), os.urandom(8).hex())


def parse_traceparent(text: str, state: str | None = None) -> TraceContext | None:
    """A ``traceparent`` value, or None when it is not a valid one (W3C Trace Context:
    lower-case hex, version ``ff`` invalid, version 00 has exactly four fields, trace
    and parent ids not all zeros)."""
    match = _TRACEPARENT.match(text.strip())
    if match is None:
        return None
    version, rest = match["version"], match["rest"]
    if version == "ff" or (version == "00" and rest):
        return None
    if match["trace"] == _ZERO_TRACE or match["span"] == _ZERO_SPAN:
        return None
    return TraceContext(match["trace"], match["span"], match["flags"], state or None)


def context_of(event: Event) -> TraceContext | None:
    """The trace context a message brought: its ``traceparent`` header (Kafka record
    header, AMQP header), else its CloudEvent's ``traceparent`` extension."""
    parent = state = None
    for name, value in event.headers:
        lower = name.lower()
        if lower == TRACEPARENT:
            parent = value.decode("ascii", "replace")
        elif lower == TRACESTATE:
            state = value.decode("ascii", "replace")
    if parent is None:
        parent = event.extensions.get(TRACEPARENT)
        state = event.extensions.get(TRACESTATE)
    return None if parent is None else parse_traceparent(parent, state)
