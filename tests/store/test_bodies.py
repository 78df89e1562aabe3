"""Where the SQLite engine keeps bodies: in the database up to `inline_max` bytes, as files above; and the
migration from schema version 1 (every body a file)."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from postroom.store.api import AppendRequest, Invalid, NotFound, QueueRecipient, Store
from postroom.store.blobs import BlobStore, blob_id_of
from postroom.store.sqlite import INLINE_MAX, SQLiteStore, engine
from postroom.store.sqlite.schema import _STEPS, SCHEMA_VERSION

from .conftest import BODY_BACKENDS, blob_files, downgrade, inbox, inline_bodies, new_user, stored_bodies

LIMIT = 1000  # a small threshold, so both kinds are cheap to make


def body(size: int, salt: int = 0) -> bytes:
    head = b"Subject: %d\r\n\r\n" % salt
    return head + bytes((i * 7 + salt) % 256 for i in range(size - len(head)))


def refcount(store: SQLiteStore, blob_id: str) -> int | None:
    conn = sqlite3.connect(store.path)
    try:
        row = conn.execute("SELECT refcount FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        return None if row is None else int(row[0])
    finally:
        conn.close()


async def test_threshold_decides_where_a_body_lives(tmp_path: Path) -> None:
    assert INLINE_MAX == 256 * 1024
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs", inline_max=LIMIT)
    await store.open()
    try:
        u = await new_user(store)
        box = await inbox(store, u)
        written: list[str] = []
        orig_write = store.blobs.write

        def spy(blob_id: str, data: bytes, prefix: bytes = b"") -> bool:
            written.append(blob_id)
            return orig_write(blob_id, data, prefix)

        store.blobs.write = spy  # type: ignore[method-assign]
        under, over, empty = body(LIMIT), body(LIMIT + 1), b""
        r_under = await store.append(box.id, AppendRequest(under))
        assert written == []  # an inline body costs no file and no fsync of its own
        r_over = await store.append(box.id, AppendRequest(over))
        r_empty = await store.append(box.id, AppendRequest(empty))
        assert written == [blob_id_of(over)]
        assert inline_bodies(store) == sorted([blob_id_of(under), blob_id_of(empty)])
        assert [p.name for p in blob_files(store) or []] == [blob_id_of(over)]
        infos = {m.uid: m for m in await store.list_messages(box.id)}
        for r, raw in ((r_under, under), (r_over, over), (r_empty, empty)):
            assert infos[r.uid].size == len(raw)
            got = await store.read_message(infos[r.uid].blob_id)
            assert type(got) is bytes and got == raw  # byte-exact, whichever way it was stored

        # the queue stores its bodies the same way, and shares them with mailboxes
        e_under = await store.enqueue(under, "s@example.org", [QueueRecipient("x@remote.example")])
        e_new = await store.enqueue(body(10, salt=9), "s@example.org", [QueueRecipient("x@remote.example")])
        assert refcount(store, e_under.blob_id) == 2
        assert e_new.blob_id in (inline_bodies(store) or [])
        assert await store.read_message(e_new.blob_id) == body(10, salt=9)
        await store.queue_delete(e_new.id)
        assert e_new.blob_id not in (stored_bodies(store) or [])
    finally:
        await store.close()


async def test_inline_dedup_refcount_and_removal(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "d.db", tmp_path / "blobs", inline_max=LIMIT)
    await store.open()
    try:
        u = await new_user(store)
        box = await inbox(store, u)
        other = await store.create_mailbox(u.id, "Other")
        raw = body(500)
        bid = blob_id_of(raw)
        await store.deliver([box.id, other.id], AppendRequest(raw))
        await store.append(box.id, AppendRequest(raw))  # the same bytes again: the same row
        await store.copy_messages(box.id, [1], other.id)
        assert refcount(store, bid) == 4 and inline_bodies(store) == [bid] and blob_files(store) == []
        await store.move_messages(other.id, [1, 2], box.id)
        assert refcount(store, bid) == 4
        await store.remove_messages(box.id, [1, 2, 3])
        assert refcount(store, bid) == 1 and await store.read_message(bid) == raw
        await store.delete_mailbox(u.id, "Other")  # holds nothing now
        uids = [m.uid for m in await store.list_messages(box.id)]
        await store.remove_messages(box.id, uids)  # the last reference: row and body go in one transaction
        assert refcount(store, bid) is None and stored_bodies(store) == []

        # released and taken again in (likely) one batch: the body must survive, once
        r = await store.append(box.id, AppendRequest(raw))
        for _ in range(5):
            _, r = await asyncio.gather(
                store.remove_messages(box.id, [r.uid]), store.append(box.id, AppendRequest(raw))
            )
            assert await store.read_message(bid) == raw and stored_bodies(store) == [bid]
    finally:
        await store.close()


async def test_threshold_may_change_between_runs(tmp_path: Path) -> None:
    """A body keeps the place it was stored in; the same bytes delivered later only add a reference there."""
    raw_small, raw_other = body(300), body(300, salt=1)
    s = SQLiteStore(tmp_path / "c.db", tmp_path / "blobs", inline_max=-1)
    await s.open()
    u = await new_user(s)
    box = await inbox(s, u)
    await s.append(box.id, AppendRequest(raw_small))
    await s.close()
    assert [p.name for p in blob_files(s) or []] == [blob_id_of(raw_small)]

    s = SQLiteStore(tmp_path / "c.db", tmp_path / "blobs", inline_max=LIMIT)
    await s.open()
    try:
        await s.append(box.id, AppendRequest(raw_small))
        await s.append(box.id, AppendRequest(raw_other))
        assert refcount(s, blob_id_of(raw_small)) == 2
        assert inline_bodies(s) == [blob_id_of(raw_other)]
        await s.remove_messages(box.id, [1, 2])
        assert stored_bodies(s) == [blob_id_of(raw_other)]  # the file went with its last reference
    finally:
        await s.close()


def make_v1_database(db: Path, blob_dir: Path, raw: bytes) -> tuple[int, str]:
    """A database as schema version 1 left it: one user, one message whose body is a file."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    _STEPS[1](conn)  # steps are never edited: this is exactly the version 1 DDL
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO domains(name, created) VALUES ('example.org', 0)")
    conn.execute(
        "INSERT INTO users(address, domain_id, password_hash, created) VALUES ('old@example.org', 1, 'h', 0)"
    )
    mailbox_id = conn.execute(
        "INSERT INTO mailboxes(user_id, name, uidvalidity, uidnext, highestmodseq, subscribed)"
        " VALUES (1, 'INBOX', 1234, 2, 2, 1) RETURNING id"
    ).fetchone()[0]
    bid = blob_id_of(raw)
    conn.execute("INSERT INTO blobs(id, size, refcount, meta) VALUES (?, ?, 1, x'4d')", (bid, len(raw)))
    conn.execute(
        "INSERT INTO messages(mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id)"
        " VALUES (?, 1, 2, 1e9, ?, 0, '', ?)",
        (mailbox_id, len(raw), bid),
    )
    conn.execute("COMMIT")
    conn.close()
    BlobStore(blob_dir).write(bid, raw)
    return int(mailbox_id), bid


