"""What is particular to the SQLite engine and its files: pragmas, schema version, blob files, open_store, names."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import os
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from postroom.mime.meta import compute_meta
from postroom.store import names, open_store
from postroom.store.api import (
    AppendRequest,
    ChangeKind,
    Flag,
    InsufficientStorage,
    Invalid,
    NotFound,
    StoreError,
    StoreMode,
)
from postroom.store.blobs import BlobStore, blob_id_of
from postroom.store.postgresql import PostgreSQLStore
from postroom.store.sqlite import SQLiteStore, engine, fts
from postroom.store.sqlite import messages as sqlite_messages
from postroom.store.sqlite.schema import SCHEMA_VERSION
from postroom.store.textindex import TextTerm

from .conftest import inbox, msg, new_user


def test_open_store_urls(tmp_path: Path) -> None:
    s = open_store(f"sqlite:///{tmp_path}/x.db", tmp_path)
    assert isinstance(s, SQLiteStore)
    assert s.path == tmp_path / "x.db" and s.blobs.root == tmp_path / "blobs"
    pg = open_store("postgresql://postroom@localhost:5432/db", tmp_path)  # built, not connected
    assert isinstance(pg, PostgreSQLStore) and pg.dsn == "postgresql://postroom@localhost:5432/db"
    with pytest.raises(StoreError):
        open_store("mysql://x", tmp_path)


async def test_pragmas_and_schema_version(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "p.db", tmp_path / "blobs")
    await store.open()
    try:
        conn = sqlite3.connect(tmp_path / "p.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.close()
        wconn = store._engine._wconn
        assert wconn is not None
        assert wconn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert wconn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert wconn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        assert wconn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == engine.WAL_AUTOCHECKPOINT
    finally:
        await store.close()


async def test_an_idle_writer_copies_the_wal_into_the_database_file(tmp_path: Path) -> None:
    """Engine invariant 12: once the writer has had no job for `IDLE_SECONDS` after `IDLE_CHECKPOINT_COMMITS`
    commits, it checkpoints, so the database file holds what was written while the store is still open, long
    before the WAL reaches `WAL_AUTOCHECKPOINT` pages (SQLite's own checkpoint, which these writes are far
    from). After fewer commits it does not: a checkpoint after every lone commit copied the pages every delivery
    changes once a message."""
    store = SQLiteStore(tmp_path / "c.db", tmp_path / "blobs")
    await store.open()
    db = tmp_path / "c.db"
    try:
        box = await inbox(store, await new_user(store))
        few = engine.IDLE_CHECKPOINT_COMMITS // 4
        for i in range(few):  # one commit each
            await store.append(box.id, msg(i, size=8192))
        await asyncio.sleep(0.05)
        before = db.stat().st_size
        await asyncio.sleep(5 * engine.IDLE_SECONDS)
        assert db.stat().st_size == before  # idle, but too few commits: left in the WAL
        for i in range(few, engine.IDLE_CHECKPOINT_COMMITS):
            await store.append(box.id, msg(i, size=8192))
        wal_pages = (tmp_path / "c.db-wal").stat().st_size // 4096
        assert 2 * engine.IDLE_CHECKPOINT_COMMITS <= wal_pages < engine.WAL_AUTOCHECKPOINT
        for _ in range(200):  # the bodies (inline) reach the database file: ~10 s at most
            if db.stat().st_size >= before + engine.IDLE_CHECKPOINT_COMMITS * 8192:
                break
            await asyncio.sleep(0.05)
        assert db.stat().st_size >= before + engine.IDLE_CHECKPOINT_COMMITS * 8192
        assert len(await store.list_messages(box.id)) == engine.IDLE_CHECKPOINT_COMMITS
    finally:
        await store.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "n.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    store = SQLiteStore(tmp_path / "n.db", tmp_path / "blobs")
    with pytest.raises(StoreError, match="newer"):
        await store.open()


async def test_blob_file_layout_and_fsync_path(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "b.db", tmp_path / "blobs", inline_max=-1)
    await store.open()
    try:
        u = await new_user(store)
        r = await store.append((await inbox(store, u)).id, msg(1))
        info = await store.get_message((await inbox(store, u)).id, r.uid)
        assert info is not None
        h = hashlib.sha256(msg(1).raw).hexdigest()
        path = tmp_path / "blobs" / h[:2] / h[2:4] / h
        assert path.read_bytes() == msg(1).raw
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp.")]
    finally:
        await store.close()


def test_blobstore_write_is_idempotent(tmp_path: Path) -> None:
    bs = BlobStore(tmp_path / "blobs")
    data = b"hello"
    bid = blob_id_of(data)
    assert bs.write(bid, data) is True
    mtime = bs.path(bid).stat().st_mtime_ns
    assert bs.write(bid, data) is False
    assert bs.path(bid).stat().st_mtime_ns == mtime
    # a wrong-sized file under the name (should never happen) is replaced
    bs.path(bid).write_bytes(b"hel")
    assert bs.write(bid, data) is True and bs.read(bid) == data
    bs.delete(bid)
    bs.delete(bid)
    assert not bs.exists(bid)
    with pytest.raises(NotFound):
        bs.read(bid)
    for bad in ("", "../x", "A" * 64, "g" * 64, "a" * 63):
        with pytest.raises(Invalid):
            bs.path(bad)


async def test_missing_file_is_rewritten_on_new_reference(tmp_path: Path) -> None:
    """If a body's file vanished between its last reference and a new one, the new writer puts it back."""
    store = SQLiteStore(tmp_path / "r.db", tmp_path / "blobs", inline_max=-1)
    await store.open()
    try:
        u = await new_user(store)
        box = await inbox(store, u)
        raw = msg(3).raw
        bid = blob_id_of(raw)
        orig_write = store.blobs.write
        calls: list[str] = []

        def write_then_vanish(blob_id: str, data: bytes, prefix: bytes = b"") -> bool:
            created = orig_write(blob_id, data, prefix)
            if not calls:  # the first, pre-commit write: simulate a racing deletion right after it
                os.unlink(store.blobs.path(blob_id))
            calls.append(blob_id)
            return created

        store.blobs.write = write_then_vanish  # type: ignore[method-assign]
        r = await store.append(box.id, msg(3))
        store.blobs.write = orig_write  # type: ignore[method-assign]
        assert len(calls) == 2  # the writer thread noticed and wrote it again before committing
        info = await store.get_message(box.id, r.uid)
        assert info is not None and await store.read_message(bid) == raw
    finally:
        await store.close()


