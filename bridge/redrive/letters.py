"""A dead letter read back for a redrive, whichever sink wrote it.

Every sink writes the same facts (DESIGN section 6, :class:`bridge.deadletter.DeadLetter`):
the file sink as one JSON object per line (:func:`from_json`), the Kafka and RabbitMQ
sinks as message headers (:func:`from_fields`, after the connector split its headers
into ``bridge-*`` fields, CloudEvent attributes and the original headers).

A :class:`Letter` turns back into the :class:`~bridge.events.Event` the daemon invoked
(:func:`to_event`): the same CloudEvent attributes -- its ``id`` above all, so functions
de-duplicate a redriven event -- the same body, key and headers. A letter that fails
again carries its history into its next dead letter (:meth:`Letter.next_history`):
``bridge-redrive-attempts`` (how many redrives failed so far) and
``bridge-redrive-history`` (the earlier failures, oldest first, at most
:data:`HISTORY_KEEP`).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bridge.cloudevents import AMQP_PREFIXES, CORE, KAFKA_PREFIX
from bridge.events import Event, Settler
from bridge.headers import AMQP_HEADER_PREFIX, KAFKA_HEADER_PREFIX, is_header_name

REDRIVE_ATTEMPTS = "bridge-redrive-attempts"
REDRIVE_HISTORY = "bridge-redrive-history"
#: Earlier failures kept in ``bridge-redrive-history`` (the newest ones).
HISTORY_KEEP = 10
#: Characters of an earlier failure's detail kept in the history.
_DETAIL_KEEP = 200
#: ``bridge-error`` of a message the bridge could not read (not invoked, see to_event).
INVALID_MESSAGE = "invalid_message"

_PRINTABLE = re.compile(rb"^[\x20-\x7e\t]*\Z")

Headers = tuple[tuple[str, bytes], ...]


class NotALetter(ValueError):
    """The input is not a dead-letter record; the message says what is wrong."""


class NotRedrivable(Exception):
    """A dead letter this redrive cannot send (the message says why); left in place."""


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead-letter record, read back."""

    #: Where it was read: ``FILE:LINE``, ``topic/partition/offset``, ``queue QUEUE #N``.
    position: str
    trigger: str
    function: str
    error: str
    detail: str
    attempts: int | None
    last_status: int | None
    #: ``bridge-source``: ``topic/partition/offset``, the queue, or the schedule.
    source: str
    dead_lettered_at: datetime | None
    body: bytes
    key: bytes | None
    #: The original message's headers (without the sink's ``bridge-*`` and CloudEvent ones).
    headers: Headers
    cloudevent: Mapping[str, str]
    redrives: int = 0
    history: tuple[Mapping[str, Any], ...] = ()
    refused: str = ""
    #: Sink-specific facts a reader needs back (e.g. the exchange a message came through).
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.cloudevent.get("id", "")

    def describe(self) -> str:
        """``POSITION id=ID trigger -> function (error)`` for one output line."""
        when = "" if self.dead_lettered_at is None else f", {_iso(self.dead_lettered_at)}"
        return (f"{self.position} id={self.id or '?'} {self.trigger} -> {self.function} "
                f"({self.error}{when})")

    def next_history(self) -> tuple[tuple[str, str], ...]:
        """The ``bridge-redrive-*`` facts of this letter's next dead letter, JSON texts."""
        failure = {
            "error": self.error,
            "status": self.last_status,
            "attempts": self.attempts,
            "at": None if self.dead_lettered_at is None else _iso(self.dead_lettered_at),
            "detail": self.detail[:_DETAIL_KEEP],
        }
        past = [*self.history, failure][-HISTORY_KEEP:]
        return (
            (REDRIVE_ATTEMPTS, str(self.redrives + 1)),
            (REDRIVE_HISTORY, json.dumps(past, separators=(",", ":"), ensure_ascii=False)),
        )


# --- reading ------------------------------------------------------------------------


def from_json(document: object, position: str) -> Letter:
    """A file sink record (one parsed JSON line); raises NotALetter."""
    if not isinstance(document, dict):
        raise NotALetter(f"a JSON {type(document).__name__}, not an object")
    fields = {k: v for k, v in document.items() if isinstance(k, str) and k.startswith("bridge-")}
    _require(fields)
    cloudevent = document.get("cloudevent", {})
    if not isinstance(cloudevent, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in cloudevent.items()
    ):
        raise NotALetter("'cloudevent' is not an object of strings")
    headers = document.get("headers", [])
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and isinstance(h[0], str) for h in headers
    ):
        raise NotALetter("'headers' is not a list of [name, base64] pairs")
    return from_fields(
        fields, cloudevent, _unbase64(document.get("body"), "body", required=True) or b"",
        _unbase64(document.get("key"), "key"),
        tuple((name, _unbase64(value, f"header {name!r}") or b"") for name, value in headers),
        position=position,
    )


