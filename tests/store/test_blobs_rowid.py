"""SQLite schema 29 (schema invariants 33 and 34): `blobs` is a rowid table with a unique `id` and the metadata
last, and the step that rebuilds it from the WITHOUT ROWID table of schema 28 keeps every row and every row that
references one (bodies in `blob_data`, keys, IMAP structure, the full-text index), with foreign keys on again
afterwards, so a dropped last reference still takes its body with it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest
from postroom.store.blobs import blob_id_of
from postroom.store.sqlite import SQLiteStore
from postroom.store.textindex import TextTerm

from .conftest import downgrade, inbox, new_user

pytestmark = pytest.mark.parametrize("inline_max", [256 * 1024, -1], ids=["inline", "files"])


def message(i: int) -> bytes:
    return (b"From: Ann <ann@example.org>\r\nSubject: report %d\r\nMessage-ID: <%d@example.org>\r\n\r\n"
            b"line of text %d\r\n" % (i, i, i)) * 3


def snapshot(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """The rows the step must keep: every `blobs` row (by name, whatever the column order) and the id of every
    row that names a body."""
    conn = sqlite3.connect(db)
    try:
        return {
            "blobs": conn.execute("SELECT id, size, refcount, crlf_size, preview, meta FROM blobs ORDER BY id")
            .fetchall(),
            "blob_data": conn.execute("SELECT id, length(data) FROM blob_data ORDER BY id").fetchall(),
            "message_keys": conn.execute("SELECT blob_id FROM message_keys ORDER BY blob_id").fetchall(),
            "imap_structure": conn.execute("SELECT blob_id FROM imap_structure ORDER BY blob_id").fetchall(),
            "fts_docs": conn.execute("SELECT blob_id, docid FROM fts_docs ORDER BY blob_id").fetchall(),
            "messages": conn.execute("SELECT mailbox_id, uid, blob_id FROM messages ORDER BY 1, 2").fetchall(),
        }
    finally:
        conn.close()


def blobs_sql(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("SELECT sql FROM sqlite_schema WHERE name = 'blobs'").fetchone()[0])
    finally:
        conn.close()


async def test_upgrade_from_schema_28_keeps_every_body_and_reference(tmp_path: Path, inline_max: int) -> None:
    db, blobs = tmp_path / "p.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs, inline_max=inline_max)
    await store.open()
    box = await inbox(store, await new_user(store))
    raws = [message(i) for i in range(5)]
    for raw in raws:
        await store.append(box.id, AppendRequest(raw, meta=compute_meta(raw).to_bytes()))
    await store.append(box.id, AppendRequest(raws[0], meta=compute_meta(raws[0]).to_bytes()))  # refcount 2
    await store.append(box.id, AppendRequest(b"Subject: bare\r\n\r\nno metadata\r\n"))
    await store.write_previews({blob_id_of(raws[1]): "line of text 1"})
    await store.close()
    before = snapshot(db)
    assert len(before["blobs"]) == 6
    assert len(before["blob_data"]) == (6 if inline_max > 0 else 0)  # bodies in the database, or files
    assert len(before["message_keys"]) == len(before["imap_structure"]) == len(before["fts_docs"]) == 5

    downgrade(db, 28)
    assert "WITHOUT ROWID" in blobs_sql(db)  # schema 28's table, rows and references as they were
    assert snapshot(db) == before

    store = SQLiteStore(db, blobs, inline_max=inline_max)
    await store.open()
    try:
        sql = blobs_sql(db)
        assert "WITHOUT ROWID" not in sql and "UNIQUE" in sql  # invariant 33
        assert snapshot(db) == before  # nothing lost, nothing cascaded away (invariant 34)
        wconn = store._engine._wconn
        assert wconn is not None and wconn.execute("PRAGMA foreign_keys").fetchone()[0] == 1  # put back
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        cols = [r[1] for r in conn.execute("PRAGMA table_info(blobs)")]
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(blobs)")}
        conn.close()
        assert cols == ["id", "size", "refcount", "crlf_size", "preview", "meta"]
        assert "blobs_crlf" in indexes  # step 21's covering index, made again

        for raw in raws:
            assert await store.read_message(blob_id_of(raw)) == raw
        assert await store.read_previews([blob_id_of(raws[1])]) == {blob_id_of(raws[1]): "line of text 1"}
        hits = await store.search_text(box.id, 1, 7, TextTerm("subject", "report 3"))
        assert hits is not None and [m.uid for m in hits.messages] == [4, 7]  # 7: the bare body, in the backlog
        assert hits.unindexed == 1

        # Writes after the upgrade: a new body, and the last reference of one dropped (its rows go with it).
        new = message(9)
        r = await store.append(box.id, AppendRequest(new, meta=compute_meta(new).to_bytes()))
        assert await store.read_message(blob_id_of(new)) == new
        await store.remove_messages(box.id, [2, r.uid])  # raws[1] and the new one: their only references
        after = snapshot(db)
        gone = {blob_id_of(raws[1]), blob_id_of(new)}
        assert {row[0] for row in after["blobs"]} == {row[0] for row in before["blobs"]} - gone
        assert not gone & {row[0] for row in after["blob_data"] + after["message_keys"] + after["imap_structure"]}
        conn = sqlite3.connect(db, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            with pytest.raises(sqlite3.IntegrityError):  # the rebuilt table is the parent key of its references
                conn.execute("INSERT INTO blob_data(id, data) VALUES (?, x'00')", ("f" * 64,))
        finally:
            conn.close()
    finally:
        await store.close()


async def test_a_new_store_is_made_at_schema_29(tmp_path: Path, inline_max: int) -> None:
    """A fresh file runs every step, 29 among them, on empty tables; the writer keeps its foreign keys."""
    store = SQLiteStore(tmp_path / "n.db", tmp_path / "blobs", inline_max=inline_max)
    await store.open()
    try:
        assert "WITHOUT ROWID" not in blobs_sql(tmp_path / "n.db")
        wconn = store._engine._wconn
        assert wconn is not None and wconn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    finally:
        await store.close()
