"""bridge.daemon and the runtime it assembles: root tasks, collaborators given at
construction, every loop under the supervisor.

The Kubernetes pool is a test double (a unit test; the real one runs against the API
emulator in tests/integration/test_kube_pool.py and test_kube_daemon.py)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import structlog

from bridge.config import ConfigError, KubernetesTarget, load_config, parse_config
from bridge.daemon import Daemon, first_of
from bridge.leadership import AlwaysLeader
from bridge.logs import get_logger
from bridge.metrics import Metrics
from bridge.pools import BalancedPool
from bridge.runtime import Runtime
from bridge.settings import Settings
from bridge.supervisor import Loop, Supervisor

SETTINGS = Settings(admin_port=0, admin_host="127.0.0.1", drain_timeout=1.0)

CONFIG = """
defaults: {dead_letter: {file: {path: "/tmp/trigger-bridge-test-daemon.jsonl"}}}
functions:
  static: {url: "http://127.0.0.1:9/"}
  in-cluster: {kubernetes: {service: fn, namespace: jobs}}
triggers:
  - {name: a, function: static, cron: {schedule: "@yearly"}}
  - {name: b, function: in-cluster, cron: {schedule: "@yearly"}}
"""


class FakeWatchedPool(BalancedPool):
    """A pool whose watch is a loop the test can see running, ending and closed."""

    def __init__(self, name: str, target: KubernetesTarget) -> None:
        super().__init__(["http://10.0.0.1:8080/"])
        self.name, self.target = name, target
        self.ready = False
        self.running = asyncio.Event()
        self.cancelled = False
        self.closed = False

    async def run(self) -> None:
        self.ready = True
        self.running.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def close(self) -> None:
        self.closed = True


async def test_the_first_root_task_to_end_stops_the_others() -> None:
    stop = asyncio.Event()
    other_cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            other_cancelled.set()

    asyncio.get_running_loop().call_later(0.05, stop.set)
    with structlog.testing.capture_logs() as logs:
        ended = await first_of({"signal": stop.wait(), "other": forever()}, get_logger())
    assert ended == "signal"
    assert other_cancelled.is_set()
    assert {"event": "stopping", "reason": "signal", "log_level": "info"} in logs


async def test_a_root_task_that_fails_raises_after_the_others_stopped() -> None:
    cancelled = asyncio.Event()

    async def broken() -> None:
        raise RuntimeError("root broke")

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    with pytest.raises(RuntimeError, match="root broke"):
        await first_of({"broken": broken(), "other": forever()}, get_logger())
    assert cancelled.is_set()


async def test_a_kubernetes_function_gets_its_pool_from_the_factory_and_its_watch_runs_supervised(
) -> None:
    built: list[FakeWatchedPool] = []

    def pools(name: str, target: KubernetesTarget) -> FakeWatchedPool:
        built.append(FakeWatchedPool(name, target))
        return built[-1]

    metrics = Metrics()
    supervisor = Supervisor(get_logger(), metrics)
    runtime = Runtime(parse_config(CONFIG), SETTINGS, metrics=metrics, supervisor=supervisor,
                      kubernetes_pools=pools)
    await runtime.start()
    try:
        [pool] = built
        assert (pool.name, pool.target.service, pool.target.namespace) == (
            "in-cluster", "fn", "jobs")
        await asyncio.wait_for(pool.running.wait(), 2)
        names = {t.get_name() for t in supervisor.tasks}
        assert {"pump:a", "pump:b", "endpoints:in-cluster"} <= names
        assert runtime.readiness()["function:in-cluster"] is True
        assert "function:static" not in runtime.readiness()  # a static pool has no watch
        pool.ready = False
        assert runtime.readiness()["function:in-cluster"] is False
    finally:
        await runtime.shutdown()
    assert pool.cancelled
    assert pool.closed
    assert supervisor.tasks == frozenset()


async def test_without_a_pool_factory_a_kubernetes_function_is_a_start_up_problem() -> None:
    runtime = Runtime(parse_config(CONFIG), SETTINGS)
    with pytest.raises(ConfigError) as caught:
        await runtime.start()
    assert [str(p) for p in caught.value.problems] == [
        "triggers[1]: cannot be started: LookupError: no Kubernetes pools in this process"
    ]
    await runtime.shutdown()


async def test_services_start_after_the_triggers_and_a_crash_is_restarted_and_counted(
) -> None:
    metrics, calls = Metrics(), []
    restarted = asyncio.Event()
    runtime: Runtime | None = None

    async def service() -> None:
        assert runtime is not None
        calls.append(sorted(runtime.triggers))  # the triggers run already
        if len(calls) == 1:
            raise ValueError("service bug")
        restarted.set()
        await asyncio.Event().wait()

    supervisor = Supervisor(get_logger(), metrics, delay=lambda n: 0.01)
    config = parse_config(CONFIG.replace("kubernetes: {service: fn, namespace: jobs}",
                                         'url: "http://127.0.0.1:9/"'))
    runtime = Runtime(config, SETTINGS, metrics=metrics, supervisor=supervisor,
                      services=[Loop("svc", service)])
    await runtime.start()
    try:
        await asyncio.wait_for(restarted.wait(), 2)
        assert calls == [["a", "b"], ["a", "b"]]
        assert metrics.value("bridge_task_crashes_total", task="svc") == 1
    finally:
        await runtime.shutdown()
    assert supervisor.tasks == frozenset()


async def test_the_services_stop_before_intake(monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []

    async def service() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            order.append("service stopped")

    config = parse_config(CONFIG.replace("kubernetes: {service: fn, namespace: jobs}",
                                         'url: "http://127.0.0.1:9/"'))
    runtime = Runtime(config, SETTINGS, services=[Loop("svc", service)])
    stop_intake = runtime._stop_intake

    async def recording(running: list[object]) -> None:
        order.append("intake stopped")
        await stop_intake(running)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "_stop_intake", recording)
    await runtime.start()
    await asyncio.sleep(0)
    await runtime.shutdown()
    assert order == ["service stopped", "intake stopped"]


async def test_the_daemon_runs_the_reloader_supervised_and_lets_go_of_sighup(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.yaml"
    path.write_text(CONFIG.replace("kubernetes: {service: fn, namespace: jobs}",
                                   'url: "http://127.0.0.1:9/"'))
    daemon = Daemon(load_config(path), SETTINGS, str(path))
    assert daemon.reloader is not None
    await daemon.start()
    try:
        await asyncio.sleep(0)
        names = {t.get_name() for t in daemon.supervisor.tasks}
        assert {"config-reload", "pump:a", "pump:b"} <= names
        assert daemon.runtime.leadership.is_leader  # no Lease configured: always leads
    finally:
        await daemon.stop()
    await daemon.stop()  # once only: nothing happens
    assert daemon.supervisor.tasks == frozenset()
    # The reloader's SIGHUP handler went with it (False: there was none to remove).
    assert asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP) is False


class RecordingLeadership(AlwaysLeader):
    """Records the lifecycle calls the runtime makes."""

    def __init__(self, order: list[str]) -> None:
        super().__init__()
        self.order = order

    def stop_leading(self) -> None:
        self.order.append("stop leading")
        super().stop_leading()

    async def run(self) -> None:
        self.order.append("run")
        try:
            await super().run()
        except asyncio.CancelledError:
            self.order.append("run cancelled")
            raise

    async def close(self) -> None:
        self.order.append("close")
        await super().close()


async def test_the_leadership_runs_supervised_and_is_released_after_the_drain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []
    config = parse_config(CONFIG.replace("kubernetes: {service: fn, namespace: jobs}",
                                         'url: "http://127.0.0.1:9/"'))
    supervisor = Supervisor(get_logger(), Metrics())
    runtime = Runtime(config, SETTINGS, supervisor=supervisor,
                      leadership=RecordingLeadership(order))
    assert runtime.context.leadership is runtime.leadership  # the connectors' too

    async def draining(timeout: float) -> bool:
        order.append("drain")
        return True

    await runtime.start()
    await asyncio.sleep(0)
    assert "leadership" in {t.get_name() for t in supervisor.tasks}
    for running in runtime.triggers.values():
        monkeypatch.setattr(running.dispatcher, "drain", draining)
    await runtime.shutdown()
    # No tick fires from the stop on; the Lease is kept (renewed) through the drain and
    # released only after it.
    assert order == ["run", "stop leading", "drain", "drain", "run cancelled", "close"]
    assert supervisor.tasks == frozenset()
