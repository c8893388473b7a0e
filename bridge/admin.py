"""Admin HTTP server: ``/healthz``, ``/readyz``, ``/metrics`` (DESIGN section 7), and the
authenticated control endpoints under ``/control/`` (:mod:`bridge.control`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bridge.control import ControlApi
from bridge.metrics import Metrics

ReadinessProbe = Callable[[], Mapping[str, bool]]


class AdminServer:
    def __init__(
        self, metrics: Metrics, readiness: ReadinessProbe, host: str, port: int,
        control: ControlApi | None = None,
    ) -> None:
        self._metrics = metrics
        self._control = control
        self._readiness = readiness
        self._host, self._port = host, port
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> None:
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_page)
        if self._control is not None:
            self._control.routes(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        await site.start()
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        triggers = dict(self._readiness())
        ready = all(triggers.values())
        body = json.dumps({"ready": ready, "triggers": triggers}, sort_keys=True)
        return web.Response(
            text=body + "\n", status=200 if ready else 503, content_type="application/json"
        )

    async def _metrics_page(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response
