"""The value types of the config file's fields, and what every model shares.

- :class:`Strict`: the base of every model (unknown keys rejected, frozen).
- :data:`Duration` / :data:`Timeout`: ``250ms``, ``30s``, ``5m``, ``1h`` or seconds
  (:func:`bridge.durations.parse_duration`); a timeout must be longer than 0.
- :data:`Name`: a trigger name, a DNS label like Kubernetes names.
- :data:`Servers`, :data:`HttpUrl`, :data:`AmqpUrl`: checked by :mod:`bridge.urls`; an
  error never shows the value (it may hold a password).
- :class:`FieldError`: raised by a model-level check that belongs to one field, so the
  problem is reported at that field's path (:mod:`bridge.config.problems`).
- :data:`SECRET` (``Annotated[T, SECRET]``) marks a field whose values are secrets;
  :func:`is_secret` tells a secret-holding type (that or ``SecretStr``).
- :func:`secrets_of`: every secret a part of the config holds, to keep out of messages.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, SecretStr

from bridge.durations import parse_duration
from bridge.urls import password_forms, server_problem, url_problem

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _positive(seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("must be longer than 0s")
    return seconds


#: A timeout: 0 would fail every invocation at once (and read as "unset" when inherited).
Timeout = Annotated[float, BeforeValidator(parse_duration), AfterValidator(_positive)]

#: Trigger, Service and namespace names are DNS labels: at most 63 characters.
NAME_MAX = 63


def _check_name(value: str) -> str:
    """A trigger name: a DNS label (lower-case letters, digits, '-'), like Kubernetes names."""
    if not value:
        raise ValueError("must not be empty")
    if len(value) > NAME_MAX:
        raise ValueError(f"must be at most {NAME_MAX} characters, got {len(value)}")
    if value != value.lower():
        raise ValueError(f"must be lower case, got {value!r} (try {value.lower()!r})")
    bad = sorted({c for c in value if not (c.isascii() and (c.isalnum() or c == "-"))})
    if bad:
        listed = " ".join(repr(c) for c in bad)
        raise ValueError(f"may contain only lower-case letters, digits and '-'; found {listed}")
    if value[0] == "-" or value[-1] == "-":
        raise ValueError(f"must start and end with a letter or digit, got {value!r}")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


def as_list(value: object) -> object:
    """``a:1,b:2`` or ``[a:1, b:2]`` -> list of strings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


_T = TypeVar("_T")


def checked(problem: str | None, value: _T) -> _T:
    """``value``, or a ValueError with ``problem`` (from a ``*_problem`` check) if any."""
    if problem:
        raise ValueError(problem)
    return value


def _check_server(value: str) -> str:
    return checked(server_problem(value), value)


def _check_http_url(value: str) -> str:
    return checked(url_problem(value, ("http", "https")), value)


def _check_amqp_url(value: SecretStr) -> SecretStr:
    return checked(url_problem(value.get_secret_value(), ("amqp", "amqps")), value)


#: A Kafka bootstrap server ``host:port`` (checked as the client reads it).
Server = Annotated[str, AfterValidator(_check_server)]
Servers = Annotated[list[Server], BeforeValidator(as_list), Field(min_length=1)]


#: URLs: checked by :mod:`bridge.urls`; an error never shows the value (it may hold a
#: password).
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
AmqpUrl = Annotated[SecretStr, AfterValidator(_check_amqp_url)]


class Strict(BaseModel):
    """Every config model: unknown keys are an error, and a loaded config is frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldError(ValueError):
    """A model-level check that belongs to one field (its name goes into the path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}\x00{message}")


def require_exactly_one(model: BaseModel, fields: tuple[str, ...], what: str) -> None:
    """A source, a target, a sink: exactly one of ``fields`` is set."""
    present = [f for f in fields if getattr(model, f) is not None]
    if len(present) != 1:
        options = ", ".join(f"'{f}'" for f in fields)
        found = f"found {', '.join(present)}" if present else "found none"
        raise ValueError(f"needs exactly one {what} of {options}; {found}")


class _Secret:
    """The marker type of :data:`SECRET`."""

    def __repr__(self) -> str:
        return "SECRET"


#: ``Annotated[T, SECRET]``: every string the field holds is a secret (a function's
#: header values carry tokens): :func:`secrets_of` collects them, and a problem with
#: the field never shows its value (:mod:`bridge.config.problems`).
SECRET = _Secret()


def is_secret(annotation: Any) -> bool:
    """A declared type that holds a secret: ``SecretStr`` or marked :data:`SECRET`
    (also inside ``Annotated`` and ``Optional``)."""
    pending = [annotation]
    while pending:
        current = pending.pop()
        if current is SecretStr:
            return True
        origin = get_origin(current)
        if origin is Annotated:
            if any(item is SECRET for item in current.__metadata__):
                return True
            pending.append(get_args(current)[0])
        elif origin in (Union, UnionType):
            pending.extend(get_args(current))
    return False


def secrets_of(*parts: BaseModel | None) -> set[str]:
    """Every secret the config parts hold, to keep out of messages.

    ``SecretStr`` values (of a URL only its password: host and vhost are no secret),
    every string of a field marked :data:`SECRET`, and the passwords of http URLs, each
    as written and percent-decoded.
    """
    found: set[str] = set()
    pending: list[tuple[Any, bool]] = [(part, False) for part in parts]
    while pending:
        value, secret = pending.pop()
        if isinstance(value, BaseModel):
            pending.extend(
                (getattr(value, name), secret or SECRET in info.metadata)
                for name, info in type(value).model_fields.items()
            )
        elif isinstance(value, list | tuple | set | frozenset):
            pending.extend((item, secret) for item in value)
        elif isinstance(value, dict):
            pending.extend((item, secret) for item in value.values())
        elif isinstance(value, SecretStr):
            text = value.get_secret_value()
            found.update(password_forms(text) if "://" in text else [text])
        elif isinstance(value, str):
            if secret:
                found.add(value)
            if "://" in value:
                found.update(password_forms(value))
    found.discard("")
    return found
