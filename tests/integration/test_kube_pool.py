"""The in-cluster pool and overflow, over real HTTP: kubernetes-asyncio -> API emulator,
invocations through the real dispatcher/invoker to RecordingFunction "pods"."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import structlog

from bridge.config import ResolvedTrigger, parse_config
from bridge.deadletter import file_sink
from bridge.dispatcher import Dispatcher
from bridge.events import Disposition, Event
from bridge.invoker import Invoker
from bridge.kube.client import KubeClient
from bridge.kube.pool import KubernetesPool
from bridge.leadership import AlwaysLeader
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.pools import Target
from bridge.settings import Settings
from connectors.base import ConnectorContext
from tests.support.functions import RecordingFunction, always
from tests.support.kube_api import KubeApi, endpoint_slice

SLICES = "endpointslices.discovery.k8s.io"


@dataclass
class Harness:
    api: KubeApi
    client: KubeClient
    context: ConnectorContext
    tmp: Path
    settled: dict[str, Disposition] = field(default_factory=dict)
    closers: list[object] = field(default_factory=list)
    #: The pools' watches (the daemon runs them under its supervisor).
    watches: list[asyncio.Task[None]] = field(default_factory=list)

    def trigger(self, function: str) -> ResolvedTrigger:
        config = parse_config(f"""
defaults:
  timeout: 5s
  retry: {{max_attempts: 3, initial_backoff: 50ms, max_backoff: 100ms, jitter: false}}
  dead_letter: {{file: {{path: "{self.tmp / 'dl.jsonl'}"}}}}
functions:
  fn: {function}
triggers:
  - {{name: stream, function: fn, concurrency: 64, cron: {{schedule: "0 0 1 1 *"}}}}