async def test_migration_from_version_1(tmp_path: Path) -> None:
    old_raw = body(400)  # small: were it new, it would be inline
    box_id, old_bid = make_v1_database(tmp_path / "v1.db", tmp_path / "blobs", old_raw)
    store = SQLiteStore(tmp_path / "v1.db", tmp_path / "blobs")
    await store.open()
    try:
        conn = sqlite3.connect(tmp_path / "v1.db")
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION >= 5
        conn.close()
        assert await store.claim_recent(box_id) == (1, 1)  # schema 4: what existed is not \Recent again
        [info] = await store.list_messages(box_id)
        assert info.blob_id == old_bid and await store.read_message(old_bid) == old_raw  # read from its file
        assert await store.read_meta(old_bid) == b"M"
        r_same = await store.append(box_id, AppendRequest(old_raw))  # dedup onto the old file
        r_new = await store.append(box_id, AppendRequest(body(400, salt=3)))
        assert r_new.uid == 3 and refcount(store, old_bid) == 2
        assert [p.name for p in blob_files(store) or []] == [old_bid]
        assert inline_bodies(store) == [blob_id_of(body(400, salt=3))]
        await store.remove_messages(box_id, [1])
        assert await store.read_message(old_bid) == old_raw
        # the last reference to the old file goes while the same bytes arrive again (new: inline); whatever
        # the order the writer sees them in, the body is kept exactly once and the old file does not linger
        _, r_again = await asyncio.gather(
            store.remove_messages(box_id, [r_same.uid]), store.append(box_id, AppendRequest(old_raw))
        )
        assert await store.read_message(old_bid) == old_raw
        assert stored_bodies(store) == sorted([old_bid, blob_id_of(body(400, salt=3))])
    finally:
        await store.close()
    store = SQLiteStore(tmp_path / "v1.db", tmp_path / "blobs")
    await store.open()  # migrating is done once; reopening changes nothing
    await store.close()


