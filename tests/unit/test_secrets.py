"""Secrets kept out of messages: the Redactor, what counts as a config secret, and
config problems that never echo one (the daemon-level proof is
tests/integration/test_header_secrets.py)."""

from __future__ import annotations

import random
import string
from typing import Annotated

import pytest
from pydantic import SecretStr

from bridge.config import AmqpUrl, ConfigError, parse_config, secrets_of
from bridge.config.fields import SECRET, is_secret
from bridge.logs import NO_SECRETS, Redactor, redact


def pieces(secret: str, size: int = 4) -> set[str]:
    size = min(size, len(secret))
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        ("Bearer abcdefgh refused", {"Bearer abcdefgh"}, "*** refused"),
        ("key=zz-abcdefgh-zz", {"abcdefgh"}, "key=zz-***-zz"),
        ("a piece 'cdef' and 'abc'", {"abcdefgh"}, "a piece '***' and 'abc'"),
        ("two: abcd, then efgh", {"abcdefgh"}, "two: ***, then ***"),
        ("adjacent abcdXabcd", {"abcd", "dXab"}, "adjacent ***"),
        ("short xy here", {"xy"}, "short *** here"),
        ("nothing here", {"abcdefgh"}, "nothing here"),
        ("", {"abcdefgh"}, ""),
    ],
)
def test_redactor_removes_each_secret_and_every_piece_of_one(
    text: str, secrets: set[str], expected: str
) -> None:
    assert Redactor(secrets)(text) == expected
    assert redact(text, secrets) == expected


def test_random_texts_keep_no_piece_and_everything_else() -> None:
    rng = random.Random(7)
    alphabet = string.ascii_letters[:6] + " :/@"
    for _ in range(500):
        secrets = {"".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(2)}
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 60)))
        out = Redactor(secrets)(text)
        kept = out.split("***")
        for secret in secrets:
            assert not any(p in part for part in kept for p in pieces(secret)), (text, out)
        # What is kept appears in the text in order: nothing else was taken out.
        position = 0
        for part in kept:
            found = text.find(part, position)
            assert found >= 0, (text, out)
            position = found + len(part)


def test_a_long_token_in_a_long_text() -> None:
    token = "".join(random.Random(1).choices(string.ascii_letters + string.digits, k=2000))
    text = ("x" * 30_000) + token[500:900] + ("y" * 30_000) + token
    assert Redactor([token])(text) == "x" * 30_000 + "***" + "y" * 30_000 + "***"


def test_no_secrets_gives_the_text_back() -> None:
    text = "anything at all"
    assert NO_SECRETS(text) is text
    assert not NO_SECRETS
    assert Redactor(["", "abcd"])


CONFIG = """
defaults:
  dead_letter: {file: {path: /tmp/dl.jsonl}}
functions:
  fn:
    url: "http://bob:pw-1234@127.0.0.1:9/"
    headers: {Authorization: "Bearer t0k3n-value", X-Team: payments}
triggers:
  - name: q
    function: fn
    rabbitmq: {url: "amqp://bob:rabbit-pw@h/", queue: "plain-queue-name"}
"""


def test_secrets_of_holds_header_values_url_passwords_and_secret_strings() -> None:
    config = parse_config(CONFIG)
    function, trigger = config.functions["fn"], config.triggers[0]
    assert secrets_of(function) == {"Bearer t0k3n-value", "payments", "pw-1234"}
    assert secrets_of(trigger) == {"rabbit-pw"}
    assert "plain-queue-name" not in secrets_of(config)


def test_is_secret() -> None:
    assert is_secret(Annotated[dict[str, str], SECRET])
    assert is_secret(Annotated[dict[str, str], SECRET] | None)
    assert is_secret(SecretStr | None)
    assert is_secret(AmqpUrl)
    assert not is_secret(Annotated[dict[str, str], "other"])
    assert not is_secret(int | str)


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        ("headers: {Authorization: 918273645546}",
         "functions.fn.headers.Authorization: expected a string, got a number (not shown: "
         "a secret)"),
        ("headers: {Authorization: [a, b]}",
         "functions.fn.headers.Authorization: expected a string, got a list"),
        ("max_concurrency: lots",  # not a secret: the value is shown as before
         "functions.fn.max_concurrency: expected a whole number, got 'lots'"),
    ],
)
def test_a_problem_with_a_secret_never_shows_its_value(entry: str, line: str) -> None:
    text = f"""
defaults:
  dead_letter: {{file: {{path: /tmp/dl.jsonl}}}}
functions:
  fn: {{url: "http://127.0.0.1:9/", {entry}}}
triggers:
  - {{name: a, function: fn, cron: {{schedule: "@hourly"}}}}
"""
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    assert [str(p) for p in caught.value.problems] == [line]
