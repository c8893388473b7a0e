"""Config loading and resolution: defaults, inheritance, precedence, interpolation, YAML."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, get_args

import pytest
from pydantic import BaseModel, ValidationError

from bridge.cli import main
from bridge.config import (
    BridgeConfig,
    ConfigError,
    ConfigProblem,
    RetryConfig,
    TriggerConfig,
    load_config,
    parse_config,
    problems_from,
    validate_tree,
)

HEAD = """\
defaults:
  dead_letter: {file: {path: /tmp/dl.jsonl}}
functions:
  f: {url: "http://127.0.0.1:8080/"}
"""


def one_trigger(body: str, head: str = HEAD) -> BridgeConfig:
    return parse_config(head + f"triggers:\n  - {{name: t, function: f, {body}}}\n", env={})


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, env=env or {})
    return [str(p) for p in caught.value.problems]


def test_built_in_defaults() -> None:
    config = one_trigger('cron: {schedule: "0 * * * *"}')
    resolved = config.resolve(config.triggers[0])
    assert resolved.name == "t"
    assert resolved.function_name == "f"
    assert resolved.timeout == 30.0
    assert resolved.concurrency == 100
    assert resolved.retry == RetryConfig()
    assert resolved.retry.max_attempts == 5
    assert resolved.retry.initial_backoff == 0.2
    assert resolved.retry.max_backoff == 30.0
    assert resolved.retry.multiplier == 2.0
    assert resolved.retry.jitter is True
    assert resolved.retry.retryable_statuses == {408, 409, 425, 429}
    assert resolved.dead_letter is not None
    assert resolved.dead_letter.kind == "file"
    assert resolved.ordering == "none"
    cron = config.triggers[0].cron
    assert cron is not None
    assert (cron.time_zone, cron.concurrency_policy, cron.suspend) == ("UTC", "Allow", False)
    assert cron.starting_deadline is None
    assert cron.content_type == "application/json"


@pytest.mark.parametrize(
    ("trigger_timeout", "function_timeout", "expected"),
    [("2s", "5s", 2.0), (None, "5s", 5.0), (None, None, 7.0), ("250ms", None, 0.25)],
)
def test_timeout_precedence_trigger_function_defaults(
    trigger_timeout: str | None, function_timeout: str | None, expected: float
) -> None:
    fn = "{url: 'http://a/'" + (f", timeout: {function_timeout}" if function_timeout else "") + "}"
    head = "defaults: {timeout: 7s, dead_letter: {file: {path: x}}}\n" + f"functions: {{f: {fn}}}\n"
    body = 'cron: {schedule: "@hourly"}'
    if trigger_timeout:
        body += f", timeout: {trigger_timeout}"
    config = one_trigger(body, head)
    assert config.resolve(config.triggers[0]).timeout == expected


def test_retry_is_inherited_field_by_field() -> None:
    head = HEAD.replace(
        "defaults:\n",
        "defaults:\n  retry: {max_attempts: 9, initial_backoff: 1s, jitter: false}\n",
    )
    config = one_trigger(
        'cron: {schedule: "@hourly"}, retry: {multiplier: 3, max_backoff: 1m}', head
    )
    retry = config.resolve(config.triggers[0]).retry
    assert retry.max_attempts == 9  # from defaults
    assert retry.initial_backoff == 1.0  # from defaults
    assert retry.jitter is False  # from defaults
    assert retry.multiplier == 3.0  # from the trigger
    assert retry.max_backoff == 60.0  # from the trigger
    assert retry.retryable_statuses == {408, 409, 425, 429}  # built-in default
    policy = retry.policy()
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (9, 1.0, 60.0)
    assert (policy.multiplier, policy.jitter) == (3.0, False)


def test_trigger_retry_may_set_a_value_equal_to_the_built_in_default() -> None:
    head = HEAD.replace("defaults:\n", "defaults:\n  retry: {max_attempts: 9}\n")
    config = one_trigger('cron: {schedule: "@hourly"}, retry: {max_attempts: 5}', head)
    assert config.resolve(config.triggers[0]).retry.max_attempts == 5


def test_retryable_statuses_replace_the_default_list() -> None:
    config = one_trigger('cron: {schedule: "@hourly"}, retry: {retryable_statuses: [404, 503]}')
    assert config.resolve(config.triggers[0]).retry.retryable_statuses == {404, 503}


def test_trigger_dead_letter_and_concurrency_override_defaults() -> None:
    head = HEAD.replace("defaults:\n", "defaults:\n  concurrency: 7\n")
    config = one_trigger(
        'cron: {schedule: "@hourly"}, concurrency: 3, dead_letter: {file: {path: /tmp/own}}', head
    )
    resolved = config.resolve(config.triggers[0])
    assert resolved.concurrency == 3
    assert resolved.dead_letter is not None
    assert resolved.dead_letter.file is not None
    assert resolved.dead_letter.file.path == "/tmp/own"
    config = one_trigger('cron: {schedule: "@hourly"}', head)
    resolved = config.resolve(config.triggers[0])
    assert resolved.concurrency == 7
    assert resolved.dead_letter is not None
    assert resolved.dead_letter.file is not None
    assert resolved.dead_letter.file.path == "/tmp/dl.jsonl"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h30m", 5400.0), ("2", 2.0), ("1.5", 1.5)],
)
def test_durations_in_the_config(text: str, seconds: float) -> None:
    config = one_trigger(f'cron: {{schedule: "@hourly", starting_deadline: "{text}"}}')
    cron = config.triggers[0].cron
    assert cron is not None
    assert cron.starting_deadline == seconds


def test_kafka_lists_accept_comma_strings_and_ordering_defaults_to_key() -> None:
    config = one_trigger(
        "kafka: {bootstrap_servers: 'a:1, b:2', topics: 'x,y', group_id: g}"
    )
    kafka = config.triggers[0].kafka
    assert kafka is not None
    assert kafka.bootstrap_servers == ["a:1", "b:2"]
    assert kafka.topics == ["x", "y"]
    assert config.resolve(config.triggers[0]).ordering == "key"


def test_secrets_do_not_show_in_repr() -> None:
    config = one_trigger("rabbitmq: {url: 'amqp://user:s3cret@host/', queue: q}")
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.model_dump())
    rabbit = config.triggers[0].rabbitmq
    assert rabbit is not None
    assert rabbit.url.get_secret_value() == "amqp://user:s3cret@host/"


def test_config_is_frozen() -> None:
    config = one_trigger('cron: {schedule: "@hourly"}')
    with pytest.raises(ValidationError):
        config.triggers[0].name = "other"  # type: ignore[misc]


def test_function_targets() -> None:
    config = parse_config(
        "functions:\n"
        "  a: {url: 'http://a/'}\n"
        "  b: {urls: ['http://b1/', 'https://b2/']}\n"
        "  c: {kubernetes: {service: c}}\n",
        env={},
    )
    assert config.functions["a"].static_urls == ["http://a/"]
    assert config.functions["b"].static_urls == ["http://b1/", "https://b2/"]
    assert config.functions["c"].static_urls == []
    k8s = config.functions["c"].kubernetes
    assert k8s is not None
    assert (k8s.namespace, k8s.port, k8s.path) == (None, "http", "/")


def test_summary() -> None:
    assert parse_config("", env={}).summary() == "0 trigger(s), 0 function(s)"
    config = one_trigger('cron: {schedule: "@hourly"}')
    assert config.summary() == "1 trigger(s) (1 cron), 1 function(s)"


# --- ${ENV} interpolation ---------------------------------------------------------------


def test_env_interpolation() -> None:
    env = {"HOST": "fn.example", "PORT": "8443", "LIMIT": "8"}
    config = parse_config(
        "functions:\n"
        "  f: {url: 'https://${HOST}:${PORT}/x', max_concurrency: '${LIMIT}',\n"
        "      headers: {Authorization: 'Bearer ${TOKEN:-anonymous}', X-Empty: '${E:-}'}}\n",
        env=env,
    )
    fn = config.functions["f"]
    assert fn.url == "https://fn.example:8443/x"
    assert fn.max_concurrency == 8
    assert fn.headers == {"Authorization": "Bearer anonymous", "X-Empty": ""}


def test_env_interpolation_leaves_other_text_alone() -> None:
    config = parse_config(
        "functions:\n  f: {url: 'http://a/$HOME/${X}/${lower-case}', headers: {X-A: '${X'}}\n",
        env={"X": "1"},
    )
    assert config.functions["f"].url == "http://a/$HOME/1/${lower-case}"
    assert config.functions["f"].headers == {"X-A": "${X"}


def test_every_missing_variable_is_reported() -> None:
    text = "functions:\n  f: {url: '${A}', headers: {X: '${B}'}}\ntriggers: [{name: '${C}'}]\n"
    assert problems(text) == [
        "functions.f.url: environment variable A is not set",
        "functions.f.headers.X: environment variable B is not set",
        "triggers[0].name: environment variable C is not set",
    ]


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FN_URL", "http://from-env/")
    config = parse_config("functions:\n  f: {url: '${FN_URL}'}\n")
    assert config.functions["f"].url == "http://from-env/"


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(HEAD + "triggers: []\n")
    assert load_config(path, env={}).functions["f"].url == "http://127.0.0.1:8080/"


# --- YAML ------------------------------------------------------------------------------


def test_yaml_anchors_and_merge_keys() -> None:
    config = parse_config(
        HEAD
        + "triggers:\n"
        "  - {name: a, function: f,\n"
        "     kafka: &k {bootstrap_servers: 'h:1', group_id: g, topics: [a]}}\n"
        "  - {name: b, function: f, kafka: {<<: *k, topics: [b]}}\n",
        env={},
    )
    a, b = (t.kafka for t in config.triggers)
    assert a is not None
    assert b is not None
    assert (a.topics, b.topics) == (["a"], ["b"])
    assert b.group_id == "g"


def test_duplicate_key_after_merge_is_still_an_error() -> None:
    assert problems("a: &x {k: 1}\nb: {<<: *x, y: 1, y: 2}\n") == [
        "<config>:2:19: invalid YAML: duplicate key 'y'"
    ]


def test_yaml_error_names_the_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("functions:\n  f: {url: 'http://a/'\n", env={}, name="my.yaml")
    (problem,) = caught.value.problems
    assert problem.path == ""
    assert problem.message.startswith("my.yaml:3:1: invalid YAML: ")


def test_config_error_str_is_one_line_per_problem() -> None:
    err = ConfigError([ConfigProblem("a.b", "bad"), ConfigProblem("", "worse")])
    assert str(err) == "a.b: bad\nworse"


# --- validate_tree and problems_from (used for Trigger custom resources) ---------------


def test_validate_tree_reports_structure_then_references() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_tree(
            {"triggers": [{"name": "t", "function": "g", "cron": {"schedule": "@daily"}}]}
        )
    assert [str(p) for p in caught.value.problems] == [
        "triggers[0].function: unknown function 'g' (known: none defined)",
        "triggers[0].dead_letter: no dead-letter sink: set one here or in defaults.dead_letter",
    ]


def test_problems_from_with_a_prefix() -> None:
    with pytest.raises(ValidationError) as caught:
        RetryConfig.model_validate({"max_attempts": 0, "multiplier": "x", "jiter": True})
    found = [str(p) for p in problems_from(caught.value, prefix="spec.retry")]
    assert found == [
        "spec.retry.max_attempts: must be at least 1, got 0",
        "spec.retry.multiplier: expected a number, got 'x'",
        "spec.retry.jiter: unknown key (did you mean 'jitter'?)",
    ]


def test_model_level_error_at_the_root_gets_the_prefix() -> None:
    """As when one Trigger resource is validated on its own."""
    with pytest.raises(ValidationError) as caught:
        TriggerConfig.model_validate({"name": "t", "function": "f"})
    assert [str(p) for p in problems_from(caught.value, prefix="spec")] == [
        "spec: needs exactly one source of 'kafka', 'rabbitmq', 'cron'; found none"
    ]


# --- examples/ ----------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
#: Every ${VAR} without a default that the examples reference.
EXAMPLE_ENV = {"API_TOKEN": "token", "KAFKA_PASSWORD": "secret", "TLS_KEY_PASSWORD": "pw"}


def test_there_are_examples() -> None:
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"cron.yaml", "kafka.yaml", "rabbitmq.yaml", "kitchen-sink.yaml"} <= names


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_example_validates_through_the_cli(
    path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith("BRIDGE_") or name in EXAMPLE_ENV:
            monkeypatch.delenv(name)
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    code = main(["validate", "--config", str(path)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert out.startswith(f"ok: {path}: ")


def test_kitchen_sink_sets_every_option() -> None:
    """Keeps examples/kitchen-sink.yaml (and so the reference) complete as options are added."""
    config = load_config(EXAMPLES / "kitchen-sink.yaml", env=EXAMPLE_ENV)
    declared = _declared_fields(BridgeConfig)
    used: set[tuple[str, str]] = set()
    _used_fields(config, used)
    assert sorted(declared - used) == []


def _declared_fields(model: type[BaseModel]) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    pending: list[Any] = [model]
    seen: set[Any] = set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            for name, info in current.model_fields.items():
                found.add((current.__name__, name))
                pending.append(info.annotation)
        else:
            pending.extend(get_args(current))
    return found


def _used_fields(value: Any, used: set[tuple[str, str]]) -> None:
    if isinstance(value, BaseModel):
        for name in value.model_fields_set:
            used.add((type(value).__name__, name))
            _used_fields(getattr(value, name), used)
    elif isinstance(value, dict):
        for item in value.values():
            _used_fields(item, used)
    elif isinstance(value, list | tuple):
        for item in value:
            _used_fields(item, used)


def test_reference_documents_every_key() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = sorted({f for _, f in _declared_fields(BridgeConfig) if f"`{f}`" not in doc})
    assert missing == []
