"""The daemon's event loop choice: uvloop when importable and not turned off."""

from __future__ import annotations

import asyncio
import sys

import pytest

from bridge import eventloop
from bridge.settings import Settings


def test_the_setting_is_on_by_default_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BRIDGE_UVLOOP", raising=False)
    assert Settings().uvloop is True
    monkeypatch.setenv("BRIDGE_UVLOOP", "false")
    assert Settings().uvloop is False


def test_turned_off_is_the_standard_loop() -> None:
    factory, name = eventloop.loop_factory(False)
    assert (factory, name) == (asyncio.new_event_loop, "asyncio")


def test_not_installed_is_the_standard_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert eventloop.loop_factory(True)[1] == "asyncio"


def test_installed_is_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    factory, name = eventloop.loop_factory(True)
    assert (factory, name) == (uvloop.new_event_loop, "uvloop")


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_run_runs_the_coroutine_on_the_chosen_loop(use_uvloop: bool) -> None:
    if use_uvloop:
        pytest.importorskip("uvloop")

    async def main() -> str:
        await asyncio.sleep(0)
        return eventloop.loop_name()

    assert eventloop.run(main(), use_uvloop) == ("uvloop" if use_uvloop else "asyncio")