async def test_migration_to_version_5_keeps_subscriptions_and_learns_keywords(tmp_path: Path) -> None:
    """Schema 5 (issue 15): subscriptions move from `mailboxes.subscribed` into their own table, and each mailbox
    learns the keywords its messages carry. A database written by version 4, with data, then opened."""
    db = tmp_path / "v4.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN")
    for version in (1, 2, 3, 4):
        _STEPS[version](conn)  # steps are never edited: exactly the version 4 schema
    conn.execute("PRAGMA user_version = 4")
    conn.execute("INSERT INTO domains(name, created) VALUES ('example.org', 0)")
    conn.execute("INSERT INTO users(address, domain_id, password_hash, created) VALUES ('old@example.org', 1, 'h', 0)")
    boxes = {}
    for name, subscribed, validity in (("INBOX", 1, 11), ("Lists", 0, 12), ("Lists/rust", 1, 13)):
        boxes[name] = conn.execute(
            "INSERT INTO mailboxes(user_id, name, uidvalidity, uidnext, highestmodseq, subscribed)"
            " VALUES (1, ?, ?, 3, 3, ?) RETURNING id", (name, validity, subscribed)).fetchone()[0]
    raw = body(300)
    conn.execute("INSERT INTO blobs(id, size, refcount) VALUES (?, ?, 3)", (blob_id_of(raw), len(raw)))
    conn.execute("INSERT INTO blob_data(id, data) VALUES (?, ?)", (blob_id_of(raw), raw))
    for mailbox, uid, keywords in (("INBOX", 1, "$Label1 Work"), ("INBOX", 2, "$label1 Later"), ("Lists", 1, "")):
        conn.execute(
            "INSERT INTO messages(mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id)"
            " VALUES (?, ?, 2, 1e9, ?, 0, ?, ?)", (boxes[mailbox], uid, len(raw), keywords, blob_id_of(raw)))
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(db, tmp_path / "blobs")
    await store.open()
    try:
        user = await store.get_user("old@example.org")
        assert user is not None
        assert await store.list_subscriptions(user.id) == ["INBOX", "Lists/rust"]
        inbox_box = await store.get_mailbox(user.id, "INBOX")
        assert inbox_box is not None and inbox_box.subscribed
        assert inbox_box.keywords == {"$Label1", "Work", "Later"}  # one spelling per keyword
        lists = await store.get_mailbox(user.id, "Lists")
        assert lists is not None and not lists.subscribed and lists.keywords == frozenset()
        await store.delete_mailbox(user.id, "Lists/rust")
        assert await store.list_subscriptions(user.id) == ["INBOX", "Lists/rust"]  # outlives its mailbox now
    finally:
        await store.close()
    store = SQLiteStore(db, tmp_path / "blobs")
    await store.open()  # migrating is done once; reopening changes nothing
    await store.close()


async def test_inline_bytes_bound_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_BATCH_BYTES", 2500)
    store = SQLiteStore(tmp_path / "b.db", tmp_path / "blobs", inline_max=LIMIT)
    batches: list[int] = []
    store.on_commit = lambda seconds, ops: batches.append(ops)
    await store.open()
    try:
        u = await new_user(store)
        box = await inbox(store, u)
        batches.clear()
        raws = [body(LIMIT, salt=i) for i in range(40)]
        await asyncio.gather(*(store.append(box.id, AppendRequest(raw)) for raw in raws))
        assert sum(batches) == 40 and max(batches) <= 3  # a batch stops once it holds 2500 bytes or more
        infos = await store.list_messages(box.id)
        assert sorted([await store.read_message(m.blob_id) for m in infos]) == sorted(raws)
    finally:
        await store.close()


