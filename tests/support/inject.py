"""Faults injected into the real daemon process, for the failures no input can cause.

``preload(workdir, code)`` writes ``code`` as a ``sitecustomize`` module (Python runs it
at interpreter start-up, before ``python -m bridge`` imports anything) into a fresh
folder of ``workdir`` and returns the environment that puts that folder first on the
daemon's ``sys.path``. Pass it as ``BridgeProcess(..., env=preload(...))``. The daemon
is otherwise the one users run: the same CLI, brokers, sockets and function.

Uses: a bug inside the dispatcher's path (an invoker that raises), a codec library
that cannot be imported (``sys.modules['cramjam'] = None``).
"""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path


def preload(workdir: Path, code: str) -> dict[str, str]:
    folder = workdir / f"preload-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(code))
    path = [str(folder), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path)}


#: Makes ``Invoker.invoke`` raise ``RuntimeError("injected bug")`` for an event whose
#: body is ``b"boom"`` (or, with ``TB_INJECT_FIRST=N``, for the first N invocations).
RAISING_INVOKER = """
import os
from bridge import invoker

_original = invoker.Invoker.invoke
_left = [int(os.environ.get("TB_INJECT_FIRST", "0"))]

async def invoke(self, target, event, *args, **kwargs):
    if event.data == b"boom" or _left[0] > 0:
        _left[0] -= 1
        raise RuntimeError("injected bug")
    return await _original(self, target, event, *args, **kwargs)

invoker.Invoker.invoke = invoke
"""

#: With RAISING_INVOKER: the dead-letter record of an ``internal_error`` cannot be built
#: either (a second bug), so the dispatcher can only hand the event back to its source.
UNRECORDABLE_INTERNAL_ERROR = """
from bridge import deadletter

_original_of = deadletter.DeadLetter.of.__func__

def of(cls, event, function, outcome, attempts):
    if outcome.reason == "internal_error":
        raise TypeError("injected bug in the dead-letter record")
    return _original_of(cls, event, function, outcome, attempts)

deadletter.DeadLetter.of = classmethod(of)
"""
