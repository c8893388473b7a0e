"""What a redrive tells its user: a progress bar or plain lines, and a summary.

On a terminal (stderr is a TTY) one bar line is redrawn as letters settle, and only
what needs attention (a letter that failed again, a line that is not a dead letter, a
letter that cannot be redriven) is printed above it. Otherwise -- a pipe, a log file,
CI -- every letter gets one plain line on stderr. ``--dry-run`` prints one line per
letter that would be redriven on stdout. The summary goes to stdout; its counts add up
to the records read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TextIO

_BAR_WIDTH = 30
_REDRAW_EVERY = 0.1


@dataclass(slots=True)
class Counts:
    read: int = 0
    #: Delivered (2xx) or republished to the source (confirmed).
    redriven: int = 0
    #: Failed again; the new dead letter is stored (the old one removed).
    dead_lettered: int = 0
    #: Failed again and could not be stored again, or not published: left in place.
    failed: int = 0
    #: Left out by the filters.
    skipped: int = 0
    #: Cannot be redriven (trigger or function not in the config, ...): left in place.
    unredrivable: int = 0
    #: Not a dead letter (truncated, not JSON, fields missing): left in place.
    unreadable: int = 0
    #: Dry run: would be redriven.
    selected: int = 0
    #: Reading failed before the end (the rest was not read).
    stopped: bool = False

    @property
    def done(self) -> int:
        return (self.redriven + self.dead_lettered + self.failed + self.skipped
                + self.unredrivable + self.unreadable + self.selected)

    @property
    def not_done(self) -> int:
        """Read but not finished (an interrupted run): left in place."""
        return self.read - self.done

    @property
    def clean(self) -> bool:
        """Nothing failed, nothing left behind but what the filters left out."""
        return not (self.dead_lettered or self.failed or self.unredrivable
                    or self.unreadable or self.not_done or self.stopped)


class Report:
    def __init__(self, err: TextIO, out: TextIO, tty: bool, dry_run: bool = False) -> None:
        self.counts = Counts()
        self._err = err
        self._out = out
        self._tty = tty
        self._dry_run = dry_run
        self._name = ""
        self._total: int | None = None
        self._drawn = 0.0
        self._bar_shown = False

    def begin(self, name: str, total: int | None, recovered: int = 0) -> None:
        self._name, self._total = name, total
        if recovered:
            self._line(f"{name}: {recovered} record(s) redriven by an interrupted run removed",
                       self._err)
        if not self._tty:
            records = "" if total is None else f" ({total} record(s))"
            text = (f"reading {name}{records}, a dry run" if self._dry_run
                    else f"redriving {name}{records}")
            self._line(text, self._err)
        self.tick()

    def redriven(self, text: str) -> None:
        if self._tty:
            self.tick()
        else:
            self._line(f"redriven: {text}", self._err)

    def failed(self, text: str) -> None:
        self._line(f"failed: {text}", self._err)

    def problem(self, text: str) -> None:
        self._line(text, self._err)

    def would(self, text: str) -> None:
        self._line(text, self._out)

    def tick(self, force: bool = False) -> None:
        """Redraw the bar (at most every 0.1 s) on a terminal."""
        if not self._tty:
            return
        now = time.monotonic()
        if not force and now - self._drawn < _REDRAW_EVERY:
            return
        self._drawn = now
        self._err.write("\r\x1b[K" + self._bar())
        self._err.flush()
        self._bar_shown = True

    def _bar(self) -> str:
        c, total = self.counts, self._total
        handled = c.done
        if total:
            filled = min(_BAR_WIDTH, _BAR_WIDTH * handled // total)
            bar = f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {handled}/{total}"
        else:
            bar = f"{handled} read"
        verb = "would redrive" if self._dry_run else "redriven"
        count = c.selected if self._dry_run else c.redriven
        failed = c.dead_lettered + c.failed
        return f"redrive {bar}  {verb} {count}  failed {failed}  skipped {c.skipped}"

    def _line(self, text: str, stream: TextIO) -> None:
        if self._tty and self._bar_shown:
            self._err.write("\r\x1b[K")
            self._err.flush()
        stream.write(text + "\n")
        stream.flush()
        if self._tty and self._bar_shown:
            self.tick(force=True)

    def finish(self, interrupted: bool = False) -> None:
        if self._tty:
            self.tick(force=True)
            self._err.write("\n")
            self._err.flush()
        self._out.write(self.summary(interrupted) + "\n")
        self._out.flush()

    def summary(self, interrupted: bool = False) -> str:
        c = self.counts
        parts = [f"{c.read} read"]
        if self._dry_run:
            parts.append(f"{c.selected} would be redriven")
        else:
            parts.append(f"{c.redriven} redriven")
            failed = c.dead_lettered + c.failed
            detail = []
            if c.dead_lettered:
                detail.append(f"{c.dead_lettered} dead-lettered again")
            if c.failed:
                detail.append(f"{c.failed} left in place")
            parts.append(f"{failed} failed again" + (f" ({', '.join(detail)})" if detail else ""))
        parts.append(f"{c.skipped} skipped by filter")
        if c.unredrivable:
            parts.append(f"{c.unredrivable} not redrivable (left in place)")
        if c.unreadable:
            parts.append(f"{c.unreadable} unreadable (left in place)")
        if c.not_done:
            why = "interrupted" if interrupted else "not finished"
            parts.append(f"{c.not_done} {why} (left in place)")
        if c.stopped:
            parts.append("reading stopped early (the rest was not read)")
        tail = " (dry run: nothing changed)" if self._dry_run else ""
        return f"redrive {self._name}: " + ", ".join(parts) + tail
