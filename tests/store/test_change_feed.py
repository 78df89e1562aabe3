"""The change feed across processes (issue 16 item 1, store/sqlite/feed.py): what another process commits
reaches this process's subscribers, every kind of change, once, in commit order; falling behind the pruning
overflows the subscribers; a writer killed with SIGKILL wedges nothing; schema 11 on a schema-7 store.

The other process is real: `feed_writer.py` started with a subprocess, opening the same files as an admin
command does. FEED_WAIT is the issue's bound on how soon a change must arrive ("within 1 s").
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from postroom.store.api import AppendRequest, Change, Store, Subscription
from postroom.store.hub import Hub, SubscriptionOverflow
from postroom.store.sqlite import SQLiteStore
from postroom.store.sqlite.schema import _STEPS, SCHEMA_VERSION

from .conftest import inbox, msg, new_user

FEED_WAIT = 1.0
WRITER = Path(__file__).with_name("feed_writer.py")
ADDR = "alice@example.org"


def writer_cmd(data_dir: Path, *ops: str, keep: int | None = None) -> list[str]:
    cmd = [sys.executable, str(WRITER), str(data_dir), ADDR, *ops]
    return cmd + (["--keep", str(keep)] if keep is not None else [])


async def run_writer(data_dir: Path, *ops: str, keep: int | None = None) -> list[dict[str, Any]]:
    """Run the other process to its end (the event loop goes on meanwhile); its changes, as it published them."""
    proc = await asyncio.create_subprocess_exec(*writer_cmd(data_dir, *ops, keep=keep),
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    lines = out.decode().splitlines()
    assert lines[-1] == "done"
    return [json.loads(line) for line in lines[:-1]]


def as_dict(c: Change) -> dict[str, Any]:
    return {"kind": c.kind.value, "mailbox_id": c.mailbox_id, "uid": c.uid, "modseq": c.modseq, "flags": c.flags,
            "keywords": sorted(c.keywords), "name": c.name, "old_name": c.old_name}


async def receive(sub: Subscription, n: int) -> list[dict[str, Any]]:
    """The next `n` changes, each awaited at most FEED_WAIT seconds."""
    return [as_dict(await asyncio.wait_for(sub.get(), FEED_WAIT)) for _ in range(n)]


async def test_every_kind_of_change_crosses_processes(store: Store, data_dir: Path) -> None:
    u = await new_user(store, ADDR)
    sub = store.hub.subscribe(u.id)
    try:
        published = await run_writer(
            data_dir, "append:3", "flags:1:+\\Seen", "flags:2:+$Label1", "flags:3:+\\Deleted", "expunge",
            "create:Lists/rust", "rename:Lists/rust:Lists/go", "subscribe:Lists/go", "delete:Lists/go")
        kinds = [c["kind"] for c in published]
        assert kinds == ["append"] * 3 + ["flags", "flags", "mailbox_keywords", "flags", "expunge",
                                          "mailbox_created", "mailbox_created", "mailbox_renamed",
                                          "mailbox_subscribed", "mailbox_deleted"]
        assert await receive(sub, len(published)) == published  # the same records, in the same order
        assert sub.get_nowait() is None
        # the records carry what a session needs: flags and keywords, names old and new
        assert published[4]["keywords"] == ["$Label1"] and published[10]["old_name"] == "Lists/rust"
    finally:
        sub.close()


async def test_metadata_changes_cross_processes(store: Store, data_dir: Path) -> None:
    """SETMETADATA's change records (RFC 5465 §5.6, §5.7: what NOTIFY's metadata events need) round-trip through
    the change table: the kind, the mailbox (0 for the server) and the entry name."""
    u = await new_user(store, ADDR)
    box = await inbox(store, u)
    sub = store.hub.subscribe(u.id)
    try:
        published = await run_writer(data_dir, "metadata:/private/comment=hello", "servermetadata:/shared/motd=hi",
                                     "metadata:/private/comment=", "metadata:/private/never=")
        assert [(c["kind"], c["mailbox_id"], c["name"]) for c in published] == [
            ("metadata", box.id, "/private/comment"), ("metadata", 0, "/shared/motd"),
            ("metadata", box.id, "/private/comment")]  # removing an entry that was never set changes nothing
        assert await receive(sub, len(published)) == published
        assert sub.get_nowait() is None
    finally:
        sub.close()


async def test_own_changes_are_published_once(store: Store, data_dir: Path) -> None:
    u = await new_user(store, ADDR)
    box = await inbox(store, u)
    sub = store.hub.subscribe(u.id)
    try:
        mine = await store.append(box.id, msg(1))
        assert [as_dict(c) for c in mine.changes] == await receive(sub, 1)  # the fast path: at once
        theirs = await run_writer(data_dir, "append:1")
        # The other process's change arrives after this one's feed has passed its own row: no echo between.
        assert await receive(sub, 1) == theirs
        assert sub.get_nowait() is None
    finally:
        sub.close()


async def test_changes_of_other_processes_come_in_commit_order(tmp_path: Path) -> None:
    """This process's writer publishes what others committed before its own batch, first (feed invariant 3):
    with the poller asleep, an append by another process and then one here reach the subscriber in UID order."""
    a = SQLiteStore(tmp_path / "postroom.db", tmp_path / "blobs")
    a.feed.poll_seconds = 3600.0  # only the writer's catch-up can deliver the other process's change
    await a.open()
    try:
        u = await new_user(a, ADDR)
        box = await inbox(a, u)
        sub = a.hub.subscribe(u.id)
        theirs = await run_writer(tmp_path, "append:1")
        assert sub.get_nowait() is None
        mine = await a.append(box.id, msg(2))
        assert [(c.uid, c.modseq) for c in (sub.get_nowait(), sub.get_nowait()) if c] == [
            (theirs[0]["uid"], theirs[0]["modseq"]), (mine.uid, mine.modseq)]
        sub.close()
    finally:
        await a.close()


async def test_falling_behind_the_pruning_overflows_the_subscribers(store: Store, backend: str, data_dir: Path) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's feed keeps a number of rows; PostgreSQL's prunes by age (postgresql/feed.py)")
    u = await new_user(store, ADDR)
    other = await new_user(store, "bob@example.org")
    sub, bystander = store.hub.subscribe(u.id), store.hub.subscribe(other.id)
    try:
        # This process stalls (its event loop is blocked while the other process runs) and the other keeps
        # only 3 rows: what this process had not read is pruned before it can.
        out = subprocess.run(writer_cmd(data_dir, "append:10", keep=3), capture_output=True, check=True)
        assert out.stdout.decode().splitlines()[-1] == "done"
        with pytest.raises(SubscriptionOverflow):
            await asyncio.wait_for(sub.get(), FEED_WAIT)
        with pytest.raises(SubscriptionOverflow):  # which users' rows were lost is unknown: everyone resyncs
            bystander.get_nowait()
        assert len(await store.list_messages((await inbox(store, u)).id)) == 10  # what a resync reads
        sub.reset()
        bystander.reset()
        published = await run_writer(data_dir, "append:1", keep=3)
        assert await receive(sub, 1) == published  # the feed goes on after the overflow
        assert bystander.get_nowait() is None
    finally:
        sub.close()
        bystander.close()


async def test_the_change_table_is_bounded(store: Store, backend: str, data_dir: Path) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's feed keeps a number of rows; PostgreSQL's prunes by age (postgresql/feed.py)")
    await new_user(store, ADDR)
    await run_writer(data_dir, "append:30", keep=5)
    conn = sqlite3.connect(data_dir / "postroom.db")
    try:
        count, low = conn.execute("SELECT count(*), min(seq) FROM changes").fetchone()
        pruned = conn.execute("SELECT value FROM counters WHERE name = 'changes_pruned'").fetchone()[0]
    finally:
        conn.close()
    assert count <= 5 + 1 and pruned == low - 1  # pruned before each write: at most one write's rows more


async def test_a_subscriber_gets_no_change_older_than_its_subscription(store: Store, data_dir: Path) -> None:
    """Nobody subscribed: the feed does nothing (not one poll); a later subscriber starts at what comes next."""
    u = await new_user(store, ADDR)
    polling = isinstance(store, SQLiteStore)  # PostgreSQL's feed never polls: LISTEN wakes it
    polls = store.feed.polls if polling else 0
    await run_writer(data_dir, "append:5")  # half a second or more: a dozen polls, were the feed polling
    if polling:
        assert store.feed.polls == polls
    sub = store.hub.subscribe(u.id)
    try:
        published = await run_writer(data_dir, "append:1")
        assert await receive(sub, 1) == published  # the five older ones are not replayed
        if polling:
            assert store.feed.polls > polls
    finally:
        sub.close()


async def test_a_writer_killed_mid_way_wedges_nothing(store: Store, data_dir: Path) -> None:
    u = await new_user(store, ADDR)
    box = await inbox(store, u)
    sub = store.hub.subscribe(u.id)
    try:
        proc = await asyncio.create_subprocess_exec(*writer_cmd(data_dir, "forever"), stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        for _ in range(20):  # let it commit twenty messages, then kill it in the middle of whatever it does
            await proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        # Every message it committed is announced once, and the feed goes on with the next writer.
        after = await run_writer(data_dir, "append:1")
        got: list[int] = []
        while not got or got[-1] != after[0]["uid"]:
            got.append((await asyncio.wait_for(sub.get(), FEED_WAIT)).uid)
        assert got == [m.uid for m in await store.list_messages(box.id)]
        mine = await store.append(box.id, msg(1))  # and this process still writes
        assert (await asyncio.wait_for(sub.get(), FEED_WAIT)).uid == mine.uid
    finally:
        sub.close()


async def test_schema_11_on_a_schema_7_store_with_data(tmp_path: Path) -> None:
    """Schema step 11 (with 8 to 10) adds the change table to a store written at schema 7; its data stays, the
    feed works."""
    db = tmp_path / "postroom.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for version in range(1, 8):
        _STEPS[version](conn)  # steps are never edited: exactly the version 7 schema
    conn.execute("PRAGMA user_version = 7")
    conn.execute("INSERT INTO domains(name, created) VALUES ('example.org', 0)")
    conn.execute(f"INSERT INTO users(address, domain_id, password_hash, created) VALUES ('{ADDR}', 1, 'h', 0)")
    box_id = conn.execute("INSERT INTO mailboxes(user_id, name, uidvalidity, uidnext, highestmodseq, recent_uid)"
                          " VALUES (1, 'INBOX', 77, 2, 2, 1) RETURNING id").fetchone()[0]
    raw = b"Subject: old\r\n\r\nkept\r\n"
    import hashlib

    bid = hashlib.sha256(raw).hexdigest()
    conn.execute("INSERT INTO blobs(id, size, refcount, crlf_size) VALUES (?, ?, 1, ?)", (bid, len(raw), len(raw)))
    conn.execute("INSERT INTO blob_data(id, data) VALUES (?, ?)", (bid, raw))
    conn.execute("INSERT INTO messages(mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id)"
                 " VALUES (?, 1, 2, 1e9, ?, 0, '', ?)", (box_id, len(raw), bid))
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(db, tmp_path / "blobs", hub=Hub())
    await store.open()
    try:
        c = sqlite3.connect(db)
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("SELECT count(*) FROM changes").fetchone()[0] == 0  # nothing old is replayed
        c.close()
        [old] = await store.list_messages(box_id)
        assert old.uid == 1 and await store.read_message(old.blob_id) == raw
        sub = store.hub.subscribe(1)
        published = await run_writer(tmp_path, "append:1")
        assert await receive(sub, 1) == published and published[0]["uid"] == 2  # UIDs go on
        mine = await store.append(box_id, AppendRequest(b"Subject: new\r\n\r\n"))
        assert mine.uid == 3 and (await asyncio.wait_for(sub.get(), FEED_WAIT)).uid == 3
        sub.close()
    finally:
        await store.close()
    store = SQLiteStore(db, tmp_path / "blobs")
    await store.open()  # migrating is done once; reopening changes nothing
    await store.close()
