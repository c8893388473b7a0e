"""Live configuration: the config file reloaded on change or SIGHUP, plus other sources.

The running configuration is *composed*: the config file's functions and triggers,
plus those of every other :class:`TriggerSource` (the Trigger custom resources of
:mod:`bridge.kube.triggers`). Each change -- a new file, a Trigger added, changed or
deleted -- recomposes it and hands it to :meth:`Runtime.apply`, which restarts only
the triggers whose resolved settings changed. (:mod:`bridge.daemon` puts the pieces
together: the composer applies to the runtime, the reloader is one of its services.)

The file is checked every ``BRIDGE_RELOAD_INTERVAL`` (its resolved path and stat:
a mounted ConfigMap is swapped by re-pointing its ``..data`` symlink, which changes
the resolved path) and at once on SIGHUP. A file that does not validate is logged,
one line per problem with its path, and the running configuration stays. A trigger
the new configuration adds or changes that cannot be built is logged and left out
(``failed`` in the ``config reloaded`` line); every other trigger is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from bridge.config import (
    BridgeConfig,
    ConfigError,
    FunctionConfig,
    TriggerConfig,
    load_config,
    secrets_of,
)
from bridge.errors import describe
from bridge.logs import Logger, redact


class TriggerSource(Protocol):
    def contribute(
        self, base: BridgeConfig
    ) -> tuple[dict[str, FunctionConfig], list[TriggerConfig]]:
        """The functions and triggers this source adds next to ``base`` (the file's)."""

    def applied(self, failures: Mapping[str, str]) -> None:
        """After each apply: the triggers that could not be built (name -> reason)."""


class Composer:
    """Holds the file's config and the other sources; applies their union."""

    def __init__(self, apply: Callable[[BridgeConfig], Awaitable[Mapping[str, str]]],
                 file: BridgeConfig, log: Logger) -> None:
        self._apply = apply
        self.file = file
        self._sources: list[TriggerSource] = []
        self._lock = asyncio.Lock()
        self._log = log

    def add_source(self, source: TriggerSource) -> None:
        self._sources.append(source)

    def compose(self) -> BridgeConfig:
        functions = dict(self.file.functions)
        triggers = list(self.file.triggers)
        for source in self._sources:
            extra_functions, extra_triggers = source.contribute(self.file)
            functions.update(extra_functions)
            triggers.extend(extra_triggers)
        return BridgeConfig(defaults=self.file.defaults, functions=functions, triggers=triggers)

    async def set_file(self, config: BridgeConfig) -> Mapping[str, str]:
        self.file = config
        return await self.refresh()

    async def refresh(self) -> Mapping[str, str]:
        """Recompose and apply (serialised: one apply at a time); the triggers that could
        not be built (name -> reason) go to every source and back to the caller."""
        async with self._lock:
            failures = await self._apply(self.compose())
            for source in self._sources:
                source.applied(failures)
            return failures


def file_signature(path: str) -> tuple[str, int, int, int] | None:
    """What changes when the file does: resolved path (ConfigMap symlink swap) and stat."""
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
    except OSError:
        return None
    return real, stat.st_mtime_ns, stat.st_size, stat.st_ino


class ConfigReloader:
    """Reloads ``path`` when it changes (polled) or on SIGHUP, while :meth:`run` runs."""

    def __init__(self, path: str, composer: Composer, interval: float, log: Logger) -> None:
        self._path = path
        self._composer = composer
        self._interval = interval
        self._log = log.bind(config=path)
        self._signature = file_signature(path)
        self._wake = asyncio.Event()

    async def run(self) -> None:
        """Check the file every ``interval`` and at once on SIGHUP, until cancelled."""
        loop = asyncio.get_running_loop()
        sighup = False
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            sighup = True
        try:
            while True:
                await self._next_change()
        finally:
            if sighup:
                loop.remove_signal_handler(signal.SIGHUP)

    def _on_sighup(self) -> None:
        self._log.info("SIGHUP: reloading the config file")
        self._signature = None
        self._wake.set()

    async def _next_change(self) -> None:
        """Wait for the interval or a SIGHUP; reload if the file changed."""
        timeout = self._interval if self._interval > 0 else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        self._wake.clear()
        signature = file_signature(self._path)
        if signature is None or signature == self._signature:
            return
        self._signature = signature
        try:
            await self.reload()
        except Exception as err:
            error = redact(describe(err, None), secrets_of(self._composer.file))
            self._log.error("config reload failed", error=error[:400])

    async def reload(self) -> bool:
        """Load and apply the file; False (and the old config kept) when it is invalid."""
        try:
            config = await asyncio.to_thread(load_config, self._path)
        except ConfigError as err:
            for problem in err.problems:
                self._log.error("config reload rejected; the running config stays",
                                problem=str(problem))
            return False
        if config == self._composer.file:
            self._log.info("config file unchanged")
            return True
        before = {t.name: t for t in self._composer.file.triggers}
        after = {t.name: t for t in config.triggers}
        failures = await self._composer.set_file(config)
        self._log.info(
            "config reloaded",
            added=sorted(after.keys() - before.keys()),
            removed=sorted(before.keys() - after.keys()),
            changed=sorted(n for n in after.keys() & before.keys() if after[n] != before[n]),
            failed=sorted(n for n in failures if n in after),
        )
        return True
