"""bridge.urls: the URL rules, case by case, and messages that never quote the value."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from yarl import URL

from bridge.logs import redact, redact_url
from bridge.urls import password_forms, path_problem, server_problem, url_problem

AMQP = ("amqp", "amqps")
HTTP = ("http", "https")
PASSWORDS = ["Sup3r/Secr@t:pw#1", "p@ss", "a:b", "x#y", "%zz", "wh?t/n0w", "pässwört",
             "tw0 w0rds", "50%off", "[v6]", "q\"uote", "back\\slash"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("schemes", [AMQP, HTTP], ids=["amqp", "http"])
def test_a_raw_password_is_refused_and_its_encoded_form_is_read_back(
    password: str, schemes: tuple[str, ...]
) -> None:
    host = f"{schemes[0]}://bob:{{}}@127.0.0.1:5672/"
    problem = url_problem(host.format(password), schemes)
    assert problem is not None
    assert "%" in problem  # says how to encode
    assert not any(password[i:i + 4] in problem for i in range(len(password) - 3))
    encoded = host.format(quote(password, safe=""))
    assert url_problem(encoded, schemes) is None
    assert URL(encoded).password == password  # what the client will send
    assert password_forms(encoded) == [quote(password, safe=""), password]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:5672/", "expected an amqp:// or amqps:// URL"),
        ("AMQP://h/", "expected an amqp:// or amqps:// URL"),
        ("amqp:/h/", "expected an amqp:// or amqps:// URL"),
        ("amqp://h:99999/", "the port must be a number from 1 to 65535"),
        ("amqp://h:0/", "the port must be a number from 1 to 65535"),
        ("amqp://h:/", "the port must be a number from 1 to 65535"),
        ("amqp:///", "has no host"),
        ("amqp://bob:pw@/", "has no host"),
        ("amqp://:5672/", "has no host"),
        ("amqp://:pw@h/", "has a password but no user name"),
        ("amqp://h/v#x", "has a '#'"),
        ("amqp://h/a@b", "has an '@' after the host part"),
        ("amqp://h/?heartbeat=often", "query option 'heartbeat' must be a number"),
        ("amqp://h/?auth=kerberos", "query option 'auth' must be 'plain' or 'external'"),
        ("amqp://bob:%ff@h/", "does not decode to UTF-8"),
        ("amqp://h_!/", "the host must be a DNS name or an IP address"),
        ("amqp://bob:q?x@h/", "ends the host part early"),
    ],
)
def test_amqp_problems(url: str, expected: str) -> None:
    problem = url_problem(url, AMQP)
    assert problem is not None
    assert expected in problem, problem


@pytest.mark.parametrize(
    "url",
    ["amqp://h", "amqp://h/", "amqps://bob:s3cret@rabbit.svc:5671/%2F",
     "amqp://bob:Sup3r%2FSecr%40t%3Apw%231@[::1]:5672/vhost?heartbeat=30&auth=plain",
     "amqp://u@h/", "amqp://bob:a%3Ab@h.example.com/"],
)
def test_valid_amqp_urls(url: str) -> None:
    assert url_problem(url, AMQP) is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://files/", "expected an http:// or https:// URL"),
        ("b:80", "expected an http:// or https:// URL"),
        ("http://a%3Ab:pw@h/", "the user name of an http URL cannot contain ':'"),
        ("http://bob:%E2%82%AC@h/", "HTTP Basic authentication sends the user name"),
        ("http://h/fn#frag", "has a '#'"),
    ],
)
def test_http_problems(url: str, expected: str) -> None:
    problem = url_problem(url, HTTP)
    assert problem is not None
    assert problem.startswith(expected), problem


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8080/", "https://fn.example.com/api/x?code=a@b==",
     "http://bob:p%C3%A4ss@h/", "http://[fd00::1]:80/"],
)
def test_valid_http_urls(url: str) -> None:
    assert url_problem(url, HTTP) is None


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ("kafka:9092", None), ("kafka", None), ("[::1]:9092", None), ("10.0.0.1:19092", None),
        ("kafka:abc", "the port must be"), ("kafka:0", "the port must be"),
        ("PLAINTEXT://k:9092", "expected host:port without a scheme"),
        ("bob:pw@kafka:9092", "expected host:port"), ("::1", "expected host:port"),
        ("k afka:9092", "may contain only printable ASCII"),
    ],
)
def test_kafka_servers(server: str, expected: str | None) -> None:
    problem = server_problem(server)
    assert (problem is None) if expected is None else (problem or "").startswith(expected)


@pytest.mark.parametrize(
    ("path", "ok"),
    [("/", True), ("/fn?x=1", True), ("api/v1", True), ("/a b", False), ("/%zz", False),
     ("/x#y", False), ("/ä", False)],
)
def test_kubernetes_paths(path: str, ok: bool) -> None:
    assert (path_problem(path) is None) == ok


def test_redact_removes_every_piece_of_a_secret() -> None:
    secrets = {"Sup3r/Secr@t:pw#1", "Sup3r%2FSecr%40t%3Apw%231"}
    text = "ValueError: invalid literal for int() with base 10: 'Sup3r'; also 'pw#1' and 'Sup'"
    assert redact(text, secrets) == (
        "ValueError: invalid literal for int() with base 10: '***'; also '***' and 'Sup'"
    )
    assert redact("short xy here", {"xy"}) == "short *** here"  # whole, when short
    assert redact_url("at amqp://bob:s3cret@h:5672/ now") == "at amqp://bob:***@h:5672/ now"
