"""The store side of CONDSTORE and QRESYNC (RFC 7162): `list_changed`, `vanished`, `prune_expunged` and
`store_flags(unchanged_since=...)`'s `modified`; the schema step that dates the expunged record (8)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from postroom.store.api import Flag, Store, StoreMode
from postroom.store.sqlite import SQLiteStore
from postroom.store.sqlite.schema import SCHEMA_VERSION

from .conftest import downgrade, inbox, msg, new_user


async def test_list_changed_is_what_changed_after_a_modseq(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    results = await store.append_many(box.id, [msg(i) for i in range(1, 11)])
    mark = results[-1].modseq
    await store.store_flags(box.id, [7, 3], StoreMode.ADD, Flag.SEEN)
    await store.append(box.id, msg(11))
    cols = await store.list_changed(box.id, mark)
    assert list(cols.uids) == [3, 7, 11]  # UID order, whatever order the MODSEQs are in
    assert list(cols.modseqs) == [mark + 1, mark + 2, mark + 3]
    assert list(cols.flags) == [Flag.SEEN, Flag.SEEN, 0]
    assert list((await store.list_changed(box.id, mark, 4, 10)).uids) == [7]  # a UID range
    assert len(await store.list_changed(box.id, mark + 3)) == 0
    assert list((await store.list_changed(box.id, 0)).uids) == list(range(1, 12))


async def test_vanished_lists_removals_after_a_modseq(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(i) for i in range(1, 7)])
    await store.store_flags(box.id, [2], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id)
    mark = (await inbox(store, u)).highestmodseq
    await store.store_flags(box.id, [5, 4], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id)
    archive = await store.get_mailbox(u.id, "Archive")
    assert archive is not None
    await store.move_messages(box.id, [6], archive.id)  # a move removes too (RFC 7162 §3.2)
    v = await store.vanished(box.id, mark)
    assert (list(v.uids), v.complete, v.uidnext) == ([4, 5, 6], True, 7)
    assert list((await store.vanished(box.id, 0)).uids) == [2, 4, 5, 6]
    # INBOX renamed: its messages leave it, and are recorded as removed there
    await store.rename_mailbox(u.id, "INBOX", "Old")
    assert list((await store.vanished(box.id, 0)).uids) == [1, 2, 3, 4, 5, 6]


async def test_unchanged_since_reports_the_messages_left_alone(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    r1, r2, r3 = await store.append_many(box.id, [msg(1), msg(2), msg(3)])
    cutoff = r3.modseq
    await store.store_flags(box.id, [r2.uid], StoreMode.ADD, Flag.FLAGGED)  # r2 past the cutoff
    await store.store_flags(box.id, [r3.uid], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id)  # r3 gone
    w = await store.store_flags(box.id, [r1.uid, r2.uid, r3.uid], StoreMode.ADD, Flag.SEEN, unchanged_since=cutoff)
    assert [c.uid for c in w.changes] == [r1.uid]
    assert w.modified == (r2.uid, r3.uid)  # RFC 7162 §3.1.3: changed since, and removed since
    # UNCHANGEDSINCE 0 always fails for a message that exists (RFC 7162 §3.1.3)
    w = await store.store_flags(box.id, [r1.uid], StoreMode.ADD, Flag.ANSWERED, unchanged_since=0)
    assert (w.changes, w.modified) == ((), (r1.uid,))
    w = await store.store_flags(box.id, [r1.uid, 99], StoreMode.ADD, Flag.ANSWERED)  # no test, nothing listed
    assert w.modified == ()


async def test_pruned_record_makes_vanished_incomplete(tmp_path: Path) -> None:
    now = [1_000_000.0]
    store = SQLiteStore(tmp_path / "p.db", tmp_path / "blobs", clock=lambda: now[0])
    await store.open()
    try:
        u = await new_user(store)
        box = await inbox(store, u)
        await store.append_many(box.id, [msg(i) for i in range(1, 6)])
        start = (await inbox(store, u)).highestmodseq
        await store.store_flags(box.id, [1, 2], StoreMode.ADD, Flag.DELETED)
        await store.expunge(box.id)  # at t0
        middle = (await inbox(store, u)).highestmodseq
        now[0] += 86400
        await store.store_flags(box.id, [4], StoreMode.ADD, Flag.DELETED)
        await store.expunge(box.id)  # a day later
        assert await store.prune_expunged(now[0] - 3600) == 2  # the first two only
        v = await store.vanished(box.id, start)
        assert (v.complete, list(v.uids), v.uidnext) == (False, [], 6)  # 1 and 2 were forgotten
        v = await store.vanished(box.id, middle)
        assert (v.complete, list(v.uids)) == (True, [4])  # everything after the floor is still known
        assert await store.prune_expunged(now[0] - 3600) == 0
        assert await store.prune_expunged(now[0] + 1) == 1
        assert not (await store.vanished(box.id, middle)).complete
        assert (await store.vanished(box.id, (await inbox(store, u)).highestmodseq)).complete
    finally:
        await store.close()


async def test_prune_works_in_batches(tmp_path: Path) -> None:
    from postroom.store.sqlite import messages

    store = SQLiteStore(tmp_path / "b.db", tmp_path / "blobs", clock=lambda: 100.0)
    await store.open()
    try:
        box = await inbox(store, await new_user(store))
        await store.append_many(box.id, [msg(i) for i in range(1, 26)])
        await store.store_flags(box.id, list(range(1, 26)), StoreMode.ADD, Flag.DELETED)
        await store.expunge(box.id)
        old = messages.PRUNE_BATCH
        messages.PRUNE_BATCH = 10
        try:
            assert await store.prune_expunged(200.0) == 25
        finally:
            messages.PRUNE_BATCH = old
        assert not (await store.vanished(box.id, 0)).complete
    finally:
        await store.close()


def _plan(db: Path, sql: str, args: tuple[object, ...]) -> str:
    conn = sqlite3.connect(db)
    try:
        return " / ".join(str(r[-1]) for r in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
    finally:
        conn.close()


async def test_changed_and_vanished_read_through_their_indexes(tmp_path: Path) -> None:
    """Cost proportional to the changes: the queries `list_changed` and `vanished` run are index range scans
    on (mailbox, modseq), never a scan of the mailbox (checked on the plan SQLite makes for them)."""
    store = SQLiteStore(tmp_path / "i.db", tmp_path / "blobs")
    await store.open()
    await store.close()
    db = tmp_path / "i.db"
    changed = _plan(db, "SELECT uid, modseq, flags, size, internal_date, blob_id, keywords FROM messages"
                        " INDEXED BY messages_modseq WHERE mailbox_id = ? AND modseq > ? AND uid BETWEEN ? AND ?",
                    (1, 5, 1, 10))
    assert "USING INDEX messages_modseq (mailbox_id=? AND modseq>?)" in changed, changed
    gone = _plan(db, "SELECT uid FROM expunged INDEXED BY expunged_modseq WHERE mailbox_id = ? AND modseq > ?",
                 (1, 5))
    assert "USING COVERING INDEX expunged_modseq (mailbox_id=? AND modseq>?)" in gone, gone
    import inspect

    from postroom.store.sqlite import messages

    source = inspect.getsource(messages)  # the statements above are the ones the engine runs
    assert "INDEXED BY messages_modseq WHERE mailbox_id = ? AND modseq > ? AND uid BETWEEN ? AND ?" in source
    assert "INDEXED BY expunged_modseq WHERE mailbox_id = ? AND modseq > ?" in source


async def test_migration_to_8_dates_the_record_and_keeps_it_complete(tmp_path: Path) -> None:
    """A store written at schema 7 (no `expunged.at`, no floor), with removals recorded, then opened by this
    code: the old rows are kept (dated at the upgrade) and answer VANISHED exactly."""
    store = SQLiteStore(tmp_path / "v7.db", tmp_path / "blobs", clock=lambda: 1000.0)
    await store.open()
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(i) for i in range(1, 5)])
    await store.store_flags(box.id, [2, 3], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id)
    await store.close()
    downgrade(tmp_path / "v7.db", 7)  # back to exactly the version 7 tables, with the rows

    store = SQLiteStore(tmp_path / "v7.db", tmp_path / "blobs", clock=lambda: 2000.0)
    await store.open()
    try:
        v = await store.vanished(box.id, 0)
        assert (list(v.uids), v.complete) == ([2, 3], True)
        assert await store.prune_expunged(2000.0) == 0  # dated at the upgrade (now), not at 0
        conn = sqlite3.connect(tmp_path / "v7.db")
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            (at,) = conn.execute("SELECT min(at) FROM expunged").fetchone()
            assert at > 2000.0  # the real time of the upgrade
        finally:
            conn.close()
        await store.store_flags(box.id, [4], StoreMode.ADD, Flag.DELETED)
        await store.expunge(box.id)
        assert list((await store.vanished(box.id, 0)).uids) == [2, 3, 4]
    finally:
        await store.close()


async def test_retention_forgets_what_is_older_than_its_days(tmp_path: Path) -> None:
    """`postroom serve`'s pruning task (store/retention.py) keeps `imap.expunged_retention_days` of records."""
    from postroom.store.retention import DAY, ExpungedRetention

    now = [1_000_000.0]
    store = SQLiteStore(tmp_path / "r.db", tmp_path / "blobs", clock=lambda: now[0])
    await store.open()
    try:
        box = await inbox(store, await new_user(store))
        await store.append_many(box.id, [msg(i) for i in range(1, 4)])
        await store.store_flags(box.id, [1, 2], StoreMode.ADD, Flag.DELETED)
        await store.expunge(box.id)
        retention = ExpungedRetention(store, days=30, clock=lambda: now[0])
        now[0] += 29 * DAY
        assert await retention.run_once() == 0  # a client syncing weekly still gets exact answers
        assert (await store.vanished(box.id, 0)).complete
        now[0] += 2 * DAY
        assert await retention.run_once() == 2
        assert not (await store.vanished(box.id, 0)).complete
        retention.interval = 0.01
        retention.start()  # the loop of the server: runs now, then every interval, until stopped
        await asyncio.sleep(0.05)
        await retention.stop()
        await retention.stop()  # idempotent
    finally:
        await store.close()
