"""What one invocation attempt came to, and the rule that classifies it (DESIGN section 4).

2xx is delivered. Timeouts, connection errors and the configurable retryable statuses
(408, 409, 425, 429 and every 5xx by default) are retried, honouring ``Retry-After``.
Any other status is permanent and goes to the dead-letter sink at once.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

DEFAULT_RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 409, 425, 429})

#: delta-seconds (RFC 9110 section 10.2.3): ASCII digits only. ``str.isdigit`` and
#: ``int``/``float`` also take other Unicode digits (``²``, U+0661 Arabic-Indic one),
#: which are not HTTP.
_DELTA_SECONDS = re.compile(r"[0-9]+\Z", re.ASCII)


class OutcomeKind(enum.Enum):
    """What an attempt came to: delivered, worth retrying, or failed for good (also the
    ``outcome`` label of ``bridge_invocations_total``)."""

    DELIVERED = "delivered"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class Answer:
    """What a 2xx answer said, kept only for a trigger with a ``reply``: its body (at most
    the reply's ``max_size``; ``truncated`` when it was longer) and the headers a reply
    needs (``Content-Type`` and ``ce-*``, names lower-case, values as sent)."""

    body: bytes
    headers: Mapping[str, str]
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: OutcomeKind
    #: Short machine-friendly reason: ``ok``, ``http_503``, ``timeout``, ``connect_error``...
    reason: str
    status: int | None = None
    detail: str = ""
    retry_after: float | None = None
    duration: float = 0.0
    #: True when the overflow pool served this attempt.
    overflow: bool = False
    #: A delivered attempt's answer, when the trigger publishes replies (else None).
    answer: Answer | None = None

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.DELIVERED


def classify_status(
    status: int, retryable: Collection[int] = DEFAULT_RETRYABLE_STATUSES
) -> OutcomeKind:
    """Classify an HTTP status. ``retryable`` lists non-5xx codes that are retried."""
    if 200 <= status < 300:
        return OutcomeKind.DELIVERED
    if status >= 500 or status in retryable:
        return OutcomeKind.RETRYABLE
    return OutcomeKind.PERMANENT


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (ASCII digits) or an
    HTTP date. Anything else is ignored (None: the normal backoff applies); this never
    raises, so a malformed header cannot change what the answer's status means."""
    if not value:
        return None
    value = value.strip(" \t")
    if _DELTA_SECONDS.match(value):
        return float(value)
    if not value.isascii():
        return None
    try:
        when = parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
