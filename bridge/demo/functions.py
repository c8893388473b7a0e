"""The demo's sample functions: tiny HTTP handlers on localhost that print what they get.

- ``hello`` answers 200; ``flaky`` answers 503 twice per event, then 200 (the same
  CloudEvent id arrives three times); ``strict`` answers 422 (dead-lettered at once);
- ``orders`` (the Kafka trigger) takes a random 0-300 ms per record, so records of
  different keys overtake each other, and checks that each key's ``seq`` only grows
  (``ordering: key``); it refuses a record whose body says ``"refuse": true`` (422);
- ``jobs`` (the RabbitMQ trigger) answers 200.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random

from aiohttp import web


class SampleFunctions:
    def __init__(self) -> None:
        self.calls: collections.Counter[str] = collections.Counter()
        #: Kafka: the last ``seq`` seen per key, and what came in.
        self.last_seq: dict[str, int] = {}
        self.orders = 0
        self.out_of_order = 0
        self.jobs = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hello", self._hello)
        app.router.add_post("/flaky", self._flaky)
        app.router.add_post("/strict", self._strict)
        app.router.add_post("/orders", self._orders)
        app.router.add_post("/jobs", self._jobs)
        return app

    def _show(self, name: str, request: web.Request, answer: int) -> None:
        h = request.headers
        print(
            f"  function {name:<6} <- ce-id={h.get('ce-id')} attempt={h.get('bridge-attempt')}"
            f" -> {answer}",
            flush=True,
        )

    async def _hello(self, request: web.Request) -> web.Response:
        await request.read()
        self._show("hello", request, 200)
        return web.Response(text="hi")

    async def _flaky(self, request: web.Request) -> web.Response:
        event_id = request.headers.get("ce-id", "")
        self.calls[event_id] += 1
        status = 503 if self.calls[event_id] <= 2 else 200
        self._show("flaky", request, status)
        return web.Response(status=status, text="busy, try again" if status == 503 else "ok")

    async def _strict(self, request: web.Request) -> web.Response:
        self._show("strict", request, 422)
        return web.Response(status=422, text="payload rejected: field 'invalid' is true")

    async def _orders(self, request: web.Request) -> web.Response:
        order = json.loads(await request.read())
        await asyncio.sleep(random.uniform(0.0, 0.3))  # other keys overtake, this key waits
        h = request.headers
        key, seq = h.get("ce-partitionkey", "?"), int(order.get("seq", 0))
        in_order = seq > self.last_seq.get(key, 0)
        self.last_seq[key] = max(seq, self.last_seq.get(key, 0))
        self.orders += 1
        self.out_of_order += not in_order
        status = 422 if order.get("refuse") else 200
        order_note = "" if in_order else "  OUT OF ORDER"
        print(
            f"  function orders <- key={key} seq={seq} partition={h.get('ce-kafkapartition')} "
            f"offset={h.get('ce-kafkaoffset')} -> {status}{order_note}",
            flush=True,
        )
        if status == 422:
            return web.Response(status=422, text=f"order {seq} of {key} refused: no stock")
        return web.Response(text="ok")

    async def _jobs(self, request: web.Request) -> web.Response:
        await request.read()
        h = request.headers
        self.jobs += 1
        print(f"  function jobs   <- ce-id={h.get('ce-id')} "
              f"routing-key={h.get('ce-amqproutingkey')} -> 200", flush=True)
        return web.Response(text="done")
