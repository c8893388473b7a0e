"""Supervised background loops: named tasks that are restarted, never lost.

Every background loop of the daemon (source pumps, the Lease loop, reflectors, the
Trigger status writer, the config reloader) runs under one :class:`Supervisor`::

    supervisor = Supervisor(log, metrics)
    task = supervisor.spawn("pump:orders", pump.run)     # restarted until cancelled
    ...
    task.cancel()                                        # stop one loop (and wait for it)
    await supervisor.stop(timeout)                       # stop all, bounded

The contract of ``run``: it loops until cancelled and keeps its own expected failures
to itself (a source that cannot connect retries and logs that itself). What reaches the
supervisor is a *crash*, a bug: an exception out of ``run``, or a ``CancelledError``
nobody asked for (a library's internal cancellation leaking out). A crash is logged
with its cause and traceback (``background task crashed; restarting``), counted in
``bridge_task_crashes_total{task}`` and ``run`` is called again after a backoff (1 s
doubling to 30 s, jittered; back to 1 s after a run that lasted longer than the longest
backoff), so one bug never silently takes a loop away.

``restart`` says what happens when ``run`` *returns*. A loop (``restart=True``, the
default) is not meant to return: that is logged (``background task ended; restarting``)
and it runs again after the same backoff. ``restart=False`` is a one-shot job: a normal
return ends it, and a crash is logged and counted but not run again.

The task ``spawn`` returns is the supervising task (named ``name``): cancelling it stops
the loop, ``run`` included, whether it is running or waiting for its restart.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bridge.errors import describe
from bridge.logs import Logger
from bridge.metrics import Metrics
from bridge.retry import Backoff

#: The restart backoff: 1 s doubling to 30 s, jittered.
RESTART = Backoff(initial=1.0, maximum=30.0)


def restart_delay(crashes: int) -> float:
    """Seconds before restarting after ``crashes`` consecutive crashes (1-based)."""
    return RESTART.delay(crashes)


@dataclass(frozen=True, slots=True)
class Loop:
    """A named background loop, handed to whoever spawns it (``spawn(loop.name, loop.run)``)."""

    name: str
    run: Callable[[], Awaitable[None]]


class Supervisor:
    """Runs named background loops, restarts them after a crash, stops them all."""

    def __init__(
        self,
        log: Logger,
        metrics: Metrics,
        *,
        delay: Callable[[int], float] = restart_delay,
        healthy_after: float = RESTART.maximum,
    ) -> None:
        self._log = log
        self._metrics = metrics
        self._delay = delay
        #: A run that lasted this long resets the consecutive-crash count.
        self._healthy_after = healthy_after
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def tasks(self) -> frozenset[asyncio.Task[None]]:
        """The supervised tasks still running."""
        return frozenset(self._tasks)

    def spawn(
        self, name: str, run: Callable[[], Awaitable[None]], *, restart: bool = True
    ) -> asyncio.Task[None]:
        """Run ``run()`` as the task ``name`` under supervision (see the module docs)."""
        if self._stopped:
            raise RuntimeError(f"supervisor stopped: cannot spawn {name!r}")
        task = asyncio.create_task(self._supervise(name, run, restart), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self, timeout: float) -> None:
        """Cancel every task and wait for them, at most ``timeout`` seconds.

        A task still running after that (it swallowed its cancellation, or its cleanup
        hangs) is named in a warning and left behind: the stop never waits longer.
        """
        self._stopped = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=max(0.0, timeout))
        if pending:
            self._log.warning(
                "background tasks did not stop in time", timeout=round(timeout, 3),
                tasks=sorted(t.get_name() for t in pending),
            )

    async def _supervise(
        self, name: str, run: Callable[[], Awaitable[None]], restart: bool
    ) -> None:
        current = asyncio.current_task()
        assert current is not None
        crashes = 0
        while True:
            started = time.monotonic()
            try:
                await run()
            except asyncio.CancelledError as err:
                if current.cancelling():
                    raise  # asked for: the task is being stopped
                crash: BaseException | None = err  # leaked from inside run: a crash
            except Exception as err:
                crash = err
            else:
                crash = None
            if crash is None and not restart:
                return
            if time.monotonic() - started >= self._healthy_after:
                crashes = 0
            crashes += 1
            delay = self._delay(crashes)
            if crash is None:
                self._log.warning("background task ended; restarting", task=name,
                                  retry_in=round(delay, 3))
            else:
                self._metrics.task_crashes.labels(name).inc()
                if not restart:
                    self._log.error("background task crashed", task=name,
                                    error=describe(crash, 400), exc_info=crash)
                    return
                self._log.error("background task crashed; restarting", task=name,
                                error=describe(crash, 400), attempt=crashes,
                                retry_in=round(delay, 3), exc_info=crash)
            await asyncio.sleep(delay)
