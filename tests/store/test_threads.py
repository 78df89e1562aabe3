"""Sort keys and thread ids: `list_sort_rows`, `thread_ids`, the keys refreshed by `write_metas`, copies and moves
keeping their thread (RFC 8474 §5.2), and schema 13 on a store written at schema 7 with data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from postroom.mime.meta import compute_meta
from postroom.mime.sortkeys import casemap
from postroom.store.api import AppendRequest, Flag, Invalid, NotFound, Store, StoreMode
from postroom.store.sqlite import SQLiteStore

from .conftest import downgrade, inbox, new_user


def mail(subject: str, msgid: str | None = None, refs: str = "", date: str = "Mon, 1 Jan 2024 10:00:00 +0000",
         frm: str = "Ann <ann@example.org>") -> AppendRequest:
    head = f"From: {frm}\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\nDate: {date}\r\n"
    if msgid:
        head += f"Message-ID: <{msgid}>\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    raw = (head + "\r\nbody of " + subject + "\r\n").encode()
    return AppendRequest(raw, internal_date=1e9, meta=compute_meta(raw).to_bytes())


async def test_list_sort_rows_reads_the_keys_stored_with_the_message(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    await store.append(box.id, mail("Re: [list] Lunch", "a@x", refs="<p@x> <q@x>"))
    await store.append(box.id, AppendRequest(b"Subject: no metadata\r\n\r\nx\r\n"))  # stored without metadata
    first, second = await store.list_sort_rows(box.id)
    assert (first.uid, first.known, first.subject, first.reply) == (1, 1, "LUNCH", 1)
    assert (first.from_, first.to, first.display_from, first.display_to) == ("ANN", "BOB", "ANN", "BOB")
    assert first.message_id == "a@x" and first.references == "p@x q@x" and first.sent == 1704103200.0
    assert (first.internal_date, first.size) == (1e9, len(mail("Re: [list] Lunch", "a@x", refs="<p@x> <q@x>").raw))
    assert first.thread_id > 0
    assert (second.known, second.thread_id, second.subject) == (0, 0, "")  # keys not known yet
    assert [r.uid for r in await store.list_sort_rows(box.id, 2, 2)] == [2]


async def test_thread_ids_follow_references_and_base_subject(store: Store) -> None:
    user = await new_user(store)
    box = await inbox(store, user)
    other = await store.create_mailbox(user.id, "Elsewhere")
    r1 = await store.append(box.id, mail("Plans", "p1@x"))
    r2 = await store.append(box.id, mail("Re: Plans", "p2@x", refs="<p1@x>"))
    r3 = await store.append(other.id, mail("Re: Re: Plans", "p3@x", refs="<p1@x> <p2@x>"))  # another mailbox
    r4 = await store.append(box.id, mail("Unrelated", "u1@x"))
    r5 = await store.append(box.id, mail("Fwd: plans", "p5@x"))  # no references: the base subject groups it
    child_first = await store.append(box.id, mail("Re: Late", "l2@x", refs="<l1@x>"))
    parent_later = await store.append(box.id, mail("Late", "l1@x"))  # joins its child's thread
    ids = await store.thread_ids(box.id)
    plans = ids[r1.uid]
    assert ids[r2.uid] == ids[r5.uid] == plans == (await store.thread_ids(other.id))[r3.uid]
    assert ids[r4.uid] not in (0, plans) and ids[child_first.uid] == ids[parent_later.uid] != plans
    # Another user's thread is never joined, whatever the ids.
    bob = await new_user(store, "bob@example.org")
    bob_box = await inbox(store, bob)
    b = await store.append(bob_box.id, mail("Re: Plans", "b@x", refs="<p1@x>"))
    assert (await store.thread_ids(bob_box.id))[b.uid] not in set(ids.values())


async def test_copy_move_and_inbox_rename_keep_the_thread(store: Store) -> None:
    user = await new_user(store)
    box = await inbox(store, user)
    dest = await store.create_mailbox(user.id, "Dest")
    for i in range(3):
        await store.append(box.id, mail(f"Topic {i}", f"t{i}@x"))
    before = await store.thread_ids(box.id)
    copied = await store.copy_messages(box.id, [1, 2], dest.id)
    moved = await store.move_messages(box.id, [3], dest.id)
    after = await store.thread_ids(dest.id)
    assert [after[u] for u in copied.dest_uids] == [before[1], before[2]]
    assert after[moved.dest_uids[0]] == before[3]
    await store.rename_mailbox(user.id, "Dest", "Kept")  # same mailbox, same rows
    kept = await store.get_mailbox(user.id, "Kept")
    assert kept is not None and await store.thread_ids(kept.id) == after
    await store.append(box.id, mail("Inbox one", "i1@x"))
    inbox_ids = await store.thread_ids(box.id)
    await store.rename_mailbox(user.id, "INBOX", "Old inbox")  # messages move to a new mailbox (RFC 9051 §6.3.6)
    old = await store.get_mailbox(user.id, "Old inbox")
    assert old is not None and sorted((await store.thread_ids(old.id)).values()) == sorted(inbox_ids.values())


async def test_write_metas_stores_keys_and_gives_the_thread(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    raw = b"Subject: Re: late keys\r\nMessage-ID: <k@x>\r\n\r\nbody\r\n"
    await store.append(box.id, AppendRequest(raw))
    [r] = await store.list_sort_rows(box.id)
    assert (r.known, r.thread_id) == (0, 0)
    await store.write_metas({r.blob_id: compute_meta(raw).to_bytes()})
    [r] = await store.list_sort_rows(box.id)
    assert (r.known, r.subject, r.message_id) == (1, casemap("late keys"), "k@x") and r.thread_id > 0
    assert (await store.thread_ids(box.id)) == {1: r.thread_id}


async def test_keys_go_with_the_last_reference_to_their_body(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    await store.append(box.id, mail("Gone soon", "g@x"))
    await store.remove_messages(box.id, [1])
    path = getattr(store, "path", None)
    if path is None:
        return  # not an SQLite store: the rows are the engine's business
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT COUNT(*) FROM message_keys").fetchone()[0] == 0  # schema invariant 17
    finally:
        conn.close()


async def test_schema_8_on_a_version_7_store_with_data(tmp_path: Path) -> None:
    """A store written at schema 7 (no keys, no thread ids) with messages whose metadata is of format 2: opened
    by this code, the messages are there with thread id 0, and the first reader's write-back fills both in."""
    db, blobs = tmp_path / "v7.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    box = await inbox(store, await new_user(store))
    raws = [b"Subject: One\r\nMessage-ID: <o@x>\r\n\r\n1\r\n", b"Subject: Re: One\r\nReferences: <o@x>\r\n\r\n2\r\n"]
    for raw in raws:
        await store.append(box.id, AppendRequest(raw, meta=b'{"v":2}'))  # a format-2 document, as stored then
    await store.close()
    downgrade(db, 7)  # exactly the version 7 schema, with the rows
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        rows = await store.list_sort_rows(box.id)
        assert [(r.uid, r.known, r.thread_id) for r in rows] == [(1, 0, 0), (2, 0, 0)]
        await store.write_metas({r.blob_id: compute_meta(raw).to_bytes() for r, raw in zip(rows, raws)})
        ids = await store.thread_ids(box.id)
        assert ids[1] == ids[2] != 0
        assert all(r.known for r in await store.list_sort_rows(box.id))
    finally:
        await store.close()