async def test_on_commit_callback(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "c.db", tmp_path / "blobs")
    seen: list[tuple[float, int]] = []
    store.on_commit = lambda seconds, ops: seen.append((seconds, ops))
    assert store.on_commit is not None
    await store.open()
    try:
        await store.add_domain("example.org")
        assert len(seen) >= 1 and seen[-1][1] >= 1 and seen[-1][0] >= 0
        store.on_commit = lambda s, o: 1 / 0  # a broken callback must not break writes
        await store.add_domain("example.net")
        assert await store.get_domain("example.net") is not None
    finally:
        await store.close()


async def test_on_lock_wait_says_how_long_another_process_held_the_write_lock(tmp_path: Path) -> None:
    """engine.py module doc: a writer waits for the flock of `<database>-writer.lock` that another process (here
    another open file description of it, which flock treats alike) holds; `on_lock_wait` hears how long."""
    store = SQLiteStore(tmp_path / "c.db", tmp_path / "blobs")
    waits: list[float] = []
    store.on_lock_wait = waits.append
    await store.open()
    holder = os.open(f"{store.path}-writer.lock", os.O_RDWR)
    try:
        before = len(waits)  # (opening the store writes too)
        await store.add_domain("example.org")
        assert len(waits) == before + 1 and waits[-1] >= 0
        fcntl.flock(holder, fcntl.LOCK_EX)
        write = asyncio.ensure_future(store.add_domain("example.net"))
        await asyncio.sleep(0.3)
        assert not write.done()  # the writer waits for the lock
        fcntl.flock(holder, fcntl.LOCK_UN)
        await write
        assert len(waits) == before + 2 and waits[-1] >= 0.05  # it waited until the release, 0.3 s on
        store.on_lock_wait = lambda s: 1 / 0  # a broken callback must not break writes
        await store.add_domain("example.com")
        assert await store.get_domain("example.com") is not None
    finally:
        os.close(holder)
        await store.close()


