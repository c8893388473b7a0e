"""The authenticated control endpoints on the admin port: act on a cron trigger.

``/healthz``, ``/readyz`` and ``/metrics`` stay open (they only tell); everything under
``/control/`` acts and needs ``Authorization: Bearer <token>``, the token being the
content of ``BRIDGE_CONTROL_TOKEN_FILE`` (a mounted Secret; read at each request, so a
rotated Secret applies without a restart) compared in constant time
(:func:`hmac.compare_digest`). Without that setting the endpoints answer 403 and do
nothing; a missing or wrong token is 401 and does nothing. Threat model and the
choice against a localhost-only listener: docs/operations.md (*Control endpoints*).

- ``POST /control/triggers/{name}/run-now`` -> 202 ``{trigger, event_id, time}``
- ``POST /control/triggers/{name}/backfill`` ``{"from", "to", "policy"}`` -> 202 progress
- ``GET /control/triggers/{name}/backfill`` -> the current or last backfill's progress
- ``DELETE /control/triggers/{name}/backfill`` -> cancel it
- ``POST /control/triggers/{name}/resume`` -> ``{resumed: bool}``

Errors are JSON ``{"error": "..."}``: 404 unknown trigger, 409 not a cron trigger / not
running / this replica does not lead it / a backfill already runs, 400 a bad request.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from bridge.cron_control import BACKFILL_POLICIES, ControlError, ScheduleControl
from bridge.logs import Logger
from bridge.metrics import Metrics

#: Finds the control of a running cron trigger (ControlError 404/409 otherwise) and
#: its time zone (naive --from/--to are read in it).
ControlLookup = Callable[[str], tuple[ScheduleControl, str]]
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ControlApi:
    def __init__(
        self, lookup: ControlLookup, token_file: str | None, metrics: Metrics, log: Logger
    ) -> None:
        self._lookup = lookup
        self._token_file = token_file
        self._metrics = metrics
        self._log = log.bind(component="control")

    def routes(self, app: web.Application) -> None:
        base = "/control/triggers/{name}"
        app.router.add_post(f"{base}/run-now", self._guard("run-now", self._run_now))
        app.router.add_post(f"{base}/backfill", self._guard("backfill", self._backfill))
        app.router.add_get(f"{base}/backfill", self._guard("backfill-status", self._progress))
        app.router.add_delete(f"{base}/backfill", self._guard("backfill-cancel", self._cancel))
        app.router.add_post(f"{base}/resume", self._guard("resume", self._resume))

    def _guard(self, action: str, handler: _Handler) -> _Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            refusal = self._refusal(request)
            response: web.StreamResponse
            if refusal is not None:
                response = refusal
            else:
                try:
                    response = await handler(request)
                except ControlError as err:
                    response = _json({"error": err.message}, err.status)
            self._metrics.control_requests.labels(action, str(response.status)).inc()
            trigger = request.match_info.get("name", "")
            if response.status >= 400:
                self._log.warning("control request refused", action=action, trigger=trigger,
                                  status=response.status)
            else:
                self._log.info("control request", action=action, trigger=trigger,
                               status=response.status)
            return response

        return guarded

    def _refusal(self, request: web.Request) -> web.Response | None:
        """403 while control is off, 401 for a missing or wrong token, else None."""
        if not self._token_file:
            return _json({"error": "control is disabled: set BRIDGE_CONTROL_TOKEN_FILE"}, 403)
        try:
            expected = Path(self._token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            self._log.error("control token file unreadable", path=self._token_file,
                            error=type(err).__name__)
            return _json({"error": "control token not available"}, 503)
        if not _usable(expected):
            self._log.error("control token file holds no usable token (printable ASCII, "
                            "no spaces)", path=self._token_file)
            return _json({"error": "control token not usable"}, 503)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), expected.encode()
        ):
            return web.json_response({"error": "missing or wrong control token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return None

    async def _run_now(self, request: web.Request) -> web.Response:
        control, _ = self._lookup(request.match_info["name"])
        run = control.run_now(datetime.now().astimezone())
        return _json({"trigger": run.trigger, "event_id": run.event_id, "time": run.time}, 202)

    async def _backfill(self, request: web.Request) -> web.Response:
        control, zone = self._lookup(request.match_info["name"])
        body = await _body(request)
        start, end = _moment(body, "from", zone), _moment(body, "to", zone)
        policy = body.get("policy", "BufferAll")
        if policy not in BACKFILL_POLICIES:
            raise ControlError(400, f"policy: must be one of {', '.join(BACKFILL_POLICIES)}; "
                                    f"got {policy!r}")
        progress = await control.backfill(start, end, policy)
        return _json(progress.to_json() | {"summary": progress.summary}, 202)

    async def _progress(self, request: web.Request) -> web.Response:
        control, _ = self._lookup(request.match_info["name"])
        progress = control.backfill_progress
        if progress is None:
            raise ControlError(404, "no backfill on this replica for this trigger")
        return _json(progress.to_json() | {"summary": progress.summary}, 200)

    async def _cancel(self, request: web.Request) -> web.Response:
        control, _ = self._lookup(request.match_info["name"])
        progress = await control.cancel_backfill()
        if progress is None:
            raise ControlError(404, "no backfill running")
        return _json(progress.to_json() | {"summary": progress.summary}, 200)

    async def _resume(self, request: web.Request) -> web.Response:
        control, _ = self._lookup(request.match_info["name"])
        return _json({"resumed": await control.resume()}, 200)


def _usable(token: str) -> bool:
    """A bearer token: printable ASCII without spaces (what an HTTP header carries)."""
    return bool(token) and all("!" <= c <= "~" for c in token)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ControlError(400, "the body must be a JSON object") from None
    if not isinstance(body, dict):
        raise ControlError(400, "the body must be a JSON object")
    return body


def _moment(body: dict[str, Any], key: str, zone: str) -> datetime:
    text = body.get(key)
    if not isinstance(text, str):
        raise ControlError(400, f"{key}: required, an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ControlError(400, f"{key}: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=ZoneInfo(zone))


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(text=json.dumps(body, sort_keys=True) + "\n", status=status,
                        content_type="application/json")
