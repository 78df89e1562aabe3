"""A store that cannot be reached (docs/SCALING.md "While the database is down"): which errors the engines take
for it (`StoreUnavailable`), the outage told in one line per interval (`OutageLog`, logsetup.py `OutageFilter`),
and log lines written off the event loop, so an undrained stderr cannot freeze a node (`BackgroundHandler`)."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
import threading
from pathlib import Path

import asyncpg
import pytest

from postroom.logsetup import BackgroundHandler, OutageFilter
from postroom.store.api import OutageLog, StoreError, StoreUnavailable
from postroom.store.postgresql import engine as pg_engine
from postroom.store.sqlite import engine as sqlite_engine


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_store_unavailable_is_a_store_error() -> None:
    assert issubclass(StoreUnavailable, StoreError)


def test_outage_log_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = OutageLog(logging.getLogger("test.outage"), interval=10, now=clock)
    with caplog.at_level(logging.INFO, "test.outage"):
        for _ in range(120):  # 12 s of failures, ten a second
            outage.failed(ConnectionRefusedError("refused"))
            clock.t += 0.1
        outage.succeeded()
        outage.succeeded()  # nothing more: the outage was told over once
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "store unreachable: refused"
    assert lines[1].startswith("store unreachable (100 failures in the last 10 s): refused")
    assert lines[2].startswith("store reachable again (120 failures over 12 s)")
    assert len(lines) == 3


def test_outage_filter_drops_tracebacks_and_repeats() -> None:
    clock = Clock()
    f = OutageFilter(interval=10, now=clock)
    log = logging.getLogger("test.queue")

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException as e:  # noqa: BLE001 - any exception is the record's
            return log.makeRecord(log.name, logging.ERROR, __file__, 1, "queue dispatch %s", ("failed",),
                                  (type(e), e, e.__traceback__))

    first = record(StoreUnavailable("PostgreSQL unreachable: refused"))
    assert f.filter(first) and first.exc_info is None
    assert first.getMessage() == "queue dispatch failed: PostgreSQL unreachable: refused"
    assert not any(f.filter(record(StoreUnavailable("again"))) for _ in range(5))
    clock.t += 10
    later = record(StoreUnavailable("still"))
    assert f.filter(later) and later.getMessage() == "queue dispatch failed: still (5 more like it held back)"
    bug = record(ValueError("a bug"))  # anything else keeps its traceback, every time
    assert f.filter(bug) and bug.exc_info is not None and f.filter(record(ValueError("again")))


def test_background_handler_never_blocks_on_an_undrained_stream() -> None:
    r, w = os.pipe()
    stream = os.fdopen(w, "w", buffering=1)
    handler = BackgroundHandler(stream, max_pending=100)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("test.background")
    log.propagate = False
    log.addHandler(handler)
    try:
        async def flood() -> None:  # on an event loop: queued for the writer thread, never written here
            for i in range(2000):
                log.warning("line %d %s", i, "x" * 200)  # 400 KiB: far more than the pipe holds

        asyncio.run(flood())  # returns although nobody reads the pipe (the test's timeout would end it)
        got = bytearray()
        reader = threading.Thread(target=lambda: got.extend(_read_until(r, b"dropped")), daemon=True)
        reader.start()
        reader.join(60)
        text = got.decode()
        assert text.startswith("line 0 ") and "log lines dropped (stderr not drained)" in text
        numbers = [int(line.split()[1]) for line in text.splitlines() if line.startswith("line ")]
        assert numbers == sorted(numbers)  # invariant 2: in order
    finally:
        log.removeHandler(handler)
        handler.pause()
        stream.close()
        os.close(r)


def _read_until(fd: int, marker: bytes) -> bytes:
    data = bytearray()
    while marker not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return bytes(data)


def test_background_handler_without_a_loop_writes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "log"
    with path.open("w") as stream:
        handler = BackgroundHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.handle(logging.makeLogRecord({"msg": "direct"}))
        assert path.read_text() == "direct\n"  # no thread started: the parent of workers forks with none
        assert threading.active_count() == 1 or all(t.name != "log-writer" for t in threading.enumerate())


# ---- what the engines take for "unreachable"

@pytest.mark.parametrize("exc", [
    ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.CrashShutdownError("crash"),
    asyncpg.TooManyConnectionsError("too many clients"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
], ids=lambda e: type(e).__name__)
def test_postgresql_unreachable(exc: BaseException) -> None:
    assert pg_engine.unreachable(exc, connecting=True)
    assert pg_engine.unreachable(exc, connecting=False)


@pytest.mark.parametrize("exc", [
    asyncpg.UniqueViolationError("duplicate key"),
    asyncpg.UndefinedTableError("no such table"),  # a schema bug, not an outage
    asyncpg.QueryCanceledError("statement timeout"),  # class 57 but not the server going away
    asyncpg.InternalClientError("some other asyncpg bug"),
    ValueError("a bug"),
], ids=lambda e: type(e).__name__)
def test_postgresql_real_errors_stay_themselves(exc: BaseException) -> None:
    assert not pg_engine.unreachable(exc, connecting=True)
    assert not pg_engine.unreachable(exc, connecting=False)


def test_postgresql_os_error_only_while_connecting() -> None:
    gone = FileNotFoundError(errno.ENOENT, "no socket file")
    assert pg_engine.unreachable(gone, connecting=True)  # a Unix socket path with no server
    assert not pg_engine.unreachable(gone, connecting=False)  # inside a job: the job's own file


def test_sqlite_unreachable_for_real_sqlite_errors(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError) as cantopen:
        sqlite3.connect(tmp_path / "gone" / "store.db").execute("SELECT 1")
    assert sqlite_engine.unreachable(cantopen.value)
    db = tmp_path / "store.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the busy timeout
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as busy:
        other.execute("BEGIN IMMEDIATE")
    assert sqlite_engine.unreachable(busy.value)
    with pytest.raises(sqlite3.OperationalError) as bug:
        other.execute("SELECT nope FROM t")  # a bug in a query: never "unavailable"
    assert not sqlite_engine.unreachable(bug.value)
    holder.execute("ROLLBACK")
    other.execute("CREATE TABLE u (x UNIQUE)")
    with pytest.raises(sqlite3.IntegrityError) as integrity:
        other.execute("INSERT INTO u VALUES (1), (1)")
    assert not sqlite_engine.unreachable(integrity.value)
    assert sqlite_engine.unreachable(OSError(errno.EIO, "I/O error"))
    assert not sqlite_engine.unreachable(FileNotFoundError(errno.ENOENT, "a missing blob file"))
