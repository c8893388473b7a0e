"""Process settings from ``BRIDGE_*`` environment variables (pydantic-settings).

Read once in the CLI and passed down as one frozen object; nothing reads the
environment at import time.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bridge.durations import parse_duration


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BRIDGE_", frozen=True, extra="ignore")

    config: str | None = None
    admin_host: str = "0.0.0.0"  # noqa: S104 - probes and scrapes come from outside the pod
    admin_port: int = Field(8000, ge=0, le=65535)
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_timeout: Annotated[float, BeforeValidator(parse_duration)] = 25.0
    #: Identity used in leases and logs (the pod name in Kubernetes).
    instance: str | None = None
