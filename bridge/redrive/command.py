"""``trigger-bridge redrive``: from the command line's options to a finished redrive.

Exit 0 when every letter selected was redriven (or, with ``--dry-run``, could be);
1 when some failed again, could not be redriven or read, or the run was interrupted
(they stay where they were, except failures stored again as new dead letters);
2 for bad options, a bad config, or dead letters that cannot be read at all (no such
file or topic, a broker refusing the connection): one line saying which.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from bridge.exit_codes import EXIT_FAILURE, EXIT_OK
from bridge.redrive.selection import Selection, selection
from bridge.redrive.sources import SourceError

if TYPE_CHECKING:  # the command's modules are imported when it runs (a fast CLI start)
    from bridge.config import BridgeConfig
    from bridge.daemon import KubernetesParts
    from bridge.logs import Logger
    from bridge.redrive.report import Counts
    from bridge.redrive.run import Redrive, RedriveOptions
    from bridge.redrive.sources import LetterSource
    from bridge.settings import Settings



class RedriveUsageError(Exception):
    """Bad options or unreadable dead letters: one line, exit 2."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    redrive = commands.add_parser(
        "redrive", help="send dead letters again: to their function, or to their source",
        description="Read dead letters from a file, a Kafka topic or a RabbitMQ queue, and "
        "invoke their function again through the config's triggers (retries, quota, "
        "overflow), or publish the original messages to their source (--to-source). A "
        "dead letter is removed only once its redrive is done; one that fails again is "
        "dead-lettered again with its history. Exit 0: all redriven; 1: some failed again "
        "or were left; 2: bad options or unreadable dead letters.",
    )
    redrive.add_argument("--config", help="config file (default: $BRIDGE_CONFIG)")
    where = redrive.add_mutually_exclusive_group(required=True)
    where.add_argument("--file", metavar="PATH", help="a file sink's JSON lines")
    where.add_argument("--kafka-topic", metavar="TOPIC", help="a Kafka dead-letter topic")
    where.add_argument("--rabbitmq-queue", metavar="QUEUE",
                       help="the queue bound to a RabbitMQ dead-letter exchange")
    chosen = redrive.add_argument_group("which dead letters (each option repeatable)")
    chosen.add_argument("--trigger", action="append", default=[], metavar="NAME")
    chosen.add_argument("--function", action="append", default=[], metavar="NAME")
    chosen.add_argument("--reason", action="append", default=[], metavar="PATTERN",
                        help="bridge-error, shell pattern (http_5*)")
    chosen.add_argument("--since", metavar="TIME",
                        help="dead-lettered at or after: ISO 8601 (UTC without an offset) "
                        "or a duration back from now (2h)")
    chosen.add_argument("--until", metavar="TIME", help="dead-lettered before (as --since)")
    chosen.add_argument("--limit", type=int, metavar="N",
                        help="redrive at most N; the rest stay for the next run")
    how = redrive.add_argument_group("how")
    how.add_argument("--to-source", action="store_true",
                     help="publish the original message to its topic / exchange instead")
    how.add_argument("--dry-run", action="store_true", help="list what would happen")
    how.add_argument("--dead-letter-back", action="store_true",
                     help="dead-letter failures back where they were read, not to the "
                     "trigger's sink")
    how.add_argument("--concurrency", type=int, metavar="N",
                     help="invocations in flight per trigger (default: the trigger's)")
    how.add_argument("--group", default="trigger-bridge-redrive",
                     help="Kafka consumer group keeping the redrive's place in the topic")
    how.add_argument("--bootstrap-servers", metavar="HOST:PORT,...",
                     help="Kafka servers when no sink in the config names the topic")


def run(args: argparse.Namespace, config: BridgeConfig, config_path: str,
        settings: Settings) -> int:
    """The command; raises RedriveUsageError for a line to print with exit 2."""
    from bridge.daemon import KubernetesParts
    from bridge.logs import configure
    from bridge.redrive.report import Report
    from bridge.redrive.run import Redrive

    options = _options(args, config_path, settings)
    source = _source(args, config, options.selection)
    level = settings.log_level if "log_level" in settings.model_fields_set else "error"
    configure(settings.log_format if "log_format" in settings.model_fields_set else "console",
              level)
    report = Report(sys.stderr, sys.stdout, sys.stderr.isatty(), options.dry_run)
    log = _quiet_logger()
    kubernetes = KubernetesParts(settings, log)
    redrive = Redrive(config, source, options, report, log, kubernetes_pools=kubernetes.pool)
    try:
        counts = asyncio.run(_main(redrive, kubernetes))
    except SourceError as err:
        raise RedriveUsageError(str(err)) from None
    return EXIT_OK if counts.clean else EXIT_FAILURE


async def _main(redrive: Redrive, kubernetes: KubernetesParts) -> Counts:
    from bridge.daemon import stop_on_signals

    try:
        return await redrive.run(stop_on_signals())
    finally:
        await kubernetes.close()


def _quiet_logger() -> Logger:
    """The configured logger without the dispatcher's "dead-lettered" lines: the
    redrive's own line for that letter says it (write failures, refusals and bugs are
    still logged)."""
    import structlog

    def drop(_logger: object, _method: str, event: MutableMapping[str, Any]
             ) -> MutableMapping[str, Any]:
        if event.get("event") == "dead-lettered":
            raise structlog.DropEvent
        return event

    config = structlog.get_config()
    logger: Logger = structlog.wrap_logger(
        config["logger_factory"](), processors=[drop, *config["processors"]],
        wrapper_class=config["wrapper_class"],
    )
    return logger.bind(command="redrive")


def _options(args: argparse.Namespace, config_path: str, settings: Settings) -> RedriveOptions:
    from bridge.redrive.run import RedriveOptions

    for name in ("limit", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise RedriveUsageError(f"--{name}: must be at least 1, got {value}")
    if args.to_source and (args.dead_letter_back or args.concurrency is not None):
        option = "--dead-letter-back" if args.dead_letter_back else "--concurrency"
        raise RedriveUsageError(f"{option} applies to invoking the function, not to "
                                "--to-source")
    try:
        chosen = selection(args.trigger, args.function, args.reason, args.since, args.until)
    except ValueError as err:
        raise RedriveUsageError(str(err)) from None
    return RedriveOptions(
        selection=chosen, to_source=args.to_source, dry_run=args.dry_run,
        back=args.dead_letter_back, concurrency=args.concurrency, limit=args.limit,
        drain_timeout=settings.drain_timeout, config_name=config_path,
    )


def _source(args: argparse.Namespace, config: BridgeConfig, chosen: Selection) -> LetterSource:
    from bridge.redrive.connections import kafka_connection, rabbitmq_connection
    from bridge.redrive.files import FileLetters
    from connectors.base import redrive_source

    try:
        if args.file is not None:
            return FileLetters(args.file, dry_run=args.dry_run)
        if args.kafka_topic is not None:
            connection = kafka_connection(config, args.kafka_topic, chosen.triggers,
                                          args.bootstrap_servers)
            return redrive_source("kafka")(  # type: ignore[no-any-return]
                topic=args.kafka_topic, connection=connection, group=args.group,
                dry_run=args.dry_run,
            )
        url, tls = rabbitmq_connection(config, chosen.triggers)
        return redrive_source("rabbitmq")(  # type: ignore[no-any-return]
            queue=args.rabbitmq_queue, url=url, tls=tls, dry_run=args.dry_run,
        )
    except SourceError as err:
        raise RedriveUsageError(str(err)) from None
