"""Durations as the config file writes them."""

from __future__ import annotations

import pytest

from bridge.durations import parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("0", 0.0),
        ("2.5", 2.5),
        ("1e3", 1000.0),
        ("250ms", 0.25),
        ("30s", 30.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1m30s500ms", 90.5),
        ("  45s ", 45.0),
        ("-0s", 0.0),
    ],
)
def test_valid(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty duration"),
        ("   ", "empty duration"),
        ("abc", "invalid duration 'abc': use a number with a unit ms, s, m, h or d"),
        ("30x", "invalid duration '30x'"),
        ("1y", "invalid duration '1y'"),
        ("30 s", "invalid duration '30 s'"),
        ("s", "invalid duration 's'"),
        ("1.2.3s", "invalid duration"),
        ("30S", "invalid duration '30S'"),
        (-1, "negative"),
        (-0.5, "negative"),
        ("-1", "negative"),
        ("-5s", "negative"),
        ("-1h30m", "negative"),
        ("nan", "got 'nan'"),
        (float("nan"), "got nan"),
        ("inf", "got 'inf'"),
        (True, "expected a duration like '30s', got True"),
        (None, "expected a duration like '30s', got None"),
        ([1], "expected a duration like '30s', got [1]"),
        ({"s": 1}, "expected a duration like '30s'"),
    ],
)
def test_invalid(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=r".") as caught:
        parse_duration(value)
    assert message in str(caught.value)
