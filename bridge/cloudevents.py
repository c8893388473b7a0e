"""Messages that already are CloudEvents: the checks every source shares (spec 1.0).

A Kafka record or an AMQP message may arrive as a CloudEvent, and then keeps its own
attributes. In *binary* mode they travel as protocol headers, which the connector reads
(``ce_<name>`` record headers, ``cloudEvents:<name>`` application properties) and hands
to :func:`from_binary`: the payload is the data, its content type the transport's (or
else ``datacontenttype``). In *structured* mode the payload, of content type
``application/cloudevents+json`` (:func:`is_structured`), is the JSON envelope that
:func:`parse_structured` reads:

- it must be a JSON object; its members other than ``data`` and ``data_base64`` are the
  attributes, and a ``null`` member counts as absent (as the JSON format says);
- attribute names are lower-case letters and digits (:func:`is_attribute_name`);
  values must be strings, numbers or booleans and become text (:func:`scalar_text`):
  ``true``/``false``, numbers as Python writes them (``3``, ``2.5``);
- ``data_base64`` (a base64 string) is the data, decoded; otherwise ``data``: a string
  is the data as UTF-8 when ``datacontenttype`` is given and is not JSON
  (:func:`is_json`); anything else is re-serialized as compact JSON, and the content
  type defaults to ``application/json``; neither: empty data. Both is an error.

Either way the attributes are then checked (:func:`validate`): ``specversion`` must be
``1.0``; ``id``, ``source`` and ``type`` present and not empty; ``time``, when present,
an RFC 3339 timestamp with a UTC offset. The result is a :class:`CloudEvent`; attributes
that are not :data:`CORE` are its extensions. What fails raises
:class:`CloudEventError`, whose :class:`Problem` lets a connector word the reason its
own way; the connector attaches it to the event as its ``defect`` (dead-lettered at
once, the original kept).
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: Binary mode in the protocol bindings: a Kafka record's attributes are ``ce_<name>``
#: headers; an AMQP message's ``cloudEvents:<name>`` application properties (or
#: ``cloudEvents_<name>``, the JMS-safe form; the first is what the bridge writes).
KAFKA_PREFIX = "ce_"
AMQP_PREFIXES = ("cloudEvents:", "cloudEvents_")
#: Content type of a structured-mode CloudEvent in the JSON format.
STRUCTURED = "application/cloudevents+json"
SPEC_VERSION = "1.0"
REQUIRED = ("id", "source", "type")
#: Context attributes with a place of their own in an Event (the rest are extensions:
#: an extension of one of these names is ignored).
CORE = frozenset({"specversion", "id", "source", "type", "time", "subject", "datacontenttype"})

_NAME = re.compile(r"^[a-z0-9]+\Z")


class Problem(enum.Enum):
    """What is wrong with a CloudEvent; each value words it, a ``str.format`` template
    over the facts the error carries (named in the template)."""

    NOT_JSON = "structured CloudEvent is not valid JSON: {error}"
    NOT_OBJECT = "structured CloudEvent must be a JSON object"
    BAD_NAME = (
        "{name!r} is not a valid CloudEvents attribute name (lower-case letters and digits only)"
    )
    NOT_TEXT = "attribute {name!r} must be a string, number or boolean"
    BOTH_DATA = "structured CloudEvent has both 'data' and 'data_base64'"
    BASE64_NOT_TEXT = "'data_base64' must be a string"
    BAD_BASE64 = "'data_base64' is not valid base64"
    NO_SPECVERSION = "CloudEvent has no 'specversion'"
    BAD_SPECVERSION = "CloudEvents specversion {version!r} is not supported (only 1.0)"
    #: ``name``: the first missing attribute, ``names``: all of them, comma-separated.
    MISSING = "CloudEvent is missing the required attribute {name!r}"
    BAD_TIME = "CloudEvents time {text!r} is not an RFC 3339 timestamp"
    NO_OFFSET = "CloudEvents time {text!r} has no UTC offset"

    def text(self, **facts: str) -> str:
        """This problem in words, with ``facts`` filled in."""
        template: str = self.value
        return template.format(**facts)


class CloudEventError(ValueError):
    """A message claims to be a CloudEvent but is not a valid one; ``str()`` is why.

    Errors raised here carry their :attr:`problem` and its :attr:`facts`, so that a
    connector can word them its own way (:meth:`reason`); a connector's own errors
    (about its protocol headers) carry only their text.
    """

    def __init__(
        self, text: str, problem: Problem | None = None, facts: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(text)
        self.problem = problem
        self.facts: dict[str, str] = dict(facts or {})

    @classmethod
    def of(cls, problem: Problem, **facts: str) -> CloudEventError:
        """The error for ``problem``, worded by :class:`Problem`."""
        return cls(problem.text(**facts), problem, facts)

    def reason(self, wording: Mapping[Problem, str]) -> str:
        """Why, in ``wording``'s template for this problem, or as ``str()`` without one."""
        template = None if self.problem is None else wording.get(self.problem)
        return str(self) if template is None else template.format(**self.facts)


