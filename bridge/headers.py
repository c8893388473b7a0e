"""HTTP header names: what a valid one is, and which ones the bridge keeps for itself.

One rule for every place that decides whether a header may be sent: a function's
configured ``headers`` (rejected at load, :mod:`bridge.config`), a message's own
headers passed through to the function (dropped when not allowed,
:mod:`bridge.invoker`), and Kafka record headers offered as ``kafka-header-<name>``
(:mod:`connectors.kafka_mapping`, and :mod:`bridge.redrive.letters` rebuilding them
from a dead letter).

- A header name is an RFC 9110 *token*: ``!#$%&'*+-.^_`|~``, ASCII letters and digits.
- :data:`TRANSPORT_HEADERS` are written by the HTTP layer for the request itself, and
  :data:`BRIDGE_HEADERS` by the bridge on every attempt; neither, nor any ``ce-*`` name
  (the CloudEvents binding), can be set by configuration or by a message.
"""

from __future__ import annotations

import re

#: RFC 9110 section 5.6.2 token: a valid field name.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")

#: Describe the request's own framing and body; the bridge sets them.
TRANSPORT_HEADERS = frozenset(
    {"content-type", "content-length", "host", "transfer-encoding", "connection"}
)
#: Set last by the bridge on every attempt.
BRIDGE_HEADERS = frozenset({"bridge-trigger", "bridge-attempt"})
#: CloudEvents binary mode: context attributes travel as ``ce-<name>`` headers.
CE_PREFIX = "ce-"
#: A message's own headers reach the function as HTTP headers with these prefixes.
KAFKA_HEADER_PREFIX = "kafka-header-"
AMQP_HEADER_PREFIX = "amqp-header-"


def is_header_name(name: str) -> bool:
    """Whether ``name`` is a valid HTTP header name (a token)."""
    return _TOKEN.match(name) is not None


def is_reserved(name: str) -> bool:
    """Whether the bridge writes this header (any case) itself: transport, bridge-*, ce-*."""
    lower = name.lower()
    return lower in TRANSPORT_HEADERS or lower in BRIDGE_HEADERS or lower.startswith(CE_PREFIX)
