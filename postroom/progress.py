"""A small progress display for long command-line jobs (imports, exports), with no third-party dependency.

Theory of operation
-------------------
A `Progress` counts messages and bytes as the job `advance()`s it. On a terminal it redraws one line in place
(`\\r`): `label [#####.....] 123/456 1.2 MB 345 msg/s`, or without the bar and the total when the total is not
known (an mbox is not counted before it is read). Anywhere else (a log file, a pipe, systemd's journal) `\\r`
would pile up as garbage, so it writes a plain line at most every `interval` seconds and a summary line at the
end.

Invariants
----------
1. Drawing never slows the job down: a terminal is redrawn at most ten times a second, a log at most once per
   `interval`, however often `advance()` is called.
2. `close()` leaves the cursor at the start of a fresh line and is idempotent; after it nothing more is drawn.
3. The terminal line is cut to the terminal's width, so it never wraps (a wrapped line cannot be redrawn by
   `\\r`).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Protocol, Self, TextIO

_REDRAW_EVERY = 0.1  # seconds between terminal redraws (invariant 1)
_BAR_WIDTH = 20


class ProgressSink(Protocol):
    """What a job reports to: `transfer.import_messages` and `export_messages` take a factory of these."""

    def advance(self, n: int = 1, nbytes: int = 0) -> None: ...

    def close(self) -> None: ...


def human_bytes(n: float) -> str:
    """Decimal units (1 MB = 10**6 bytes), as disk and network sizes are usually given."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
    raise AssertionError("unreachable")


def _rate(count: int, seconds: float) -> str:
    if seconds <= 0:
        return "0"
    r = count / seconds
    return f"{r:.1f}" if r < 10 else f"{r:.0f}"


class Progress:
    """Counts messages and bytes and shows them on `stream` (standard error when None)."""

    def __init__(
        self,
        total: int | None,
        label: str,
        stream: TextIO | None = None,
        *,
        interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        tty: bool | None = None,
    ) -> None:
        # The stream is looked up when the job starts, not when this module is imported, so a redirected
        # sys.stderr (tests, daemons) is honoured.
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.total = total
        self.label = label
        self.count = 0
        self.nbytes = 0
        self._interval = interval
        self._clock = clock
        self._start = clock()
        self._drawn_width = 0
        self._closed = False
        if tty is None:
            try:
                tty = self.stream.isatty()
            except (AttributeError, ValueError):  # no isatty, or a closed stream
                tty = False
        self.tty = tty
        # A terminal shows the first advance at once; a log's first line comes one interval in, so a job that
        # finishes within one interval writes just the summary line.
        self._last_draw = float("-inf") if tty else self._start

    def line(self) -> str:
        """The progress line as it is drawn now (without `\\r`)."""
        elapsed = self._clock() - self._start
        parts = [self.label]
        if self.total:
            done = min(self.count, self.total) * _BAR_WIDTH // self.total
            parts.append("[" + "#" * done + "." * (_BAR_WIDTH - done) + "]")
            parts.append(f"{self.count}/{self.total}")
        else:
            parts.append(f"{self.count}")
        parts.append(human_bytes(self.nbytes))
        parts.append(f"{_rate(self.count, elapsed)} msg/s")
        return " ".join(parts)

    def advance(self, n: int = 1, nbytes: int = 0) -> None:
        if self._closed:
            return
        self.count += n
        self.nbytes += nbytes
        now = self._clock()
        if self.tty:
            if now - self._last_draw >= _REDRAW_EVERY:
                self._draw_tty()
                self._last_draw = now
        elif now - self._last_draw >= self._interval:
            self._write(self.line() + "\n")
            self._last_draw = now

    def _draw_tty(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns - 1
        text = self.line()[:width]  # invariant 3
        pad = max(0, self._drawn_width - len(text))
        self._write("\r" + text + " " * pad)
        self._drawn_width = len(text)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # A closed or broken stderr must not abort an import half-way; the job's result is what matters.
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.tty:
            self._draw_tty()
            self._write("\n")
            return
        elapsed = self._clock() - self._start
        self._write(
            f"{self.label}: {self.count} messages, {human_bytes(self.nbytes)} in {elapsed:.1f} s "
            f"({_rate(self.count, elapsed)} msg/s)\n"
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
