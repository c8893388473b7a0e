"""Kafka connections on aiokafka: client options, TLS, why a connect failed, closing.

Shared by the source (:mod:`connectors.kafka`), the dead-letter sink
(:mod:`connectors.kafka_sink`) and the redrive (:mod:`connectors.kafka_redrive`), so
every Kafka client of the bridge connects, authenticates and reports a failure alike.
A failure is worded for the operator (unreachable, authentication, TLS handshake),
never with a secret in it.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import errors as kafka_errors

from bridge import tls
from bridge.closing import close_quietly
from bridge.config import KafkaConnection, TlsConfig
from bridge.errors import describe
from bridge.logs import Logger

#: Bound of one request to the brokers (commit, lag query; the sink's produce: x3).
REQUEST_TIMEOUT = 10.0
#: What aiokafka raises when the brokers refuse the login.
AUTH_ERRORS = (
    kafka_errors.AuthenticationFailedError,
    kafka_errors.AuthenticationMethodNotSupported,
    kafka_errors.SaslAuthenticationFailed,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
)


class KafkaSourceError(Exception):
    """A Kafka source cannot start; the message says why (no secrets in it)."""


def client_options(connection: KafkaConnection) -> dict[str, Any]:
    """aiokafka keyword arguments for a connection (servers, security, client id)."""
    options: dict[str, Any] = {
        "bootstrap_servers": list(connection.bootstrap_servers),
        "client_id": connection.client_id,
        "security_protocol": connection.security_protocol,
    }
    if connection.sasl is not None:
        options["sasl_mechanism"] = connection.sasl.mechanism
        options["sasl_plain_username"] = connection.sasl.username
        options["sasl_plain_password"] = connection.sasl.password.get_secret_value()
    if connection.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(connection.tls or TlsConfig())
    return options


def ssl_context(tls_config: TlsConfig) -> ssl.SSLContext:
    """The client TLS context (:func:`bridge.tls.ssl_context`); raises KafkaSourceError
    naming the file that cannot be loaded."""
    try:
        return tls.ssl_context(tls_config)
    except (OSError, ssl.SSLError) as err:
        raise KafkaSourceError(f"cannot load TLS files: {err}") from None


def describe_failure(err: BaseException, connection: KafkaConnection) -> str:
    """A one-line cause for a failed connect: unreachable, authentication, other."""
    servers = ",".join(connection.bootstrap_servers)
    if isinstance(err, KafkaSourceError):
        return str(err)
    if isinstance(err, AUTH_ERRORS) or (
        connection.sasl is not None and not isinstance(err, kafka_errors.KafkaConnectionError)
    ):
        mechanism = connection.sasl.mechanism if connection.sasl else connection.security_protocol
        return (
            f"authentication with Kafka brokers {servers} failed ({mechanism}): "
            f"{describe(err, None)}"
        )
    if isinstance(err, kafka_errors.KafkaConnectionError | OSError):
        return f"Kafka brokers {servers} unreachable: {err}"
    return f"cannot connect to Kafka brokers {servers}: {describe(err, None)}"


async def connect_failure(err: BaseException, connection: KafkaConnection) -> str:
    """:func:`describe_failure`, plus the TLS cause aiokafka hides behind "Unable to
    bootstrap" (it only logs it): one handshake with the first server tells it."""
    text = describe_failure(err, connection)
    if not (
        isinstance(err, kafka_errors.KafkaConnectionError)
        and connection.security_protocol.endswith("SSL")
    ):
        return text
    host, _, port = connection.bootstrap_servers[0].rpartition(":")
    try:
        context = ssl_context(connection.tls or TlsConfig())
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(host, int(port), ssl=context)
        writer.close()
    except ssl.SSLError as tls_err:
        return f"TLS handshake with {host}:{port} failed: {tls_err}"
    except (OSError, TimeoutError, ValueError, KafkaSourceError):
        return text
    return text


async def close_client(client: AIOKafkaConsumer | AIOKafkaProducer, log: Logger) -> None:
    """Stop an aiokafka client; never raises for the client's own troubles (logged).

    With the brokers gone, aiokafka's ``stop()`` re-raises the cancellation of its own
    pending fetch tasks as ``CancelledError``; that is not a cancellation of the caller,
    and :func:`~bridge.closing.close_quietly` swallows it like any other error.
    """
    await close_quietly(client.stop, timeout=REQUEST_TIMEOUT * 3, log=log,
                        what="kafka client close")