def test_name_rules() -> None:
    assert names.domain(" Example.ORG. ") == "example.org"
    assert names.address("Bob@Example.Org") == "bob@example.org"
    assert names.address('"odd@local"@example.org') == '"odd@local"@example.org'
    assert names.alias_source("@Example.org") == "@example.org"
    assert names.mailbox("inbox") == "INBOX" and names.mailbox("InBox/Sub") == "INBOX/Sub"
    assert names.mailbox("Inboxes") == "Inboxes"
    assert names.parents("a/b/c") == ["a", "a/b"]
    assert names.is_inside("a/b", "a") and not names.is_inside("ab", "a")
    assert names.keywords(["$Work", "$WORK", "x"]) == {"$work": "$Work", "x": "x"}
    for bad in ("", "a//b", "/a", "a/", "x\ty"):
        with pytest.raises(Invalid):
            names.mailbox(bad)
    with pytest.raises(Invalid):
        names.flags(-1)


def _etilqs_files() -> list[str]:
    """SQLite's temporary files (named etilqs_*, os_unix.c) this process has open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "etilqs_" in target:
            found.append(target)
    return found


async def _in_one_batch(store: SQLiteStore, writes: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Start each of `writes` (store calls that write) while a writer flock held here keeps the writer waiting,
    so their jobs form one batch; their results, or the exceptions they raised, in order."""
    holder = os.open(f"{store.path}-writer.lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        futures = [asyncio.ensure_future(write()) for write in writes]
        await asyncio.sleep(0.1)
        fcntl.flock(holder, fcntl.LOCK_UN)
        return list(await asyncio.gather(*futures, return_exceptions=True))
    finally:
        os.close(holder)


async def _one_batch(store: SQLiteStore, fns: list[Any]) -> list[Any]:
    """Run `fns` as write jobs in one batch (`_in_one_batch`)."""
    return await _in_one_batch(store, [functools.partial(store._engine.write, fn) for fn in fns])


async def test_a_batch_runs_its_jobs_without_savepoint_journals(tmp_path: Path) -> None:
    """engine.py invariant 11: the jobs of a batch run with no SAVEPOINT between them, so SQLite keeps no
    statement journal of the pages they change; under a SAVEPOINT it would spill to a temporary file once past
    64 KiB, and two jobs each changing ~1 MiB of existing pages are far past it."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()

    def fill(tx: Any) -> None:
        tx.conn.execute("CREATE TABLE scratch(x BLOB)")
        tx.conn.executemany("INSERT INTO scratch(x) VALUES (randomblob(1000))", [()] * 1000)

    def rewrite(tx: Any) -> list[str]:
        # every page of the table, one row a statement as a delivery writes (a statement that changes several
        # rows keeps its own statement journal, SAVEPOINT or not)
        tx.conn.executemany("UPDATE scratch SET x = randomblob(1000) WHERE rowid = ?", [(i,) for i in range(1, 1001)])
        return _etilqs_files()

    try:
        await store._engine.write(fill)
        assert await _one_batch(store, [rewrite, rewrite]) == [[], []]
    finally:
        await store.close()


async def test_a_job_that_raises_fails_alone_and_is_not_run_again(tmp_path: Path) -> None:
    """engine.py invariant 11: job k raises, so the batch is rolled back and run again, each job in a
    SAVEPOINT, without job k: the jobs before it run twice, job k once, the jobs after it once; k's exception
    reaches its caller and the others' work commits, k's does not (nor its work before it raised)."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    runs = {"a": 0, "b": 0, "c": 0}

    def make(tx: Any) -> None:
        tx.conn.execute("CREATE TABLE t(name TEXT UNIQUE)")

    def job(name: str, fail: bool = False) -> Any:
        def fn(tx: Any) -> str:
            runs[name] += 1  # only the test counts outside its Tx
            tx.conn.execute("INSERT INTO t(name) VALUES (?)", (name,))
            if fail:
                raise NotFound(f"{name} failed after its insert")
            return name
        return fn

    try:
        await store._engine.write(make)
        results = await _one_batch(store, [job("a"), job("b", fail=True), job("c")])
        assert results[0] == "a" and results[2] == "c"
        assert isinstance(results[1], NotFound) and "b failed" in str(results[1])
        assert runs == {"a": 2, "b": 1, "c": 1}
        names = await store._engine.read(lambda conn: [r[0] for r in conn.execute("SELECT name FROM t ORDER BY 1")])
        assert names == ["a", "c"]
        # A batch of one job that raises: rolled back, not run again.
        results = await _one_batch(store, [job("b", fail=True)])
        assert isinstance(results[0], NotFound) and runs["b"] == 2
        # A job that fails because of an earlier one of its batch fails again the same way.
        results = await _one_batch(store, [job("a"), job("c")])
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results)  # both names are taken
        assert runs == {"a": 3, "b": 2, "c": 2}
    finally:
        await store.close()


