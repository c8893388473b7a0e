"""bridge.kube.errors, bridge.kube.client and pool helpers: error classification (from
answers, the library's ApiException, the transport), RBAC log lines, resources and
their typed APIs, config loading, EndpointSlice -> URL resolution, and the kube package
staying unimported without a Kubernetes feature. The reflector runs against the API
emulator in tests/integration/test_kube_reflector.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import structlog
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.client.exceptions import ApiException

from bridge.config import KubernetesTarget
from bridge.kube.client import (
    ENDPOINT_SLICES,
    EVENTS,
    LEASES,
    TRIGGERS,
    KubeClient,
    KubeConfigError,
)
from bridge.kube.errors import KubeError, classify, failure, log_api_error
from bridge.kube.pool import endpoint_urls, resolve_port
from bridge.logs import get_logger
from bridge.settings import Settings


def test_resource_names_and_their_typed_apis() -> None:
    assert ENDPOINT_SLICES.name == "endpointslices.discovery.k8s.io"
    assert EVENTS.name == "events"
    assert TRIGGERS.name == "triggers.triggerbridge.dev"
    assert (ENDPOINT_SLICES.api, LEASES.api, EVENTS.api, TRIGGERS.api) == (
        k8s.DiscoveryV1Api, k8s.CoordinationV1Api, k8s.CoreV1Api, k8s.CustomObjectsApi)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(403, "forbidden"), (404, "not_found"), (409, "conflict"), (410, "gone"),
     (429, "retryable"), (500, "retryable"), (503, "retryable"), (0, "retryable"),
     (422, "invalid"), (400, "invalid")],
)
def test_classify(status: int, kind: str) -> None:
    err = classify(status, b'{"kind":"Status","message":"boom","code":1}', verb="get",
                   resource=ENDPOINT_SLICES.name, namespace="ns", retry_after="7")
    assert err.kind == kind
    assert err.message == "boom"
    assert err.retry_after == 7.0
    assert err.retryable == (kind == "retryable")


def test_classify_non_json_body() -> None:
    assert classify(502, b"<html>bad gateway</html>", verb="list", resource="x",
                    namespace="n").message == "<html>bad gateway</html>"


def test_an_api_exception_keeps_its_status_message_and_retry_after() -> None:
    """What the library raises for an answer (with its headers) or for a watch stream's
    ERROR event (status and reason only) is classified like an answer."""
    answer = ApiException(status=429, reason="Too Many Requests")
    answer.body = '{"kind": "Status", "message": "slow down", "code": 429}'
    answer.headers = {"Retry-After": "3"}
    err = failure(answer, verb="list", resource="leases.coordination.k8s.io", namespace="n")
    assert (err.kind, err.message, err.retry_after) == ("retryable", "slow down", 3.0)
    expired = ApiException(status=410, reason="Expired: too old resource version: 5")
    err = failure(expired, verb="watch", resource="triggers.triggerbridge.dev", namespace="n")
    assert (err.kind, err.message, err.retry_after) == (
        "gone", "Expired: too old resource version: 5", None)
    assert str(err) == ("watch triggers.triggerbridge.dev in n: HTTP 410: "
                        "Expired: too old resource version: 5")


@pytest.mark.parametrize(
    "cause",
    [aiohttp.ServerDisconnectedError(), aiohttp.ClientPayloadError("cut"),
     ConnectionRefusedError(111, "refused"), TimeoutError()],
    ids=["disconnected", "payload", "refused", "timeout"],
)
def test_no_answer_is_status_0_and_retryable(cause: BaseException) -> None:
    err = failure(cause, verb="watch", resource="endpointslices.discovery.k8s.io",
                  namespace="fns")
    assert (err.status, err.kind, err.verb) == (0, "retryable", "watch")
    assert err.message.startswith(type(cause).__name__)
    assert failure(err, verb="get", resource="x", namespace="y") is err


def test_a_password_in_a_transport_error_is_not_repeated() -> None:
    cause = OSError("cannot connect to https://bob:s3cretpw@10.0.0.1:6443/")
    err = failure(cause, verb="get", resource="leases.coordination.k8s.io", namespace="n")
    assert "s3cretpw" not in str(err)
    assert "bob:***@10.0.0.1" in err.message


def test_forbidden_log_names_the_missing_verb_and_rule() -> None:
    err = classify(403, b'{"message":"nope"}', verb="watch", resource=ENDPOINT_SLICES.name,
                   namespace="fns")
    with structlog.testing.capture_logs() as logs:
        log_api_error(get_logger(), err, "pool", 2.0)
    [line] = logs
    assert line["log_level"] == "error"
    assert "may not 'watch' endpointslices.discovery.k8s.io in namespace 'fns'" in line["event"]
    assert line["rbac_rule"] == "apiGroups: ['discovery.k8s.io'], resources: [endpointslices], " \
        "verbs: [watch]"
    other = KubeError(500, "x", verb="get", resource="leases", namespace="n")
    with structlog.testing.capture_logs() as logs:
        log_api_error(get_logger(), other, "lease", None)
    assert logs[0]["log_level"] == "warning"
    assert logs[0]["status"] == 500


async def test_in_cluster_config_uses_the_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("sa-token")
    (tmp_path / "ca.crt").write_text("not parsed here")
    (tmp_path / "namespace").write_text("functions\n")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    kube = KubeClient(Settings(), get_logger(), service_account=tmp_path)
    configuration = k8s.Configuration()
    assert await kube._load(configuration) == "functions"
    assert configuration.host == "https://10.0.0.1:443"
    assert configuration.api_key["BearerToken"].endswith("sa-token")
    assert configuration.ssl_ca_cert == str(tmp_path / "ca.crt")


async def test_kubeconfig_context_namespace(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("""
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: team-a}}]
current-context: x
""")
    kube = KubeClient(Settings(kubeconfig=str(path)), get_logger())
    configuration = k8s.Configuration()
    assert await kube._load(configuration) == "team-a"
    assert configuration.host == "http://127.0.0.1:1"


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{{name: c, cluster: {{server: "{server}"}}}}]
users: [{{name: u, user: {{token: t}}}}]
contexts: [{{name: x, context: {{cluster: c, user: u}}}}]
current-context: x
"""


