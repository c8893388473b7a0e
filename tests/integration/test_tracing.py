"""Tracing through the real daemon (``python -m bridge run``): W3C trace context from
Kafka headers, AMQP headers and the CloudEvents extension to the function's request,
spans exported over OTLP/HTTP to a real receiver in the test (their trace ids are the
ones the function received), an OTLP endpoint that does not answer (one log line,
events flow), and a daemon without the OpenTelemetry SDK installed.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import tests.support.kafka
from tests.support.daemon import BridgeProcess, free_port
from tests.support.functions import Call, RecordingFunction, Reply
from tests.support.kafka import KafkaBroker, bridge_config, wait_until
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.rabbitmq import Broker, bridge_yaml, rabbit_trigger

kafka_broker = tests.support.kafka.kafka_broker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
CE_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CE_PARENT = f"00-{CE_TRACE_ID}-b7ad6b7169203331-01"
#: Export quickly (the batch processor's delay), give up quickly on a closed port.
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2"}


def refuse_bad(call: Call, attempt: int) -> Reply:
    return Reply(422, body="no") if call.body == b"bad" else Reply()


def trace_of(call: Call) -> tuple[str, str]:
    """(trace id, parent span id) of the traceparent the function received."""
    _, trace_id, span_id, _ = call.headers["traceparent"].split("-")
    return trace_id, span_id


async def test_kafka_trace_context_reaches_the_function_and_spans_are_exported(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic()
    await kafka_broker.produce(topic, [
        (b"k1", b"header", [("traceparent", PARENT.encode()), ("tracestate", b"acme=1")]),
        (b"k2", b"cloudevent", [("ce_specversion", b"1.0"), ("ce_id", b"ce-1"),
                                ("ce_source", b"/shop"), ("ce_type", b"order"),
                                ("ce_traceparent", CE_PARENT.encode())]),
        (b"k3", b"none", []),
        (b"k4", b"bad", []),
    ])
    async with OtlpReceiver() as otlp, RecordingFunction(refuse_bad) as fn:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_SERVICE_NAME": "bridge-test",
               **FAST_EXPORT}
        config = bridge_config(kafka_broker, topic, fn.url)
        async with BridgeProcess(config, tmp_path, env=env, wait_ready=True) as bridge:
            calls = {c.body: c for c in await fn.wait_calls(4)}
            # 4 receive + 4 invoke + 1 dead-letter
            spans = await otlp.wait_spans(9)
            assert await bridge.terminate() == 0
    assert trace_of(calls[b"header"])[0] == TRACE_ID
    assert calls[b"header"].headers["tracestate"] == "acme=1"
    assert trace_of(calls[b"cloudevent"])[0] == CE_TRACE_ID
    started = {trace_of(calls[b"none"])[0], trace_of(calls[b"bad"])[0]}
    assert len(started) == 2
    assert not started & {TRACE_ID, CE_TRACE_ID}  # new traces where there was none

    assert {s.service for s in spans} == {"bridge-test"}
    for body, call in calls.items():
        trace_id, parent_id = trace_of(call)
        mine = [s for s in spans if s.trace_id == trace_id]
        [receive] = [s for s in mine if s.name == "receive orders"]
        [attempt] = [s for s in mine if s.name == "invoke fn"]
        assert receive.kind == ReceivedSpan.CONSUMER
        assert attempt.kind == ReceivedSpan.CLIENT
        assert attempt.span_id == parent_id  # the function's parent is the attempt span
        assert attempt.parent_span_id == receive.span_id
        assert attempt.attributes["bridge.attempt"] == 1
        if body == b"header":
            assert receive.parent_span_id == "00f067aa0ba902b7"
        if body == b"bad":
            [dead] = [s for s in mine if s.name == "dead-letter orders"]
            assert dead.parent_span_id == receive.span_id
            assert dead.kind == ReceivedSpan.PRODUCER
            assert dead.attributes["bridge.error"] == "http_422"
            assert attempt.attributes["http.response.status_code"] == 422
            assert receive.attributes["bridge.disposition"] == "dead_lettered"
        else:
            assert receive.attributes["bridge.disposition"] == "delivered"


async def test_amqp_trace_headers_are_propagated_without_an_exporter(tmp_path: Path) -> None:
    """``BRIDGE_TRACING=on`` without an endpoint: the message's context goes on unchanged."""
    async with Broker() as rabbit, RecordingFunction() as fn:
        queue = await rabbit.queue()
        config = bridge_yaml(fn.url, [rabbit_trigger("jobs", queue)],
                             {"file": {"path": str(tmp_path / "dl.jsonl")}})
        await rabbit.publish(queue, b"traced", message_id="m1",
                             headers={"traceparent": PARENT, "tracestate": "acme=2"})
        await rabbit.publish(queue, b"plain", message_id="m2")
        async with BridgeProcess(config, tmp_path, env={"BRIDGE_TRACING": "on"},
                                 wait_ready=True) as bridge:
            calls = {c.body: c for c in await fn.wait_calls(2)}
            assert await bridge.terminate() == 0
    assert calls[b"traced"].headers["traceparent"] == PARENT
    assert calls[b"traced"].headers["tracestate"] == "acme=2"
    trace_id, _ = trace_of(calls[b"plain"])
    assert len(trace_id) == 32
    assert trace_id != TRACE_ID
    assert any("propagating W3C trace context" in line for line in bridge.log_lines)