async def test_a_job_that_fills_the_database_fails_its_batch_as_out_of_space_in_either_run(tmp_path: Path) -> None:
    """engine.py invariants 1, 6 and 11: SQLITE_FULL (here `max_page_count`, as a full disk) ends the whole
    transaction, in the first run of a batch (no SAVEPOINTs) and in its second (each job in a SAVEPOINT, after
    another job raised): either way every job of the batch hears `InsufficientStorage`, none of their rows
    stay, and the writer goes on. Not `no such savepoint: job`, which a caller cannot tell from a bug."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()

    def make(tx: Any) -> None:
        tx.conn.execute("CREATE TABLE t(x BLOB)")
        (pages,) = tx.conn.execute("PRAGMA page_count").fetchone()
        tx.conn.execute(f"PRAGMA max_page_count = {pages + 40}")  # ~160 KiB more: the writer's own connection

    def small(tx: Any) -> str:
        tx.conn.execute("INSERT INTO t(x) VALUES (randomblob(10000))")
        return "small"

    def big(tx: Any) -> str:
        tx.conn.execute("INSERT INTO t(x) VALUES (randomblob(1000000))")  # past max_page_count: SQLITE_FULL
        return "big"

    def missing(tx: Any) -> str:
        raise NotFound("no such mailbox")  # the batch runs again, each job in a SAVEPOINT

    def rows(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])

    try:
        await store._engine.write(make)
        for batch in ([small, big], [missing, small, big]):
            results = await _one_batch(store, batch)
            assert all(isinstance(r, InsufficientStorage) for r in results), results
            assert await store._engine.read(rows) == 0
        results = await _one_batch(store, [missing, small])
        assert isinstance(results[0], NotFound) and results[1] == "small"
        assert await store._engine.read(rows) == 1
    finally:
        await store.close()


async def test_index_rows_that_fill_the_database_fail_the_batch_as_out_of_space(tmp_path: Path) -> None:
    """engine.py invariants 1 and 6, fts.py `index_deferred`: the batch's index step meets SQLITE_FULL, which ends
    the whole transaction (here `max_page_count`, as a full disk, once the job has stored its body). The job's
    caller hears `InsufficientStorage`, not `no such savepoint: fts_index` (what ROLLBACK TO says with no
    transaction left), and the body is not stored; the writer goes on."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    text = " ".join(hashlib.sha256(b"%d" % i).hexdigest()[:8] for i in range(20_000))
    raw = f"From: a@example.org\r\nSubject: big\r\nContent-Type: text/plain\r\n\r\n{text}\r\n".encode()
    meta = compute_meta(raw).to_bytes()

    def store_then_fill(tx: Any) -> None:
        tx.conn.execute("INSERT INTO blobs(id, size, refcount, meta, crlf_size) VALUES ('b1', ?, 1, ?, ?)",
                        (len(raw), meta, len(raw)))
        (pages,) = tx.conn.execute("PRAGMA page_count").fetchone()
        tx.conn.execute(f"PRAGMA max_page_count = {pages}")  # the writer's connection: not one page more
        fts.index_later(tx, "b1", meta, fts.parse_meta(meta))

    def room(tx: Any) -> None:
        tx.conn.execute("PRAGMA max_page_count = 1073741823")

    try:
        with pytest.raises(InsufficientStorage):
            await store._engine.write(store_then_fill)
        await store._engine.write(room)
        assert await store._engine.read(lambda c: c.execute("SELECT count(*) FROM blobs").fetchone()[0]) == 0
        box = await inbox(store, await new_user(store))
        assert (await store.append(box.id, msg(1))).uid == 1
    finally:
        await store.close()