async def test_an_api_server_url_with_a_raw_password_is_refused_unquoted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(server="https://bob:Sup3r/Secr@t:pw#1@h:6443"))
    kube = KubeClient(Settings(kubeconfig=str(path)), get_logger())
    with pytest.raises(KubeConfigError) as caught:
        await kube.connect()
    message = str(caught.value)
    assert message.startswith("the API server URL of the kubeconfig has an '@' after the host")
    assert "Sup3r" not in message
    assert "Secr" not in message


async def test_the_api_server_is_logged_without_its_password(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.format(server="http://bob:s3cretpw@127.0.0.1:1"))
    kube = KubeClient(Settings(kubeconfig=str(path)), get_logger())
    with structlog.testing.capture_logs() as logs:
        await kube.connect()
    await kube.close()
    [configured] = [e for e in logs if e["event"] == "kubernetes api configured"]
    assert configured["host"] == "http://bob:***@127.0.0.1:1"
    assert "s3cretpw" not in str(logs)


def endpoint_slice(
    ports: list[dict[str, object]], endpoints: list[dict[str, object]]
) -> dict[str, object]:
    return {"ports": ports, "endpoints": endpoints}


def test_resolve_port() -> None:
    named = [{"name": "http", "port": 8080}, {"name": "grpc", "port": 9090}]
    assert resolve_port(named, "grpc") == 9090
    assert resolve_port(named, "metrics") is None
    assert resolve_port([{"name": "", "port": 7000}], "http") == 7000  # single unnamed port
    assert resolve_port(named, 8080) == 8080
    assert resolve_port(named, "9090") == 9090
    assert resolve_port(named, 5000) == 5000  # a pod port the slice does not list


def test_endpoint_urls_ready_and_ipv6() -> None:
    target = KubernetesTarget(service="s", port="http", path="invoke")
    found = endpoint_urls(endpoint_slice(
        [{"name": "http", "port": 8080}],
        [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}},
         {"addresses": ["10.1.0.2"], "conditions": {"ready": False}},
         {"addresses": ["10.1.0.3"], "conditions": {}},
         {"addresses": ["fd00::1"]}],
    ), target)
    assert found == [
        ("http://10.1.0.1:8080/invoke", True), ("http://10.1.0.2:8080/invoke", False),
        ("http://10.1.0.3:8080/invoke", True), ("http://[fd00::1]:8080/invoke", True),
    ]
    assert endpoint_urls(endpoint_slice([{"name": "grpc", "port": 1}], [{"addresses": ["a"]}]),
                         target) == []


ALL_CRON = """
defaults: {dead_letter: {file: {path: /tmp/x}}}
functions: {f: {url: "http://127.0.0.1:9/"}}
triggers: [{name: t, function: f, cron: {schedule: "0 0 1 1 *"}}]
"""


@pytest.mark.parametrize(
    ("config", "imported"),
    [(ALL_CRON, False),
     (ALL_CRON.replace('url: "http://127.0.0.1:9/"', "kubernetes: {service: s}"), True)],
    ids=["all-cron", "kubernetes-function"],
)
def test_the_kube_package_is_imported_only_when_a_kubernetes_feature_is_configured(
    config: str, imported: bool, tmp_path: Path
) -> None:
    """A daemon started with cron triggers only never loads kubernetes_asyncio (its typed
    API modules cost ~75 MB); one function with a kubernetes target does."""
    code = (
        "import asyncio, sys\n"
        "from bridge.config import parse_config\n"
        "from bridge.settings import Settings\n"
        "from bridge.daemon import Daemon\n"
        "import bridge.cli\n"
        "async def main():\n"
        f"    daemon = Daemon(parse_config({config!r}), Settings())\n"
        "    await daemon.start()\n"
        "    await asyncio.sleep(0.2)\n"
        "    await daemon.stop()\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kubernetes_asyncio', "
        "'bridge.kube')))[:2])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "KUBE"))}
    env["BRIDGE_KUBECONFIG"] = str(tmp_path / "absent")  # the pool may try: it fails
    done = subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60,
                          capture_output=True, text=True)
    loaded = done.stdout.strip().splitlines()[-1]
    assert (loaded != "[]") is imported, loaded