# RFC 1939 §11 / RFC 5322 §2.1: the size POP3 announces is that of the message with every line ended by CRLF.
BARE_LF = b"From: bob@example.org\nTo: alice@example.org\nSubject: LF\n\nline one\nline 2\n"  # 73 octets, 6 LFs
CRLF_SIZES = [
    (BARE_LF, 79),
    (BARE_LF.replace(b"\n", b"\r\n"), 79),
    (b"Subject: mixed\r\n\r\none\ntwo\r\n", 27 + 1),
    (b"Subject: x\r\n\r\nno line end", 25 + 2),  # the last line is ended when sent
    (b"a\r\r\nb\n", 6 + 1),  # a CR before CRLF is not a line end of its own
    (b"", 0),
]


async def test_crlf_sizes_counted_at_delivery(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db", tmp_path / "blobs", inline_max=LIMIT)
    await store.open()
    try:
        box = await inbox(store, await new_user(store))
        # one body over the threshold (a file) and one streamed in with `append_file` whose CRLF straddles the
        # 1 MiB read chunk: "\r" is its last byte of the first chunk, "\n" the first of the second
        big = b"Subject: big\n\n" + b"x" * 2000 + b"\n"
        straddle = b"Subject: s\r\n\r\n" + b"y" * ((1 << 20) - 15) + b"\r\n" + b"z\n"
        assert straddle[(1 << 20) - 1:(1 << 20) + 1] == b"\r\n"
        cases = [*CRLF_SIZES, (big, len(big) + 3), (straddle, len(straddle) + 1)]
        for raw, _ in cases[:-1]:
            await store.append(box.id, AppendRequest(raw))
        staged = store.staging_dir() / "straddle"
        staged.write_bytes(straddle)
        await store.append_file(box.id, staged)
        got = await store.crlf_sizes([blob_id_of(raw) for raw, _ in cases] + ["0" * 64])
        assert got == {blob_id_of(raw): want for raw, want in cases}  # an unknown blob is left out
        assert await store.crlf_sizes([]) == {}
    finally:
        await store.close()


async def test_migration_to_7_counts_old_bodies_on_first_ask(tmp_path: Path) -> None:
    """A store written at schema 6 (no `crlf_size`), bodies inline and as files, then opened by this code."""
    store = SQLiteStore(tmp_path / "v4.db", tmp_path / "blobs", inline_max=LIMIT)
    await store.open()
    box = await inbox(store, await new_user(store))
    big = b"Subject: big\n\n" + b"x" * 2000 + b"\n"
    for raw in (BARE_LF, big):
        await store.append(box.id, AppendRequest(raw))
    await store.close()
    downgrade(tmp_path / "v4.db", 6)  # exactly the version 6 tables, with the rows

    def column() -> dict[str, int | None]:
        c = sqlite3.connect(tmp_path / "v4.db")
        try:
            return dict(c.execute("SELECT id, crlf_size FROM blobs").fetchall())
        finally:
            c.close()

    store = SQLiteStore(tmp_path / "v4.db", tmp_path / "blobs", inline_max=LIMIT)
    await store.open()
    try:
        assert column() == {blob_id_of(BARE_LF): None, blob_id_of(big): None}  # the upgrade read no body
        want = {blob_id_of(BARE_LF): 79, blob_id_of(big): len(big) + 3}
        listed = await store.list_octets(box.id)  # the POP3 listing counts them the same way
        assert [(blob, octets) for _, blob, octets in listed] == list(want.items())
        assert await store.crlf_sizes(want) == want
        assert column() == want  # kept: the next listing reads no body
        assert await store.crlf_sizes(want) == want
    finally:
        await store.close()


async def test_previews_are_kept_per_body(store: Store) -> None:
    """`read_previews` / `write_previews` (RFC 8970 previews, schema invariant 11): kept per body, so every
    message with that body has it; a body without one, or not stored, is left out."""
    box = await inbox(store, await new_user(store))
    a = await store.append(box.id, AppendRequest(b"Subject: a\r\n\r\nfirst\r\n"))
    b = await store.append(box.id, AppendRequest(b"Subject: b\r\n\r\nsecond\r\n"))
    ia, ib = [await store.get_message(box.id, r.uid) for r in (a, b)]
    assert ia is not None and ib is not None
    assert await store.read_previews([ia.blob_id, ib.blob_id]) == {}
    await store.write_previews({ia.blob_id: "first", "0" * 64: "gone"})
    assert await store.read_previews([ia.blob_id, ib.blob_id, "0" * 64]) == {ia.blob_id: "first"}
    await store.write_previews({ib.blob_id: ""})  # an empty preview is a preview (a message without text)
    assert await store.read_previews([ib.blob_id]) == {ib.blob_id: ""}
    with pytest.raises(Invalid):
        await store.write_previews({ia.blob_id: "x" * 2000})


@BODY_BACKENDS
async def test_read_message_range(store: Store) -> None:
    # Store.read_message_range (IMAP CATENATE reads source bodies in pieces): the same octets as a slice of
    # read_message, inline and as a file, fewer at the end, none past it; NotFound for an unknown body.
    u = await new_user(store)
    box = await inbox(store, u)
    for raw in (body(1_000, salt=2), body(300_000, salt=3)):  # inline (backend "sqlite") and a file
        res = await store.append(box.id, AppendRequest(raw))
        (info,) = [m for m in await store.list_messages(box.id) if m.uid == res.uid]
        n = len(raw)
        for start, length in ((0, 10), (5, 262_144), (n - 10, 100), (n, 5), (n + 99, 5), (17, 0)):
            assert await store.read_message_range(info.blob_id, start, length) == raw[start:start + length]
    with pytest.raises(NotFound):
        await store.read_message_range("0" * 64, 0, 10)
    with pytest.raises(Invalid):
        await store.read_message_range(info.blob_id, -1, 10)


@BODY_BACKENDS
async def test_read_messages_many_at_once(store: Store) -> None:
    # Store.read_messages (POP3 read-ahead): the bytes read_message gives, for each stored body asked for, inline
    # and as a file and empty, in one call; an unknown body is left out, a repeated id answered once; Invalid for a
    # string that is not a blob id, before anything is read.
    u = await new_user(store)
    box = await inbox(store, u)
    raws = [body(1_000, salt=4), body(300_000, salt=5), b"", body(2_000, salt=6)]
    for raw in raws:
        await store.append(box.id, AppendRequest(raw))
    ids = [m.blob_id for m in await store.list_messages(box.id)]
    assert len(ids) == 4
    got = await store.read_messages([ids[3], "0" * 64, *ids, ids[0]])
    assert got == {blob_id_of(raw): raw for raw in raws}
    assert got == {i: await store.read_message(i) for i in ids}
    assert await store.read_messages([]) == {}
    assert await store.read_messages(["0" * 64]) == {}
    with pytest.raises(Invalid):
        await store.read_messages([ids[0], "../etc/passwd"])


async def test_list_octets_is_the_pop3_listing(store: Store) -> None:
    # Store.list_octets (POP3 login, RFC 1939 §11): (uid, blob id, octets as sent with CRLF line ends) of every
    # message, ascending UID, in one call: the same numbers as list_messages and crlf_sizes. NotFound for a gone
    # mailbox.
    u = await new_user(store)
    box = await inbox(store, u)
    assert await store.list_octets(box.id) == []
    raws = [BARE_LF, b"Subject: a\r\n\r\nfirst\r\n", b"", BARE_LF, b"Subject: b\n\nno end"]
    for raw in raws:
        await store.append(box.id, AppendRequest(raw))
    infos = await store.list_messages(box.id)
    await store.remove_messages(box.id, [infos[1].uid])
    infos = await store.list_messages(box.id)
    sizes = await store.crlf_sizes(m.blob_id for m in infos)
    listed = await store.list_octets(box.id)
    assert listed == [(m.uid, m.blob_id, sizes[m.blob_id]) for m in infos]
    assert [octets for _, _, octets in listed] == [79, 0, 79, len(raws[4]) + 4]
    with pytest.raises(NotFound):
        await store.list_octets(box.id + 1000)
