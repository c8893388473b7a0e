"""OpenTelemetry spans exported over OTLP/HTTP: the ``tracing`` extra
(``opentelemetry-sdk``, ``opentelemetry-exporter-otlp-proto-http``).

Imported only by :func:`bridge.tracing.build` when an endpoint is configured, so a
daemon without the extra never needs it. The process's own
:class:`~opentelemetry.sdk.trace.TracerProvider` (no global provider is set: the bridge
is not a library) with a batch processor; the exporter reads the standard variables
(``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``..._HEADERS``, ``..._TIMEOUT``,
``..._CERTIFICATE``, ``..._COMPRESSION``), the provider ``OTEL_TRACES_SAMPLER[_ARG]``,
the resource ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (``service.name``
defaults to ``trigger-bridge``) and the batch processor ``OTEL_BSP_*``.

Spans and their attributes are listed in :mod:`bridge.tracing` and docs/operations.md.
An endpoint that does not answer: :class:`_Reporting` turns the SDK's per-retry warnings
into one error line when export starts failing and one info line when it recovers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge import __version__
from bridge.events import Disposition, Event
from bridge.logs import Logger, redact_url
from bridge.outcome import Outcome
from bridge.settings import Settings
from bridge.tracecontext import context_of

#: Loggers of the SDK's export path: their records are folded into _Reporting's lines.
_EXPORT_LOGGERS = ("opentelemetry.exporter", "opentelemetry.sdk._shared_internal",
                   "opentelemetry.sdk.trace.export")
#: How long the stop waits for the last spans to go out.
_FLUSH_TIMEOUT = 5.0


class _FirstMessage(logging.Handler):
    """Keeps the first record of the SDK's export loggers since the last ``reset``: the
    cause of a failed export (later ones only say that it gave up)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.text = ""

    def reset(self) -> None:
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not self.text:
            self.text = record.getMessage()[:300]


class _Reporting(SpanExporter):
    """The OTLP exporter, reporting failures as one line per change (failing,
    recovered) instead of the SDK's line per retry."""

    def __init__(self, exporter: SpanExporter, endpoint: str, log: Logger) -> None:
        self._exporter = exporter
        self._endpoint = endpoint
        self._log = log
        self._last = _FirstMessage()
        for name in _EXPORT_LOGGERS:
            logger = logging.getLogger(name)
            logger.addHandler(self._last)
            logger.propagate = False
        self.failing = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._last.reset()
        try:
            result = self._exporter.export(spans)
        except Exception as err:  # an exporter bug must not end the export thread
            self._last.text = f"{type(err).__name__}: {err}"[:300]
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.FAILURE and not self.failing:
            self.failing = True
            self._log.error(
                "tracing: cannot export spans to the OTLP endpoint; spans are dropped until "
                "it answers, events keep flowing",
                endpoint=self._endpoint, error=_probe(self._endpoint),
                detail=self._last.text or "export failed",
            )
        elif result is SpanExportResult.SUCCESS and self.failing:
            self.failing = False
            self._log.info("tracing: span export recovered", endpoint=self._endpoint)
        return result

    def shutdown(self) -> None:
        self._exporter.shutdown()
        for name in _EXPORT_LOGGERS:
            logger = logging.getLogger(name)
            logger.removeHandler(self._last)
            logger.propagate = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._exporter.force_flush(timeout_millis)


def _probe(endpoint: str, timeout: float = 2.0) -> str:
    """Why the endpoint takes no spans, in words: a TCP connect to its host and port
    (the SDK's own message only says that it gave up)."""
    parts = urlsplit(endpoint)
    host = parts.hostname or "localhost"
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except (OSError, ValueError) as err:
        reason = getattr(err, "strerror", None) or str(err) or type(err).__name__
        return f"cannot connect to {host}:{parts.port or ''}: {reason}"
    return f"{host}:{port} accepts connections but did not take the spans"


