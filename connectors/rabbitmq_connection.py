"""Connections to RabbitMQ: TLS, a reconnect pause that grows, and secret-free errors.

The connector consumes over a *robust* connection (``aio_pika.connect_robust``): it
reconnects by itself after a broker restart or a dropped connection and restores the
channel, qos, declarations and the consumer; :class:`_BackoffConnection` makes its
fixed retry pause grow with the outage. The publish dead-letter sink uses a plain
connection and reopens it on its next write. Whatever fails is explained in one line
without the password (:func:`explain`), raised as :class:`RabbitSetupError`.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq
import aiormq.exceptions as amqp_errors
from aio_pika.abc import AbstractConnection
from aio_pika.robust_channel import RobustChannel
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from bridge.config import TlsConfig
from bridge.errors import describe
from bridge.logs import redact_url
from bridge.tls import ssl_context

_CONNECT_TIMEOUT = 10.0
#: Bound of closing a connection (``close_quietly(connection.close, timeout=CLOSE_TIMEOUT)``).
CLOSE_TIMEOUT = 10.0
_RECONNECT_INITIAL = 1.0
_RECONNECT_MAX = 30.0


class RabbitSetupError(Exception):
    """Could not connect, declare, consume or publish; the message says why (no secrets).

    ``refused`` is True when the broker said no for good (login, virtual host, missing
    entity, access, precondition) rather than being unreachable: see :func:`refusal`.
    """

    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


def refusal(err: BaseException) -> bool:
    """True when the broker refused (no retry helps until someone changes something)."""
    return isinstance(err, amqp_errors.ProbableAuthenticationError
                      | amqp_errors.AuthenticationError | amqp_errors.ConnectionNotAllowed
                      | amqp_errors.ChannelNotFoundEntity | amqp_errors.ChannelAccessRefused
                      | amqp_errors.ChannelPreconditionFailed) or (
        isinstance(err, amqp_errors.InvalidFrameError) and "Connection.Close" in str(err)
    )


def vhost_of(url: str) -> str:
    """The virtual host an AMQP URL names (as aiormq reads it)."""
    path = URL(url).path
    return "/" if path in ("", "/") else path[1:].replace("%2F", "/")


class ConsumerChannel(RobustChannel):
    """A robust channel that hands the broker's ``basic.cancel`` of one of its consumers
    to ``on_cancelled`` (the consumer tag) when set, instead of aio-pika's recovery.

    The channel stays open after such a cancel, so nothing else tells the owner its
    consumer is gone. aio-pika (>= 10.2) calls ``_on_consumer_cancel`` for each one.
    """

    on_cancelled: Callable[[str], None] | None = None

    def _on_consumer_cancel(self, frame: aiormq.spec.Basic.Cancel) -> None:
        if self.on_cancelled is None:
            super()._on_consumer_cancel(frame)
        else:
            self.on_cancelled(str(frame.consumer_tag))


class _BackoffConnection(RobustConnection):
    """``connect_robust``'s connection with a pause between reconnect attempts that grows.

    aio-pika retries every ``reconnect_interval``; here that pause is half the time the
    connection has been down, kept within [1 s, 30 s]: attempts about 1, 2, 3, 4.5,
    6.75 ... s after the loss (x1.5 each time), back to 1 s once connected again.
    """

    CHANNEL_CLASS = ConsumerChannel
    _initial = _RECONNECT_INITIAL
    _lost_at: float | None = None

    @property
    def reconnect_interval(self) -> float:
        if self._lost_at is None:
            return self._initial
        down = time.monotonic() - self._lost_at
        return min(_RECONNECT_MAX, max(self._initial, down / 2))

    @reconnect_interval.setter
    def reconnect_interval(self, value: float) -> None:
        self._initial = float(value)

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        if self._lost_at is None:
            self._lost_at = time.monotonic()
        await super()._on_connection_close(closing)

    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._lost_at = None


async def connect(
    url: str, tls: TlsConfig | None, name: str, robust: bool = True
) -> AbstractConnection:
    """Open a connection (robust: reconnects by itself later); RabbitSetupError if not."""
    options: dict[str, Any] = {
        "timeout": _CONNECT_TIMEOUT,
        "ssl_context": None if tls is None else ssl_context(tls),
        "client_properties": {"connection_name": f"trigger-bridge {name}"},
    }
    try:
        if robust:
            connection: AbstractConnection = await aio_pika.connect_robust(
                url, connection_class=_BackoffConnection,
                reconnect_interval=_RECONNECT_INITIAL, **options,
            )
        else:
            connection = await aio_pika.connect(url, **options)
    except Exception as err:
        raise RabbitSetupError(explain(err, url), refused=refusal(err)) from None
    return connection


def explain(err: BaseException, url: str, queue: str | None = None) -> str:
    """A one-line, secret-free reason for a failed connect / declare / consume."""
    where = redact_url(url)
    vhost = vhost_of(url)
    text = scrub(str(err) or type(err).__name__, url)
    if isinstance(err, amqp_errors.ProbableAuthenticationError | amqp_errors.AuthenticationError):
        reason = f"RabbitMQ at {where} refused the login: wrong user name or password ({text})"
    elif isinstance(err, amqp_errors.ConnectionNotAllowed) or (
        isinstance(err, amqp_errors.InvalidFrameError) and "Connection.Close" in text
    ):
        reason = (f"RabbitMQ at {where} refused virtual host {vhost!r}: it does not exist or "
                  f"the user may not use it")
    elif isinstance(err, amqp_errors.ChannelNotFoundEntity):
        reason = (f"{_reply(text)} at {where}: create it, or add a 'declare' section to the "
                  f"trigger" if queue else f"{_reply(text)} at {where}")
    elif isinstance(err, amqp_errors.ChannelPreconditionFailed):
        reason = f"the broker rejected the declared settings at {where}: {_reply(text)}"
    elif isinstance(err, amqp_errors.ChannelAccessRefused):
        reason = f"access refused at {where}: {_reply(text)}"
    elif isinstance(err, ssl.SSLError | ssl.CertificateError) or "[SSL" in text:
        reason = f"TLS handshake with {where} failed: {text}"
    elif isinstance(err, OSError | TimeoutError | ConnectionError):
        reason = f"cannot connect to RabbitMQ at {where}: {scrub(describe(err, None), url)}"
    else:
        reason = f"RabbitMQ error at {where}: {scrub(describe(err, None), url)}"
    return reason[:500]


def _reply(text: str) -> str:
    """``... "NOT_FOUND - no queue 'x' in vhost '/'"`` -> ``no queue 'x' in vhost '/'``."""
    match = re.search(r'"?[A-Z_]+ - ([^"]*)"?', text)
    return match.group(1) if match else text


def scrub(text: str, url: str) -> str:
    """``text`` without the URL's password."""
    password = URL(url).password
    return text.replace(password, "***") if password else text