""")
        return config.resolve(config.triggers[0])

    async def dispatcher(self, function: str) -> tuple[Dispatcher, Target]:
        resolved = self.trigger(function)
        spec = resolved.function
        assert spec.kubernetes is not None
        pool = KubernetesPool("fn", spec.kubernetes, self.client, self.context.log)
        self.watches.append(asyncio.create_task(pool.run()))
        target = Target(
            "fn", pool,
            max_concurrency=spec.max_concurrency,
            overflow_url=spec.overflow.url if spec.overflow else None,
            overflow_after=spec.overflow.after if spec.overflow else 0.25,
        )
        session = Invoker.new_session()
        self.closers += [target, session]
        dispatcher = Dispatcher(
            resolved, target=target, invoker=Invoker(session),
            sink=file_sink(resolved.dead_letter, resolved),
            metrics=self.context.metrics, log=self.context.log,
        )
        return dispatcher, target

    def event(self, n: int) -> Event:
        async def settle(event: Event, disposition: Disposition) -> None:
            self.settled[event.id] = disposition

        return Event(trigger="stream", id=f"e{n}", source="/test", type="t", data=b"{}",
                     content_type="application/json", settler=settle)

    def dead_letters(self) -> list[dict[str, object]]:
        path = self.tmp / "dl.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[Harness]:
    async with KubeApi() as api:
        settings = Settings(kubeconfig=str(api.kubeconfig(tmp_path)))
        context = ConnectorContext(Metrics(), get_logger(), AlwaysLeader())
        client = KubeClient(settings, context.log)
        harness = Harness(api, client, context, tmp_path)
        yield harness
        for watch in harness.watches:
            watch.cancel()
        await asyncio.gather(*harness.watches, return_exceptions=True)
        for closer in harness.closers:
            await closer.close()  # type: ignore[attr-defined]
        await client.close()


def pod_slice(name: str, fn: RecordingFunction, ready: bool = True) -> dict[str, object]:
    return endpoint_slice("fn", [("127.0.0.1", ready)], [("http", fn.port)], name=name)


async def wait_until(predicate: object, timeout: float = 5.0) -> float:
    started = time.perf_counter()
    while not predicate():  # type: ignore[operator]
        if time.perf_counter() - started > timeout:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.002)
    return time.perf_counter() - started


def ready_urls(target: Target) -> set[str]:
    pool = target.pool
    assert isinstance(pool, KubernetesPool)
    return {e.url for e in pool.endpoints if e.ready}


async def test_endpoints_added_and_removed_during_a_stream_lose_no_delivery(
    kube: Harness,
) -> None:
    async with RecordingFunction(always(delay=0.01)) as a, \
            RecordingFunction(always(delay=0.01)) as b:
        kube.api.put(SLICES, pod_slice("fn-a", a))
        dispatcher, target = await kube.dispatcher(
            "{kubernetes: {service: fn, port: http, path: /invoke}}"
        )
        await wait_until(lambda: ready_urls(target) == {f"{a.url}invoke"})
        marks: dict[str, float] = {}
        latencies = []

        async def change(mark: str, apply: object, expect: set[str]) -> None:
            marks[mark] = time.time()
            apply()  # type: ignore[operator]
            latencies.append(await wait_until(lambda: ready_urls(target) == expect))

        for n in range(240):
            await dispatcher.submit(kube.event(n))
            await asyncio.sleep(0.004)
            if n == 40:
                await change("b_added", lambda: kube.api.put(SLICES, pod_slice("fn-b", b)),
                             {f"{a.url}invoke", f"{b.url}invoke"})
            elif n == 110:
                await change("a_unready", lambda: kube.api.put(SLICES, pod_slice("fn-a", a, False)),
                             {f"{b.url}invoke"})
            elif n == 160:
                await change("a_back", lambda: kube.api.put(SLICES, pod_slice("fn-a", a)),
                             {f"{a.url}invoke", f"{b.url}invoke"})
            elif n == 190:
                await change("b_gone", lambda: kube.api.delete(SLICES, "fn-b"),
                             {f"{a.url}invoke"})
        assert await dispatcher.drain(10)

    assert len(kube.settled) == 240
    assert set(kube.settled.values()) == {Disposition.DELIVERED}
    assert kube.dead_letters() == []
    assert max(a.attempts.values()) == 1
    assert max(b.attempts.values()) == 1
    assert len(a.calls) + len(b.calls) == 240
    assert all(c.path == "/invoke" for c in a.calls + b.calls)
    grace = 0.05  # requests already sent when the change landed
    b_times = [c.received for c in b.calls]
    assert b_times
    assert min(b_times) >= marks["b_added"]
    assert not [c for c in a.calls if marks["a_unready"] + grace < c.received < marks["a_back"]]
    assert any(c.received > marks["a_back"] for c in a.calls)
    assert not [t for t in b_times if t > marks["b_gone"] + grace]
    assert max(latencies) < 1.0, latencies


async def test_overflow_takes_peaks_and_stops_when_capacity_returns(kube: Harness) -> None:
    async with RecordingFunction(always(delay=0.4)) as pod, RecordingFunction() as spill:
        kube.api.put(SLICES, pod_slice("fn-a", pod))
        dispatcher, target = await kube.dispatcher(
            f'{{kubernetes: {{service: fn}}, max_concurrency: 2, '
            f'overflow: {{url: "{spill.url}", after: 100ms}}}}'
        )
        await wait_until(lambda: bool(ready_urls(target)))
        for n in range(6):  # saturate: 2 slots in the cluster, the rest overflow after 100 ms
            await dispatcher.submit(kube.event(n))
        await wait_until(lambda: len(kube.settled) == 6, timeout=5)
        assert len(pod.calls) == 2
        assert len(spill.calls) == 4
        overflow = kube.context.metrics.value(
            "bridge_overflow_invocations_total", trigger="stream", function="fn"
        )
        assert overflow == 4

        for n in range(6, 8):  # capacity is back: no overflow
            await dispatcher.submit(kube.event(n))
            await wait_until(lambda n=n: f"e{n}" in kube.settled, timeout=5)
        assert len(pod.calls) == 4
        assert len(spill.calls) == 4

        kube.api.put(SLICES, pod_slice("fn-a", pod, ready=False))  # empty pool: overflow
        await wait_until(lambda: not ready_urls(target))
        await dispatcher.submit(kube.event(8))
        await wait_until(lambda: "e8" in kube.settled)
        assert [c.event_id for c in spill.calls][-1] == "e8"

        kube.api.put(SLICES, pod_slice("fn-a", pod))  # back: the cluster again
        await wait_until(lambda: bool(ready_urls(target)))
        await dispatcher.submit(kube.event(9))
        await wait_until(lambda: "e9" in kube.settled)
        assert pod.calls[-1].event_id == "e9"
        assert await dispatcher.drain(5)
    assert set(kube.settled.values()) == {Disposition.DELIVERED}


async def test_unknown_service_dead_letters_no_endpoints_or_overflows(kube: Harness) -> None:
    dispatcher, target = await kube.dispatcher("{kubernetes: {service: nowhere}}")
    await wait_until(lambda: target.pool.ready)  # type: ignore[attr-defined]
    await dispatcher.submit(kube.event(1))
    await wait_until(lambda: "e1" in kube.settled, timeout=5)
    assert kube.settled["e1"] is Disposition.DEAD_LETTERED
    [record] = kube.dead_letters()
    assert record["bridge-error"] == "no_endpoints"
    assert record["bridge-attempts"] == 3

    async with RecordingFunction() as spill:
        dispatcher, _ = await kube.dispatcher(
            f'{{kubernetes: {{service: nowhere}}, overflow: {{url: "{spill.url}", after: 50ms}}}}'
        )
        await dispatcher.submit(kube.event(2))
        await wait_until(lambda: "e2" in kube.settled, timeout=5)
        assert kube.settled["e2"] is Disposition.DELIVERED
        assert spill.ids() == ["e2"]


async def test_forbidden_watch_is_logged_with_the_verb_not_ready_and_retried(
    kube: Harness,
) -> None:
    kube.api.forbid("watch", SLICES)
    with structlog.testing.capture_logs() as logs:
        _, target = await kube.dispatcher("{kubernetes: {service: fn}}")
        pool = target.pool
        assert isinstance(pool, KubernetesPool)
        await wait_until(
            lambda: any(e.get("verb") == "watch" for e in logs) and not pool.ready, timeout=5
        )
        denied = next(e for e in logs if e.get("verb") == "watch")
        assert denied["log_level"] == "error"
        assert "'watch'" in denied["event"]
        assert "endpointslices.discovery.k8s.io" in denied["event"]
        assert "verbs: [watch]" in denied["rbac_rule"]
        kube.api.allow("watch", SLICES)
        async with RecordingFunction() as fn:
            kube.api.put(SLICES, pod_slice("fn-a", fn))
            await wait_until(lambda: pool.ready and bool(ready_urls(target)), timeout=5)


async def test_watch_resumes_after_disconnect_and_relists_after_410(kube: Harness) -> None:
    async with RecordingFunction() as a, RecordingFunction() as b:
        _, target = await kube.dispatcher("{kubernetes: {service: fn}}")
        await wait_until(lambda: kube.api.open_watches == 1)
        lists = sum(1 for r in kube.api.requests if r.verb == "list")
        kube.api.disconnect_watches()
        await wait_until(lambda: kube.api.open_watches == 1)
        kube.api.put(SLICES, pod_slice("fn-a", a))
        await wait_until(lambda: ready_urls(target) == {a.url})
        assert sum(1 for r in kube.api.requests if r.verb == "list") == lists  # resumed

        # The stream drops, a change lands meanwhile and history is compacted: the
        # watch's resourceVersion is now too old (410 Gone) and the pool relists.
        kube.api.disconnect_watches()
        kube.api.put(SLICES, pod_slice("fn-b", b))
        kube.api.compact()
        await wait_until(lambda: ready_urls(target) == {a.url, b.url})
        assert sum(1 for r in kube.api.requests if r.verb == "list") == lists + 1
        kube.api.disconnect_watches()
        kube.api.delete(SLICES, "fn-a")
        kube.api.compact()
        await wait_until(lambda: ready_urls(target) == {b.url})
        assert sum(1 for r in kube.api.requests if r.verb == "list") == lists + 2