def from_fields(
    fields: Mapping[str, Any],
    cloudevent: Mapping[str, str],
    body: bytes,
    key: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    *,
    position: str,
    extra: Mapping[str, str] | None = None,
) -> Letter:
    """A record from its ``bridge-*`` fields (header texts or JSON values); NotALetter."""
    _require(fields)
    return Letter(
        position=position,
        trigger=fields["bridge-trigger"],
        function=fields["bridge-function"],
        error=fields["bridge-error"],
        detail=_text(fields.get("bridge-error-detail")),
        attempts=_number(fields.get("bridge-attempts"), "bridge-attempts"),
        last_status=_number(fields.get("bridge-last-status"), "bridge-last-status"),
        source=_text(fields.get("bridge-source")),
        dead_lettered_at=_time(fields.get("bridge-dead-lettered-at")),
        body=body,
        key=key,
        headers=tuple(headers),
        cloudevent=dict(cloudevent),
        redrives=_number(fields.get(REDRIVE_ATTEMPTS), REDRIVE_ATTEMPTS) or 0,
        history=_history(fields.get(REDRIVE_HISTORY)),
        refused=_text(fields.get("bridge-sink-refused")),
        extra=dict(extra or {}),
    )


def _require(fields: Mapping[str, Any]) -> None:
    missing = [n for n in ("bridge-trigger", "bridge-function", "bridge-error")
               if not isinstance(fields.get(n), str) or not fields[n]]
    if missing:
        raise NotALetter(f"no {', '.join(missing)}")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _number(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise NotALetter(f"{name} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    raise NotALetter(f"{name} is not a number: {str(value)[:40]!r}")


def _time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise NotALetter("bridge-dead-lettered-at is not a time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise NotALetter(f"bridge-dead-lettered-at is not a time: {value[:40]!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _history(value: Any) -> tuple[Mapping[str, Any], ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise NotALetter(f"{REDRIVE_HISTORY} is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise NotALetter(f"{REDRIVE_HISTORY} is not a list of objects")
    return tuple(value)


def _unbase64(value: Any, name: str, required: bool = False) -> bytes | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise NotALetter(f"'{name}' is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise NotALetter(f"'{name}' is not base64") from None


def _iso(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# --- back into an event ---------------------------------------------------------------


def to_event(letter: Letter, kind: str, settler: Settler) -> Event:
    """The event the daemon invoked, rebuilt from ``letter`` (source ``kind``: kafka,
    rabbitmq, cron); raises NotRedrivable.

    A message the bridge could not read (``invalid_message``) is not rebuilt: it never
    was a valid event. Republish it to its source (``--to-source``) once the daemon can
    read it.
    """
    if letter.error == INVALID_MESSAGE:
        raise NotRedrivable(
            "the message could not be read (invalid_message): it can only go back to its "
            "source (--to-source)"
        )
    attributes = dict(letter.cloudevent)
    missing = [a for a in ("id", "source", "type") if not attributes.get(a)]
    if missing:
        raise NotRedrivable(f"the record has no CloudEvent {', '.join(missing)}")
    time = None
    if attributes.get("time"):
        try:
            time = datetime.fromisoformat(attributes["time"])
        except ValueError:
            raise NotRedrivable(f"CloudEvent time {attributes['time']!r} is not a time") from None
    key_text = None if letter.key is None else letter.key.decode("latin-1")
    return Event(
        trigger=letter.trigger,
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        data=letter.body,
        content_type=attributes.get("datacontenttype"),
        time=time,
        subject=attributes.get("subject"),
        extensions={k: v for k, v in attributes.items() if k not in CORE},
        http_headers=_http_headers(letter.headers, kind),
        ordering_key=key_text,
        partition=_partition(letter, kind),
        origin=letter.source,
        key=letter.key,
        headers=letter.headers,
        settler=settler,
        history=letter.next_history(),
    )


def _partition(letter: Letter, kind: str) -> str:
    """The ordering lane the daemon used: ``topic/partition``, the queue, the trigger."""
    if kind == "kafka" and letter.source.count("/") >= 2:
        return letter.source.rsplit("/", 1)[0]
    if kind == "rabbitmq":
        return letter.source
    return letter.trigger


def _http_headers(headers: Headers, kind: str) -> dict[str, str]:
    """The message's headers as the connectors pass them to the function
    (``kafka-header-<name>``, ``amqp-header-<name>``): token names, printable values."""
    out: dict[str, str] = {}
    for name, value in headers:
        if not is_header_name(name) or not _PRINTABLE.match(value):
            continue
        if kind == "kafka":
            lower = name.lower()
            if lower == "content-type" or lower.startswith(KAFKA_PREFIX):
                continue
            http_name, text = KAFKA_HEADER_PREFIX + lower, value.decode("ascii")
            out[http_name] = f"{out[http_name]}, {text}" if http_name in out else text
        elif kind == "rabbitmq" and not name.startswith(AMQP_PREFIXES):
            out[AMQP_HEADER_PREFIX + name] = value.decode("ascii")
    return out
