"""Where a redrive reads dead letters from, and where ``--to-source`` publishes them.

A :class:`LetterSource` yields :class:`Item` s in the order the sink stored them. The
redrive settles each item at most once, and only once it is done with it:

- ``settle(True)``: the letter is redriven (the function answered 2xx, or the source
  took the republished message) or stored again (it failed again and its new dead
  letter is confirmed): remove it -- the file drops the line, RabbitMQ gets the ack,
  Kafka's consumer group may commit past it;
- ``settle(False)``: the redrive passes it by (left out by the filters, cannot be
  redriven, not a dead letter): the file and the queue keep it; on Kafka, where a
  record is never removed, the group's offset moves past it (the group's offset is
  the redrive's cursor);
- never settled (the run was interrupted, a dry run, a failed redrive whose dead
  letter could not be written): it stays exactly where it was; on Kafka the commit
  point stays below it, so the next run of the group reads it again.

A crash at any point therefore loses nothing, and sends again at most what was in
flight (at-least-once, like the daemon).

The Kafka and RabbitMQ sources and publishers live in their connectors
(``connectors.base.REDRIVE_SOURCES`` / ``REPUBLISHERS``); the file source in
:mod:`bridge.redrive.files`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from bridge.deadletter import Sink
from bridge.redrive.letters import Letter

if TYPE_CHECKING:
    from bridge.config import ResolvedTrigger


class SourceError(Exception):
    """The dead letters cannot be read (one line: missing topic, locked file, ...)."""


@dataclass(frozen=True, slots=True)
class Item:
    """One stored record: a letter, or why it is not one (``problem``)."""

    position: str
    letter: Letter | None
    settle: Callable[[bool], Awaitable[None]]
    problem: str = ""


class LetterSource(Protocol):
    """Dead letters in a file, a Kafka topic or a RabbitMQ queue."""

    #: For messages: ``FILE``, ``kafka topic T``, ``rabbitmq queue Q``.
    name: str
    #: Records an interrupted earlier run had redriven, removed by ``open`` (a file's
    #: journal); 0 where the broker keeps that state (a commit, an ack).
    recovered: int

    @property
    def total(self) -> int | None:
        """How many records this run will read at most (known after ``open``)."""

    async def open(self) -> None:
        """Connect (or lock the file and finish an interrupted run); SourceError."""

    def items(self) -> AsyncIterator[Item]:
        """The records present at ``open`` (later ones wait for the next run)."""

    def back_sink(self) -> Sink:
        """A sink that stores a dead letter back where this source reads from."""

    async def close(self) -> None:
        """Make the settles final (rewrite the file, commit, requeue the rest), close."""


class Republisher(Protocol):
    """``--to-source``: the original message back to the topic or exchange it came from."""

    def describe(self, letter: Letter, trigger: ResolvedTrigger) -> str:
        """Where ``letter`` would go (``kafka topic orders``); raises NotRedrivable when it
        cannot go back (its topic is not one of the trigger's, ...)."""

    async def send(self, letter: Letter, trigger: ResolvedTrigger) -> Awaitable[None]:
        """Hand the message to the client (in call order); the result completes when the
        broker confirms it. Raises NotRedrivable when the letter cannot go back."""

    async def close(self) -> None: ...
