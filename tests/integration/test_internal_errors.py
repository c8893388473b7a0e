"""A bug inside the dispatcher's path never drops an event (issue 15, item 11).

The real daemon runs with an invoker that raises an unexpected exception for chosen
events (``tests.support.inject``: no input can make the shipped code do that). The
event must be dead-lettered with reason ``internal_error`` and counted; the Kafka
commit must move past it; a cron ``Forbid`` trigger must go on firing.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import kafka as kafka_support
from tests.support.daemon import BridgeProcess
from tests.support.functions import RecordingFunction
from tests.support.inject import RAISING_INVOKER, UNRECORDABLE_INTERNAL_ERROR, preload
from tests.support.kafka import KafkaBroker, bridge_config, wait_until

kafka_broker = kafka_support.kafka_broker


def _records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_kafka_event_hitting_a_bug_is_dead_lettered_and_committed(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    topic = kafka_broker.topic()
    values = [b"boom" if i == 10 else f"v{i}".encode() for i in range(30)]
    await kafka_broker.produce(topic, [(f"k{i % 3}".encode(), v, []) for i, v in enumerate(values)])
    dl = tmp_path / "dl.jsonl"
    async with RecordingFunction() as fn:
        config = bridge_config(kafka_broker, topic, fn.url,
                               dead_letter=f'{{file: {{path: "{dl}"}}}}')
        env = preload(tmp_path, RAISING_INVOKER)
        async with BridgeProcess(config, tmp_path, env=env, wait_ready=True) as bridge:
            await fn.wait_calls(29, timeout=30)
            await wait_until(lambda: len(_records(dl)) == 1, 10, "the dead letter")
            assert bridge.metric("bridge_internal_errors_total", trigger="orders") == 1
            assert bridge.metric("bridge_dead_letters_total", reason="internal_error") == 1
            assert bridge.metric("bridge_events_settled_total",
                                 disposition="dead_lettered") == 1
            assert await bridge.terminate() == 0
    [record] = _records(dl)
    assert record["bridge-error"] == "internal_error"
    assert "RuntimeError: injected bug" in str(record["bridge-error-detail"])
    assert record["bridge-source"] == f"{topic}/0/10"
    assert sorted(fn.ids()) == sorted(f"{topic}/0/{o}" for o in range(30) if o != 10)
    committed = await kafka_broker.committed(f"g-{topic}", topic)
    assert committed == {0: 30}, "the commit moved past the dead-lettered record"
    errors = [e for e in bridge.logs() if e.get("event") == "internal error; dead-lettering"]
    assert len(errors) == 1
    assert errors[0]["event_id"] == f"{topic}/0/10"


async def test_kafka_record_that_cannot_even_be_dead_lettered_is_read_again(
    kafka_broker: KafkaBroker, tmp_path: Path
) -> None:
    """Two bugs in a row (the invoker, then the dead-letter record): the record is handed
    back ``ABANDONED``, which the Kafka settler never commits past; the next run of the
    daemon (fixed: no injection) reads it again and delivers it."""
    topic = kafka_broker.topic()
    values = [b"boom" if i == 5 else f"v{i}".encode() for i in range(12)]
    await kafka_broker.produce(topic, [(None, v, []) for v in values])
    dl = tmp_path / "dl.jsonl"
    async with RecordingFunction() as fn:
        config = bridge_config(kafka_broker, topic, fn.url, ordering="none",
                               dead_letter=f'{{file: {{path: "{dl}"}}}}')
        env = preload(tmp_path, RAISING_INVOKER + UNRECORDABLE_INTERNAL_ERROR)
        async with BridgeProcess(config, tmp_path, env=env, wait_ready=True) as bridge:
            await fn.wait_calls(11, timeout=30)
            await wait_until(
                lambda: bridge.metric("bridge_events_settled_total", disposition="abandoned")
                == 1, 10, "the record handed back",
            )
            assert await bridge.terminate() == 0
        assert await kafka_broker.committed(f"g-{topic}", topic) == {0: 5}
        async with BridgeProcess(config, tmp_path, wait_ready=True) as bridge:
            await wait_until(lambda: f"{topic}/0/5" in fn.ids(), 30, "the record read again")
            await wait_until(
                lambda: bridge.metric("bridge_kafka_commits_total", trigger="orders") > 0, 10,
                "a commit",
            )
            assert await bridge.terminate() == 0
    assert not dl.exists()
    assert await kafka_broker.committed(f"g-{topic}", topic) == {0: 12}


async def test_cron_forbid_goes_on_after_a_run_hit_a_bug(tmp_path: Path) -> None:
    dl = tmp_path / "dl.jsonl"
    async with RecordingFunction() as fn:
        config = f"""
defaults:
  retry: {{max_attempts: 2, initial_backoff: 50ms}}
  dead_letter: {{file: {{path: "{dl}"}}}}
functions:
  fn: {{url: "{fn.url}"}}
triggers:
  - name: tick
    function: fn
    cron: {{schedule: "* * * * * *", concurrency_policy: Forbid}}
"""
        env = {**preload(tmp_path, RAISING_INVOKER), "TB_INJECT_FIRST": "1"}
        async with BridgeProcess(config, tmp_path, env=env) as bridge:
            # The first tick's invocation raises; a vanished event would keep Forbid
            # skipping every later tick.
            await fn.wait_calls(2, timeout=8)
            assert bridge.metric("bridge_internal_errors_total", trigger="tick") == 1
            assert await bridge.terminate() == 0
    [record] = _records(dl)
    assert record["bridge-error"] == "internal_error"
    assert str(record["bridge-trigger"]) == "tick"
