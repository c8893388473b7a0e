"""Closing something on the way out, where a failure has nothing left to save.

:func:`close_quietly` runs a ``close()``/``stop()`` coroutine function under a time
bound; an error or the bound is logged (when given a logger) and never raised, so one
broken connection cannot stop the rest of a shutdown or a clean-up. A cancellation of
the caller still propagates. A ``CancelledError`` that the closed thing raises on its
own (aiokafka's ``stop()`` re-raises the cancellation of its pending fetch tasks when
the brokers are gone) is told apart by ``Task.cancelling()`` and swallowed like any
other error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from bridge.errors import describe
from bridge.logs import Logger


async def close_quietly(
    close: Callable[[], Awaitable[object]] | None,
    *,
    timeout: float,
    log: Logger | None = None,
    what: str = "close",
) -> None:
    """Await ``close()`` for at most ``timeout`` seconds; never raises for its troubles.

    ``None`` (nothing to close) does nothing. With ``log``, a failure is a warning
    ``"<what> failed"`` with the error.
    """
    if close is None:
        return
    try:
        async with asyncio.timeout(timeout):
            await close()
    except asyncio.CancelledError as err:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        _report(log, what, err)
    except Exception as err:  # closing anyway: report and carry on
        _report(log, what, err)


def _report(log: Logger | None, what: str, err: BaseException) -> None:
    if log is not None:
        log.warning(f"{what} failed", error=describe(err))
