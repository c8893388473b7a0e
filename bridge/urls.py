"""URLs and server addresses from the config, checked by the rules the clients apply.

Every address the daemon connects to is checked when the config is validated
(``trigger-bridge validate`` and every load or reload), so that ``run`` never meets one
it cannot use:

- RabbitMQ ``url`` (source and dead-letter sink): ``amqp://`` or ``amqps://``;
- function ``url``, ``urls`` and ``overflow.url``: ``http://`` or ``https://``;
- Kafka ``bootstrap_servers``: ``host:port`` entries;
- a function's ``kubernetes`` target (service, namespace, port, path) and the API
  server URL of a kubeconfig.

The split is RFC 3986's, as yarl (aiohttp, aio-pika) makes it:
``scheme://user:password@host:port/path?query``. The authority ends at the first ``/``,
``?`` or ``#``, so those characters, ``@``, ``:`` and ``%`` inside a user name or password
must be percent-encoded, as the AMQP URI spec and RFC 3986 require; anything else beyond
printable ASCII too. A password written raw would otherwise be cut apart: part of it read
as a port or a path, the rest sent to the wrong host, and pieces of it printed in errors.

A message names what is wrong and how to write it, **never the value** (nor any piece of
it): a URL may hold a password, and the message ends up in ``validate`` output, logs and
Trigger statuses.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from urllib.parse import parse_qsl, unquote_to_bytes

from yarl import URL

#: How to write the characters that cannot appear as they are in a user name or password.
ENCODE_HINT = (
    "percent-encode them: '/' as %2F, '?' as %3F, '#' as %23, '@' as %40, ':' as %3A, "
    "'%' as %25, a space as %20, non-ASCII as UTF-8 bytes ('é' as %C3%A9)"
)
#: RFC 3986 userinfo without ':' (which separates the user name from the password).
_USERINFO_PART = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*\Z")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_HOST = re.compile(r"[A-Za-z0-9\-._~]+\Z")
_IPV6 = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::(.*))?\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")
#: aio-pika / aiormq URL query options read as numbers (a bad value silently reads 0).
_AMQP_NUMBERS = ("heartbeat", "timeout", "interleave", "happy_eyeballs_delay",
                 "reconnect_interval")
_AMQP_AUTH = ("plain", "external")


def _printable(text: str) -> bool:
    return all(0x21 <= ord(c) <= 0x7E for c in text)


def url_problem(text: str, schemes: Collection[str]) -> str | None:
    """Why ``text`` is not a URL of one of ``schemes`` the daemon can use, or None."""
    expected = " or ".join(f"{s}://" for s in schemes)
    match = _SCHEME.match(text)
    if match is None or match[1] not in schemes:
        return f"expected an {expected} URL"
    if not _printable(text):
        return ("may contain only printable ASCII characters without spaces; "
                f"in a user name or password, {ENCODE_HINT}")
    if _BAD_ESCAPE.search(text):
        return ("has a '%' that does not start a percent-escape (two hex digits); "
                "write a literal '%' as %25")
    scheme, rest = match[1], text[match.end():]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    problem = _tail_problem(tail, scheme)
    if problem:
        return problem
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        problem = _userinfo_problem(userinfo, http=scheme.startswith("http"))
        if problem:
            return problem
    # an '@' only past the host part: a '?' in a password ended the host part early
    problem = _hostport_problem(hostport, cut_short=not at and "@" in tail)
    if problem:
        return problem
    try:
        URL(text)
    except ValueError:  # nothing above missed: the same split as the client's
        return "is not a valid URL"
    return None


def _tail_problem(tail: str, scheme: str) -> str | None:
    path, _, query = tail.partition("?")
    if "@" in path:
        return ("has an '@' after the host part: a '/', '?' or '#' in a user name or "
                f"password ends the host part early; {ENCODE_HINT}")
    if "#" in tail:
        return ("has a '#': a fragment is never sent; in a user name, password or path, "
                f"{ENCODE_HINT}")
    if scheme.startswith("amqp"):
        return _amqp_query_problem(query)
    return None


def _amqp_query_problem(query: str) -> str | None:
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _AMQP_NUMBERS and not re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
            return f"query option {key!r} must be a number"
        if key == "auth" and value.lower() not in _AMQP_AUTH:
            return "query option 'auth' must be 'plain' or 'external'"
    return None


def _userinfo_problem(userinfo: str, *, http: bool) -> str | None:
    user, _, password = userinfo.partition(":")
    if not (_USERINFO_PART.match(user) and _USERINFO_PART.match(password)):
        return ("the user name or password contains characters that must be encoded; "
                f"{ENCODE_HINT}")
    try:
        user_text = unquote_to_bytes(user).decode("utf-8")
        password_text = unquote_to_bytes(password).decode("utf-8")
    except UnicodeDecodeError:
        return ("a percent-escape in the user name or password does not decode to UTF-8 "
                "text; encode characters as their UTF-8 bytes ('é' as %C3%A9)")
    if not user_text and password_text:
        return "has a password but no user name"
    if http:
        if ":" in user_text:
            return "the user name of an http URL cannot contain ':' (HTTP Basic authentication)"
        try:
            (user_text + password_text).encode("latin-1")
        except UnicodeEncodeError:
            return ("HTTP Basic authentication sends the user name and password as Latin-1: "
                    "they cannot hold characters beyond it")
    return None


def _hostport_problem(hostport: str, *, cut_short: bool) -> str | None:
    hint = (f" (a '/', '?' or '#' in a user name or password ends the host part early; "
            f"{ENCODE_HINT})") if cut_short else ""
    if not hostport:
        return "has no host"
    v6 = _IPV6.match(hostport)
    if v6:
        port: str | None = v6[2]
    else:
        host, sep, port_text = hostport.partition(":")
        port = port_text if sep else None
        if not host:
            return "has no host"
        if not _HOST.match(host):
            return "the host must be a DNS name or an IP address" + hint
    if port is not None and not (_PORT.match(port) and 1 <= int(port) <= 65535):
        return "the port must be a number from 1 to 65535" + hint
    return None


def server_problem(text: str) -> str | None:
    """Why ``text`` is not a Kafka ``host:port`` the client can use, or None."""
    if not _printable(text):
        return "may contain only printable ASCII characters without spaces"
    if "://" in text:
        return ("expected host:port without a scheme (the protocol is set by "
                "security_protocol)")
    v6 = _IPV6.match(text)
    if v6:
        port: str | None = v6[2]
    else:
        host, sep, port_text = text.partition(":")
        port = port_text if sep else None
        if not _HOST.match(host) or ":" in port_text:
            return ("expected host:port (a DNS name or IPv4 address; an IPv6 address in "
                    "brackets: [::1]:9092)")
    if port is not None and not (_PORT.match(port) and 1 <= int(port) <= 65535):
        return "the port must be a number from 1 to 65535"
    return None


def path_problem(text: str) -> str | None:
    """Why ``text`` cannot be the path (and query) of an http URL, or None."""
    if not _printable(text):
        return ("may contain only printable ASCII characters without spaces; percent-encode "
                "anything else as UTF-8 bytes (a space as %20)")
    if _BAD_ESCAPE.search(text):
        return ("has a '%' that does not start a percent-escape (two hex digits); "
                "write a literal '%' as %25")
    if "#" in text:
        return "has a '#': a fragment is never sent; percent-encode it as %23"
    return None


def password_forms(text: str) -> list[str]:
    """A URL's password as written (percent-encoded) and decoded; [] without one."""
    match = _SCHEME.match(text)
    if match is None:
        return []
    rest = text[match.end():]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    userinfo, at, _ = rest[:end].rpartition("@")
    written = userinfo.partition(":")[2] if at else ""
    if not written:
        return []
    decoded = unquote_to_bytes(written).decode("utf-8", "replace")
    return list(dict.fromkeys((written, decoded)))
