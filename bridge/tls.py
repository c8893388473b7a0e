"""Client TLS for broker connections (Kafka and RabbitMQ), from mounted files.

One recipe for both: the system's default client context (certificate and host name
checked), the ``ca_file`` as trust anchor when given, the client certificate and key
(``cert_file``, ``key_file``, ``key_password``) when given, and ``verify: false``
turning both checks off (test set-ups only).
"""

from __future__ import annotations

import ssl

from bridge.config import TlsConfig


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The client context ``tls`` describes; ``OSError`` (a file that cannot be read,
    named in the message) or ``ssl.SSLError`` (one that is not a certificate or key)."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file:
        password = tls.key_password.get_secret_value() if tls.key_password else None
        context.load_cert_chain(tls.cert_file, tls.key_file, password=password)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