async def test_sort_uids_orders_by_keys_with_uid_ties(store: Store) -> None:
    box = await inbox(store, await new_user(store))
    for subject, date, frm in [("b", "Mon, 1 Jan 2024 10:00:00 +0000", "x@e"), ("ab", "Mon, 1 Jan 2024 09:00:00 +0000",
                                                                              "y@e"),
                               ("a", "Mon, 1 Jan 2024 10:00:00 +0000", "x@e"), ("Re: A", "no date", "é@e")]:
        req = mail(subject, date=date, frm=frm)
        await store.append(box.id, AppendRequest(req.raw, internal_date=1704096000.0, meta=req.meta))
    # 4 has no valid Date: its internal date (08:00) is its sent date (RFC 5256 §2.2).
    assert await store.sort_uids(box.id, [("date", False)]) == [4, 2, 1, 3]
    assert await store.sort_uids(box.id, [("date", True)]) == [1, 3, 2, 4]  # ties stay by UID, ascending
    assert await store.sort_uids(box.id, [("subject", False)]) == [3, 4, 2, 1]  # "A" twice, then "AB", "B"
    assert await store.sort_uids(box.id, [("subject", True)]) == [1, 2, 3, 4]
    # RFC 5051: É decomposes to E + U+0301, so it sorts among the Es, before X.
    assert await store.sort_uids(box.id, [("from", False), ("arrival", False)]) == [4, 1, 3, 2]
    assert await store.sort_uids(box.id, [("size", False)], 2, 3) == [3, 2]
    try:
        await store.sort_uids(box.id, [("modseq", False)])
    except Invalid:
        pass
    else:
        raise AssertionError("an unknown key is Invalid")


