"""bridge.kube.reflector over real HTTP (kubernetes_asyncio's DiscoveryV1Api and
watch.Watch -> the API emulator): the watch resumes from the last resourceVersion it
saw (an event's or a BOOKMARK's), relists on 410 Gone, honours Retry-After, and goes
unready while the API refuses it."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio.client import DiscoveryV1Api

from bridge.kube.client import ENDPOINT_SLICES, KubeClient
from bridge.kube.reflector import Reflector, object_name
from bridge.logs import get_logger
from bridge.settings import Settings
from tests.support.kube_api import KubeApi, Request, endpoint_slice

SLICES = "endpointslices.discovery.k8s.io"
LEASES = "leases.coordination.k8s.io"


@dataclass
class Seen:
    syncs: list[list[str]] = field(default_factory=list)
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # type, name, version

    def sync(self, items: list[dict[str, Any]]) -> None:
        self.syncs.append(sorted(object_name(i) for i in items))

    def change(self, kind: str, obj: dict[str, Any]) -> None:
        self.changes.append((kind, object_name(obj), obj["metadata"]["resourceVersion"]))


@dataclass
class Setup:
    api: KubeApi
    reflector: Reflector
    seen: Seen

    def requests(self, verb: str) -> list[Request]:
        return [r for r in self.api.requests if r.verb == verb and r.resource == SLICES]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    async with KubeApi() as api:
        kube = KubeClient(Settings(kubeconfig=str(api.kubeconfig(tmp_path))), get_logger())
        seen = Seen()
        reflector = Reflector(
            kube, ENDPOINT_SLICES, DiscoveryV1Api.list_namespaced_endpoint_slice, None,
            on_sync=seen.sync, on_change=seen.change, log=get_logger(),
            label_selector="kubernetes.io/service-name=fn",
        )
        task = asyncio.create_task(reflector.run())
        yield Setup(api, reflector, seen)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not reflector.ready
        await kube.close()


async def wait(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


def put(api: KubeApi, name: str, address: str = "10.0.0.1", service: str = "fn") -> str:
    obj = api.put(SLICES, endpoint_slice(service, [(address, True)], 8080, name=name))
    return str(obj["metadata"]["resourceVersion"])


async def test_lists_then_watches_with_the_typed_api_and_the_label_selector(
    setup: Setup,
) -> None:
    put(setup.api, "a")
    put(setup.api, "other", service="elsewhere")
    await wait(lambda: setup.api.open_watches == 1)
    assert setup.reflector.ready
    assert setup.seen.syncs == [["a"]]
    [listed] = setup.requests("list")
    [watch] = setup.requests("watch")
    assert listed.path == "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    assert listed.query["labelSelector"] == "kubernetes.io/service-name=fn"
    assert watch.query["watch"] == "True"  # the typed client's spelling; the server's bool
    assert watch.query["allowWatchBookmarks"] == "True"
    assert watch.query["labelSelector"] == "kubernetes.io/service-name=fn"
    assert watch.query["resourceVersion"] == str(setup.api._version)
    version = put(setup.api, "b")
    await wait(lambda: len(setup.seen.changes) == 1)
    assert setup.seen.changes == [("ADDED", "b", version)]


async def test_a_dropped_watch_resumes_from_the_last_version_seen(setup: Setup) -> None:
    await wait(lambda: setup.api.open_watches == 1)
    first = put(setup.api, "a")
    last = put(setup.api, "a", address="10.0.0.2")
    await wait(lambda: len(setup.seen.changes) == 2)
    setup.api.disconnect_watches()
    missed = put(setup.api, "b")  # lands while no watch is open: replayed from history
    await wait(lambda: len(setup.seen.changes) == 3)
    watches = setup.requests("watch")
    assert len(watches) == 2
    assert watches[1].query["resourceVersion"] == last != first
    assert len(setup.requests("list")) == 1  # resumed, not relisted
    assert setup.seen.changes[2] == ("ADDED", "b", missed)


async def test_410_gone_relists(setup: Setup) -> None:
    await wait(lambda: setup.api.open_watches == 1)
    put(setup.api, "a")
    await wait(lambda: len(setup.seen.changes) == 1)
    setup.api.disconnect_watches()
    put(setup.api, "b")
    setup.api.compact()  # the version the watch would resume from is gone
    await wait(lambda: len(setup.seen.syncs) == 2)
    assert setup.seen.syncs == [[], ["a", "b"]]
    assert len(setup.requests("list")) == 2
    await wait(lambda: setup.api.open_watches == 1)
    assert setup.reflector.ready
    assert setup.reflector.failures == 0  # a 410 is routine, not a failure


async def test_a_bookmark_moves_the_resume_version_so_no_relist_is_needed(
    setup: Setup,
) -> None:
    """Changes to other resources move the global resourceVersion; a BOOKMARK tells the
    watch, so after a drop and a compaction it resumes instead of relisting."""
    await wait(lambda: setup.api.open_watches == 1)
    for n in range(3):
        setup.api.put(LEASES, {"metadata": {"name": f"l{n}"}, "spec": {}})
    setup.api.bookmark()
    await asyncio.sleep(0.2)  # the bookmark is read: nothing is handed over
    assert setup.seen.changes == []
    setup.api.disconnect_watches()
    setup.api.compact()
    await wait(lambda: len(setup.requests("watch")) == 2 and setup.api.open_watches == 1)
    assert setup.requests("watch")[1].query["resourceVersion"] == str(setup.api._version)
    assert len(setup.requests("list")) == 1


async def test_retry_after_of_a_refused_watch_is_honoured(setup: Setup) -> None:
    await wait(lambda: setup.api.open_watches == 1)
    setup.api.fail_next(429, retry_after="1")
    setup.api.disconnect_watches()
    await wait(lambda: len(setup.requests("list")) == 2, timeout=5)
    refused = setup.requests("watch")[1]
    relisted = setup.requests("list")[1]
    assert relisted.at - refused.at >= 1.0  # not the 0.25-0.5 s of its own backoff
    await wait(lambda: setup.api.open_watches == 1)
    assert setup.reflector.ready


async def test_a_forbidden_watch_makes_it_unready_until_allowed(setup: Setup) -> None:
    await wait(lambda: setup.api.open_watches == 1)
    setup.api.forbid("watch", SLICES)
    setup.api.disconnect_watches()
    await wait(lambda: not setup.reflector.ready)
    assert setup.reflector.failures >= 1
    setup.api.allow("watch", SLICES)
    await wait(lambda: setup.reflector.ready and setup.api.open_watches == 1)


async def test_a_malformed_watch_line_is_a_failure_that_resumes(setup: Setup) -> None:
    await wait(lambda: setup.api.open_watches == 1)
    version = put(setup.api, "a")
    await wait(lambda: len(setup.seen.changes) == 1)
    setup.api.garble_next(b"this is not json\n", resource=SLICES)
    setup.api.disconnect_watches()
    await wait(lambda: len(setup.requests("watch")) == 3 and setup.api.open_watches == 1)
    assert [r.query["resourceVersion"] for r in setup.requests("watch")[1:]] == [
        version, version]
    assert len(setup.requests("list")) == 1


async def test_the_watch_builds_no_api_client_of_its_own(setup: Setup) -> None:
    """kubernetes_asyncio's Watch() makes an API client (an aiohttp session and an SSL
    context with the system CAs, ~0.8 MB) per watch; the reflector's decodes nothing and
    needs none (bench/bench_kube.py watch_memory: 44 KB per pool, not 876)."""
    await wait(lambda: setup.api.open_watches == 1)
    sessions = [o for o in gc.get_objects()
                if isinstance(o, aiohttp.ClientSession) and not o.closed]
    assert len(sessions) == 1  # the KubeClient's
