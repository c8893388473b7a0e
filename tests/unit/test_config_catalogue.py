"""The bad-config catalogue: every mistake through the real CLI, one line naming its path.

Each case is a small YAML file run through ``bridge.cli.main(["validate", ...])``: the
exit code must be 2, stderr must hold a line starting with the field path (or the file
position for YAML syntax errors) and containing the expected message, and there must
never be a traceback.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main
from bridge.config import ConfigError, parse_config

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

HEAD = """\
defaults:
  dead_letter: {file: {path: /tmp/dl.jsonl}}
functions:
  f: {url: "http://127.0.0.1:8080/"}
"""

CRON = 'cron: {schedule: "*/5 * * * *"}'
KAFKA = "kafka: {bootstrap_servers: '127.0.0.1:9092', topics: [t], group_id: g}"
RABBIT = "rabbitmq: {url: 'amqp://guest:guest@127.0.0.1:5672/', queue: q}"


def trigger(body: str, head: str = HEAD) -> str:
    """A config with one trigger ``t`` on function ``f``; ``body`` adds/overrides keys."""
    return head + f"triggers:\n  - {{name: t, function: f, {body}}}\n"


def cron(fields: str) -> str:
    return trigger(f"cron: {{{fields}}}")


def schedule(expression: str) -> str:
    return cron(f'schedule: "{expression}"')


def function(body: str) -> str:
    return f"functions:\n  f: {{{body}}}\n"


def kafka(extra: str) -> str:
    return trigger(
        f"kafka: {{bootstrap_servers: '127.0.0.1:9092', topics: [t], group_id: g, {extra}}}"
    )


def rabbit(extra: str, dead_letter: str = "") -> str:
    body = f"rabbitmq: {{url: 'amqp://127.0.0.1/', queue: q, {extra}}}"
    return trigger(body + (f", dead_letter: {dead_letter}" if dead_letter else ""))


NO_DLQ_HEAD = 'functions:\n  f: {url: "http://127.0.0.1:8080/"}\n'

# (config text, path the line starts with, message substring). "{file}" = the config path.
CATALOGUE: list[Any] = [
    # --- YAML itself ---------------------------------------------------------------
    pytest.param("functions: {f: [1\n", "{file}:2:1", "invalid YAML", id="yaml-unclosed-flow"),
    pytest.param(
        "functions:\n  f: {url: 'http://a/'}\n   bad: indent\n", "{file}:3:", "invalid YAML",
        id="yaml-bad-indent",
    ),
    pytest.param(
        "functions: {}\nfunctions: {}\n", "{file}:2:1", "invalid YAML: duplicate key 'functions'",
        id="yaml-duplicate-top-key",
    ),
    pytest.param(
        HEAD + "triggers:\n  - name: t\n    function: f\n    name: u\n    " + CRON + "\n",
        "{file}:8:5", "duplicate key 'name'", id="yaml-duplicate-nested-key",
    ),
    pytest.param("- a\n- b\n", "", "the top level must be a mapping", id="top-level-list"),
    pytest.param("just a string\n", "", "the top level must be a mapping", id="top-level-scalar"),
    pytest.param("1: 2\n", "1: ", "keys must be strings, got 1", id="top-level-int-key"),
    # --- unknown keys at every level -----------------------------------------------
    pytest.param(
        "trigers: []\n", "trigers: ", "unknown key (did you mean 'triggers'?)",
        id="unknown-top-key",
    ),
    pytest.param(
        "defaults: {colour: red}\n", "defaults.colour: ", "unknown key (allowed here: timeout",
        id="unknown-defaults-key",
    ),
    pytest.param(
        "defaults: {retry: {max_attempt: 3}}\n", "defaults.retry.max_attempt: ",
        "did you mean 'max_attempts'?", id="unknown-retry-key",
    ),
    pytest.param(
        "defaults: {dead_letter: {file: {pth: x}}}\n", "defaults.dead_letter.file.pth: ",
        "did you mean 'path'?", id="unknown-file-sink-key",
    ),
    pytest.param(
        function("uri: 'http://a/'"), "functions.f.uri: ", "did you mean 'url'?",
        id="unknown-function-key",
    ),
    pytest.param(
        function("kubernetes: {service: s, svc: x}"), "functions.f.kubernetes.svc: ",
        "unknown key", id="unknown-kubernetes-key",
    ),
    pytest.param(
        trigger(CRON + ", functon: f"), "triggers[0].functon: ", "did you mean 'function'?",
        id="unknown-trigger-key",
    ),
    pytest.param(
        cron('schedul: "* * * * *"'), "triggers[0].cron.schedul: ", "did you mean 'schedule'?",
        id="unknown-cron-key",
    ),
    pytest.param(
        kafka("topic: x"), "triggers[0].kafka.topic: ", "did you mean 'topics'?",
        id="unknown-kafka-key",
    ),
    pytest.param(
        rabbit("queues: x"), "triggers[0].rabbitmq.queues: ", "did you mean 'queue'?",
        id="unknown-rabbitmq-key",
    ),
    pytest.param(
        trigger(CRON + ", dead_letter: {kafka: {topc: x}}"), "triggers[0].dead_letter.kafka.topc: ",
        "did you mean 'topic'?", id="unknown-dead-letter-key",
    ),
    # --- missing required keys -----------------------------------------------------
    pytest.param(
        HEAD + "triggers:\n  - {function: f, " + CRON + "}\n", "triggers[0].name: ",
        "required key is missing", id="missing-trigger-name",
    ),
    pytest.param(
        HEAD + "triggers:\n  - {name: t, " + CRON + "}\n", "triggers[0].function: ",
        "required key is missing", id="missing-trigger-function",
    ),
    pytest.param(
        cron("time_zone: UTC"), "triggers[0].cron.schedule: ", "required key is missing",
        id="missing-cron-schedule",
    ),
    pytest.param(
        trigger("kafka: {bootstrap_servers: 'a:1', topics: [t]}"), "triggers[0].kafka.group_id: ",
        "required key is missing", id="missing-kafka-group-id",
    ),
    pytest.param(
        trigger("rabbitmq: {url: 'amqp://h/'}"), "triggers[0].rabbitmq.queue: ",
        "required key is missing", id="missing-rabbitmq-queue",
    ),
    pytest.param(
        function("kubernetes: {namespace: jobs}"), "functions.f.kubernetes.service: ",
        "required key is missing", id="missing-kubernetes-service",
    ),
    pytest.param(
        "defaults: {dead_letter: {file: {fsync: true}}}\n", "defaults.dead_letter.file.path: ",
        "required key is missing", id="missing-file-sink-path",
    ),
    pytest.param(
        kafka("security_protocol: SASL_PLAINTEXT, sasl: {username: u}"),
        "triggers[0].kafka.sasl.password: ", "required key is missing", id="missing-sasl-password",
    ),
    # --- wrong types ---------------------------------------------------------------
    pytest.param(
        "functions: [f]\n", "functions: ", "expected a mapping, got a list",
        id="functions-not-mapping",
    ),
    pytest.param(
        HEAD + "triggers: {t: 1}\n", "triggers: ", "expected a list, got a mapping",
        id="triggers-not-list",
    ),
    pytest.param(
        HEAD + "triggers:\n", "triggers: ", "expected a list, got nothing (null)",
        id="triggers-null",
    ),
    pytest.param(
        HEAD + "triggers: [orders]\n", "triggers[0]: ", "expected a mapping, got 'orders'",
        id="trigger-not-mapping",
    ),
    pytest.param(
        function("url: 'http://a/', max_concurrency: lots"), "functions.f.max_concurrency: ",
        "expected a whole number, got 'lots'", id="int-not-number",
    ),
    pytest.param(
        trigger(CRON + ", concurrency: 2.5"), "triggers[0].concurrency: ",
        "expected a whole number, got 2.5", id="int-fractional",
    ),
    pytest.param(
        "defaults: {concurrency: .nan}\n", "defaults.concurrency: ",
        "expected a finite number, got nan", id="int-nan",
    ),
    pytest.param(
        cron('schedule: "* * * * *", suspend: maybe'), "triggers[0].cron.suspend: ",
        "expected true or false, got 'maybe'", id="bool-not-bool",
    ),
    pytest.param(
        cron("schedule: 5"), "triggers[0].cron.schedule: ", "expected a string, got 5",
        id="string-not-string",
    ),
    pytest.param(
        "defaults: {retry: {retryable_statuses: 500}}\n", "defaults.retry.retryable_statuses: ",
        "expected a list, got 500", id="list-not-list",
    ),
    pytest.param(
        function("kubernetes: {service: s, port: [80]}"), "functions.f.kubernetes.port: ",
        "expected a whole number or a string, got a list", id="union-port",
    ),
    pytest.param(
        function("url: 'http://a/', headers: {1: x}"), "functions.f.headers.1: ",
        "keys must be strings, got 1", id="header-key-not-string",
    ),
    pytest.param(
        trigger(CRON + ", dead_letter: /tmp/x"), "triggers[0].dead_letter: ",
        "expected a mapping, got '/tmp/x'", id="dead-letter-not-mapping",
    ),
    # --- durations -----------------------------------------------------------------
    pytest.param(
        "defaults: {timeout: abc}\n", "defaults.timeout: ", "invalid duration 'abc'",
        id="duration-garbage",
    ),
    pytest.param(
        function("url: 'http://a/', timeout: 5x"), "functions.f.timeout: ",
        "use a number with a unit ms, s, m, h or d", id="duration-bad-unit",
    ),
    pytest.param(
        trigger(CRON + ", timeout: -5s"), "triggers[0].timeout: ", "negative",
        id="duration-negative-with-unit",
    ),
    pytest.param(
        "defaults: {retry: {initial_backoff: -1}}\n", "defaults.retry.initial_backoff: ",
        "negative", id="duration-negative-number",
    ),
    pytest.param(
        "defaults: {timeout: 0}\n", "defaults.timeout: ", "must be longer than 0s",
        id="timeout-zero",
    ),
    pytest.param(
        "defaults: {timeout: true}\n", "defaults.timeout: ", "expected a duration like '30s'",
        id="duration-bool",
    ),
    pytest.param(
        cron('schedule: "* * * * *", starting_deadline: 1y'),
        "triggers[0].cron.starting_deadline: ", "invalid duration '1y'",
        id="duration-unknown-unit-y",
    ),
    pytest.param(
        "defaults: {retry: {max_backoff: ''}}\n", "defaults.retry.max_backoff: ",
        "empty duration", id="duration-empty",
    ),
    # --- retry ---------------------------------------------------------------------
    pytest.param(
        "defaults: {retry: {max_attempts: 0}}\n", "defaults.retry.max_attempts: ",
        "must be at least 1, got 0", id="retry-max-attempts-zero",
    ),
    pytest.param(
        trigger(CRON + ", retry: {multiplier: 0.5}"), "triggers[0].retry.multiplier: ",
        "must be at least 1.0, got 0.5", id="retry-multiplier-below-one",
    ),
    pytest.param(
        "defaults: {retry: {retryable_statuses: [200, 429]}}\n",
        "defaults.retry.retryable_statuses: ", "must be 4xx or 5xx, got [200]",
        id="retry-status-2xx",
    ),
    pytest.param(
        "defaults: {retry: {retryable_statuses: [600]}}\n", "defaults.retry.retryable_statuses: ",
        "must be 4xx or 5xx, got [600]", id="retry-status-600",
    ),
    # --- sources ---------------------------------------------------------------------
    pytest.param(
        trigger(CRON + ", " + RABBIT), "triggers[0]: ",
        "needs exactly one source of 'kafka', 'rabbitmq', 'cron'; found rabbitmq, cron",
        id="two-sources",
    ),
    pytest.param(
        trigger("concurrency: 2"), "triggers[0]: ", "needs exactly one source", id="no-source",
    ),
    pytest.param(
        trigger(CRON + ", concurrency: 0"), "triggers[0].concurrency: ",
        "must be at least 1, got 0", id="concurrency-zero",
    ),
    pytest.param(
        "defaults: {concurrency: -3}\n", "defaults.concurrency: ", "must be at least 1, got -3",
        id="defaults-concurrency-negative",
    ),
    # --- trigger names -------------------------------------------------------------
    pytest.param(
        HEAD + "triggers:\n  - {name: Orders, function: f, " + CRON + "}\n", "triggers[0].name: ",
        "must be lower case, got 'Orders' (try 'orders')", id="name-uppercase",
    ),
    pytest.param(
        HEAD + "triggers:\n  - {name: my_job, function: f, " + CRON + "}\n", "triggers[0].name: ",
        "may contain only lower-case letters, digits and '-'; found '_'", id="name-underscore",
    ),
    pytest.param(
        HEAD + "triggers:\n  - {name: " + "a" * 64 + ", function: f, " + CRON + "}\n",
        "triggers[0].name: ", "must be at most 63 characters, got 64", id="name-too-long",
    ),
    pytest.param(
        HEAD + "triggers:\n  - {name: -job, function: f, " + CRON + "}\n", "triggers[0].name: ",
        "must start and end with a letter or digit", id="name-leading-dash",
    ),
    pytest.param(
        HEAD + "triggers:\n  - {name: '', function: f, " + CRON + "}\n", "triggers[0].name: ",
        "must not be empty", id="name-empty",
    ),
    pytest.param(
        HEAD + "triggers:\n  - {name: a, function: f, " + CRON + "}\n"
        "  - {name: b, function: f, " + CRON + "}\n  - {name: a, function: f, " + CRON + "}\n",
        "triggers[2].name: ", "duplicate trigger name 'a' (also triggers[0])",
        id="name-duplicate",
    ),
    # --- functions ------------------------------------------------------------------
    pytest.param(
        HEAD + "triggers:\n  - {name: t, function: nope, " + CRON + "}\n",
        "triggers[0].function: ", "unknown function 'nope' (known: f)", id="unknown-function",
    ),
    pytest.param(
        function("url: 'http://a/', urls: ['http://b/']"), "functions.f: ",
        "needs exactly one target of 'url', 'urls', 'kubernetes'; found url, urls",
        id="function-url-and-urls",
    ),
    pytest.param(
        function("max_concurrency: 3"), "functions.f: ", "needs exactly one target", id="no-target",
    ),
    pytest.param(
        function("url: 'ftp://files/'"), "functions.f.url: ",
        "expected an http:// or https:// URL", id="url-not-http",
    ),
    pytest.param(
        function("urls: ['http://a/', 'b:80']"), "functions.f.urls[1]: ",
        "expected an http:// or https:// URL", id="urls-item-not-http",
    ),
    pytest.param(
        function("urls: []"), "functions.f.urls: ", "must not be empty", id="urls-empty",
    ),
    pytest.param(
        function("url: 'http://a/', max_concurrency: 0"), "functions.f.max_concurrency: ",
        "must be at least 1, got 0", id="max-concurrency-zero",
    ),
    pytest.param(
        function("url: 'http://a/', concurrency: {adaptive: {min: 8, max: 4}}"),
        "functions.f.concurrency.adaptive.min: ", "must be at most max (4), got 8",
        id="adaptive-min-above-max",
    ),
    pytest.param(
        function("url: 'http://a/', max_concurrency: 16, concurrency: {adaptive: {max: 64}}"),
        "functions.f.concurrency.adaptive.max: ", "must be at most max_concurrency (16), got 64",
        id="adaptive-max-above-quota",
    ),
    pytest.param(
        function("url: 'http://a/', concurrency: {adaptive: {min: 0, max: 4}}"),
        "functions.f.concurrency.adaptive.min: ", "must be at least 1, got 0",
        id="adaptive-min-zero",
    ),
    pytest.param(
        function("url: 'http://a/', concurrency: {adaptive: {min: 2}}"),
        "functions.f.concurrency.adaptive.max: ", "required", id="adaptive-without-max",
    ),
    pytest.param(
        function("url: 'http://a/', overflow: {url: fallback}"), "functions.f.overflow.url: ",
        "expected an http:// or https:// URL", id="overflow-url-not-http",
    ),
    pytest.param(
        function("url: 'http://a/', headers: {ce-id: x}"), "functions.f.headers.ce-id: ",
        "set by the bridge", id="static-header-reserved-ce",
    ),
    pytest.param(
        function("url: 'http://a/', headers: {Content-Type: text/plain}"),
        "functions.f.headers.Content-Type: ", "set by the bridge", id="static-header-content-type",
    ),
    pytest.param(
        function('url: "http://a/", headers: {X-Token: "a\\r\\nX-Evil: 1"}'),
        "functions.f.headers.X-Token: ", "control characters", id="static-header-crlf",
    ),
    pytest.param(
        function("url: 'http://a/', headers: {'bad name': x}"), "functions.f.headers.bad name: ",
        "not a valid HTTP header name", id="static-header-bad-name",
    ),
    # --- cron ------------------------------------------------------------------------
    pytest.param(
        schedule("60 * * * *"), "triggers[0].cron.schedule: ",
        "field 'minute': value 60 out of range 0-59", id="cron-minute-range",
    ),
    pytest.param(
        schedule("0 24 * * *"), "triggers[0].cron.schedule: ",
        "field 'hour': value 24 out of range 0-23", id="cron-hour-range",
    ),
    pytest.param(
        schedule("0 0 0 * *"), "triggers[0].cron.schedule: ",
        "field 'day-of-month': value 0 out of range 1-31", id="cron-dom-range",
    ),
    pytest.param(
        schedule("0 0 * 13 *"), "triggers[0].cron.schedule: ",
        "field 'month': value 13 out of range 1-12", id="cron-month-range",
    ),
    pytest.param(
        schedule("0 0 * * 8"), "triggers[0].cron.schedule: ",
        "field 'day-of-week': value 8 out of range 0-7", id="cron-dow-range",
    ),
    pytest.param(
        schedule("*/0 * * * *"), "triggers[0].cron.schedule: ",
        "field 'minute': step must be at least 1", id="cron-step-zero",
    ),
    pytest.param(
        schedule("*/x * * * *"), "triggers[0].cron.schedule: ",
        "field 'minute': invalid step 'x'", id="cron-step-not-number",
    ),
    pytest.param(
        schedule("0 0 * FOO *"), "triggers[0].cron.schedule: ",
        "field 'month': unknown name 'FOO'", id="cron-unknown-month-name",
    ),
    pytest.param(
        schedule("0 0 * * FUN"), "triggers[0].cron.schedule: ",
        "field 'day-of-week': unknown name 'FUN'", id="cron-unknown-day-name",
    ),
    pytest.param(
        schedule("0 0 * *"), "triggers[0].cron.schedule: ", "expected 5 or 6 fields, got 4",
        id="cron-4-fields",
    ),
    pytest.param(
        schedule("0 0 0 * * * 2026"), "triggers[0].cron.schedule: ",
        "expected 5 or 6 fields, got 7", id="cron-7-fields",
    ),
    pytest.param(
        schedule("0 5-1 * * *"), "triggers[0].cron.schedule: ", "descending", id="cron-descending",
    ),
    pytest.param(
        schedule("@fortnightly"), "triggers[0].cron.schedule: ", "unknown macro '@fortnightly'",
        id="cron-unknown-macro",
    ),
    pytest.param(
        schedule("@every 500ms"), "triggers[0].cron.schedule: ", "shorter than 1s",
        id="cron-every-too-short",
    ),
    pytest.param(
        schedule(""), "triggers[0].cron.schedule: ", "schedule expression is empty",
        id="cron-empty",
    ),
    pytest.param(
        schedule("0 0 30 2 *"), "triggers[0].cron.schedule: ", "schedule never fires",
        id="cron-never-fires",
    ),
    pytest.param(
        schedule("CRON_TZ=UTC 0 0 * * *"), "triggers[0].cron.schedule: ",
        "time zone prefixes are not supported", id="cron-tz-prefix",
    ),
    pytest.param(
        cron('schedule: "0 2 * * *", time_zone: Mars/Olympus'), "triggers[0].cron.time_zone: ",
        "unknown time zone 'Mars/Olympus'", id="cron-unknown-time-zone",
    ),
    pytest.param(
        cron('schedule: "0 2 * * *", time_zone: ""'), "triggers[0].cron.time_zone: ",
        "time zone must not be empty", id="cron-empty-time-zone",
    ),
    pytest.param(
        cron('schedule: "0 2 * * *", concurrency_policy: forbid'),
        "triggers[0].cron.concurrency_policy: ",
        "must be 'Allow', 'Forbid', 'Replace', 'BufferOne' or 'BufferAll'; got 'forbid'",
        id="cron-bad-concurrency-policy",
    ),
    pytest.param(
        cron('schedule: "* * * * *", jitter: 90s'), "triggers[0].cron.jitter: ",
        "90s is not shorter than the schedule's interval (60s between ticks of '* * * * *')",
        id="cron-jitter-above-interval",
    ),
    pytest.param(
        cron('schedule: "0 0 1,2 * *", jitter: 2d'), "triggers[0].cron.jitter: ",
        "(86400s between ticks", id="cron-jitter-above-shortest-gap",
    ),
    pytest.param(
        cron('schedule: "@hourly", exclude: ["2026-12-25", "2026-02-30"]'),
        "triggers[0].cron.exclude[1]: ", "not a date (YYYY-MM-DD): '2026-02-30'",
        id="cron-exclude-bad-date",
    ),
    pytest.param(
        cron('schedule: "@hourly", exclude: ["@every 1h"]'),
        "triggers[0].cron.exclude[0]: ", "@every names no days", id="cron-exclude-every",
    ),
    pytest.param(
        cron('schedule: "@hourly", exclude: ["* * 32 * *"]'),
        "triggers[0].cron.exclude[0]: ", "neither a date (YYYY-MM-DD) nor a cron expression",
        id="cron-exclude-bad-cron",
    ),
    pytest.param(
        cron('schedule: "@hourly", start_at: "2026-05-01T00:00:00Z", '
             'end_at: "2026-04-01T00:00:00Z"'),
        "triggers[0].cron.end_at: ", "must be after start_at", id="cron-end-before-start",
    ),
    pytest.param(
        cron('schedule: "@hourly", concurrency_policy: BufferAll, max_buffered: 0'),
        "triggers[0].cron.max_buffered: ", "must be at least 1", id="cron-max-buffered-zero",
    ),
    # --- kafka -----------------------------------------------------------------------
    pytest.param(
        kafka("initial_offset: newest"), "triggers[0].kafka.initial_offset: ",
        "must be 'earliest' or 'latest'; got 'newest'", id="kafka-bad-initial-offset",
    ),
    pytest.param(
        kafka("ordering: random"), "triggers[0].kafka.ordering: ",
        "must be 'key', 'partition' or 'none'; got 'random'", id="kafka-bad-ordering",
    ),
    pytest.param(
        kafka("security_protocol: SASL_SSL"), "triggers[0].kafka: ",
        "security_protocol SASL_SSL needs a 'sasl' section", id="kafka-sasl-without-sasl",
    ),
    pytest.param(
        trigger("kafka: {bootstrap_servers: 'a:1', topics: [], group_id: g}"),
        "triggers[0].kafka.topics: ", "must not be empty", id="kafka-no-topics",
    ),
    # --- rabbitmq --------------------------------------------------------------------
    pytest.param(
        trigger("rabbitmq: {url: 'http://127.0.0.1:5672/', queue: q}"),
        "triggers[0].rabbitmq.url: ", "expected an amqp:// or amqps:// URL", id="rabbitmq-bad-url",
    ),
    pytest.param(
        rabbit("prefetch: 0"), "triggers[0].rabbitmq.prefetch: ", "must be at least 1, got 0",
        id="rabbitmq-prefetch-zero",
    ),
    pytest.param(
        rabbit("ordering: partition"), "triggers[0].rabbitmq.ordering: ",
        "must be 'none' or 'key'; got 'partition'", id="rabbitmq-bad-ordering",
    ),
    # --- batch -----------------------------------------------------------------------
    pytest.param(
        trigger(CRON + ", batch: {max_events: 10}"), "triggers[0].batch: ",
        "cron triggers fire one event per tick and cannot batch", id="batch-on-cron",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_events: 10}, reply: {kafka: {topic: answers}}"),
        "triggers[0].batch: ", "'batch' and 'reply' cannot be combined", id="batch-with-reply",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_wait: 1s}"), "triggers[0].batch.max_events: ",
        "required", id="batch-without-max-events",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_events: 0}"), "triggers[0].batch.max_events: ",
        "must be at least 1, got 0", id="batch-max-events-zero",
    ),
    pytest.param(
        trigger(RABBIT + ", batch: {max_events: 100}"), "triggers[0].batch.max_events: ",
        "100 is more than rabbitmq.prefetch (50)", id="batch-larger-than-prefetch",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_events: 1001}"), "triggers[0].batch.max_events: ",
        "1001 is more than kafka.max_unsettled (1000)", id="batch-larger-than-max-unsettled",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_events: 10, max_bytes: 10}"),
        "triggers[0].batch.max_bytes: ", "must be at least 1024, got 10",
        id="batch-max-bytes-too-small",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_events: 10, max_wait: -5s}"),
        "triggers[0].batch.max_wait: ", "non-negative", id="batch-max-wait-negative",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_events: 10, max_wait: 10m}"),
        "triggers[0].batch.max_wait: ", "at most 300", id="batch-max-wait-too-long",
    ),
    pytest.param(
        trigger(KAFKA + ", batch: {max_events: 10, size: 3}"), "triggers[0].batch.size: ",
        "unknown key (allowed here: max_events, max_bytes, max_wait)", id="batch-unknown-key",
    ),
    # --- dead letters ----------------------------------------------------------------
    pytest.param(
        trigger(CRON + ", dead_letter: {file: {path: a}, kafka: {topic: b}}"),
        "triggers[0].dead_letter: ",
        "needs exactly one dead-letter sink of 'file', 'kafka', 'rabbitmq'; found file, kafka",
        id="dead-letter-two-sinks",
    ),
    pytest.param(
        "defaults: {dead_letter: {}}\n", "defaults.dead_letter: ", "found none",
        id="dead-letter-no-sink",
    ),
    pytest.param(
        rabbit("", dead_letter="{rabbitmq: {exchange: dlx, reject: true}}"),
        "triggers[0].dead_letter.rabbitmq: ", "set either 'exchange' (publish) or 'reject: true'",
        id="rabbit-dead-letter-exchange-and-reject",
    ),
    pytest.param(
        NO_DLQ_HEAD + "triggers:\n  - {name: t, function: f, " + CRON + "}\n",
        "triggers[0].dead_letter: ", "no dead-letter sink: set one here or in defaults.dead_letter",
        id="no-dead-letter-anywhere",
    ),
    pytest.param(
        "defaults: {dead_letter: {file: {path: ''}}}\n", "defaults.dead_letter.file.path: ",
        "must not be empty", id="dead-letter-empty-path",
    ),
    pytest.param(
        trigger(CRON + ", dead_letter: {kafka: {topic: 'orders dlq', bootstrap_servers: k:9092}}"),
        "triggers[0].dead_letter.kafka.topic: ", "'orders dlq' is not a Kafka topic name",
        id="dead-letter-bad-topic-name",
    ),
    pytest.param(
        trigger(CRON + ", dead_letter: {kafka: {topic: t, bootstrap_servers: k:9092, "
                       "max_request_size: 10}}"),
        "triggers[0].dead_letter.kafka.max_request_size: ", "must be at least 1024, got 10",
        id="dead-letter-kafka-max-request-size",
    ),
    pytest.param(
        trigger(CRON + ", dead_letter: {file: {path: a}, fallback: {}}"),
        "triggers[0].dead_letter.fallback: ", "needs exactly one dead-letter sink",
        id="fallback-no-sink",
    ),
    pytest.param(
        trigger(CRON + ", dead_letter: {file: {path: a}, fallback: {file: {path: b}, "
                       "fallback: {file: {path: c}}}}"),
        "triggers[0].dead_letter.fallback.fallback: ", "unknown key",
        id="fallback-of-a-fallback",
    ),
    pytest.param(
        rabbit("", dead_letter="{rabbitmq: {reject: true}, fallback: {file: {path: a}}}"),
        "triggers[0].dead_letter.fallback: ", "never refuses a dead letter",
        id="fallback-behind-reject",
    ),
    pytest.param(
        rabbit("", dead_letter="{file: {path: a}, fallback: {rabbitmq: {reject: true}}}"),
        "triggers[0].dead_letter.fallback.rabbitmq.reject: ",
        "a fallback must store the dead letter itself", id="fallback-reject",
    ),
    pytest.param(
        trigger(CRON + ", dead_letter: {file: {path: a}, fallback: {rabbitmq: {exchange: x}}}"),
        "triggers[0].dead_letter.fallback.rabbitmq.url: ", "required: trigger 't' is a cron",
        id="fallback-rabbitmq-without-url",
    ),
    pytest.param(
        "defaults: {dead_letter: {file: {path: a}, fallback: {kafka: {topic: x}}}}\n"
        "functions: {f: {url: 'http://127.0.0.1:8080/'}}\n"
        "triggers:\n  - {name: t, function: f, " + RABBIT + "}\n",
        "defaults.dead_letter.fallback.kafka.bootstrap_servers: ",
        "required for a rabbitmq trigger", id="fallback-kafka-inherited-without-servers",
    ),
    # --- environment -------------------------------------------------------------------
    pytest.param(
        function("url: '${NOPE}'"), "functions.f.url: ", "environment variable NOPE is not set",
        id="env-missing",
    ),
    pytest.param(
        cron('schedule: "0 2 * * *", time_zone: "${NOPE_TZ}"'), "triggers[0].cron.time_zone: ",
        "environment variable NOPE_TZ is not set", id="env-missing-in-trigger-list",
    ),
]


Validate = Callable[[str], tuple[int, list[str], str, Path]]


@pytest.fixture
def run_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Validate:
    """Write the text to a file and run ``validate`` on it: (exit code, stderr lines, stdout)."""
    for name in ("NOPE", "NOPE_TZ", "BRIDGE_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    def run(text: str) -> tuple[int, list[str], str, Path]:
        path = tmp_path / "bridge.yaml"
        path.write_text(text, encoding="utf-8")
        code = main(["validate", "--config", str(path)])
        out, err = capsys.readouterr()
        return code, err.splitlines(), out, path

    return run


@pytest.mark.parametrize(("text", "path", "message"), CATALOGUE)
def test_mistake_is_reported_with_its_path(
    run_validate: Validate, text: str, path: str, message: str
) -> None:
    code, lines, out, file = run_validate(text)
    assert code == 2, (out, lines)
    assert out == ""
    assert not any("Traceback" in line for line in lines)
    prefix = path.format(file=file)
    matching = [
        line for line in lines
        if (line.startswith(prefix) if prefix else not line.startswith(("triggers", "functions")))
        and message in line
    ]
    assert matching, f"no line starting with {prefix!r} containing {message!r} in {lines}"


def test_catalogue_is_large_and_distinct() -> None:
    ids = [case.id for case in CATALOGUE]
    texts = [case.values[0] for case in CATALOGUE]
    assert len(ids) >= 40
    assert len(set(ids)) == len(ids)
    assert len(set(texts)) == len(texts)


def test_every_problem_gets_its_own_line(run_validate: Validate) -> None:
    text = HEAD + (
        "triggers:\n"
        "  - {name: Bad, function: f, cron: {schedule: '61 * * * *'}}\n"
        "  - {name: ok, function: missing, " + CRON + "}\n"
    )
    code, lines, _, _ = run_validate(text)
    assert code == 2
    assert lines[0].startswith("triggers[0].name: must be lower case")
    assert lines[1].startswith("triggers[0].cron.schedule: field 'minute': value 61")
    assert len(lines) == 2  # cross-references run only once the structure is valid
    text = HEAD + "triggers:\n  - {name: a, function: x, " + CRON + "}\n" \
        "  - {name: a, function: f, " + CRON + "}\n"
    code, lines, _, _ = run_validate(text)
    assert code == 2
    assert lines == [
        "triggers[0].function: unknown function 'x' (known: f)",
        "triggers[1].name: duplicate trigger name 'a' (also triggers[0])",
    ]


def test_unreadable_files(
    run_validate: Validate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["validate", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"cannot read {missing}: No such file or directory\n"
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"functions: \xff\xfe\n")
    assert main(["validate", "--config", str(binary)]) == 2
    assert capsys.readouterr().err == f"{binary} is not UTF-8 text\n"
    assert main(["validate", "--config", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_no_config_named(run_validate: Validate, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 2
    assert capsys.readouterr().err == "no config file: pass --config FILE or set BRIDGE_CONFIG\n"


# --- valid configs ---------------------------------------------------------------------


def test_valid_config_prints_one_line_summary(run_validate: Validate) -> None:
    text = HEAD + (
        "triggers:\n"
        f"  - {{name: a, function: f, {CRON}}}\n"
        f"  - {{name: b, function: f, {KAFKA}}}\n"
        f"  - {{name: c, function: f, {RABBIT}}}\n"
        f"  - {{name: d, function: f, {CRON}}}\n"
    )
    code, lines, out, path = run_validate(text)
    assert (code, lines) == (0, [])
    assert out == f"ok: {path}: 4 trigger(s) (1 kafka, 1 rabbitmq, 2 cron), 1 function(s)\n"


def test_env_default_is_used_when_unset(run_validate: Validate) -> None:
    text = function("url: '${NOPE:-http://fallback:8080/}'") + "triggers: []\n"
    code, lines, out, _ = run_validate(text)
    assert (code, lines) == (0, [])
    assert out.endswith(": 0 trigger(s), 1 function(s)\n")


def test_env_value_is_used_when_set(
    run_validate: Validate, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FN_URL", "gopher://x/")
    code, lines, _, _ = run_validate(function("url: '${FN_URL:-http://ok/}'"))
    # the variable is set, so its (bad) value wins over the default and is validated
    assert code == 2
    assert lines == ["functions.f.url: expected an http:// or https:// URL"]


def test_thousand_triggers_validate_through_the_cli(run_validate: Validate) -> None:
    text = big_config(1000)
    started = time.perf_counter()
    code, lines, out, _ = run_validate(text)
    elapsed = time.perf_counter() - started
    assert (code, lines) == (0, [])
    assert "1000 trigger(s) (1000 cron), 10 function(s)" in out
    print(f"\nvalidate of 1000 triggers in-process: {elapsed:.3f}s")


def big_config(triggers: int, functions: int = 10) -> str:
    lines = ["defaults:", "  dead_letter: {file: {path: /tmp/dl.jsonl}}", "functions:"]
    lines += [f"  fn-{i}: {{url: 'http://127.0.0.1:{8000 + i}/'}}" for i in range(functions)]
    lines.append("triggers:")
    for i in range(triggers):
        lines.append(
            f"  - {{name: job-{i}, function: fn-{i % functions}, "
            f"cron: {{schedule: '{i % 60} */2 * * MON-FRI', time_zone: Europe/Berlin}}}}"
        )
    return "\n".join(lines) + "\n"


# --- mutation: whatever is written, the answer is a ConfigError with readable lines ------

_ODD_VALUES: list[Any] = [
    None, [], {}, 0, -1, 10**30, 1.5, float("nan"), float("inf"), True, "", "x", "${",
    "\x00", "é", [1, "a"], {"a": 1}, {1: 2}, "-1s", "1e400", "@every 1ns", [None], {"file": None},
]
_JARGON = ("Input should", "Value error", "Field required", "validation error", "pydantic")


def test_mutated_configs_give_readable_errors_never_exceptions() -> None:
    base = yaml.safe_load((EXAMPLES / "kitchen-sink.yaml").read_text())
    env = {"API_TOKEN": "t", "KAFKA_PASSWORD": "p", "TLS_KEY_PASSWORD": "k"}
    paths = [p for p in _paths(base) if p]
    rng = random.Random(20260308)
    rejected = 0
    for _ in range(150):
        tree = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            _set(tree, rng.choice(paths), copy.deepcopy(rng.choice(_ODD_VALUES)))
        text = yaml.safe_dump(tree, allow_unicode=True)
        try:
            parse_config(text, env=env)
        except ConfigError as err:
            rejected += 1
            for problem in err.problems:
                line = str(problem)
                assert "\n" not in line
                assert not any(word in line for word in _JARGON), line
    assert rejected > 100


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list
    ) else ()
    for key, value in items:
        yield from _paths(value, (*prefix, key))


def _set(tree: Any, path: tuple[Any, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        if not isinstance(node, dict | list):
            return
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return
    if isinstance(node, dict) or (
        isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node)
    ):
        node[path[-1]] = value
