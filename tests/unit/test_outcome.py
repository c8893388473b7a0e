"""Outcome classification (DESIGN section 4) and Retry-After parsing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from bridge.outcome import (
    DEFAULT_RETRYABLE_STATUSES,
    Outcome,
    OutcomeKind,
    classify_status,
    parse_retry_after,
)
from bridge.retry import MAX_RETRY_AFTER, RetryPolicy, backoff


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(status: int) -> None:
    assert classify_status(status) is OutcomeKind.DELIVERED


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 501, 502, 503, 504, 599])
def test_retryable(status: int) -> None:
    assert classify_status(status) is OutcomeKind.RETRYABLE


@pytest.mark.parametrize(
    "status", [100, 301, 302, 304, 400, 401, 403, 404, 405, 410, 413, 415, 422, 451, 499]
)
def test_permanent(status: int) -> None:
    assert classify_status(status) is OutcomeKind.PERMANENT


def test_default_list() -> None:
    assert frozenset({408, 409, 425, 429}) == DEFAULT_RETRYABLE_STATUSES


def test_custom_retryable_list_replaces_the_default() -> None:
    custom = {404, 423}
    assert classify_status(404, custom) is OutcomeKind.RETRYABLE
    assert classify_status(423, custom) is OutcomeKind.RETRYABLE
    assert classify_status(429, custom) is OutcomeKind.PERMANENT  # no longer listed
    assert classify_status(503, custom) is OutcomeKind.RETRYABLE  # every 5xx always is
    assert classify_status(200, custom) is OutcomeKind.DELIVERED
    assert classify_status(503, ()) is OutcomeKind.RETRYABLE
    assert classify_status(408, ()) is OutcomeKind.PERMANENT


def test_outcome_ok() -> None:
    assert Outcome(OutcomeKind.DELIVERED, "ok", status=200).ok
    assert not Outcome(OutcomeKind.RETRYABLE, "timeout").ok
    assert not Outcome(OutcomeKind.PERMANENT, "http_422", status=422).ok


@pytest.mark.parametrize(
    ("header", "seconds"), [("0", 0.0), ("5", 5.0), ("120", 120.0), (" 30 ", 30.0)]
)
def test_retry_after_seconds(header: str, seconds: float) -> None:
    assert parse_retry_after(header) == seconds


def test_retry_after_http_date() -> None:
    now = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert later == "Sun, 01 Mar 2026 12:01:30 GMT"
    assert parse_retry_after(later, now=now) == 90.0
    earlier = format_datetime(now - timedelta(hours=1), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0  # in the past: retry now


def test_retry_after_http_date_against_the_clock() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = parse_retry_after(soon)
    assert seconds is not None
    assert 55 <= seconds <= 60


@pytest.mark.parametrize(
    "header",
    [
        None, "", "soon", "-5", "1.5", "1e3", "+5", "0x10", "Someday, 99 Foo 2026",
        # Unicode digits: str.isdigit() is True for all of them; float("²") raises and
        # float("\u0661") is 1.0. Neither is HTTP delta-seconds.
        "\u00b2", "\u0661", "\uff15", "3\u00b2", "\u0661\u0660",
        "Sun, 01 Mar 2026 12:01:30 GM\u00c9", "Sun, 01 Mar 99999 12:01:30 GMT",
        "Sun, 01 Mar 2026 25:61:61 GMT",
    ],
)
def test_retry_after_unusable(header: str | None) -> None:
    assert parse_retry_after(header) is None


def test_retry_after_huge_delta_is_a_number_the_backoff_caps() -> None:
    assert parse_retry_after("9" * 400) == float("inf")
    assert backoff(RetryPolicy(jitter=False), 1, float("inf")) == MAX_RETRY_AFTER
