"""The server's logging: lines written off the event loop, and a store outage told in a few lines, not thousands.

Theory of operation
-------------------
Python's `logging.StreamHandler` writes on the thread that logs. A server's event loop logs, and a stderr that
nobody drains (a pipe whose reader stopped, a stuck journal) then blocks the loop, and with it every session of
the process: measured, a node froze when its stderr pipe filled during a database outage. So `serve` logs
through `BackgroundHandler`:

    thread that logs                          writer thread (one per process, daemon)
    ----------------                          -------------
    record -> format -> line
    pending.append(line)  (never blocks)  ->  take every pending line, write them, flush
    over MAX_PENDING: the line is dropped     then "N log lines dropped (stderr not drained)" once it can
      and counted

The writer thread starts at the first line logged from a thread with a running event loop. A process with no
event loop writes directly, as before. The parent of the workers must fork with no thread of its own
(workers.py invariant 1): it ends the writer thread (`pause_all`, after writing what is pending) before it
forks, and writes directly after; a forked child starts with an empty handler of its own
(`os.register_at_fork`).

`OutageFilter` keeps a store outage from flooding the log (docs/SCALING.md "While the database is down"): the
engines count `StoreUnavailable` failures and log one line per interval themselves (store/api.py `OutageLog`),
so a record from anywhere else that carries a `StoreUnavailable` (a background loop's `log.exception`: the
queue dispatcher once a second, lease renewals) is logged without its traceback, and at most once per
`interval` seconds per logger and message, with how many were held back.

Invariants
1. `BackgroundHandler.emit` never waits for the stream on a thread that runs an event loop; memory is bounded by
   MAX_PENDING lines (and what one line holds).
2. Lines keep the order in which they were logged, within a process.
3. A record carrying a `StoreUnavailable` never prints a traceback, and each (logger, message) pair prints at
   most one such record per `OutageFilter.interval`.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

from postroom.store.api import StoreUnavailable

MAX_PENDING = 10_000  # lines waiting for the writer thread; more are dropped and counted
FLUSH_TIMEOUT = 5.0  # seconds `flush` waits for the writer thread to empty the queue


class BackgroundHandler(logging.Handler):
    """A handler writing formatted lines to `stream` from a thread of its own (module doc, invariants 1-2).
    `max_pending`: lines held while the stream does not take them; beyond it lines are dropped and counted."""

    def __init__(self, stream: TextIO, *, max_pending: int = MAX_PENDING) -> None:
        super().__init__()
        self.stream = stream
        self.max_pending = max_pending
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._pending: collections.deque[str] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._busy = False  # the writer thread is writing lines it took
        self._stop = False  # the writer thread ends once nothing is pending (`pause`)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)
            return
        with self._cond:
            if self._thread is None:
                if not _loop_running():  # no event loop here: nothing to block but this thread (module doc)
                    self._write([line])
                    return
                self._thread = threading.Thread(target=self._writer, name="log-writer", daemon=True)
                self._thread.start()
            if len(self._pending) >= self.max_pending:
                self._dropped += 1
                return
            self._pending.append(line)
            self._cond.notify()

    def _writer(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._dropped:
                    if self._stop:
                        return
                    self._cond.wait()
                lines = list(self._pending)
                self._pending.clear()
                dropped, self._dropped = self._dropped, 0
                self._busy = True
            if dropped:
                lines.append(f"{time.strftime('%Y-%m-%d %H:%M:%S')} WARNING postroom {dropped} log lines dropped"
                             " (stderr not drained)\n")
            self._write(lines)
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _write(self, lines: list[str]) -> None:
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nothing else to tell it to
            pass

    def flush(self) -> None:
        """Wait (at most FLUSH_TIMEOUT s) until every pending line is written: before a worker exits."""
        deadline = time.monotonic() + FLUSH_TIMEOUT
        with self._cond:
            while (self._pending or self._busy) and self._thread is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)


    def pause(self) -> None:
        """Write what is pending and end the writer thread (the next line from an event loop starts another):
        the parent of workers calls it before it forks (workers.py invariant 1: no thread of its own then)."""
        with self._cond:
            thread = self._thread
            if thread is None:
                return
            self._stop = True
            self._cond.notify_all()
        thread.join()
        with self._cond:
            self._thread = None
            self._stop = False


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class OutageFilter(logging.Filter):
    """Invariant 3: a record carrying a `StoreUnavailable` loses its traceback (its text is appended instead),
    and passes at most once per `interval` seconds per (logger, message); the next one that passes says how
    many were held back. `now`: a monotonic clock in seconds (tests give their own)."""

    def __init__(self, interval: float = 10.0, now: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval = interval
        self.now = now
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # key -> (when it last passed, held since)

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, StoreUnavailable):
            return True
        key = (record.name, str(record.msg))
        now = self.now()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        record.msg = f"{record.getMessage()}: {exc}" + (f" ({held} more like it held back)" if held else "")
        record.args = None
        record.exc_info = None
        record.exc_text = None
        return True


def setup(level: str, fmt: str, stream: TextIO | None = None) -> BackgroundHandler:
    """Logging for `postroom serve`: the root logger at `level` (a logging level name), lines in `fmt` written
    through a `BackgroundHandler` on `stream` (stderr) with an `OutageFilter`. Returns the handler."""
    handler = BackgroundHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(OutageFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    return handler


def pause_all() -> None:
    """`BackgroundHandler.pause` for every such handler of the root logger (before a fork)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, BackgroundHandler):
            handler.pause()


def flush_all() -> None:
    """Flush every handler of the root logger (a forked worker calls it before `os._exit`)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


__all__ = ["BackgroundHandler", "OutageFilter", "flush_all", "pause_all", "setup"]
