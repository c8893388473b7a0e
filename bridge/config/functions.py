"""The functions triggers invoke: a static URL (or several), or a Kubernetes Service;
an optional overflow URL; the per-function quota, adaptive concurrency, timeout and
static headers.

Static headers follow :mod:`bridge.headers`: a valid name that the bridge does not
write itself, and a value without control characters.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, field_validator, model_validator

from bridge.config.fields import (
    NAME_MAX,
    SECRET,
    Duration,
    FieldError,
    HttpUrl,
    Name,
    Strict,
    Timeout,
    checked,
    require_exactly_one,
)
from bridge.headers import is_header_name, is_reserved
from bridge.urls import path_problem

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?\Z")


_PORT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")


def _check_service(value: str) -> str:
    if len(value) > NAME_MAX or not _SERVICE_NAME.match(value):
        raise ValueError("must be a Service name: at most 63 lower-case letters, digits and "
                         "'-', starting with a letter and ending with a letter or digit")
    return value


def _check_namespace(value: str) -> str:
    if len(value) > NAME_MAX or not _DNS_LABEL.match(value):
        raise ValueError("must be a namespace name: at most 63 lower-case letters, digits "
                         "and '-', starting and ending with a letter or digit")
    return value


def _check_port(value: int | str) -> int | str:
    if isinstance(value, int) or value.isdigit():
        if not 1 <= int(value) <= 65535:
            raise ValueError("a port number must be from 1 to 65535")
        return value
    if len(value) > 15 or not _PORT_NAME.match(value) or "--" in value or not any(
        c.isalpha() for c in value
    ):
        raise ValueError("must be a port number or a Service port name (at most 15 "
                         "lower-case letters, digits and '-', with a letter)")
    return value


def _check_path(value: str) -> str:
    return checked(path_problem(value), value)


class KubernetesTarget(Strict):
    service: Annotated[str, Field(min_length=1), AfterValidator(_check_service)]
    namespace: Annotated[str, AfterValidator(_check_namespace)] | None = None
    port: Annotated[int | str, AfterValidator(_check_port)] = "http"
    path: Annotated[str, AfterValidator(_check_path)] = "/"


class OverflowConfig(Strict):
    url: HttpUrl
    #: How long to wait for in-cluster capacity before overflowing.
    after: Duration = 0.25


class QuotaConfig(Strict):
    """A team quota: in-flight invocations of all the functions that join it."""

    max_concurrency: int = Field(ge=1)


class AdaptiveConcurrency(Strict):
    """``concurrency.adaptive``: the bridge finds the function's capacity between these
    (:mod:`bridge.adaptive`); ``max_concurrency`` stays the hard cap above them."""

    min: int = Field(1, ge=1)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptiveConcurrency:
        if self.min > self.max:
            raise FieldError("min", f"must be at most max ({self.max}), got {self.min}")
        return self


class ConcurrencyConfig(Strict):
    adaptive: AdaptiveConcurrency


class FunctionConfig(Strict):
    url: HttpUrl | None = None
    urls: list[HttpUrl] | None = Field(None, min_length=1)
    kubernetes: KubernetesTarget | None = None
    #: In-flight invocations of this function across all triggers (the quota; across
    #: all replicas with BRIDGE_CLUSTER_QUOTAS).
    max_concurrency: int | None = Field(None, ge=1)
    #: A team quota of the ``quotas:`` section this function counts against, on top of
    #: its own ``max_concurrency``.
    quota: Name | None = None
    #: How many invocations at once within the quota (``adaptive``: found by the bridge).
    concurrency: ConcurrencyConfig | None = None
    timeout: Timeout | None = None
    overflow: OverflowConfig | None = None
    #: Static headers added to every request (e.g. an auth token from ``${ENV}``).
    headers: Annotated[dict[str, str], SECRET] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _headers_are_safe(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            _check_static_header(name, text)
        return value

    @model_validator(mode="after")
    def _one_target(self) -> FunctionConfig:
        require_exactly_one(self, ("url", "urls", "kubernetes"), "target")
        return self

    @model_validator(mode="after")
    def _adaptive_within_quota(self) -> FunctionConfig:
        adaptive = self.adaptive
        if adaptive and self.max_concurrency and adaptive.max > self.max_concurrency:
            raise FieldError(
                "concurrency.adaptive.max",
                f"must be at most max_concurrency ({self.max_concurrency}), got {adaptive.max}",
            )
        return self

    @property
    def adaptive(self) -> AdaptiveConcurrency | None:
        return self.concurrency.adaptive if self.concurrency else None

    @property
    def static_urls(self) -> list[str]:
        return [self.url] if self.url else list(self.urls or [])


def _check_static_header(name: str, value: str) -> None:
    """Reject what would break the request or be silently replaced (path: ``headers.NAME``)."""
    if not is_header_name(name):
        raise FieldError(name, "not a valid HTTP header name")
    if is_reserved(name):
        raise FieldError(name, "set by the bridge on every request; it cannot be configured")
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise FieldError(name, "value contains control characters (CR, LF, ...)")