def _indexed_message(n: int) -> AppendRequest:
    raw = b"From: a@example.org\r\nSubject: indexed %d\r\n\r\nbody words %d\r\n" % (n, n)
    meta = compute_meta(raw)
    return AppendRequest(raw=raw, meta=meta.to_bytes(), parsed=meta)


async def _appends_in_one_batch(store: SQLiteStore, appends: list[tuple[int, AppendRequest]]) -> list[Any]:
    """`store.append` of each (mailbox id, request), in one batch (`_in_one_batch`)."""
    return await _in_one_batch(store, [functools.partial(store.append, box, req) for box, req in appends])


async def test_a_batch_writes_its_index_rows_without_a_savepoint(tmp_path: Path) -> None:
    """engine.py invariant 9, fts.py `index_deferred`: the full-text rows of a batch's new bodies are written
    with no SAVEPOINT (nor the jobs before them: invariant 11), so SQLite keeps no statement journal for them;
    under one, the pages the FTS5 segment changes went to a temporary file in every batch."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    try:
        box = await inbox(store, await new_user(store))
        statements: list[str] = []
        conn = store._engine._wconn
        assert conn is not None
        conn.set_trace_callback(statements.append)
        try:
            results = await _appends_in_one_batch(store, [(box.id, _indexed_message(n)) for n in range(3)])
        finally:
            conn.set_trace_callback(None)
        assert [r.uid for r in results] == [1, 2, 3]
        assert any("INSERT INTO fts_body" in s for s in statements)  # indexed in this batch, not parked
        assert not [s for s in statements if s.lstrip().upper().startswith(("SAVEPOINT", "RELEASE", "ROLLBACK"))]
        indexed = await store._engine.read(lambda c: c.execute("SELECT count(*) FROM fts_docs").fetchone()[0])
        assert indexed == 3
    finally:
        await store.close()


async def test_index_rows_that_fail_leave_the_bodies_in_the_backlog(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """engine.py invariant 9, fts.py invariant 1: the batch's index step raises an ordinary error (here SQLite
    refuses the index rows: a trigger on the writer's connection; a body whose rows cannot be derived is fts.py
    invariant 6, which does not make the step raise): the batch is rolled back and runs again with the new
    bodies put in the backlog instead. Every message is stored, none is refused for its index rows; a job of
    the same batch that failed on its own still fails alone; each body is in exactly one of the index and the
    backlog (schema invariant 12); once the index works again, later bodies are indexed as usual."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    broken = True

    def break_index(tx: Any) -> None:
        tx.conn.create_function("index_refused", 0, lambda: int(broken))
        tx.conn.execute("CREATE TEMP TRIGGER no_docs BEFORE INSERT ON main.fts_docs WHEN index_refused()"
                        " BEGIN SELECT RAISE(ABORT, 'index rows refused'); END")

    try:
        box = await inbox(store, await new_user(store))
        await store._engine.write(break_index)
        results = await _appends_in_one_batch(
            store, [(box.id, _indexed_message(1)), (10**6, _indexed_message(2)), (box.id, _indexed_message(3))])
        assert results[0].uid == 1 and results[2].uid == 2
        assert isinstance(results[1], NotFound)
        assert "full-text index failed (index rows refused); the batch runs again" in caplog.text

        def where(conn: sqlite3.Connection) -> tuple[int, int, int]:
            (docs,) = conn.execute("SELECT count(*) FROM fts_docs").fetchone()
            (backlog,) = conn.execute("SELECT count(*) FROM fts_backlog").fetchone()
            (bodies,) = conn.execute("SELECT count(*) FROM blobs").fetchone()
            return docs, backlog, bodies

        assert await store._engine.read(where) == (0, 2, 2)
        assert [m.uid for m in await store.list_messages(box.id)] == [1, 2]
        broken = False
        assert (await store.append(box.id, _indexed_message(4))).uid == 3
        assert await store._engine.read(where) == (1, 2, 3)
    finally:
        await store.close()


