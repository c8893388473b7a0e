"""Tracing: W3C trace context from the source message to the function, and OpenTelemetry
spans for receive, each attempt and the dead letter.

Off by default, and then free: the runtime builds no :class:`Tracer`, the dispatcher
runs its untraced path (its lanes call ``_process`` directly; an attempt passes
``trace=None``) and nothing here is called. On (:func:`build`, from
:class:`~bridge.settings.Settings`):

- **Trace context in** (:func:`context_of`): a ``traceparent`` (and ``tracestate``)
  header of the message -- a Kafka record header, an AMQP header -- else the
  CloudEvents *distributed tracing* extension (``ce_traceparent`` / ``cloudEvents:
  traceparent`` / a structured event's ``traceparent``). The transport header is the
  current hop, so it wins. An invalid value counts as none (W3C: restart the trace).
- **Trace context out**: every attempt's request carries ``traceparent`` /
  ``tracestate`` HTTP headers. Where the message had none, a new trace starts.
- **Spans** (:mod:`bridge.otel`, when an OTLP endpoint is configured and the SDK is
  installed): ``receive <trigger>`` (CONSUMER, child of the message's context: from a
  worker taking the event to its settle), ``invoke <function>`` per attempt (CLIENT,
  child of receive; its context is the request's ``traceparent``, so the function's
  own spans join the trace), ``dead-letter <trigger>`` (PRODUCER, child of receive).
  Without an exporter (:class:`Propagation`) the bridge records nothing and passes a
  message's ``traceparent`` on unchanged, as a W3C intermediary that does not
  participate should.

Settings (standard ``OTEL_*`` variables, read by :class:`~bridge.settings.Settings`
and the SDK): ``BRIDGE_TRACING`` = ``auto`` (default: on when
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set),
``on`` (propagate even without an endpoint) or ``off``; ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` export nothing. What a problem does to the daemon: the SDK
missing, or a protocol other than ``http/protobuf``, is one log line at start and the
bridge propagates without spans; an endpoint that does not answer is one log line when
export starts failing (and one when it recovers): spans are dropped meanwhile, events
keep flowing (export runs in the SDK's own thread).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from bridge.events import Disposition, Event
from bridge.logs import Logger
from bridge.outcome import Outcome
from bridge.settings import Settings
from bridge.tracecontext import TraceContext, context_of

#: The one protocol the ``tracing`` extra exports with.
HTTP_PROTOBUF = "http/protobuf"
#: What to install for spans.
EXTRA = "pip install 'trigger-bridge[tracing]'"


# --- what the dispatcher calls -------------------------------------------------------


class AttemptTrace(Protocol):
    """One attempt: ``headers`` go with its request; ``end`` records its outcome."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def end(self, outcome: Outcome) -> None: ...


class DeadLetterTrace(Protocol):
    def end(self, fallback: bool) -> None: ...


class EventTrace(Protocol):
    """One event's trace, from a worker taking it to its settle."""

    def attempt(self, attempt: int) -> AttemptTrace: ...

    def dead_letter(self, reason: str) -> DeadLetterTrace: ...

    def end(self, disposition: Disposition | None) -> None:
        """The event is done (None: left unsettled for its source to redeliver)."""


class Tracer(Protocol):
    def receive(self, event: Event, function: str) -> EventTrace: ...

    async def close(self) -> None:
        """Export what is left (bounded) and stop."""


# --- propagation only ------------------------------------------------------------------


class _Propagated:
    """An event's trace context, passed on; no span is recorded."""

    __slots__ = ("headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers

    def attempt(self, attempt: int) -> _Propagated:
        return self

    def dead_letter(self, reason: str) -> _Propagated:
        return self

    def end(self, outcome: object = None) -> None:
        """Nothing recorded."""


class Propagation:
    """Trace context without spans: a message's ``traceparent`` reaches the function
    unchanged; a message without one starts a new trace."""

    def receive(self, event: Event, function: str) -> EventTrace:
        context = context_of(event) or TraceContext.new()
        return _Propagated(context.headers())

    async def close(self) -> None:
        """Nothing to flush."""


# --- from the settings ---------------------------------------------------------------


def build(settings: Settings, log: Logger) -> Tracer | None:
    """The process's tracer, or None when tracing is off (see the module docs)."""
    endpoint = settings.otlp_endpoint
    if settings.tracing == "off" or (settings.tracing == "auto" and not endpoint):
        return None
    exporting = (endpoint is not None and not settings.otel_sdk_disabled
                 and settings.otel_traces_exporter.strip().lower() == "otlp")
    if not exporting:
        log.info("tracing: propagating W3C trace context; no spans exported "
                 "(no OTLP endpoint, or OTEL_SDK_DISABLED / OTEL_TRACES_EXPORTER=none)")
        return Propagation()
    protocol = (settings.otlp_protocol or HTTP_PROTOBUF).strip().lower()
    if protocol != HTTP_PROTOBUF:
        log.error(f"tracing: OTLP protocol {protocol!r} is not supported (only "
                  f"{HTTP_PROTOBUF}); propagating trace context without exporting spans")
        return Propagation()
    try:
        from bridge import otel
    except ImportError as err:
        log.error(f"tracing: an OTLP endpoint is set but the OpenTelemetry SDK is not "
                  f"installed ({EXTRA}); propagating trace context without exporting spans",
                  missing=getattr(err, "name", None) or str(err))
        return Propagation()
    return otel.OtelTracer.from_settings(settings, log)