class _AttemptSpan:
    __slots__ = ("_span", "headers")

    def __init__(self, span: Span, headers: Mapping[str, str]) -> None:
        self._span = span
        self.headers = headers

    def end(self, outcome: Outcome) -> None:
        span = self._span
        if outcome.status is not None:
            span.set_attribute("http.response.status_code", outcome.status)
        span.set_attribute("bridge.outcome", outcome.reason)
        if outcome.overflow:
            span.set_attribute("bridge.overflow", True)
        if not outcome.ok:
            span.set_status(Status(StatusCode.ERROR, outcome.reason))
        span.end()


class _DeadLetterSpan:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def end(self, fallback: bool) -> None:
        if fallback:
            self._span.set_attribute("bridge.dead_letter.fallback", True)
        self._span.end()


class _EventSpan:
    """The receive span of one event and its children."""

    __slots__ = ("_attempt", "_context", "_function", "_owner", "_span", "_trigger")

    def __init__(self, owner: OtelTracer, span: Span, trigger: str, function: str) -> None:
        self._owner = owner
        self._trigger = trigger
        self._span = span
        self._function = function
        self._context = trace_api.set_span_in_context(span)
        self._attempt: Span | None = None

    def attempt(self, attempt: int) -> _AttemptSpan:
        span = self._owner.tracer.start_span(
            f"invoke {self._function}", context=self._context, kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "bridge.function": self._function,
                        "bridge.attempt": attempt},
        )
        self._attempt = span
        headers: dict[str, str] = {}
        self._owner.propagator.inject(headers, context=trace_api.set_span_in_context(span))
        return _AttemptSpan(span, headers)

    def dead_letter(self, reason: str) -> _DeadLetterSpan:
        return _DeadLetterSpan(self._owner.tracer.start_span(
            f"dead-letter {self._trigger}", context=self._context,
            kind=SpanKind.PRODUCER, attributes={"bridge.error": reason},
        ))

    def end(self, disposition: Disposition | None) -> None:
        attempt = self._attempt
        if attempt is not None and attempt.is_recording():  # not ended: cut off by a drain
            attempt.set_status(Status(StatusCode.ERROR, "cancelled"))
            attempt.end()
        span = self._span
        span.set_attribute("bridge.disposition",
                           "unsettled" if disposition is None else disposition.value)
        if disposition is Disposition.DEAD_LETTERED:
            span.set_status(Status(StatusCode.ERROR, "dead-lettered"))
        span.end()


class OtelTracer:
    """Spans through the process's own TracerProvider (see the module docs)."""

    def __init__(self, provider: TracerProvider, reporting: _Reporting | None = None) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("trigger-bridge", __version__)
        self.propagator = TraceContextTextMapPropagator()
        self._reporting = reporting

    @classmethod
    def from_settings(cls, settings: Settings, log: Logger) -> OtelTracer:
        resource = Resource.create(
            {} if settings.otel_service_name else {SERVICE_NAME: "trigger-bridge"}
        )
        provider = TracerProvider(resource=resource)
        endpoint = redact_url(settings.otlp_endpoint or "")
        reporting = _Reporting(OTLPSpanExporter(), endpoint, log)
        provider.add_span_processor(BatchSpanProcessor(reporting))
        log.info("tracing: exporting spans over OTLP/HTTP", endpoint=endpoint)
        return cls(provider, reporting)

    @property
    def failing(self) -> bool:
        """True while the endpoint does not take spans."""
        return self._reporting is not None and self._reporting.failing

    def receive(self, event: Event, function: str) -> _EventSpan:
        incoming = context_of(event)
        parent = None if incoming is None else self.propagator.extract(incoming.headers())
        span = self.tracer.start_span(
            f"receive {event.trigger}", context=parent, kind=SpanKind.CONSUMER,
            attributes={"bridge.trigger": event.trigger, "cloudevents.event_id": event.id,
                        "cloudevents.event_source": event.source,
                        "cloudevents.event_type": event.type},
        )
        return _EventSpan(self, span, event.trigger, function)

    async def close(self) -> None:
        """Flush what is queued (bounded) and shut the provider down, off the loop."""

        def stop() -> None:
            self.provider.force_flush(int(_FLUSH_TIMEOUT * 1000))
            self.provider.shutdown()

        await asyncio.to_thread(stop)
