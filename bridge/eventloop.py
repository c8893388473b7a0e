"""The event loop ``trigger-bridge run`` runs on.

uvloop (libuv; the ``speedups`` extra) when it is importable and ``BRIDGE_UVLOOP`` is
not ``false``; the standard asyncio loop otherwise. The daemon does nothing that only
one of them supports: uvloop runs the same tasks, timers, signal handlers and sockets,
with less Python per I/O event (figures: docs/benchmarks.md, *Cheap wins*).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def loop_factory(use_uvloop: bool) -> tuple[LoopFactory, str]:
    """The factory of the loop to run on and its name (``uvloop`` or ``asyncio``)."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"


def run(main: Coroutine[Any, Any, T], use_uvloop: bool) -> T:
    """``asyncio.run(main)`` on the loop :func:`loop_factory` chooses."""
    factory, _ = loop_factory(use_uvloop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The name of the running loop, for the start-up log line."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
