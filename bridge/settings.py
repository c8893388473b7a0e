"""Process settings from ``BRIDGE_*`` environment variables (pydantic-settings).

Read once in the CLI and passed down as one frozen object; nothing reads the
environment at import time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, BeforeValidator, Field, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.durations import parse_duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRIDGE_", frozen=True, extra="ignore",
                                      populate_by_name=True)

    config: str | None = None
    admin_host: str = "0.0.0.0"
    admin_port: int = Field(8000, ge=0, le=65535)
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_timeout: Annotated[float, BeforeValidator(parse_duration)] = 25.0
    #: Run on uvloop when it is installed (the ``speedups`` extra); false: asyncio's loop.
    uvloop: bool = True
    #: Identity used in leases and logs (the pod name in Kubernetes).
    instance: str | None = None
    #: File holding the bearer token of the control endpoints (run-now, backfill,
    #: resume); unset: those endpoints are off (403).
    control_token_file: str | None = None
    #: Where cron triggers keep a pause and a backfill's progress across restarts when
    #: there is no leader election (with it, annotations on the Lease <lease_name>-state).
    state_file: str | None = None

    # --- Kubernetes (bridge.kube; imported only when one of these features is used) ---
    #: Namespace for Lease, Trigger resources and functions without one (default: the
    #: pod's own namespace, else the kubeconfig context's).
    namespace: str | None = None
    #: A kubeconfig file; default: in-cluster service account, else ~/.kube/config.
    kubeconfig: str | None = None
    #: Elect one cron leader among replicas through a coordination.k8s.io/v1 Lease.
    leader_election: bool = False
    lease_name: str = "trigger-bridge"
    lease_duration: Annotated[float, BeforeValidator(parse_duration)] = 15.0
    lease_renew_deadline: Annotated[float, BeforeValidator(parse_duration)] = 10.0
    lease_retry_period: Annotated[float, BeforeValidator(parse_duration)] = 2.0
    #: Enforce every function's ``max_concurrency`` and team quota across replicas: each
    #: replica keeps an entry on the members Lease and enforces its share (docs/kubernetes.md).
    cluster_quotas: bool = False
    #: Spread cron triggers over replicas through this many shard Leases (0: one cron
    #: leader for all, BRIDGE_LEADER_ELECTION). Every replica must use the same count.
    cron_shards: int = Field(0, ge=0, le=1024)
    #: Watch Trigger custom resources (triggerbridge.dev/v1alpha1) in the namespace.
    watch_triggers: bool = False
    #: How often the config file is checked for changes (0: only on SIGHUP).
    reload_interval: Annotated[float, BeforeValidator(parse_duration)] = 2.0

    # --- tracing (bridge.tracing; the standard OTEL_* variables where one exists) ------
    #: ``auto``: on when an OTLP endpoint is set; ``on``: propagate trace context even
    #: without one; ``off``.
    tracing: Literal["auto", "on", "off"] = "auto"
    otlp_endpoint: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"))
    otlp_protocol: str | None = Field(None, validation_alias=AliasChoices(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"))
    otel_sdk_disabled: bool = Field(False, validation_alias="OTEL_SDK_DISABLED")
    otel_traces_exporter: str = Field("otlp", validation_alias="OTEL_TRACES_EXPORTER")
    otel_service_name: str | None = Field(None, validation_alias="OTEL_SERVICE_NAME")

    @field_validator("lease_retry_period")
    @classmethod
    def _lease_timings(cls, value: float, info: ValidationInfo) -> float:
        duration = info.data.get("lease_duration")
        renew = info.data.get("lease_renew_deadline")
        if duration is not None and renew is not None and not 0 < value < renew < duration:
            raise ValueError(
                "needs 0 < BRIDGE_LEASE_RETRY_PERIOD < BRIDGE_LEASE_RENEW_DEADLINE < "
                "BRIDGE_LEASE_DURATION"
            )
        return value
