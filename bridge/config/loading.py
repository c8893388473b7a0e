"""Loading a config: file -> YAML -> ``${ENV}`` -> models -> cross-references.

Each step reports problems with the path of the offending field instead of raising a
traceback:

1. YAML is parsed (duplicate keys are an error, not a silent overwrite);
2. ``${ENV_VAR}`` (or ``${ENV_VAR:-default}``) inside strings is replaced from the
   environment; a missing variable is a problem at its path;
3. the tree is validated (unknown keys rejected), then cross-references are checked
   (:mod:`bridge.config.references`).

:func:`load_config` / :func:`parse_config` return a :class:`BridgeConfig` or raise
:class:`ConfigError` holding every problem found. :func:`validate_trigger` checks one
trigger that comes from elsewhere (a Trigger resource) exactly as a file's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bridge.config.functions import FunctionConfig
from bridge.config.problems import ConfigError, ConfigProblem, join_path, problems_from
from bridge.config.references import cross_references, quota_problems, trigger_problems
from bridge.config.triggers import BridgeConfig, TriggerConfig


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> BridgeConfig:
    """Read, interpolate and validate a config file; raise ConfigError on any problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([ConfigProblem("", f"cannot read {path}: {err.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([ConfigProblem("", f"{path} is not UTF-8 text")]) from None
    return parse_config(text, env=env, name=str(path))


def parse_config(
    text: str, env: Mapping[str, str] | None = None, name: str = "<config>"
) -> BridgeConfig:
    """A config from its YAML ``text`` (``name`` is the file in YAML problems)."""
    raw = _load_yaml(text, name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([ConfigProblem("", "the top level must be a mapping")])
    problems: list[ConfigProblem] = []
    raw = _interpolate(raw, os.environ if env is None else env, "", problems)
    if problems:
        raise ConfigError(problems)
    return validate_tree(raw)


def validate_tree(raw: dict[str, Any]) -> BridgeConfig:
    """Validate an already-loaded tree (also used for Trigger custom resources)."""
    try:
        config = BridgeConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(list(problems_from(err))) from None
    problems = list(cross_references(config))
    if problems:
        raise ConfigError(problems)
    return config


def validate_trigger(
    raw: Any,
    base: BridgeConfig,
    path: str,
    functions: Mapping[str, FunctionConfig] | None = None,
) -> TriggerConfig:
    """One ``triggers`` entry, checked exactly as a config file's are.

    The entry's own model, then :func:`trigger_problems` against ``base``'s defaults and
    functions (plus ``functions``): the checks a file runs on each of its triggers, for
    a trigger that comes from elsewhere (a Trigger resource). Problems are reported at
    ``path`` (``spec.cron.schedule``); raises :class:`ConfigError`.
    """
    try:
        trigger = TriggerConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(list(problems_from(err, prefix=path, root=TriggerConfig))) from None
    composed = BridgeConfig.model_construct(
        defaults=base.defaults, quotas=base.quotas,
        functions={**base.functions, **(functions or {})}, triggers=[trigger],
    )
    problems = list(trigger_problems(composed, trigger, path))
    for function in (functions or {}).values():  # an inline function's team quota
        problems += quota_problems(composed, function.quota, f"{path}.function.quota")
    if problems:
        raise ConfigError(problems)
    return trigger


#: libyaml's parser when PyYAML has it (faster on big files), else pure Python;
#: both build objects with the safe constructor.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _UniqueKeyLoader(_SafeLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that rejects duplicate mapping keys instead of keeping the last."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """Keys written twice are an error; a key from a ``<<: *anchor`` merge may be overridden."""
    written = sum(1 for key_node, _ in node.value if key_node.tag != _MERGE_TAG)
    loader.flatten_mapping(node)  # puts the merged pairs first, in YAML precedence order
    merged = len(node.value) - written
    result: dict[Any, Any] = {}
    seen: set[Any] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if index >= merged:
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", mark
                )
            seen.add(key)
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_MERGE_TAG = "tag:yaml.org,2002:merge"


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def _load_yaml(text: str, name: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError([ConfigProblem("", f"{where}: invalid YAML: {problem}")]) from None


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(
    node: Any, env: Mapping[str, str], path: str, problems: list[ConfigProblem]
) -> Any:
    if isinstance(node, dict):
        return {
            k: _interpolate(v, env, join_path([str(k)], path), problems) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _ENV_REF.sub(lambda m: _lookup(m, env, path, problems), node)
    return node


def _lookup(
    match: re.Match[str], env: Mapping[str, str], path: str, problems: list[ConfigProblem]
) -> str:
    name, default = match.group(1), match.group(2)
    if name in env:
        return env[name]
    if default is not None:
        return default
    problems.append(ConfigProblem(path, f"environment variable {name} is not set"))
    return ""