async def test_an_unreachable_otlp_endpoint_is_one_log_line_and_events_keep_flowing(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic()
    await kafka_broker.produce(topic, [(f"k{i}".encode(), b"v", []) for i in range(30)])
    closed = free_port()
    async with RecordingFunction() as fn:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed}", **FAST_EXPORT}
        config = bridge_config(kafka_broker, topic, fn.url)
        async with BridgeProcess(config, tmp_path, env=env, wait_ready=True) as bridge:
            await fn.wait_calls(30)
            await wait_until(lambda: any("cannot export spans" in line
                                         for line in bridge.log_lines), 20)
            await wait_until(lambda: bridge.metric(
                "bridge_events_settled_total", disposition="delivered") == 30, 20)
            assert await bridge.terminate() == 0
    failures = [line for line in bridge.log_lines if "export" in line.lower()
                and "exporting spans over" not in line]
    assert len(failures) == 1, failures  # not a line per batch or per retry
    [record] = [json.loads(line) for line in failures]
    assert record["error"] == f"cannot connect to 127.0.0.1:{closed}: Connection refused"
    assert record["level"] == "error"
    assert "Traceback" not in "\n".join(bridge.log_lines)


BLOCK_OPENTELEMETRY = textwrap.dedent("""
    import sys

    class _Blocked:
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Blocked())
""")


async def test_the_daemon_runs_without_the_sdk_installed(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """As if the ``tracing`` extra were not installed: every ``opentelemetry`` import
    fails in the daemon (a sitecustomize blocks them)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_OPENTELEMETRY)
    topic = kafka_broker.topic()
    await kafka_broker.produce(topic, [(b"k", b"header", [("traceparent", PARENT.encode())])])
    async with OtlpReceiver() as otlp, RecordingFunction() as fn:
        path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "PYTHONPATH": path, **FAST_EXPORT}
        config = bridge_config(kafka_broker, topic, fn.url)
        async with BridgeProcess(config, tmp_path, env=env, wait_ready=True) as bridge:
            [call] = await fn.wait_calls(1)
            assert await bridge.terminate() == 0
    assert call.headers["traceparent"] == PARENT  # propagated all the same
    [line] = [line for line in bridge.log_lines if "tracing" in line]
    assert "OpenTelemetry SDK is not installed (pip install 'trigger-bridge[tracing]')" in line
    assert otlp.requests == 0
