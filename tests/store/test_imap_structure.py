"""The kept IMAP structure of each body (schema 19, schema invariant 24, store/sqlite/structure.py): what
`read_structures` gives is exactly the ENVELOPE, BODYSTRUCTURE and BODY of the metadata the body was stored with;
a body stored without metadata, or before schema 19, has none until `write_structures` keeps it; the rows go with
the last reference to the body; and the step 19 upgrade keeps every message readable."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest, ImapStructure, Store
from postroom.store.blobs import blob_id_of
from postroom.store.sqlite import SQLiteStore

from .conftest import downgrade, inbox, new_user

RAW = (b"From: =?utf-8?q?Ann_=C3=85?= <ann@example.org>\r\nTo: bob@example.org\r\nSubject: Hello\r\n"
       b"Date: Tue, 2 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@x>\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
       b"--b\r\nContent-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
       b"AAAA\r\n--b--\r\n")


def expected(raw: bytes) -> ImapStructure:
    meta = compute_meta(raw)
    return ImapStructure(meta.envelope, meta.bodystructure, meta.body)


async def test_stored_with_metadata_kept_and_released(store: Store) -> None:
    user = await new_user(store)
    box = await inbox(store, user)
    await store.append(box.id, AppendRequest(RAW, meta=compute_meta(RAW).to_bytes()))
    bare = b"Subject: no metadata\r\n\r\nx\r\n"
    await store.append(box.id, AppendRequest(bare))
    got = await store.read_structures([blob_id_of(RAW), blob_id_of(bare)])
    assert got == {blob_id_of(RAW): expected(RAW)}  # the bare body has none: its reader decodes metadata
    assert got[blob_id_of(RAW)].envelope.startswith(b'("Tue, 2 Jan 2024 10:00:00 +0000" "Hello" ')
    assert got[blob_id_of(RAW)].bodystructure.lower().startswith(b'(("text" "plain" ')  # RFC 9051 §7.5.2

    await store.write_structures({blob_id_of(bare): expected(bare), "a" * 64: expected(bare)})  # not stored: skipped
    assert await store.read_structures([blob_id_of(bare), "a" * 64]) == {blob_id_of(bare): expected(bare)}

    # A copy shares the body; the row goes only with the last reference (invariant 1).
    other = await store.create_mailbox(user.id, "Other")
    await store.copy_messages(box.id, [1], other.id)
    await store.remove_messages(box.id, [1, 2])
    assert set(await store.read_structures([blob_id_of(RAW), blob_id_of(bare)])) == {blob_id_of(RAW)}
    await store.remove_messages(other.id, [1])
    assert await store.read_structures([blob_id_of(RAW)]) == {}


async def test_rows_match_metadata_after_every_writer(store: Store) -> None:
    """deliver, append_many and write_metas (a recomputed metadata) keep the row; the same values each time."""
    user = await new_user(store)
    box = await inbox(store, user)
    raws = [RAW.replace(b"<1@x>", b"<%d@x>" % i) for i in range(3)]
    await store.deliver([box.id], AppendRequest(raws[0], meta=compute_meta(raws[0]).to_bytes()))
    await store.append_many(box.id, [AppendRequest(r, meta=compute_meta(r).to_bytes()) for r in raws[1:]])
    late = b"Subject: late\r\n\r\nbody\r\n"
    await store.append(box.id, AppendRequest(late))
    await store.write_metas({blob_id_of(late): compute_meta(late).to_bytes()})
    got = await store.read_structures([blob_id_of(r) for r in [*raws, late]])
    assert got == {blob_id_of(r): expected(r) for r in [*raws, late]}


async def test_upgrade_from_schema_18_keeps_answers(tmp_path: Path) -> None:
    db, blobs = tmp_path / "p.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    user = await new_user(store)
    box = await inbox(store, user)
    await store.append(box.id, AppendRequest(RAW, meta=compute_meta(RAW).to_bytes()))
    await store.close()
    downgrade(db, 18)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'imap_structure'").fetchone()[0] == 0
    conn.close()
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        assert await store.read_structures([blob_id_of(RAW)]) == {}  # step 19 writes none (module doc)
        await store.write_structures({blob_id_of(RAW): expected(RAW)})
        assert await store.read_structures([blob_id_of(RAW)]) == {blob_id_of(RAW): expected(RAW)}
    finally:
        await store.close()


async def test_list_columns_with_structure(store: Store) -> None:
    """`list_columns(structure=True)`: the listing's columns and each body's kept values in one range read, None
    where no row is kept (a body stored without metadata); a range without messages is empty."""
    user = await new_user(store)
    box = await inbox(store, user)
    bare = b"Subject: no metadata\r\n\r\nx\r\n"
    other = RAW.replace(b"<1@x>", b"<2@x>")
    await store.append(box.id, AppendRequest(RAW, meta=compute_meta(RAW).to_bytes(), keywords=frozenset({"$Work"})))
    await store.append(box.id, AppendRequest(bare))
    await store.append(box.id, AppendRequest(other, meta=compute_meta(other).to_bytes()))
    plain = await store.list_columns(box.id)
    cols = await store.list_columns(box.id, structure=True)
    assert list(cols.uids) == [1, 2, 3] and list(cols.flags) == list(plain.flags)
    assert list(cols.sizes) == list(plain.sizes) and list(cols.blob_ids) == ["", blob_id_of(bare), ""]
    assert list(cols.internal_dates) == list(plain.internal_dates) and list(cols.modseqs) == list(plain.modseqs)
    assert cols.keywords == {0: frozenset({"$Work"})}
    assert list(cols.envelopes) == [expected(RAW).envelope, None, expected(other).envelope]
    assert list(cols.bodystructures) == [expected(RAW).bodystructure, None, expected(other).bodystructure]
    assert list(cols.bodies) == [expected(RAW).body, None, expected(other).body]
    part = await store.list_columns(box.id, 2, 3, structure=True)
    assert list(part.uids) == [2, 3] and list(part.envelopes) == [None, expected(other).envelope]
    assert len(await store.list_columns(box.id, 4, 9, structure=True)) == 0
    narrow = await store.list_columns(box.id, flags_only=True, structure=True)  # no sizes, dates, save dates
    assert narrow.sizes == narrow.internal_dates == narrow.save_dates == () and narrow.keywords == cols.keywords
    assert narrow.envelopes == cols.envelopes and narrow.blob_ids == cols.blob_ids and narrow.flags == cols.flags
    assert (await store.list_columns(box.id)).envelopes == ()  # only when asked for
