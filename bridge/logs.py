"""structlog set-up: one JSON line per significant event (or console output for humans).

Configured once by the CLI from :class:`~bridge.settings.Settings`; library code only
asks for a logger. Secrets never reach a log line: URLs pass through :func:`redact_url`,
config secrets are ``SecretStr`` or marked secret (``bridge.config.secrets_of`` finds them
all), and a text that may quote one (an error, a function's answer) passes through a
:class:`Redactor` of those secrets.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter
from typing import Any

import structlog

Logger = structlog.stdlib.BoundLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure(log_format: str = "json", level: str = "info") -> None:
    numeric = _LEVELS[level.lower()]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    # Libraries (aiokafka, aio-pika, apscheduler) log through stdlib logging.
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s", force=True)


def get_logger(**context: Any) -> Logger:
    return structlog.get_logger("trigger-bridge").bind(**context)  # type: ignore[no-any-return]


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/\s]*)(:[^@/\s]*)?@", re.I)


class Redactor:
    """Takes secrets out of texts: each secret, and any fragment of one at least
    ``shortest_fragment`` characters long (a shorter secret only as a whole), becomes
    ``***``.

    For messages that may quote a setting (a client library's error about a URL it could
    not use, a function's error body echoing its token): a part of a password is as bad
    as all of it. Built once per set of secrets; a call costs time linear in the text
    (every window of the text is looked up among the secrets' fragments of that length:
    any longer fragment is made of such windows), so a long token costs nothing more.
    """

    __slots__ = ("_fragments",)

    def __init__(self, secrets: Iterable[str] = (), shortest_fragment: int = 4) -> None:
        fragments: dict[int, set[str]] = {}
        for secret in secrets:
            size = min(shortest_fragment, len(secret))
            if size:
                fragments.setdefault(size, set()).update(
                    secret[i : i + size] for i in range(len(secret) - size + 1)
                )
        #: window length -> the secrets' fragments of that length
        self._fragments = {size: frozenset(found) for size, found in fragments.items()}

    def __bool__(self) -> bool:
        return bool(self._fragments)

    def __call__(self, text: str) -> str:
        hidden = bytearray(len(text))
        for size, fragments in self._fragments.items():
            for start in range(len(text) - size + 1):
                if text[start : start + size] in fragments:
                    hidden[start : start + size] = b"\x01" * size
        if not any(hidden):
            return text
        return "".join(
            "***" if hide else "".join(char for _, char in run)
            for hide, run in groupby(zip(hidden, text, strict=True), key=itemgetter(0))
        )


#: A redactor without secrets: gives every text back unchanged.
NO_SECRETS = Redactor()


def redact(text: str, secrets: Iterable[str], shortest_fragment: int = 4) -> str:
    """``text`` without any of ``secrets`` nor any fragment of one (see :class:`Redactor`)."""
    return Redactor(secrets, shortest_fragment)(text)


def redact_url(url: str) -> str:
    """``amqp://user:secret@host/`` -> ``amqp://user:***@host/``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
