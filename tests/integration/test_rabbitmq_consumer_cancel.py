"""The broker cancels the bridge's consumer (issue 15, item 10).

RabbitMQ sends ``basic.cancel`` when the queue is deleted (and when a quorum queue's
leader moves, or an operator deletes and re-declares the queue). The channel stays
open, so nothing else tells the connector its consumer is gone. It must consume again
with backoff, read not ready meanwhile, log why periodically while the queue stays
gone, and deliver what is published once the queue is back.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction, Reply
from tests.support.rabbitmq import Broker, bridge_yaml, eventually, rabbit_trigger


def _cancel_logs(bridge: BridgeProcess, event: str) -> list[dict[str, object]]:
    return [e for e in bridge.logs() if e.get("event") == event]


async def test_queue_deleted_then_declared_again_resumes_consuming(tmp_path: Path) -> None:
    async with Broker() as broker, RecordingFunction() as fn:
        queue = await broker.queue(durable=True)
        config = bridge_yaml(fn.url, [rabbit_trigger("gone", queue, prefetch=5)],
                             {"file": {"path": str(tmp_path / "dl.jsonl")}})
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await broker.publish(queue, b"before", message_id="before")
            await fn.wait_calls(1)
            channel = await broker._open()
            await channel.queue_delete(queue)
            deleted = time.monotonic()
            await eventually(lambda: bridge.get_status("/readyz") == 503, timeout=5,
                             what="not ready once the consumer is cancelled")
            await asyncio.sleep(6.5)  # the queue stays gone: retries back off, reason logged
            assert bridge.get_status("/readyz") == 503
            assert '"gone": false' in _readyz(bridge)
            [cancelled] = _cancel_logs(bridge, "rabbitmq consumer cancelled by the broker")
            assert cancelled["queue"] == queue
            waits = _cancel_logs(bridge, "rabbitmq queue not consumable; trying again")
            # 1 + 2 + 4 s of backoff fit in the 6.5 s: three tries, each with the reason.
            assert 2 <= len(waits) <= 4, waits
            assert all(f"no queue '{queue}'" in str(w["reason"]) for w in waits)
            delays = [float(str(w["retry_in"])) for w in waits]
            print("tries while the queue was gone:", len(waits), "retry_in:", delays)
            assert delays == sorted(delays), delays
            assert delays[-1] > delays[0], delays
            assert bridge.metric("bridge_rabbitmq_consumer_cancels_total", trigger="gone") == 1

            await broker.queue(durable=True, name=queue)
            await broker.publish(queue, b"after", message_id="after")
            await fn.wait_calls(2, timeout=15)
            back = time.monotonic() - deleted
            print(f"delivered {back:.1f} s after the delete (re-declared at ~6.5 s)")
            await eventually(lambda: bridge.get_status("/readyz") == 200, timeout=5,
                             what="ready again")
            assert _cancel_logs(bridge, "rabbitmq consuming again")
            assert await bridge.terminate() == 0
        assert [c.body for c in fn.calls] == [b"before", b"after"]
        assert back < 6.5 + 10, "within the backoff cap (8 s at this point) plus delivery"
        assert await broker.count(queue) == 0


async def test_in_flight_delivery_is_settled_when_its_queue_is_deleted(tmp_path: Path) -> None:
    """Deleting a queue under an invocation in progress: its ack goes to a channel that
    is still open (no channel error), and the consumer comes back on the declared queue
    by itself when the bridge declares it (``declare`` in the trigger)."""

    def slow_first(call: object, attempt: int) -> Reply:
        return Reply(200, delay=1.0 if getattr(call, "body", b"") == b"slow" else 0.0)

    async with Broker() as broker, RecordingFunction(slow_first) as fn:
        queue = broker.name("q")
        trigger = rabbit_trigger("declared", queue, prefetch=5, declare={"durable": True})
        config = bridge_yaml(fn.url, [trigger], {"file": {"path": str(tmp_path / "dl.jsonl")}})
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await broker.publish(queue, b"slow", message_id="slow")
            await eventually(lambda: fn.in_flight == 1, timeout=10, what="in flight")
            channel = await broker._open()
            await channel.queue_delete(queue)
            await fn.wait_calls(1, timeout=10)
            # The bridge declares the queue again on its next try and consumes.
            await eventually(lambda: bridge.get_status("/readyz") == 200, timeout=10,
                             what="consuming the re-declared queue")
            await broker.publish(queue, b"next", message_id="next")
            await fn.wait_calls(2, timeout=10)
            assert bridge.metric("bridge_rabbitmq_settle_failures_total") == 0
            assert await bridge.terminate() == 0
        log = "\n".join(bridge.log_lines)
        assert "PRECONDITION_FAILED" not in log
        assert [c.body for c in fn.calls] == [b"slow", b"next"]


def _readyz(bridge: BridgeProcess) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{bridge.admin_port}/readyz") as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as err:
        return str(err.read().decode())