@dataclass(frozen=True, slots=True)
class CloudEvent:
    """A valid CloudEvent as a message carried it: attributes as text (``time`` also
    parsed), the data and its content type."""

    attributes: Mapping[str, str]
    time: datetime | None
    data: bytes
    content_type: str | None

    @property
    def extensions(self) -> dict[str, str]:
        """The attributes that are not :data:`CORE`."""
        return {name: value for name, value in self.attributes.items() if name not in CORE}


def is_structured(content_type: str | None) -> bool:
    """Whether a payload of this content type is a structured-mode (JSON) CloudEvent."""
    return _media_type(content_type or "") == STRUCTURED


def is_json(content_type: str) -> bool:
    """Whether data of this content type is JSON, as the CloudEvents JSON format defines
    it (section 3.1): the media subtype is ``json`` or ends in ``+json``
    (``application/json``, ``text/json``, ``application/problem+json``), any case,
    parameters allowed. The one rule of the bridge: structured-mode ``data`` and a cron
    trigger's ``data`` are both encoded by it."""
    _, slash, subtype = _media_type(content_type).partition("/")
    return bool(slash) and (subtype == "json" or subtype.endswith("+json"))


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=1024)  # checked for every extension of every attempt
def is_attribute_name(name: str) -> bool:
    """CloudEvents attribute names are lower-case ASCII letters and digits."""
    return _NAME.match(name) is not None


def scalar_text(value: object) -> str | None:
    """A string, number or boolean as attribute text; None for anything else.

    Booleans are ``true``/``false`` (checked before numbers: a bool is an int), numbers
    as Python writes them (``3``, ``2.5``), strings as they are.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return str(value)
    return None


def attribute_text(name: str, value: object) -> str:
    """The text of attribute ``name``; CloudEventError for objects and lists."""
    text = scalar_text(value)
    if text is None:
        raise CloudEventError.of(Problem.NOT_TEXT, name=name)
    return text


def from_binary(attributes: Mapping[str, str], data: bytes, content_type: str | None) -> CloudEvent:
    """A binary-mode CloudEvent: ``attributes`` read from the protocol headers, the
    payload ``data`` and its ``content_type`` (else ``datacontenttype``); checked."""
    time = validate(attributes)
    return CloudEvent(attributes, time, data, content_type or attributes.get("datacontenttype"))


def parse_structured(body: bytes) -> CloudEvent:
    """A structured-mode CloudEvent (JSON format) from its envelope; checked."""
    envelope = _envelope(body)
    attributes = _attributes(envelope)
    data, content_type = _envelope_data(envelope, attributes.get("datacontenttype"))
    return CloudEvent(attributes, validate(attributes), data, content_type)


def _envelope(body: bytes) -> dict[str, Any]:
    try:
        envelope = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:  # (nested too deep)
        raise CloudEventError.of(Problem.NOT_JSON, error=str(err)) from None
    if not isinstance(envelope, dict):
        raise CloudEventError.of(Problem.NOT_OBJECT)
    return envelope


def _attributes(envelope: dict[str, Any]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for name, value in envelope.items():
        if name in ("data", "data_base64") or value is None:
            continue
        if not is_attribute_name(name):
            raise CloudEventError.of(Problem.BAD_NAME, name=name)
        attributes[name] = attribute_text(name, value)
    return attributes


def _envelope_data(envelope: dict[str, Any], content_type: str | None) -> tuple[bytes, str | None]:
    """The data bytes and their content type; ``null`` members count as absent."""
    encoded, data = envelope.get("data_base64"), envelope.get("data")
    if encoded is not None:
        if data is not None:
            raise CloudEventError.of(Problem.BOTH_DATA)
        return _base64(encoded), content_type
    if data is None:
        return b"", content_type
    if isinstance(data, str) and content_type is not None and not is_json(content_type):
        return data.encode("utf-8"), content_type
    compact = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return compact.encode("utf-8"), content_type or "application/json"


def _base64(encoded: object) -> bytes:
    if not isinstance(encoded, str):
        raise CloudEventError.of(Problem.BASE64_NOT_TEXT)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise CloudEventError.of(Problem.BAD_BASE64) from None


def validate(attributes: Mapping[str, str]) -> datetime | None:
    """Check a CloudEvent's attributes (:func:`check_required`) and return its ``time``
    (None when it has none)."""
    check_required(attributes)
    text = attributes.get("time")
    return None if text is None else parse_time(text)


def check_required(attributes: Mapping[str, str]) -> None:
    """``specversion`` 1.0 and a non-empty ``id``, ``source`` and ``type``."""
    version = attributes.get("specversion")
    if version is None:
        raise CloudEventError.of(Problem.NO_SPECVERSION)
    if version != SPEC_VERSION:
        raise CloudEventError.of(Problem.BAD_SPECVERSION, version=version)
    missing = [name for name in REQUIRED if not attributes.get(name)]
    if missing:
        raise CloudEventError.of(Problem.MISSING, name=missing[0], names=", ".join(missing))


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp; its UTC offset is required (kept as given)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CloudEventError.of(Problem.BAD_TIME, text=text) from None
    if moment.tzinfo is None:
        raise CloudEventError.of(Problem.NO_OFFSET, text=text)
    return moment
