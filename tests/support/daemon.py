"""Run the real daemon as a subprocess through the CLI, as users do."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class BridgeProcess:
    """``async with BridgeProcess(config_text, tmp_path) as bridge: ...``.

    Starts ``python -m bridge run --config FILE`` with its own admin port, waits for
    ``/healthz``. ``stderr`` lines (JSON logs) are collected in ``log_lines``.
    """

    def __init__(
        self, config: str, workdir: Path, env: dict[str, str] | None = None,
        drain_timeout: str = "10s", wait_ready: bool = False,
        *, launcher: tuple[str, ...] = ("-m", "bridge"),
    ) -> None:
        """``launcher``: what follows the interpreter, before ``run --config FILE``
        (``("-c", code)`` runs the real CLI after registering a test connector)."""
        self.config_path = workdir / f"bridge-{id(self)}.yaml"
        self.config_path.write_text(config)
        self.admin_port = free_port()
        self.env = {
            **os.environ,
            "BRIDGE_ADMIN_PORT": str(self.admin_port),
            "BRIDGE_ADMIN_HOST": "127.0.0.1",
            "BRIDGE_LOG_FORMAT": "json",
            "BRIDGE_LOG_LEVEL": "info",
            "BRIDGE_DRAIN_TIMEOUT": drain_timeout,
            **(env or {}),
        }
        self.wait_ready = wait_ready
        self.launcher = launcher
        self.process: asyncio.subprocess.Process | None = None
        self.log_lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> BridgeProcess:
        try:
            await self.start()
        except BaseException:
            # Not up in time (or cancelled): never leave the daemon running. A stray one
            # keeps calling its function's port, which a later test may get.
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 5)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, *self.launcher, "run", "--config", str(self.config_path),
            env=self.env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read_logs())
        await self.wait_http("/readyz" if self.wait_ready else "/healthz")

    async def _read_logs(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            self.log_lines.append(line.decode(errors="replace").rstrip())

    def logs(self) -> list[dict[str, object]]:
        parsed = []
        for line in self.log_lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                continue
        return parsed

    async def wait_http(self, path: str, timeout: float = 30.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(
                    f"bridge exited {self.process.returncode}:\n" + "\n".join(self.log_lines[-30:])
                )
            try:
                status = await asyncio.to_thread(self.get_status, path)
                if status == 200:
                    return
            except OSError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                tail = "\n".join(self.log_lines[-30:])
                raise AssertionError(f"{path} not OK within {timeout}s:\n{tail}")
            await asyncio.sleep(0.1)

    def get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    def get_status(self, path: str) -> int:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:
            return int(err.code)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples whose labels include ``labels``."""
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if not line.startswith(name) or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            head, _, rest = series.partition("{")
            if head != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total

    async def terminate(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        await self.process.wait()