async def test_index_rows_whose_backlog_fallback_fails_too_fail_the_batch_once(tmp_path: Path) -> None:
    """engine.py invariant 9: the batch's index step raises, the batch runs again with the bodies recorded in
    the backlog instead (`park`), and that fallback raises too, with the transaction still open (an ordinary
    error: a corrupt page, a constraint; here triggers on the writer's connection, as SQLite raises them). The
    batch then fails with the fallback's error, once: running it again would only meet the same error, and the
    writer would loop for ever holding the write lock (every later write waiting). Nothing of it is stored, and
    the writer goes on."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    fallbacks = 0

    def backlog_refused() -> int:  # a persistent failure, bounded so that a writer that loops still ends
        nonlocal fallbacks
        fallbacks += 1
        return int(fallbacks <= 50)

    def break_index(tx: Any) -> None:
        tx.conn.create_function("backlog_refused", 0, backlog_refused)
        tx.conn.execute("CREATE TEMP TRIGGER no_docs BEFORE INSERT ON main.fts_docs"
                        " BEGIN SELECT RAISE(ABORT, 'index rows refused'); END")
        tx.conn.execute("CREATE TEMP TRIGGER no_backlog BEFORE INSERT ON main.fts_backlog WHEN backlog_refused()"
                        " BEGIN SELECT RAISE(ABORT, 'backlog rows refused'); END")

    def mend_index(tx: Any) -> None:
        tx.conn.execute("DROP TRIGGER temp.no_docs")
        tx.conn.execute("DROP TRIGGER temp.no_backlog")

    def counts(conn: sqlite3.Connection) -> tuple[int, int, int, int]:
        return tuple(int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[return-value]
                     for t in ("messages", "blobs", "fts_docs", "fts_backlog"))

    try:
        box = await inbox(store, await new_user(store))
        await store._engine.write(break_index)
        results = await _appends_in_one_batch(store, [(box.id, _indexed_message(n)) for n in range(3)])
        assert all(isinstance(r, sqlite3.IntegrityError) and "backlog rows refused" in str(r) for r in results), results
        assert fallbacks == 1
        assert await store._engine.read(counts) == (0, 0, 0, 0)
        await store._engine.write(mend_index)
        assert (await store.append(box.id, _indexed_message(4))).uid == 1
        assert await store._engine.read(counts) == (1, 1, 1, 0)
    finally:
        await store.close()


async def test_bodies_backlogged_by_a_failed_index_step_are_indexed_by_the_idle_writer(tmp_path: Path) -> None:
    """engine.py invariants 9 and 10, in an engine that parks (`postroom serve`): the batch's index step fails
    for a while (here a trigger on the writer's connection refuses index rows), so its bodies go to the backlog
    (the fallback); once the index works again the idle writer indexes them, as parked ones, and the backlog
    drains without a restart of the server (which alone works off a backlog found on disk: indexing.py). Left
    there, every SEARCH of their mailbox would read each one's metadata for as long as the server runs."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    store.parks = True  # as `postroom serve` has it (engine invariant 10)
    await store.open()
    broken = True

    def break_index(tx: Any) -> None:
        tx.conn.create_function("index_refused", 0, lambda: int(broken))
        tx.conn.execute("CREATE TEMP TRIGGER no_docs BEFORE INSERT ON main.fts_docs WHEN index_refused()"
                        " BEGIN SELECT RAISE(ABORT, 'index rows refused'); END")

    def where(conn: sqlite3.Connection) -> tuple[int, int]:
        return tuple(int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[return-value]
                     for t in ("fts_docs", "fts_backlog"))

    try:
        box = await inbox(store, await new_user(store))
        await store._engine.write(break_index)
        assert [(await store.append(box.id, _indexed_message(n))).uid for n in (1, 2)] == [1, 2]
        assert await store._engine.read(where) == (0, 2)
        broken = False
        for _ in range(200):
            if await store._engine.read(where) == (2, 0):
                break
            await asyncio.sleep(0.05)
        assert await store._engine.read(where) == (2, 0)
    finally:
        await store.close()


async def test_a_body_stored_again_is_not_refused_for_its_index_rows(tmp_path: Path) -> None:
    """fts.py invariant 1, common.py `acquire_blob`: a body stored again while it is not indexed (here in the
    backlog, where the index step's fallback left it) is indexed in the batch's deferred step too, not inside
    its job, so a failing index falls back to the backlog for it as for a new body and the message is stored,
    not refused for its index rows (a job's error is its caller's). Once the index works, storing the body
    again indexes it and takes it out of the backlog: in exactly one of the two (schema invariant 12)."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()

    def break_index(tx: Any) -> None:
        tx.conn.execute("CREATE TEMP TRIGGER no_docs BEFORE INSERT ON main.fts_docs"
                        " BEGIN SELECT RAISE(ABORT, 'index rows refused'); END")

    def where(conn: sqlite3.Connection) -> tuple[int, int, int]:
        return tuple(int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[return-value]
                     for t in ("blobs", "fts_docs", "fts_backlog"))

    try:
        user = await new_user(store)
        box = await inbox(store, user)
        other = await store.create_mailbox(user.id, "Other")
        await store._engine.write(break_index)
        assert (await store.append(box.id, _indexed_message(1))).uid == 1
        assert await store._engine.read(where) == (1, 0, 1)  # the fallback: in the backlog
        results = await _appends_in_one_batch(store, [(box.id, _indexed_message(1)), (other.id, _indexed_message(1))])
        assert [r.uid for r in results] == [2, 1], results
        assert await store._engine.read(where) == (1, 0, 1)
        await store._engine.write(lambda tx: tx.conn.execute("DROP TRIGGER temp.no_docs"))
        assert (await store.append(other.id, _indexed_message(1))).uid == 2
        assert await store._engine.read(where) == (1, 1, 0)
        found = await store.search_text(box.id, 1, 10, TextTerm("body", "words 1"))
        assert found is not None and [m.uid for m in found.messages] == [1, 2]
    finally:
        await store.close()


async def test_removing_many_indexed_bodies_holds_a_bounded_share_of_their_text(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fts.py `unindex_blobs` (the last references of many bodies go at once: DELETE of a mailbox or a user, an
    EXPUNGE step) holds the indexed values it deletes the rows with for at most `UNINDEX_TEXT_MAX` characters
    at a time, not for every body together: a mailbox of 100,000 messages would otherwise hold all their search
    text (up to 256 Ki characters each, text.py invariant 2) in the writer at once. Measured with tracemalloc
    (allocations, not time) around removing 40 bodies of ~200 Ki characters each, with the bound set to 1 Mi."""
    import tracemalloc

    monkeypatch.setattr(fts, "UNINDEX_TEXT_MAX", 1 << 20, raising=False)
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    try:
        user = await new_user(store)
        box = await store.create_mailbox(user.id, "Big")
        for n in range(40):
            words = " ".join(hashlib.sha256(b"%d-%d" % (n, i)).hexdigest()[:12] for i in range(16_000))
            raw = f"Subject: big {n}\r\nContent-Type: text/plain\r\n\r\n{words}\r\n".encode()
            await store.append(box.id, AppendRequest(raw=raw, meta=compute_meta(raw).to_bytes()))
        indexed = await store._engine.read(lambda c: c.execute("SELECT count(*) FROM fts_docs").fetchone()[0])
        assert indexed == 40
        tracemalloc.start()
        try:
            await store.delete_mailbox(user.id, "Big")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert await store._engine.read(lambda c: c.execute("SELECT count(*) FROM fts_docs").fetchone()[0]) == 0
        # All 40 bodies' values together are 40 x ~208 Ki characters, > 8 MiB; the bound (1 Mi characters) plus
        # one body's metadata and values in flight stays well under 4 MiB.
        assert peak < 4 * (1 << 20), peak
    finally:
        await store.close()


async def test_a_large_removal_takes_the_write_lock_a_step_at_a_time(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """messages.py invariant 9: EXPUNGE and remove_messages take at most REMOVE_STEP messages per write job, in
    UID order, so a write queued meanwhile (a delivery) commits between two steps instead of after the whole."""
    monkeypatch.setattr(sqlite_messages, "REMOVE_STEP", 3)
    store = SQLiteStore(tmp_path / "r.db", tmp_path / "blobs")
    await store.open()
    try:
        box = await inbox(store, await new_user(store))
        uids = [(await store.append(box.id, msg(i))).uid for i in range(12)]
        keep = {uids[4], uids[9]}
        await store.store_flags(box.id, [u for u in uids if u not in keep], StoreMode.ADD, Flag.DELETED)
        jobs: list[int] = []
        store.on_commit = lambda seconds, ops: jobs.append(ops)
        expunge = asyncio.ensure_future(store.expunge(box.id))
        delivered = asyncio.ensure_future(store.append(box.id, msg(99)))
        result = await expunge
        late = (await delivered).uid
        assert [c.uid for c in result.changes] == [u for u in uids if u not in keep]  # UID order, each once
        assert all(c.kind is ChangeKind.EXPUNGE for c in result.changes)
        assert len(jobs) >= 4  # 10 messages: 3 + 3 + 3 + 1, and the delivery committed between two of them
        assert [m.uid for m in await store.list_messages(box.id)] == sorted([*keep, late])
        # With UIDs, and remove_messages (whatever the flags), the same steps.
        more = [(await store.append(box.id, msg(i))).uid for i in range(100, 107)]
        await store.store_flags(box.id, more[:5], StoreMode.ADD, Flag.DELETED)
        jobs.clear()
        result = await store.expunge(box.id, [*more, 10**6])
        assert [c.uid for c in result.changes] == more[:5] and len(jobs) == 3
        jobs.clear()
        result = await store.remove_messages(box.id, [*keep, *more[5:]])
        assert [c.uid for c in result.changes] == sorted([*keep, *more[5:]]) and len(jobs) == 2
        assert [m.uid for m in await store.list_messages(box.id)] == [late]
        with pytest.raises(NotFound):
            await store.expunge(10**6)
        with pytest.raises(NotFound):
            await store.remove_messages(10**6, [])
    finally:
        await store.close()
