"""The CloudEvents checks both connectors share (bridge/cloudevents.py), on their own."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from bridge import cloudevents
from bridge.cloudevents import CloudEvent, CloudEventError, Problem

BASE = {"specversion": "1.0", "id": "e-1", "source": "/s", "type": "t"}


def envelope(**members: Any) -> bytes:
    return json.dumps({**BASE, **members}, ensure_ascii=False).encode()


def problem_of(body: bytes) -> CloudEventError:
    with pytest.raises(CloudEventError) as caught:
        cloudevents.parse_structured(body)
    return caught.value


def test_structured_with_json_data() -> None:
    event = cloudevents.parse_structured(envelope(subject="sub", data={"a": [1, "é"]}))
    assert event.attributes == {**BASE, "subject": "sub"}
    assert event.data == '{"a":[1,"é"]}'.encode()
    assert event.content_type == "application/json", "JSON data without a type"
    assert event.time is None
    assert event.extensions == {}


@pytest.mark.parametrize(
    ("content_type", "data", "body"),
    [
        ("text/plain", "héllo", "héllo".encode()),
        ("text/plain", {"a": 1}, b'{"a":1}'),
        (None, "hello", b'"hello"'),
        ("application/json", "hello", b'"hello"'),
        ("application/vnd.acme+json; charset=utf-8", "hello", b'"hello"'),
        ("text/json", "hello", b'"hello"'),
        ("image/png", 3, b"3"),
    ],
)
def test_structured_data_is_text_only_for_a_non_json_type(
    content_type: str | None, data: Any, body: bytes
) -> None:
    members: dict[str, Any] = {"data": data}
    if content_type is not None:
        members["datacontenttype"] = content_type
    event = cloudevents.parse_structured(envelope(**members))
    assert event.data == body
    assert event.content_type == (content_type or "application/json")


def test_structured_with_data_base64() -> None:
    raw = bytes(range(256))
    event = cloudevents.parse_structured(envelope(
        datacontenttype="application/octet-stream", data_base64=base64.b64encode(raw).decode(),
    ))
    assert event.data == raw
    assert event.content_type == "application/octet-stream"
    without_type = cloudevents.parse_structured(envelope(data_base64="AAE="))
    assert (without_type.data, without_type.content_type) == (b"\x00\x01", None)


def test_structured_without_data_is_empty() -> None:
    for body in (envelope(), envelope(data=None), envelope(data_base64=None)):
        event = cloudevents.parse_structured(body)
        assert (event.data, event.content_type) == (b"", None)


def test_null_members_count_as_absent() -> None:
    event = cloudevents.parse_structured(envelope(subject=None, Bad=None, data=None,
                                                  data_base64="eA=="))
    assert "subject" not in event.attributes
    assert event.data == b"x"
    assert problem_of(envelope(id=None)).problem is Problem.MISSING


@pytest.mark.parametrize(
    ("members", "problem"),
    [
        ({"data": "x", "data_base64": "eA=="}, Problem.BOTH_DATA),
        ({"data": {}, "data_base64": ""}, Problem.BOTH_DATA),
        ({"data_base64": "%%"}, Problem.BAD_BASE64),
        ({"data_base64": "eA"}, Problem.BAD_BASE64),
        ({"data_base64": 5}, Problem.BASE64_NOT_TEXT),
    ],
)
def test_bad_data(members: dict[str, Any], problem: Problem) -> None:
    assert problem_of(envelope(**members)).problem is problem


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"{broken", Problem.NOT_JSON),
        (b"", Problem.NOT_JSON),
        ('{"id": "é"}'.encode("latin-1"), Problem.NOT_JSON),
        (b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", Problem.NOT_JSON),  # too deep
        (b"[1, 2]", Problem.NOT_OBJECT),
        (b'"text"', Problem.NOT_OBJECT),
        (b"null", Problem.NOT_OBJECT),
        (b"3", Problem.NOT_OBJECT),
    ],
)
def test_not_a_json_object(body: bytes, problem: Problem) -> None:
    error = problem_of(body)
    assert error.problem is problem
    if problem is Problem.NOT_JSON:
        assert str(error).startswith("structured CloudEvent is not valid JSON: ")
    else:
        assert str(error) == "structured CloudEvent must be a JSON object"


@pytest.mark.parametrize("name", ["Bad", "bad-name", "bad_name", "ünï", "", "a b", "id\n"])
def test_bad_attribute_names(name: str) -> None:
    error = problem_of(envelope(**{name: "x"}))
    assert error.problem is Problem.BAD_NAME
    assert error.facts == {"name": name}
    assert str(error) == (f"{name!r} is not a valid CloudEvents attribute name "
                          "(lower-case letters and digits only)")


def test_attribute_names() -> None:
    assert cloudevents.is_attribute_name("traceparent")
    assert cloudevents.is_attribute_name("x9")
    assert not cloudevents.is_attribute_name("Trace")


def test_numbers_and_booleans_as_text() -> None:
    event = cloudevents.parse_structured(envelope(
        count=3, ratio=2.5, big=10**20, negative=-1, yes=True, no=False, text="3",
    ))
    assert event.extensions == {"count": "3", "ratio": "2.5", "big": "100000000000000000000",
                                "negative": "-1", "yes": "true", "no": "false", "text": "3"}
    assert cloudevents.parse_structured(envelope(specversion=1.0)).attributes["specversion"] \
        == "1.0", "a number that reads 1.0 is specversion 1.0"


@pytest.mark.parametrize("value", [{"a": 1}, [1], []])
def test_objects_and_lists_are_not_attribute_values(value: Any) -> None:
    error = problem_of(envelope(ext=value))
    assert error.problem is Problem.NOT_TEXT
    assert str(error) == "attribute 'ext' must be a string, number or boolean"


def test_scalar_text() -> None:
    assert cloudevents.scalar_text(True) == "true"
    assert cloudevents.scalar_text(0) == "0"
    assert cloudevents.scalar_text(0.1) == "0.1"
    assert cloudevents.scalar_text("") == ""
    for value in (None, b"x", [1], {"a": 1}):
        assert cloudevents.scalar_text(value) is None


@pytest.mark.parametrize("name", ["id", "source", "type"])
def test_missing_or_empty_required_attributes(name: str) -> None:
    for members in ({name: ""}, {name: None}):
        error = problem_of(envelope(**members))
        assert error.problem is Problem.MISSING
        assert str(error) == f"CloudEvent is missing the required attribute {name!r}"


def test_missing_names_all_of_them() -> None:
    error = problem_of(json.dumps({"specversion": "1.0", "source": "/s"}).encode())
    assert error.facts == {"name": "id", "names": "id, type"}


@pytest.mark.parametrize(
    ("version", "problem", "text"),
    [
        (None, Problem.NO_SPECVERSION, "CloudEvent has no 'specversion'"),
        ("0.3", Problem.BAD_SPECVERSION,
         "CloudEvents specversion '0.3' is not supported (only 1.0)"),
        ("1", Problem.BAD_SPECVERSION, "CloudEvents specversion '1' is not supported (only 1.0)"),
        (1, Problem.BAD_SPECVERSION, "CloudEvents specversion '1' is not supported (only 1.0)"),
    ],
)
def test_wrong_specversion(version: Any, problem: Problem, text: str) -> None:
    error = problem_of(envelope(specversion=version))
    assert (error.problem, str(error)) == (problem, text)


@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2024-05-01T10:00:00Z", datetime(2024, 5, 1, 10, tzinfo=UTC)),
        ("2024-05-01T12:00:00.5+02:00",
         datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=timezone(timedelta(hours=2)))),
    ],
)
def test_time_with_an_offset(text: str, moment: datetime) -> None:
    event = cloudevents.parse_structured(envelope(time=text))
    assert event.time == moment
    assert event.time is not None
    assert event.time.utcoffset() == moment.utcoffset()
    assert event.attributes["time"] == text, "the attribute keeps its text"


@pytest.mark.parametrize(
    ("text", "problem", "reason"),
    [
        ("2024-05-01T10:00:00", Problem.NO_OFFSET,
         "CloudEvents time '2024-05-01T10:00:00' has no UTC offset"),
        ("2024-05-01", Problem.NO_OFFSET, "CloudEvents time '2024-05-01' has no UTC offset"),
        ("yesterday", Problem.BAD_TIME,
         "CloudEvents time 'yesterday' is not an RFC 3339 timestamp"),
        ("", Problem.BAD_TIME, "CloudEvents time '' is not an RFC 3339 timestamp"),
    ],
)
def test_time_without_offset_or_not_a_timestamp(
    text: str, problem: Problem, reason: str
) -> None:
    with pytest.raises(CloudEventError) as caught:
        cloudevents.parse_time(text)
    assert (caught.value.problem, str(caught.value)) == (problem, reason)
    assert problem_of(envelope(time=text)).problem is problem


def test_from_binary_checks_and_takes_the_content_type() -> None:
    attributes = {**BASE, "datacontenttype": "text/plain", "time": "2024-05-01T10:00:00Z",
                  "tenant": "acme"}
    event = cloudevents.from_binary(attributes, b"body", None)
    assert event == CloudEvent(attributes, datetime(2024, 5, 1, 10, tzinfo=UTC), b"body",
                               "text/plain")
    assert event.extensions == {"tenant": "acme"}
    assert cloudevents.from_binary(attributes, b"", "application/json").content_type \
        == "application/json", "the transport's content type wins"
    with pytest.raises(CloudEventError) as caught:
        cloudevents.from_binary({**BASE, "source": ""}, b"", None)
    assert caught.value.problem is Problem.MISSING


@pytest.mark.parametrize(
    ("content_type", "structured"),
    [
        ("application/cloudevents+json", True),
        ("Application/CloudEvents+JSON ; charset=utf-8", True),
        ("application/cloudevents-batch+json", False),
        ("application/json", False),
        (None, False),
        ("", False),
    ],
)
def test_is_structured(content_type: str | None, structured: bool) -> None:
    assert cloudevents.is_structured(content_type) is structured


@pytest.mark.parametrize(
    ("content_type", "is_json"),
    [
        ("application/json", True), ("text/json", True), ("APPLICATION/JSON; x=y", True),
        ("application/problem+json", True), ("text/plain", False), ("", False),
        ("application/jsonl", False),
    ],
)
def test_is_json(content_type: str, is_json: bool) -> None:
    assert cloudevents.is_json(content_type) is is_json


def test_a_connector_can_word_a_problem_its_own_way() -> None:
    error = problem_of(envelope(specversion="0.3"))
    wording = {Problem.BAD_SPECVERSION: "specversion must be '1.0', got {version!r}"}
    assert error.reason(wording) == "specversion must be '1.0', got '0.3'"
    assert error.reason({}) == str(error)
    own = CloudEventError("header 'ce_id' appears twice")
    assert own.problem is None
    assert own.reason(wording) == "header 'ce_id' appears twice"
    assert Problem.BAD_NAME.text(name="X") == (
        "'X' is not a valid CloudEvents attribute name (lower-case letters and digits only)"
    )
