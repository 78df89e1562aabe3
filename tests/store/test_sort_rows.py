"""`sort_rows`, the narrow per-message table SORT and THREAD read (schema 15, schema invariant 20, threads.py
invariant 7): after every kind of write, each message row has exactly one `sort_rows` row, equal to its own
columns and its body's `message_keys` row (the empty keys while the body has none), and there is no other;
and the step 15 migration fills the table for a store that has messages."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest, Flag, Store, StoreMode
from postroom.store.sqlite import SQLiteStore, schema

from .conftest import downgrade, inbox, new_user

# Written out here, not imported: what schema invariant 20 says a message's row holds.
_EXPECTED = (
    "SELECT m.mailbox_id, m.uid, m.internal_date, m.size, k.sent, COALESCE(k.subject, ''), COALESCE(k.reply, 0),"
    " COALESCE(k.from_key, ''), COALESCE(k.to_key, ''), COALESCE(k.cc_key, ''), COALESCE(k.display_from, ''),"
    " COALESCE(k.display_to, ''), k.message_id, COALESCE(k.refs, '')"
    " FROM messages m LEFT JOIN message_keys k ON k.blob_id = m.blob_id ORDER BY m.mailbox_id, m.uid"
)
_ACTUAL = (
    "SELECT mailbox_id, uid, arrival, size, sent, subject, reply, from_key, to_key, cc_key, display_from,"
    " display_to, message_id, refs FROM sort_rows ORDER BY mailbox_id, uid"
)


def _rows(db: Path) -> tuple[list[Any], list[Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(_EXPECTED).fetchall(), conn.execute(_ACTUAL).fetchall()
    finally:
        conn.close()


def check(store: Store) -> int:
    """Assert schema invariant 20 on the store's database; returns the number of message rows."""
    db = getattr(store, "path", None)
    assert isinstance(db, Path)
    expected, actual = _rows(db)
    assert actual == expected
    return len(expected)


def needs_sort_rows(store: Store) -> None:
    """Skip on an engine without the `sort_rows` copy (PostgreSQL joins `message_keys` instead: its threads.py)."""
    if not isinstance(store, SQLiteStore):
        pytest.skip("no sort_rows copy on this engine (postgresql/threads.py)")


def mail(subject: str, msgid: str, refs: str = "", date: str = "Tue, 2 Jan 2024 10:00:00 +0000") -> AppendRequest:
    raw = (f"From: Ann <ann@example.org>\r\nTo: Bob <bob@example.org>\r\nCc: c@example.org\r\nSubject: {subject}\r\n"
           f"Date: {date}\r\nMessage-ID: <{msgid}>\r\n" + (f"References: {refs}\r\n" if refs else "")
           + "\r\nbody\r\n").encode()
    return AppendRequest(raw, internal_date=1e9, meta=compute_meta(raw).to_bytes())


async def test_every_write_keeps_one_row_per_message(store: Store) -> None:
    needs_sort_rows(store)
    user = await new_user(store)
    box = await inbox(store, user)
    other = await store.create_mailbox(user.id, "Other")
    await store.append(box.id, mail("Lunch", "l1@x"))
    await store.append(box.id, mail("Re: Lunch", "l2@x", refs="<l1@x>", date="no date"))
    bare = b"Subject: stored without metadata\r\nMessage-ID: <bare@x>\r\n\r\nx\r\n"
    await store.append(box.id, AppendRequest(bare, internal_date=1e9))  # keys unknown: the empty ones
    await store.append_many(box.id, [mail(f"Many {i}", f"m{i}@x") for i in range(3)])
    await store.deliver([box.id, other.id], mail("Delivered", "d@x"))
    assert check(store) == 8
    got = await store.thread_rows(box.id)
    assert got.row(0) == (1, 1704189600.0, "LUNCH", 0, "l1@x", "")
    assert got.row(1) == (2, 1e9, "LUNCH", 1, "l2@x", "l1@x")  # no valid Date: the internal date
    assert got.row(2) == (3, 1e9, "", 0, None, "")  # keys not known yet
    copied = await store.copy_messages(box.id, [1, 2, 3], other.id)
    assert check(store) == 11 and len(copied.dest_uids) == 3
    await store.move_messages(box.id, [4, 5], other.id)
    assert check(store) == 11
    await store.store_flags(box.id, [1], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id)
    await store.remove_messages(other.id, [copied.dest_uids[0]])
    assert check(store) == 9
    # The body without keys gets them later (a reader's write-back): both of its messages' rows follow.
    [late] = [r for r in await store.list_sort_rows(box.id) if not r.known]
    await store.write_metas({late.blob_id: compute_meta(bare).to_bytes()})
    assert check(store) == 9
    assert (await store.thread_rows(box.id, 3, 3)).subjects == ["STORED WITHOUT METADATA"]
    await store.rename_mailbox(user.id, "Other", "Renamed")  # same mailbox id, same rows
    assert check(store) == 9
    await store.rename_mailbox(user.id, "INBOX", "Old inbox")  # the messages move to a new mailbox
    assert check(store) == 9
    assert len(await store.thread_rows(box.id)) == 0
    await store.delete_mailbox(user.id, "Renamed")
    assert check(store) == 4
    await store.remove_user(user.address)
    assert check(store) == 0


