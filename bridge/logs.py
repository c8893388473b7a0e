"""structlog set-up: one JSON line per significant event (or console output for humans).

Configured once by the CLI from :class:`~bridge.settings.Settings`; library code only
asks for a logger. Secrets never reach a log line: URLs pass through :func:`redact_url`
and config secrets are ``SecretStr``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
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


def redact(text: str, secrets: Iterable[str], shortest_fragment: int = 4) -> str:
    """``text`` without any of ``secrets``, nor any fragment of one at least
    ``shortest_fragment`` characters long (a shorter secret only as a whole).

    For messages that may quote a setting (a client library's error about a URL it could
    not use): a part of a password is as bad as all of it. Longest fragments go first.
    """
    for secret in sorted(secrets, key=len, reverse=True):
        for length in range(len(secret), min(shortest_fragment, len(secret)) - 1, -1):
            for start in range(len(secret) - length + 1):
                fragment = secret[start : start + length]
                if fragment in text:
                    text = text.replace(fragment, "***")
    return text


def redact_url(url: str) -> str:
    """``amqp://user:secret@host/`` -> ``amqp://user:***@host/``."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", url)
