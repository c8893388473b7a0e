"""``trigger-bridge run-now|backfill|resume``: requests to a running daemon's control
endpoints (:mod:`bridge.control`), with the token of ``--token-file`` (default
``BRIDGE_CONTROL_TOKEN_FILE``).

Exit codes: 0 when the daemon accepted; 2 when it refused (unknown or non-cron
trigger, bad range, wrong token, not the trigger's leader: the daemon's reason is
printed); 1 when it could not be reached.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bridge.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


class ControlUsageError(Exception):
    """A problem with the command's own options (exit 2, before any request)."""


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]

    @property
    def exit_code(self) -> int:
        if 200 <= self.status < 300:
            return EXIT_OK
        return EXIT_USAGE if 400 <= self.status < 500 else EXIT_FAILURE

    @property
    def error(self) -> str:
        return str(self.body.get("error") or f"HTTP {self.status}")


class ControlClient:
    def __init__(self, url: str, token_file: str | None, timeout: float = 10.0) -> None:
        self._url = url.rstrip("/")
        self._token = _read_token(token_file)
        self._timeout = timeout
        # straight to the daemon: a proxy from the environment is not meant for it
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, trigger: str, action: str,
                body: dict[str, Any] | None = None) -> Answer:
        """One request; OSError when the daemon cannot be reached."""
        url = f"{self._url}/control/triggers/{quote(trigger, safe='')}/{action}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self._token}", "Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return Answer(response.status, _json(response.read()))
        except urllib.error.HTTPError as err:
            return Answer(err.code, _json(err.read()))

    def follow(self, trigger: str, interval: float = 1.0) -> Answer:
        """Poll a backfill's progress until it is no longer running."""
        while True:
            answer = self.request("GET", trigger, "backfill")
            if answer.exit_code != EXIT_OK or answer.body.get("state") != "running":
                return answer
            print(answer.body.get("summary", ""), flush=True)
            time.sleep(interval)


def _read_token(path: str | None) -> str:
    if not path:
        raise ControlUsageError(
            "no control token: pass --token-file FILE or set BRIDGE_CONTROL_TOKEN_FILE")
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise ControlUsageError(f"cannot read the control token file {path}: "
                                f"{getattr(err, 'strerror', None) or err}") from None
    if not token:
        raise ControlUsageError(f"the control token file {path} is empty")
    if not all("!" <= c <= "~" for c in token):
        raise ControlUsageError(f"the control token in {path} must be printable ASCII "
                                "without spaces")
    return token


def _json(data: bytes) -> dict[str, Any]:
    try:
        parsed = json.loads(data or b"{}")
    except ValueError:
        return {"error": data.decode(errors="replace")[:200]}
    return parsed if isinstance(parsed, dict) else {}
