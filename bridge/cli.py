"""Command line: ``trigger-bridge run|validate|demo|schedule|import-cronjobs|schema|redrive``,
and ``run-now|backfill|resume`` against a running daemon (:mod:`bridge.control_client`).

User errors (a bad config, a bad expression, a bad setting) print one line per problem
and exit 2; they never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from pydantic import ValidationError

from bridge import __version__
from bridge.config import BridgeConfig, ConfigError, CronSource, load_config, problems_from
from bridge.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from bridge.schedule import ScheduleError, parse_schedule
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.control_client import Answer, ControlClient


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except _UsageError as err:
        for line in err.lines:
            print(line, file=sys.stderr)
        return EXIT_USAGE


class _UsageError(Exception):
    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trigger-bridge",
        description="Kafka, RabbitMQ and cron triggers for functions on Kubernetes.",
    )
    parser.add_argument("--version", action="version", version=f"trigger-bridge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("--config", help="config file (default: $BRIDGE_CONFIG)")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check a config file")
    validate.add_argument("--config", help="config file (default: $BRIDGE_CONFIG)")
    validate.set_defaults(handler=_validate)

    demo = commands.add_parser("demo", help="run a self-contained demo")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: until Ctrl-C)")
    demo.set_defaults(handler=_demo)

    schedule = commands.add_parser(
        "schedule", help="print the next fire times of a schedule",
        description="Print the next fire times of EXPRESSION, or of a configured cron "
        "trigger (--config FILE --trigger NAME), with its jitter, bounds and exclusions.")
    schedule.add_argument("expression", nargs="?",
                          help='cron expression, e.g. "0 2 * * *" or "@hourly"')
    schedule.add_argument("--time-zone", default=None, help="IANA time zone (default UTC)")
    schedule.add_argument("--from", dest="start", help="ISO 8601 start (default: now)")
    schedule.add_argument("--count", type=int, default=5, help="how many (default 5)")
    schedule.add_argument("--jitter", help="delay below this (e.g. 30s); with --trigger the "
                          "delays are the daemon's")
    schedule.add_argument("--start-at", help="no tick before this (ISO 8601)")
    schedule.add_argument("--end-at", help="no tick after this (ISO 8601)")
    schedule.add_argument("--exclude", action="append", default=[],
                          help="a date (2026-12-25) or cron expression of days not to fire "
                          "(repeatable)")
    schedule.add_argument("--config", help="config file of --trigger (default: $BRIDGE_CONFIG)")
    schedule.add_argument("--trigger", help="preview this cron trigger of the config")
    schedule.set_defaults(handler=_schedule)

    imports = commands.add_parser(
        "import-cronjobs", help="convert Kubernetes CronJob manifests into cron triggers",
        description="Read CronJob manifests (FILE or - for stdin) and print trigger config; "
        "the report goes to stderr. Exit 0: all converted; 1: some CronJobs not converted "
        "(the rest are printed); 2: unreadable input or bad options.",
    )
    imports.add_argument("file", metavar="FILE|-", help="manifests (YAML or JSON), - for stdin")
    target = imports.add_mutually_exclusive_group()
    target.add_argument("--function", help="function of every trigger (unless annotated)")
    target.add_argument("--function-template",
                        help="function name from {namespace} and {name} (default: {name})")
    imports.add_argument("--as-crd", action="store_true", help="write Trigger resources")
    imports.add_argument("--namespace", help="metadata.namespace of the Trigger resources")
    imports.add_argument("--time-zone", default="UTC",
                         help="zone of CronJobs without one (default UTC)")
    imports.add_argument("--name-template",
                         help="trigger names (default {name}; {namespace}-{name} if mixed)")
    imports.add_argument("--dead-letter-file", default="dead-letters.jsonl",
                         help="file sink put in defaults.dead_letter (config output)")
    imports.add_argument("-o", "--output", help="write here instead of stdout")
    imports.set_defaults(handler=_import_cronjobs)

    schema = commands.add_parser(
        "schema", help="print the JSON Schema of the config file (or the Trigger CRD)")
    schema.add_argument("--crd", action="store_true",
                        help="print the Trigger CustomResourceDefinition (deploy/crds/)")
    schema.set_defaults(handler=_schema)

    _control_parsers(commands)

    from bridge.redrive.command import add_parser as add_redrive

    add_redrive(commands)
    commands.choices["redrive"].set_defaults(handler=_redrive)
    return parser


def _control_parsers(commands: Any) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("trigger", help="name of a cron trigger")
        parser.add_argument("--admin", help="the daemon's admin URL "
                            "(default: http://127.0.0.1:$BRIDGE_ADMIN_PORT)")
        parser.add_argument("--token-file",
                            help="control token (default: $BRIDGE_CONTROL_TOKEN_FILE)")

    run_now = commands.add_parser(
        "run-now", help="run a cron trigger's function once now (in a running daemon)")
    common(run_now)
    run_now.set_defaults(handler=_run_now)

    backfill = commands.add_parser(
        "backfill", help="fire every tick of a past range (in a running daemon)",
        description="Fire every tick of TRIGGER scheduled in [--from, --to] with its own "
        "scheduled time and event id; or show (--status) or cancel (--cancel) the current "
        "one. Times without an offset are read in the trigger's time zone.")
    common(backfill)
    backfill.add_argument("--from", dest="start", help="first scheduled time (ISO 8601)")
    backfill.add_argument("--to", dest="end", help="last scheduled time (ISO 8601)")
    backfill.add_argument("--policy", choices=["BufferAll", "Allow"], default="BufferAll",
                          help="BufferAll: one tick after another (default); Allow: up to "
                          "the trigger's concurrency at once")
    backfill.add_argument("--wait", action="store_true", help="follow until it ends")
    what = backfill.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="show the current backfill")
    what.add_argument("--cancel", action="store_true", help="cancel the current backfill")
    backfill.set_defaults(handler=_backfill)

    resume = commands.add_parser(
        "resume", help="resume a cron trigger paused after a failure (pause_on_failure)")
    common(resume)
    resume.set_defaults(handler=_resume)


def _control(args: argparse.Namespace) -> ControlClient:
    from bridge.control_client import ControlClient, ControlUsageError

    settings = _settings()
    url = args.admin or f"http://127.0.0.1:{settings.admin_port}"
    try:
        return ControlClient(url, args.token_file or settings.control_token_file)
    except ControlUsageError as err:
        raise _UsageError([str(err)]) from None


def _answered(client: ControlClient, method: str, args: argparse.Namespace, action: str,
              body: dict[str, Any] | None = None) -> Answer:
    try:
        answer = client.request(method, args.trigger, action, body)
    except OSError as err:
        print(f"{args.trigger}: daemon not reachable: {err}", file=sys.stderr)
        raise SystemExit(EXIT_FAILURE) from None
    if answer.exit_code != EXIT_OK:
        print(f"{args.trigger}: refused ({answer.status}): {answer.error}", file=sys.stderr)
        raise SystemExit(answer.exit_code)
    return answer


def _run_now(args: argparse.Namespace) -> int:
    answer = _answered(_control(args), "POST", args, "run-now")
    print(f"{args.trigger}: running now as {answer.body['event_id']}")
    return EXIT_OK


def _backfill(args: argparse.Namespace) -> int:
    client = _control(args)
    if args.status or args.cancel:
        answer = _answered(client, "DELETE" if args.cancel else "GET", args, "backfill")
    else:
        if not (args.start and args.end):
            raise _UsageError(["backfill: --from and --to are required (or --status, --cancel)"])
        body = {"from": args.start, "to": args.end, "policy": args.policy}
        answer = _answered(client, "POST", args, "backfill", body)
        if args.wait:
            print(answer.body["summary"], flush=True)
            answer = client.follow(args.trigger)
    print(answer.body.get("summary") or answer.error)
    return answer.exit_code


def _resume(args: argparse.Namespace) -> int:
    answer = _answered(_control(args), "POST", args, "resume")
    print(f"{args.trigger}: " + ("resumed" if answer.body.get("resumed") else "was not paused"))
    return EXIT_OK


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as err:
        lines = [f"BRIDGE_{p.path.upper()}: {p.message}" for p in problems_from(err)]
        raise _UsageError(lines) from None


def _config(path: str | None, settings: Settings) -> tuple[str, BridgeConfig]:
    path = path or settings.config
    if not path:
        raise _UsageError(["no config file: pass --config FILE or set BRIDGE_CONFIG"])
    try:
        return path, load_config(path)
    except ConfigError as err:
        raise _UsageError([str(p) for p in err.problems]) from None


def _validate(args: argparse.Namespace) -> int:
    path, config = _config(args.config, _settings())
    print(f"ok: {path}: {config.summary()}")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    from bridge import eventloop
    from bridge.daemon import serve
    from bridge.logs import configure

    settings = _settings()
    path, config = _config(args.config, settings)
    configure(settings.log_format, settings.log_level)
    try:
        return eventloop.run(serve(config, settings, path), settings.uvloop)
    except ConfigError as err:  # a trigger whose settings its connector or sink refused
        raise _UsageError([str(p) for p in err.problems]) from None


def _demo(args: argparse.Namespace) -> int:
    import os

    from bridge.demo import run_demo
    from bridge.demo.rabbitmq import DEFAULT_URL
    from bridge.logs import configure

    settings = _settings()
    configure("console", settings.log_level)
    amqp_url = os.environ.get("BRIDGE_DEMO_AMQP_URL") or DEFAULT_URL
    return asyncio.run(run_demo(settings, args.duration, amqp_url))


def _schedule(args: argparse.Namespace) -> int:
    from bridge.preview import preview

    if args.count < 1:
        raise _UsageError([f"--count: must be at least 1, got {args.count}"])
    if args.trigger:
        if args.expression:
            raise _UsageError(["give EXPRESSION or --trigger, not both"])
        source, key = _configured_cron(args), args.trigger
    else:
        if not args.expression:
            raise _UsageError(["schedule: give an EXPRESSION (or --config FILE --trigger NAME)"])
        source, key = _cron_from_args(args), None
    zone = ZoneInfo(source.time_zone)
    moment = datetime.now(zone) if args.start is None else _parse_start(args.start, zone)
    if source.calendar().plain and not source.jitter:
        return _plain_schedule(source.schedule, source.time_zone, moment, args.count)
    for line in preview(source, moment, args.count, key):
        print(line)
    return EXIT_OK


def _plain_schedule(expression: str, time_zone: str, moment: datetime, count: int) -> int:
    schedule = parse_schedule(expression, time_zone)
    for _ in range(count):
        try:
            moment = schedule.next_after(moment)
        except (ScheduleError, OverflowError):  # past the end of the calendar (year 9999)
            raise _UsageError(
                [f"schedule: no fire time after {moment.isoformat()} within years 1-9999"]
            ) from None
        print(moment.isoformat())
    return EXIT_OK


def _cron_from_args(args: argparse.Namespace) -> CronSource:
    """The preview's cron settings from the options; a problem is named by its option."""
    time_zone = args.time_zone or "UTC"
    try:
        parse_schedule(args.expression, time_zone)
    except ScheduleError as err:
        raise _UsageError([f"schedule: {err}"]) from None
    fields: dict[str, object] = {"schedule": args.expression, "time_zone": time_zone,
                                 "exclude": args.exclude}
    for name in ("jitter", "start_at", "end_at"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    try:
        return CronSource.model_validate(fields)
    except ValidationError as err:
        options = {"jitter": "--jitter", "start_at": "--start-at", "end_at": "--end-at",
                   "exclude": "--exclude"}
        lines = []
        for problem in problems_from(err, root=CronSource):
            head = problem.path.split("[", 1)[0]
            lines.append(f"{options.get(head, problem.path)}: {problem.message}")
        raise _UsageError(lines) from None


def _configured_cron(args: argparse.Namespace) -> CronSource:
    if any((args.jitter, args.start_at, args.end_at, args.exclude, args.time_zone)):
        raise _UsageError(["--trigger previews the trigger as configured: drop --jitter, "
                           "--start-at, --end-at, --exclude and --time-zone"])
    _, config = _config(args.config, _settings())
    trigger = next((t for t in config.triggers if t.name == args.trigger), None)
    if trigger is None:
        raise _UsageError([f"--trigger: no trigger named {args.trigger!r} in the config"])
    if trigger.cron is None:
        raise _UsageError([f"--trigger: {args.trigger!r} is a {trigger.kind} trigger, "
                           "not a cron one"])
    return trigger.cron


def _redrive(args: argparse.Namespace) -> int:
    from bridge.redrive.command import RedriveUsageError, run

    settings = _settings()
    path, config = _config(args.config, settings)
    try:
        return run(args, config, path, settings)
    except RedriveUsageError as err:
        raise _UsageError([str(err)]) from None


def _schema(args: argparse.Namespace) -> int:
    from bridge.schema import config_schema_json, crd_yaml

    sys.stdout.write(crd_yaml() if args.crd else config_schema_json())
    return EXIT_OK


def _import_cronjobs(args: argparse.Namespace) -> int:
    from bridge.cronjobs import ImportFailure, ImportOptions, import_cronjobs

    source = "<stdin>" if args.file == "-" else args.file
    try:
        text = sys.stdin.read() if args.file == "-" else _read_text(args.file)
        result = import_cronjobs(text, source, ImportOptions(
            function=args.function, function_template=args.function_template,
            as_crd=args.as_crd, namespace=args.namespace, time_zone=args.time_zone,
            name_template=args.name_template, dead_letter_file=args.dead_letter_file,
        ))
    except ImportFailure as err:
        raise _UsageError([str(err)]) from None
    for line in result.report:
        print(line, file=sys.stderr)
    if args.output:
        try:
            Path(args.output).write_text(result.output, encoding="utf-8")
        except OSError as err:
            raise _UsageError([f"cannot write {args.output}: {err.strerror}"]) from None
    else:
        sys.stdout.write(result.output)
    return result.exit_code


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise _UsageError([f"cannot read {path}: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise _UsageError([f"{path} is not UTF-8 text"]) from None


def _parse_start(text: str, zone: ZoneInfo) -> datetime:
    """ISO 8601; without an offset it is read in the schedule's time zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise _UsageError([f"--from: not an ISO 8601 time: {text!r}"]) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=zone)


if __name__ == "__main__":
    sys.exit(main())
