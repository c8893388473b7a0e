"""Team quotas (``quotas:`` + ``functions.<f>.quota``) as the runtime enforces them: a
limit shared by every function that joins, on top of each function's own; resized in
place by a reload; a quota no function joins is logged."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from bridge.config import ConfigError, parse_config
from bridge.runtime import Runtime
from bridge.settings import Settings

TEXT = """
defaults:
  dead_letter: {{file: {{path: /tmp/dl.jsonl}}}}
quotas:
  payments: {{max_concurrency: {payments}}}
  {extra}
functions:
  refund: {{url: "http://127.0.0.1:9/", max_concurrency: 5, quota: payments}}
  charge: {{url: "http://127.0.0.1:9/", quota: payments}}
  report: {{url: "http://127.0.0.1:9/"}}
triggers:
  - {{name: a, function: refund, cron: {{schedule: "@hourly"}}}}
  - {{name: b, function: charge, cron: {{schedule: "@hourly"}}}}
  - {{name: c, function: report, cron: {{schedule: "@hourly"}}}}
"""


def text(payments: int = 3, extra: str = "") -> str:
    return TEXT.format(payments=payments, extra=extra)


async def test_functions_of_a_team_share_its_quota_on_top_of_their_own() -> None:
    runtime = Runtime(parse_config(text()), Settings(admin_port=0))
    await runtime.start()
    try:
        refund = runtime._targets["refund"]
        charge = runtime._targets["charge"]
        assert refund.limit is not None
        assert refund.limit.capacity == 5
        assert charge.limit is None
        [team] = refund.limits
        assert charge.limits == (team,)
        assert team.capacity == 3
        assert runtime._targets["report"].chain == ()
        routes = [await refund.acquire(), await refund.acquire(), await charge.acquire()]
        waiting = asyncio.create_task(refund.acquire())  # the team's 3 are taken
        await asyncio.sleep(0.05)
        assert not waiting.done()
        assert refund.limit.in_use == 3  # holds its own slot while it waits for the team's
        charge.release(routes.pop())
        refund.release(await asyncio.wait_for(waiting, 1))
        for route in routes:
            refund.release(route)
        assert team.in_use == 0

        await runtime.apply(parse_config(text(payments=7)))
        assert runtime._targets["refund"].limits == (team,)  # same limit, resized
        assert team.capacity == 7
    finally:
        await runtime.shutdown()


async def test_a_quota_no_function_joins_is_logged() -> None:
    runtime = Runtime(parse_config(text(extra="spare: {max_concurrency: 2}")),
                      Settings(admin_port=0))
    with capture_logs() as logs:
        await runtime.start()
        await runtime.shutdown()
    unused = [e for e in logs if e["event"] == "quota is used by no function"]
    assert [e["quota"] for e in unused] == ["spare"]


def test_an_unknown_quota_is_a_config_error_at_its_path() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text().replace("quota: payments}", "quota: payment}"))
    assert [str(p) for p in caught.value.problems] == [
        "functions.refund.quota: unknown quota 'payment' (known: payments)",
        "functions.charge.quota: unknown quota 'payment' (known: payments)",
    ]


def test_a_quota_needs_a_positive_max_concurrency() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text(payments=0))
    assert [str(p) for p in caught.value.problems] == [
        "quotas.payments.max_concurrency: must be at least 1, got 0"]
