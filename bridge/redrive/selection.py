"""Which dead letters a redrive takes: by trigger, function, error reason and time.

Each filter given must match (AND); a filter given several times matches any of its
values (OR). Reasons are shell patterns (``http_5*``). The time range is on
``bridge-dead-lettered-at``: ``--since`` inclusive, ``--until`` exclusive; a record
without that field never matches a time filter.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bridge.durations import parse_duration
from bridge.redrive.letters import Letter


@dataclass(frozen=True, slots=True)
class Selection:
    triggers: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    reasons: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None

    def why_not(self, letter: Letter) -> str | None:
        """None when ``letter`` is selected, else which filter leaves it out."""
        if self.triggers and letter.trigger not in self.triggers:
            return "trigger"
        if self.functions and letter.function not in self.functions:
            return "function"
        if self.reasons and not any(fnmatch.fnmatchcase(letter.error, p) for p in self.reasons):
            return "reason"
        if self.since is not None or self.until is not None:
            moment = letter.dead_lettered_at
            if moment is None:
                return "time"
            if self.since is not None and moment < self.since:
                return "time"
            if self.until is not None and moment >= self.until:
                return "time"
        return None


def parse_moment(text: str, option: str, now: datetime | None = None) -> datetime:
    """ISO 8601 (UTC without an offset) or a duration back from now (``90m``, ``2d``).

    Raises ValueError with a line naming ``option``.
    """
    text = text.strip()
    now = now or datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            return now - timedelta(seconds=parse_duration(text))
        except (ValueError, TypeError):
            raise ValueError(
                f"{option}: not an ISO 8601 time or a duration back from now: {text!r}"
            ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def selection(
    triggers: Sequence[str] = (), functions: Sequence[str] = (), reasons: Sequence[str] = (),
    since: str | None = None, until: str | None = None,
) -> Selection:
    """A Selection from command-line values; ValueError names the bad option."""
    start = None if since is None else parse_moment(since, "--since")
    end = None if until is None else parse_moment(until, "--until")
    if start is not None and end is not None and start >= end:
        raise ValueError("--since must be before --until")
    return Selection(frozenset(triggers), frozenset(functions), tuple(reasons), start, end)
