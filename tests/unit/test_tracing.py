"""Tracing (bridge.tracing, bridge.tracecontext, bridge.otel): W3C trace context in and
out, the spans of one event with the SDK's in-memory exporter, the tracer the settings
build, and the one-line report of an OTLP endpoint that does not answer (the real
OTLPSpanExporter against a closed port, then a real OTLP/HTTP receiver there).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from bridge.config import parse_config
from bridge.dispatcher import Dispatcher
from bridge.events import Event
from bridge.invoker import Invoker
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.otel import OtelTracer, _Reporting
from bridge.pools import BalancedPool, Target
from bridge.settings import Settings
from bridge.tracecontext import TraceContext, context_of, parse_traceparent
from bridge.tracing import Propagation, Tracer, build
from tests.support.daemon import free_port
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.otlp import OtlpReceiver
from tests.unit.test_dispatcher import MemorySink, Settlements

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_ID, PARENT_ID = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


# --- W3C trace context -----------------------------------------------------------------


def test_a_valid_traceparent_is_parsed() -> None:
    assert parse_traceparent(PARENT, "vendor=x") == TraceContext(
        TRACE_ID, PARENT_ID, "01", "vendor=x")
    future = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-more"
    assert parse_traceparent(future) == TraceContext(TRACE_ID, PARENT_ID, "01")


@pytest.mark.parametrize("text", [
    "", "garbage", PARENT.upper(), PARENT + "-extra",  # version 00 has exactly 4 fields
    "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
])
def test_an_invalid_traceparent_is_none(text: str) -> None:
    assert parse_traceparent(text) is None


def event(**fields: object) -> Event:
    values: dict[str, object] = {"trigger": "orders", "id": "orders/0/1",
                                 "source": "kafka://orders", "type": "t", "data": b"x"}
    values.update(fields)
    return Event(**values)  # type: ignore[arg-type]


def test_the_transport_header_wins_over_the_cloudevents_extension() -> None:
    other = "00-11111111111111111111111111111111-2222222222222222-00"
    found = context_of(event(
        headers=(("TraceParent", PARENT.encode()), ("tracestate", b"a=1")),
        extensions={"traceparent": other, "tracestate": "b=2"},
    ))
    assert found == TraceContext(TRACE_ID, PARENT_ID, "01", "a=1")


def test_the_cloudevents_extension_is_used_without_a_header() -> None:
    found = context_of(event(extensions={"traceparent": PARENT, "tracestate": "b=2"}))
    assert found == TraceContext(TRACE_ID, PARENT_ID, "01", "b=2")
    assert context_of(event()) is None
    assert context_of(event(headers=(("traceparent", b"nonsense"),))) is None


# --- the tracer the settings build ------------------------------------------------------


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(("values", "kind"), [
    ({}, None),  # auto, no endpoint: off
    ({"tracing": "off", "otlp_endpoint": "http://127.0.0.1:4318"}, None),
    ({"tracing": "on"}, Propagation),
    ({"otlp_endpoint": "http://127.0.0.1:4318", "otel_traces_exporter": "none"}, Propagation),
    ({"otlp_endpoint": "http://127.0.0.1:4318", "otel_sdk_disabled": True}, Propagation),
    ({"otlp_endpoint": "http://127.0.0.1:4318", "otlp_protocol": "grpc"}, Propagation),
    ({"otlp_endpoint": "http://127.0.0.1:4318"}, OtelTracer),
])
async def test_what_the_settings_build(
    values: dict[str, object], kind: type | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED", "BRIDGE_TRACING"):
        monkeypatch.delenv(name, raising=False)
    tracer = build(settings(**values), get_logger())
    assert (None if tracer is None else type(tracer)) is kind
    if tracer is not None:
        await tracer.close()


def test_the_otel_settings_are_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4318/v1/traces")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    monkeypatch.setenv("BRIDGE_TRACING", "on")
    read = Settings()
    assert read.otlp_endpoint == "http://traces:4318/v1/traces"  # the traces one wins
    assert (read.otel_sdk_disabled, read.tracing) == (True, "on")


# --- the spans of one event (the SDK's in-memory exporter) -------------------------------


@dataclass
class TraceRig:
    fn: RecordingFunction
    session: aiohttp.ClientSession
    exported: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    settlements: Settlements = field(default_factory=Settlements)
    sink: MemorySink = field(default_factory=MemorySink)

    def otel(self) -> OtelTracer:
        provider = TracerProvider(resource=Resource.create({"service.name": "test"}))
        provider.add_span_processor(SimpleSpanProcessor(self.exported))
        return OtelTracer(provider)

    def dispatcher(self, tracer: Tracer) -> Dispatcher:
        config = parse_config(
            "defaults: {dead_letter: {file: {path: /unused}}}\n"
            f"functions: {{fn: {{url: '{self.fn.url}'}}}}\n"
            "triggers: [{name: orders, function: fn, cron: {schedule: '@daily'},"
            " retry: {max_attempts: 3, initial_backoff: 10ms}}]\n", env={})
        return Dispatcher(
            config.resolve(config.triggers[0]), target=Target("fn", BalancedPool([self.fn.url])),
            invoker=Invoker(self.session), sink=self.sink, metrics=Metrics(),
            log=get_logger(test=True), tracer=tracer,
        )

    def event(self, event_id: str, **fields: object) -> Event:
        return event(id=event_id, data=event_id.encode(), settler=self.settlements.settler,
                     **fields)


@pytest.fixture
async def rig() -> AsyncIterator[TraceRig]:
    async with RecordingFunction() as fn, Invoker.new_session() as session:
        yield TraceRig(fn, session)


def flaky(call: Call, attempt: int) -> Reply:
    """``bad``: 422; ``flaky``: 503 once, then 200; else 200."""
    if call.body == b"bad":
        return Reply(422, body="no")
    return Reply(503 if call.body == b"flaky" and attempt == 1 else 200)


async def test_spans_of_receive_each_attempt_and_dead_letter(rig: TraceRig) -> None:
    rig.fn.behaviour = flaky
    dispatcher = rig.dispatcher(rig.otel())
    await dispatcher.submit(rig.event("flaky", headers=(("traceparent", PARENT.encode()),
                                                        ("tracestate", b"v=1"))))
    await dispatcher.submit(rig.event("bad"))
    await rig.settlements.wait(2)
    assert await dispatcher.drain(1)
    spans = rig.exported.get_finished_spans()
    by_name: dict[str, list] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert sorted(by_name) == ["dead-letter orders", "invoke fn", "receive orders"]

    flaky_calls = [c for c in rig.fn.calls if c.body == b"flaky"]
    [receive] = [s for s in by_name["receive orders"]
                 if s.attributes["cloudevents.event_id"] == "flaky"]
    assert receive.kind is SpanKind.CONSUMER
    assert format(receive.context.trace_id, "032x") == TRACE_ID  # joined the message's trace
    assert format(receive.parent.span_id, "016x") == PARENT_ID
    assert receive.attributes["bridge.disposition"] == "delivered"
    attempts = sorted((s for s in by_name["invoke fn"]
                       if s.context.trace_id == receive.context.trace_id),
                      key=lambda s: s.attributes["bridge.attempt"])
    assert [s.attributes["http.response.status_code"] for s in attempts] == [503, 200]
    assert [s.status.status_code for s in attempts] == [StatusCode.ERROR, StatusCode.UNSET]
    for span, call in zip(attempts, flaky_calls, strict=True):
        assert span.kind is SpanKind.CLIENT
        assert span.parent.span_id == receive.context.span_id
        # the function's request carries this attempt's context, and the message's state
        assert call.headers["traceparent"] == (
            f"00-{TRACE_ID}-{format(span.context.span_id, '016x')}-01")
        assert call.headers["tracestate"] == "v=1"

    [bad_receive] = [s for s in by_name["receive orders"]
                     if s.attributes["cloudevents.event_id"] == "bad"]
    assert bad_receive.parent is None  # no context in the message: a new trace
    [dead] = by_name["dead-letter orders"]
    assert dead.kind is SpanKind.PRODUCER
    assert dead.parent.span_id == bad_receive.context.span_id
    assert dead.attributes["bridge.error"] == "http_422"
    assert bad_receive.attributes["bridge.disposition"] == "dead_lettered"
    [bad_call] = [c for c in rig.fn.calls if c.body == b"bad"]
    assert bad_call.headers["traceparent"].split("-")[1] == format(
        bad_receive.context.trace_id, "032x")


async def test_propagation_passes_the_context_on_unchanged_or_starts_one(rig: TraceRig) -> None:
    dispatcher = rig.dispatcher(Propagation())
    await dispatcher.submit(rig.event("e1", extensions={"traceparent": PARENT}))
    await dispatcher.submit(rig.event("e2"))
    await rig.settlements.wait(2)
    headers = {c.body: c.headers for c in rig.fn.calls}
    assert headers[b"e1"]["traceparent"] == PARENT
    assert "tracestate" not in headers[b"e1"]
    started = parse_traceparent(headers[b"e2"]["traceparent"])
    assert started is not None
    assert started.trace_id != TRACE_ID


async def test_without_a_tracer_no_trace_header_is_sent(rig: TraceRig) -> None:
    config = parse_config(
        "defaults: {dead_letter: {file: {path: /unused}}}\n"
        f"functions: {{fn: {{url: '{rig.fn.url}'}}}}\n"
        "triggers: [{name: orders, function: fn, cron: {schedule: '@daily'}}]\n", env={})
    dispatcher = Dispatcher(
        config.resolve(config.triggers[0]), target=Target("fn", BalancedPool([rig.fn.url])),
        invoker=Invoker(rig.session), sink=rig.sink, metrics=Metrics(), log=get_logger())
    await dispatcher.submit(rig.event("e1", headers=(("traceparent", PARENT.encode()),)))
    await rig.settlements.wait(1)
    assert "traceparent" not in {name.lower() for name in rig.fn.calls[0].headers}


# --- an OTLP endpoint that does not answer ------------------------------------------------


async def test_an_unreachable_endpoint_is_one_line_until_it_recovers() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    port = free_port()
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", timeout=1)
    provider = TracerProvider()
    in_memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(in_memory))
    tracer = provider.get_tracer("test")
    for name in ("a", "b", "c"):
        tracer.start_span(name).end()
    batch = in_memory.get_finished_spans()
    with structlog.testing.capture_logs() as lines:
        reporting = _Reporting(exporter, f"http://127.0.0.1:{port}", get_logger())
        try:
            for _ in range(3):  # in a thread, as the SDK's batch processor calls it
                await asyncio.to_thread(reporting.export, batch)
            async with OtlpReceiver(port) as receiver:
                await asyncio.to_thread(reporting.export, batch)
        finally:
            reporting.shutdown()
    events = [line["event"] for line in lines]
    assert events == [
        "tracing: cannot export spans to the OTLP endpoint; spans are dropped until it "
        "answers, events keep flowing",
        "tracing: span export recovered",
    ]
    assert lines[0]["error"] == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert [s.name for s in receiver.spans] == ["a", "b", "c"]


class BrokenTracer:
    """A tracer whose every call fails (a bug in it, or in the SDK)."""

    def receive(self, event: Event, function: str) -> None:
        raise RuntimeError("tracer broken")

    async def close(self) -> None:
        """Nothing to close."""


async def test_a_failing_tracer_costs_the_event_its_trace_not_its_delivery(
    rig: TraceRig,
) -> None:
    dispatcher = rig.dispatcher(BrokenTracer())  # type: ignore[arg-type]
    await dispatcher.submit(rig.event("e1"))
    await rig.settlements.wait(1)
    assert [c.body for c in rig.fn.calls] == [b"e1"]
    assert rig.sink.records == []
    assert "traceparent" not in rig.fn.calls[0].headers
