"""What is wrong with a config, in words for the person who wrote it.

A :class:`ConfigProblem` is one line, ``path: message`` (``triggers[2].cron.schedule:
...``); a :class:`ConfigError` holds every problem found. :func:`problems_from` turns
pydantic's errors into such lines: the path without pydantic's union tags, "expected a
list, got 'x'" instead of type names, an unknown key with the closest allowed one, one
line for a value that fits none of a union's members, and a :class:`FieldError` raised
by a model-level check reported at its own field. A field that holds a secret
(``SecretStr``, or marked ``SECRET`` like a function's header values) never has its
value shown, only its kind ("got a number (not shown: a secret)"). ``trigger-bridge
validate`` prints these lines, and tests/unit/test_config_catalogue.py pins their
wording.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from bridge.config.fields import FieldError, Strict, is_secret


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(Exception):
    """One or more problems in a config; ``str()`` gives one line per problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def problems_from(
    err: ValidationError, prefix: str = "", root: type[BaseModel] | None = None
) -> Iterator[ConfigProblem]:
    """One problem per error, worded for the person who wrote the file.

    ``root`` is the validated model (found from the error's title when omitted): it lets
    an unknown key suggest the keys allowed there.
    """
    root = root or _config_model(err.title)
    unions: dict[str, list[ErrorDetails]] = {}
    secret_unions: set[str] = set()
    for item in err.errors(include_url=False):
        loc, types = _real_loc(root, list(item["loc"]))
        hide = any(is_secret(t) for t in types[1:])  # never echo a secret's value
        ctx_error = (item.get("ctx") or {}).get("error")
        if isinstance(ctx_error, FieldError):
            field, message = str(ctx_error).split("\x00", 1)
            yield ConfigProblem(join_path([*loc, field], prefix), message)
        elif item["type"] == "invalid_key" or item["loc"][-1:] == ("[key]",):
            path = join_path([*loc[:-1], str(loc[-1])], prefix)
            yield ConfigProblem(path, f"keys must be strings, got {_written(item.get('input'))}")
        elif len(loc) < len(item["loc"]):
            unions.setdefault(join_path(loc, prefix), []).append(item)
            if hide:
                secret_unions.add(join_path(loc, prefix))
        else:
            yield ConfigProblem(join_path(loc, prefix), _humanize(item, types, hide))
    for path, items in unions.items():
        yield ConfigProblem(path, _humanize_union(items, path in secret_unions))


def join_path(loc: list[int | str] | tuple[int | str, ...], prefix: str = "") -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _config_model(title: str) -> type[BaseModel] | None:
    pending: list[type[BaseModel]] = [Strict]
    while pending:
        model = pending.pop()
        if model.__name__ == title:
            return model
        pending.extend(model.__subclasses__())
    return None


def _real_loc(root: type[BaseModel] | None, loc: list[Any]) -> tuple[list[Any], list[Any]]:
    """``loc`` without pydantic's union tags and ``[key]`` markers, and the type at each step.

    ``types[i]`` is the declared type at ``loc[:i]`` as far as it can be followed.
    """
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type
        return loc[:-1], []
    types: list[Any] = [root]
    for index, part in enumerate(loc):
        current = _unwrap(types[-1])
        if current is None:
            return loc, types
        if isinstance(current, tuple):  # a union: the next part is a member tag
            return loc[:index], types
        following = _step(current, part)
        if following is None:
            return loc, types
        types.append(following)
    return loc, types


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated and Optional; a real union comes back as a tuple of members."""
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, UnionType):
        members = tuple(a for a in get_args(annotation) if a is not type(None))
        return _unwrap(members[0]) if len(members) == 1 else members
    return annotation


def _step(current: Any, part: Any) -> Any:
    if isinstance(current, type) and issubclass(current, BaseModel):
        field = current.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        # Annotated metadata kept: a field marked SECRET must stay recognisable.
        return Annotated[(field.annotation, *field.metadata)] if field.metadata else (
            field.annotation)
    origin, args = get_origin(current), get_args(current)
    if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
        return args[0]
    if origin is dict and isinstance(part, str) and len(args) == 2:
        return args[1]
    return None


_EXPECTED = {
    "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
    "list_type": "a list", "frozen_set_type": "a list", "set_type": "a list",
    "tuple_type": "a list", "string_type": "a string", "int_type": "a whole number",
    "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false",
}


def _humanize(item: ErrorDetails, types: list[Any], hide: bool = False) -> str:
    kind, given, ctx = item["type"], item.get("input"), item.get("ctx") or {}
    written = _kind_of if hide else _written
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {written(given)}"
    if kind == "extra_forbidden":
        return "unknown key" + _suggest(str(item["loc"][-1]), types, len(item["loc"]) - 1)
    if kind in _LIMITS:
        return _LIMITS[kind].format(given=written(given), **ctx)
    if kind in ("too_short", "string_too_short"):
        if ctx.get("min_length") == 1:
            return "must not be empty"
        return f"needs at least {ctx.get('min_length')} items"
    if kind in ("too_long", "string_too_long"):
        return f"must have at most {ctx.get('max_length')} items"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}; got {written(given)}"
    if kind == "missing":
        return "required key is missing"
    message = str(item["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


_LIMITS = {
    "greater_than_equal": "must be at least {ge}, got {given}",
    "greater_than": "must be greater than {gt}, got {given}",
    "less_than_equal": "must be at most {le}, got {given}",
    "less_than": "must be less than {lt}, got {given}",
}


def _humanize_union(items: list[ErrorDetails], hide: bool = False) -> str:
    """``port: [1]`` fails as int and as str: one line, not one per member type."""
    words = [_EXPECTED.get(i["type"]) for i in items]
    if all(words):
        expected = " or ".join(dict.fromkeys(w for w in words if w))
        given = (_kind_of if hide else _written)(items[0].get("input"))
        return f"expected {expected}, got {given}"
    return next(_humanize(i, [], hide) for i in items if i["type"] not in _EXPECTED)


def _suggest(key: str, types: list[Any], parent: int) -> str:
    model = _unwrap(types[parent]) if parent < len(types) else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return ""
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    if close:
        return f" (did you mean {close[0]!r}?)"
    return f" (allowed here: {', '.join(allowed)})"


def _written(value: Any) -> str:
    """A short, YAML-flavoured description of a value the user wrote."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _kind_of(value: Any) -> str:
    """:func:`_written` for a secret: what kind of value it is, never the value."""
    if isinstance(value, str):
        return "a string (not shown: a secret)"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number (not shown: a secret)"
    return _written(value)
