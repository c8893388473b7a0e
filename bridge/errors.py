"""One way to put an unexpected error into a log line or a reason: ``describe``.

Every place that reports an exception it does not expect (a failed stop step, a source
that died, a dead letter's ``internal_error`` detail, a close that failed) words it the
same way: the exception's type name, then its message, on one line and cut at a bound,
so one huge message cannot flood a log or a dead-letter header. Errors the code does
expect (a refused connection, a bad config value) are worded where they are understood.
"""

from __future__ import annotations

#: The default bound of :func:`describe` (a log field or a ``bridge-error-detail``).
LIMIT = 300


def describe(err: BaseException, limit: int | None = LIMIT) -> str:
    """``TypeName: message`` (just ``TypeName`` when the message is empty), at most
    ``limit`` characters (None: uncut).

    Secrets are the caller's business: a text that may hold one is cleaned *before* it
    is cut (``describe(err, None)``, clean, then cut), so no prefix of a secret is left.
    """
    text = str(err)
    return f"{type(err).__name__}: {text}"[:limit] if text else type(err).__name__
