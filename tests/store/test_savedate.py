"""Save dates (RFC 8514 §3, schema invariant 10): set when a message is saved to a mailbox by append, delivery,
copy or move, kept while it stays there; unknown (None) for messages stored before schema 12."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from postroom.store.api import AppendRequest, StagedAppend, Store, StoreMode
from postroom.store.blobs import blob_id_of
from postroom.store.sqlite import SQLiteStore
from postroom.store.sqlite.schema import _STEPS, SCHEMA_VERSION

from .conftest import inbox, msg, new_user
from .test_append_file import body, stage


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_save_date_is_when_saved_to_this_mailbox(tmp_path: Path) -> None:
    clock = Clock()
    store = SQLiteStore(tmp_path / "s.db", tmp_path / "blobs", clock=clock)
    await store.open()
    try:
        user = await new_user(store)
        box = await inbox(store, user)
        other = await store.create_mailbox(user.id, "Other")
        await store.append(box.id, AppendRequest(body(300), internal_date=1_000_000.0))  # an old internal date
        clock.now += 10
        await store.append_file(box.id, stage(store, body(400, 1)))
        clock.now += 10
        await store.append_multi(box.id, [AppendRequest(body(500, 2)), StagedAppend(stage(store, body(600, 3)))])
        clock.now += 10
        await store.deliver([box.id], AppendRequest(body(700, 4)))
        t0 = 1_700_000_000.0
        assert [m.save_date for m in await store.list_messages(box.id)] == [t0, t0 + 10, t0 + 20, t0 + 20, t0 + 30]
        assert (await store.list_columns(box.id)).save_dates == (t0, t0 + 10, t0 + 20, t0 + 20, t0 + 30)
        clock.now += 100
        await store.store_flags(box.id, [1], StoreMode.ADD, 1)
        first = await store.get_message(box.id, 1)
        assert first is not None and first.save_date == t0  # a flag change is no new save
        await store.copy_messages(box.id, [1], other.id)  # RFC 8514 §3: a copy or move is a new save
        clock.now += 5
        await store.move_messages(box.id, [2], other.id)
        assert [m.save_date for m in await store.list_messages(other.id)] == [t0 + 130, t0 + 135]
    finally:
        await store.close()


async def test_messages_from_before_schema_8_have_no_save_date(tmp_path: Path) -> None:
    """Schema steps 8 to 12 on a database as version 7 left it, with a user and a message in it."""
    db = tmp_path / "v7.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for version in range(1, 8):  # steps are never edited: exactly the version 7 schema
        _STEPS[version](conn)
    conn.execute("PRAGMA user_version = 7")
    conn.execute("INSERT INTO domains(name, created) VALUES ('example.org', 0)")
    conn.execute("INSERT INTO users(address, domain_id, password_hash, created) VALUES ('old@example.org', 1, 'h', 0)")
    box_id = conn.execute("INSERT INTO mailboxes(user_id, name, uidvalidity, uidnext, highestmodseq)"
                          " VALUES (1, 'INBOX', 77, 2, 2) RETURNING id").fetchone()[0]
    raw = body(300)
    conn.execute("INSERT INTO blobs(id, size, refcount) VALUES (?, ?, 1)", (blob_id_of(raw), len(raw)))
    conn.execute("INSERT INTO blob_data(id, data) VALUES (?, ?)", (blob_id_of(raw), raw))
    conn.execute("INSERT INTO messages(mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id)"
                 " VALUES (?, 1, 2, 1e9, ?, 0, '', ?)", (box_id, len(raw), blob_id_of(raw)))
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(db, tmp_path / "blobs")
    await store.open()
    try:
        c = sqlite3.connect(db)
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 8
        c.close()
        [old] = await store.list_messages(box_id)
        assert old.save_date is None and old.internal_date == 1e9  # unknown: not guessed at upgrade
        assert (await store.list_columns(box_id)).save_dates == (None,)
        res = await store.append(box_id, msg(1))
        new = await store.get_message(box_id, res.uid)
        assert new is not None and new.save_date is not None
        # the step's other parts work on the upgraded store: previews (none yet) and METADATA entries
        assert await store.read_previews([old.blob_id]) == {}
        await store.write_previews({old.blob_id: "hello"})
        assert await store.read_previews([old.blob_id]) == {old.blob_id: "hello"}
        await store.set_metadata(1, box_id, [("/private/comment", b"kept")])
        assert await store.get_metadata(1, box_id, ["/private/comment"]) == [("/private/comment", b"kept")]
    finally:
        await store.close()


async def test_conformance_save_date_set_on_append(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    res = await store.append(box.id, msg(1))
    info = await store.get_message(box.id, res.uid)
    assert info is not None and info.save_date is not None and info.save_date >= info.internal_date - 5