async def test_a_body_stored_again_with_keys_gives_them_to_its_earlier_messages(store: Store) -> None:
    """A body first stored without metadata (no keys) and delivered again with it: the keys are stored then,
    and the earlier message's row (and thread id) follow in the same write."""
    needs_sort_rows(store)
    box = await inbox(store, await new_user(store))
    req = mail("Twice", "t@x")
    await store.append(box.id, AppendRequest(req.raw, internal_date=1e9))
    [first] = await store.list_sort_rows(box.id)
    assert (first.known, first.thread_id) == (0, 0)
    before = await store.content_version(box.id)
    await store.append(box.id, req)
    assert check(store) == 2
    rows = await store.list_sort_rows(box.id)
    assert [(r.known, r.subject) for r in rows] == [(1, "TWICE"), (1, "TWICE")] and rows[0].thread_id > 0
    assert await store.content_version(box.id) != before


async def test_sort_uids_reads_the_rows(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    await store.append(box.id, mail("b", "1@x", date="Tue, 2 Jan 2024 11:00:00 +0000"))
    await store.append(box.id, mail("a", "2@x", date="Tue, 2 Jan 2024 12:00:00 +0000"))
    await store.append(box.id, mail("c", "3@x", date="Tue, 2 Jan 2024 09:00:00 +0000"))
    assert await store.sort_uids(box.id, [("subject", False)]) == [2, 1, 3]
    assert await store.sort_uids(box.id, [("date", True)]) == [2, 1, 3]
    await store.remove_messages(box.id, [2])
    assert await store.sort_uids(box.id, [("subject", False)]) == [1, 3]
    assert await store.sort_uids(box.id, [("date", False)], 2, 9) == [3]


async def test_schema_15_fills_the_rows_of_a_store_with_messages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A store at schema 14 (no `sort_rows`) with messages in three mailboxes, some without keys: opened by
    this code, every message has its row, filled in batches (`FILL_BATCH` made small) with a progress line
    each, and SORT and THREAD read them."""
    db, blobs = tmp_path / "v14.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    user = await new_user(store)
    box = await inbox(store, user)
    boxes = [box, await store.create_mailbox(user.id, "A"), await store.create_mailbox(user.id, "B")]
    for n, b in enumerate(boxes):
        for i in range(3):
            await store.append(b.id, mail(f"Topic {n} {i}", f"{n}.{i}@x"))
        await store.append(b.id, AppendRequest(b"Subject: no keys %d\r\n\r\nx\r\n" % n))
    await store.remove_messages(boxes[1].id, [2])  # a gap in the UIDs
    await store.close()
    expected, _ = _rows(db)
    downgrade(db, 14)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'sort_rows'").fetchone()[0] == 0
    conn.close()
    monkeypatch.setattr(schema, "FILL_BATCH", 4)
    caplog.set_level(logging.INFO, "postroom.store")
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        assert check(store) == 11
        assert _rows(db)[1] == expected
        lines = [r.getMessage() for r in caplog.records if "schema 15" in r.getMessage()]
        assert lines[-1] == "schema 15: sort rows of 11 of 11 messages written" and len(lines) == 3
        assert await store.sort_uids(boxes[0].id, [("subject", True)]) == [3, 2, 1, 4]  # "no keys 0" unknown: ""
        assert (await store.thread_rows(boxes[1].id)).uids == [1, 3, 4]
    finally:
        await store.close()