async def test_content_version_moves_with_the_messages_and_their_keys_not_with_flags(tmp_path: Path) -> None:
    """The value SORT and THREAD answers are kept under (imap/ordercache.py): an arrival, a removal, pruning the
    record of removals and keys written again each move it on; a flag change does not (no answer depends on it)."""
    now = [1_000_000.0]
    store = SQLiteStore(tmp_path / "v.db", tmp_path / "blobs", clock=lambda: now[0])
    await store.open()
    try:
        user = await new_user(store)
        box = await inbox(store, user)
        other = await store.create_mailbox(user.id, "Other")
        seen: list[tuple[int, ...]] = [await store.content_version(box.id)]

        async def moved() -> bool:
            version = await store.content_version(box.id)
            fresh = version not in seen
            seen.append(version)
            return fresh

        await store.append(box.id, mail("one", "1@x"))
        assert await moved()
        raw = b"Subject: Re: late keys\r\nMessage-ID: <k@x>\r\n\r\nbody\r\n"
        await store.append(box.id, AppendRequest(raw))  # keys not known yet
        assert await moved()
        await store.store_flags(box.id, [1, 2], StoreMode.ADD, Flag.SEEN)
        assert not await moved()
        await store.append(other.id, mail("elsewhere", "e@x"))  # another mailbox's arrival
        assert not await moved()
        [_, late] = await store.list_sort_rows(box.id)
        await store.write_metas({late.blob_id: compute_meta(raw).to_bytes()})  # keys stored later
        assert await moved()
        await store.store_flags(box.id, [1], StoreMode.ADD, Flag.DELETED)
        assert not await moved()
        await store.expunge(box.id)
        assert await moved()
        now[0] += 86400
        assert await store.prune_expunged(now[0]) == 1  # the record of that removal is forgotten
        assert await moved()
        try:
            await store.content_version(9999)
        except NotFound:
            pass
        else:
            raise AssertionError("an unknown mailbox is NotFound")
    finally:
        await store.close()


async def test_thread_summaries_and_uids_per_mailbox(store: Store) -> None:
    """The conversation view's reads (web/conversations.py): per thread, its messages in one mailbox only."""
    user = await new_user(store)
    box = await inbox(store, user)
    other = await store.create_mailbox(user.id, "Elsewhere")
    r1 = await store.append(box.id, mail("Plans", "p1@x"))
    r2 = await store.append(box.id, mail("Re: Plans", "p2@x", refs="<p1@x>"))
    await store.append(other.id, mail("Re: Re: Plans", "p3@x", refs="<p1@x> <p2@x>"))  # the thread, elsewhere
    r4 = await store.append(box.id, mail("Unrelated", "u1@x"))
    await store.store_flags(box.id, [r1.uid], StoreMode.ADD, Flag.SEEN)
    ids = await store.thread_ids(box.id)
    plans, unrelated = ids[r1.uid], ids[r4.uid]
    got = await store.thread_summaries(box.id, [plans, unrelated, 0, plans])
    assert set(got) == {plans, unrelated}
    assert (got[plans].messages, got[plans].newest_uid, got[plans].unseen) == (2, r2.uid, 1)
    assert got[plans].newest_date == 1e9
    assert (got[unrelated].messages, got[unrelated].newest_uid, got[unrelated].unseen) == (1, r4.uid, 1)
    assert (await store.thread_summaries(other.id, [plans]))[plans].messages == 1
    assert await store.thread_uids(box.id, plans, 10) == [r1.uid, r2.uid]
    assert await store.thread_uids(box.id, plans, 1) == [r1.uid]
    assert await store.thread_uids(box.id, 0, 10) == [] and await store.thread_summaries(box.id, []) == {}
    # Another user's mailbox holds none of this user's threads.
    bob_box = await inbox(store, await new_user(store, "bob@example.org"))
    assert await store.thread_summaries(bob_box.id, [plans]) == {}
    assert await store.thread_uids(bob_box.id, plans, 10) == []
    await store.delete_mailbox(user.id, "Elsewhere")
    with pytest.raises(NotFound):
        await store.thread_uids(other.id, plans, 10)
