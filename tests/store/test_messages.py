"""Messages: append, deliver, read, flags and keywords, MODSEQ, expunge, copy, move, blob sharing."""

from __future__ import annotations

import hashlib

import pytest

from postroom.store.api import (
    AppendRequest,
    ChangeKind,
    Flag,
    Invalid,
    NotFound,
    Store,
    StoreMode,
)

from .conftest import BODY_BACKENDS, inbox, msg, new_user, stored_bodies

pytestmark = BODY_BACKENDS


async def test_append_and_read(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    raw = b"From: x@example.org\r\n\r\n\x00\xff binary \r\n.\r\n" + bytes(range(256))
    r = await store.append(
        box.id,
        AppendRequest(raw, flags=Flag.SEEN | Flag.DRAFT, keywords=frozenset({"$Label1"}), internal_date=1e9,
                      meta=b"\x01meta"),
    )
    assert (r.uid, r.uidvalidity) == (1, box.uidvalidity) and r.modseq > box.highestmodseq
    assert [(c.kind, c.uid, c.modseq, c.flags, c.keywords, c.user_id) for c in r.changes] == [
        (ChangeKind.APPEND, 1, r.modseq, Flag.SEEN | Flag.DRAFT, frozenset({"$Label1"}), u.id),
        (ChangeKind.MAILBOX_KEYWORDS, 0, 0, 0, frozenset({"$Label1"}), u.id),  # the mailbox's first keyword
    ]
    info = await store.get_message(box.id, r.uid)
    assert info is not None
    assert (info.mailbox_id, info.uid, info.modseq, info.internal_date, info.size) == (box.id, 1, r.modseq, 1e9,
                                                                                       len(raw))
    assert info.flags == Flag.SEEN | Flag.DRAFT and info.keywords == {"$Label1"}
    assert info.blob_id == hashlib.sha256(raw).hexdigest()
    assert await store.read_message(info.blob_id) == raw
    assert await store.read_meta(info.blob_id) == b"\x01meta"
    assert await store.get_message(box.id, 99) is None
    after = await inbox(store, u)
    assert after.uidnext == 2 and after.highestmodseq == r.modseq


async def test_append_defaults_internal_date_to_now(store: Store) -> None:
    import time

    u = await new_user(store)
    box = await inbox(store, u)
    before = time.time()
    r = await store.append(box.id, msg(1))
    info = await store.get_message(box.id, r.uid)
    assert info is not None and before - 1 <= info.internal_date <= time.time() + 1
    assert await store.read_meta(info.blob_id) is None


async def test_append_errors(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    with pytest.raises(NotFound):
        await store.append(10**9, msg(1))
    with pytest.raises(Invalid):
        await store.append(box.id, msg(1, flags=64))
    for bad in ("two words", "\\Seen", "", "a(b"):
        with pytest.raises(Invalid):
            await store.append(box.id, msg(1, keywords=frozenset({bad})))
    assert await store.list_messages(box.id) == []
    with pytest.raises(NotFound):
        await store.read_message("0" * 64)
    with pytest.raises(NotFound):
        await store.read_meta("0" * 64)
    with pytest.raises(Invalid):
        await store.read_message("../../etc/passwd")
    with pytest.raises(NotFound):
        await store.list_messages(10**9)
    assert stored_bodies(store) in ([], None)  # a failed append leaves no body behind


async def test_append_many_and_list(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    results = await store.append_many(box.id, [msg(i) for i in range(5)])
    assert [r.uid for r in results] == [1, 2, 3, 4, 5]
    modseqs = [r.modseq for r in results]
    assert modseqs == sorted(set(modseqs))
    assert await store.append_many(box.id, []) == []
    assert [m.uid for m in await store.list_messages(box.id)] == [1, 2, 3, 4, 5]
    assert [m.uid for m in await store.list_messages(box.id, 2, 4)] == [2, 3, 4]
    assert [m.uid for m in await store.list_messages(box.id, 4)] == [4, 5]
    assert await store.list_messages(box.id, 6) == []
    with pytest.raises(Invalid):
        await store.append_many(box.id, [msg(10), msg(11, flags=1 << 10)])
    assert len(await store.list_messages(box.id)) == 5  # all or nothing


async def test_uids_increase_and_are_not_reused_after_expunge(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    a = await store.append(box.id, msg(1, flags=Flag.DELETED))
    b = await store.append(box.id, msg(2, flags=Flag.DELETED))
    await store.expunge(box.id)
    c = await store.append(box.id, msg(3))
    assert a.uid < b.uid < c.uid
    assert [m.uid for m in await store.list_messages(box.id)] == [c.uid]


async def test_modseq_increases_on_every_change(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    seen = [box.highestmodseq]

    async def check(expected_modseq: int) -> None:
        assert expected_modseq > seen[-1]
        seen.append(expected_modseq)
        assert (await inbox(store, u)).highestmodseq == expected_modseq

    r = await store.append(box.id, msg(1))
    await check(r.modseq)
    w = await store.store_flags(box.id, [r.uid], StoreMode.ADD, Flag.SEEN)
    await check(w.changes[0].modseq)
    assert (await store.get_message(box.id, r.uid)).modseq == w.changes[0].modseq  # type: ignore[union-attr]
    w = await store.store_flags(box.id, [r.uid], StoreMode.ADD, keywords=["$Junk"])
    await check(w.changes[0].modseq)
    w = await store.store_flags(box.id, [r.uid], StoreMode.ADD, Flag.DELETED)
    await check(w.changes[0].modseq)
    w = await store.expunge(box.id)
    assert [c.kind for c in w.changes] == [ChangeKind.EXPUNGE]
    await check(w.changes[0].modseq)


async def test_store_flags_modes(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(1), msg(2), msg(3)])
    await store.store_flags(box.id, [1, 2], StoreMode.ADD, Flag.SEEN | Flag.FLAGGED, ["Work"])
    await store.store_flags(box.id, [2], StoreMode.REMOVE, Flag.FLAGGED, ["WORK"])
    await store.store_flags(box.id, [3], StoreMode.REPLACE, Flag.ANSWERED, ["a", "b"])
    got = {m.uid: (m.flags, m.keywords) for m in await store.list_messages(box.id)}
    assert got == {
        1: (Flag.SEEN | Flag.FLAGGED, frozenset({"Work"})),
        2: (Flag.SEEN, frozenset()),
        3: (Flag.ANSWERED, frozenset({"a", "b"})),
    }
    await store.store_flags(box.id, [3], StoreMode.REPLACE, 0, [])
    m3 = await store.get_message(box.id, 3)
    assert m3 is not None and (m3.flags, m3.keywords) == (0, frozenset())
    # missing UIDs are ignored
    assert (await store.store_flags(box.id, [77, 78], StoreMode.ADD, Flag.SEEN)).changes == ()
    with pytest.raises(NotFound):
        await store.store_flags(10**9, [1], StoreMode.ADD, Flag.SEEN)
    with pytest.raises(Invalid):
        await store.store_flags(box.id, [1], StoreMode.ADD, 1 << 7)
    with pytest.raises(Invalid):
        await store.store_flags(box.id, [1], StoreMode.ADD, 0, ["bad word"])


async def test_keywords_case_preserved_as_first_set(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    r = await store.append(box.id, msg(1, keywords=frozenset({"$Important"})))
    w = await store.store_flags(box.id, [r.uid], StoreMode.ADD, keywords=["$IMPORTANT"])
    assert w.changes == ()  # same keyword: nothing changed
    w = await store.store_flags(box.id, [r.uid], StoreMode.REPLACE, keywords=["$important", "New"])
    assert w.changes[0].keywords == {"$Important", "New"}


async def test_store_flags_bumps_only_changed(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(1, flags=Flag.SEEN), msg(2), msg(3, flags=Flag.SEEN)])
    before = {m.uid: m.modseq for m in await store.list_messages(box.id)}
    w = await store.store_flags(box.id, [1, 2, 3], StoreMode.ADD, Flag.SEEN)
    assert [(c.kind, c.uid, c.flags) for c in w.changes] == [(ChangeKind.FLAGS, 2, Flag.SEEN)]
    after = {m.uid: m.modseq for m in await store.list_messages(box.id)}
    assert after[1] == before[1] and after[3] == before[3] and after[2] > max(before.values())
    assert (await inbox(store, u)).highestmodseq == after[2]
    # nothing to change: no MODSEQ taken at all
    hms = (await inbox(store, u)).highestmodseq
    assert (await store.store_flags(box.id, [1, 2, 3], StoreMode.ADD, Flag.SEEN)).changes == ()
    assert (await inbox(store, u)).highestmodseq == hms


async def test_store_flags_unchanged_since(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    r1, r2 = await store.append_many(box.id, [msg(1), msg(2)])
    cutoff = r2.modseq
    w = await store.store_flags(box.id, [r2.uid], StoreMode.ADD, Flag.FLAGGED)  # r2 now past the cutoff
    w = await store.store_flags(box.id, [r1.uid, r2.uid], StoreMode.ADD, Flag.SEEN, unchanged_since=cutoff)
    assert [c.uid for c in w.changes] == [r1.uid]
    m2 = await store.get_message(box.id, r2.uid)
    assert m2 is not None and m2.flags == Flag.FLAGGED
    w = await store.store_flags(box.id, [r1.uid, r2.uid], StoreMode.ADD, Flag.ANSWERED, unchanged_since=0)
    assert w.changes == ()


async def test_store_flags_many_uids(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(i) for i in range(700)])
    w = await store.store_flags(box.id, list(range(1, 701, 2)) + [5000], StoreMode.ADD, Flag.SEEN)
    assert [c.uid for c in w.changes] == list(range(1, 701, 2))
    assert (await store.mailbox_status(box.id)).unseen == 350


async def test_expunge(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    d = Flag.DELETED
    await store.append_many(box.id, [msg(1, flags=d), msg(2), msg(3, flags=d), msg(4, flags=d)])
    w = await store.expunge(box.id, [1, 2, 99])  # 2 is not \Deleted: stays
    assert [(c.kind, c.uid) for c in w.changes] == [(ChangeKind.EXPUNGE, 1)]
    w = await store.expunge(box.id)
    assert [c.uid for c in w.changes] == [3, 4]
    assert [c.modseq for c in w.changes] == sorted({c.modseq for c in w.changes})
    assert [m.uid for m in await store.list_messages(box.id)] == [2]
    assert (await store.expunge(box.id)).changes == ()
    with pytest.raises(NotFound):
        await store.expunge(10**9)


async def test_remove_messages(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(1), msg(2, flags=Flag.DELETED), msg(3)])
    w = await store.remove_messages(box.id, [1, 2, 42])
    assert [(c.kind, c.uid) for c in w.changes] == [(ChangeKind.EXPUNGE, 1), (ChangeKind.EXPUNGE, 2)]
    assert [m.uid for m in await store.list_messages(box.id)] == [3]
    with pytest.raises(NotFound):
        await store.remove_messages(10**9, [1])


async def test_copy_messages(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    dest = await store.create_mailbox(u.id, "Copies")
    await store.append(dest.id, msg(100))  # dest UIDs start past this one
    await store.append_many(box.id, [msg(1, flags=Flag.SEEN, keywords=frozenset({"k"})), msg(2), msg(3)])
    res = await store.copy_messages(box.id, [3, 1, 9], dest.id)
    assert res.uidvalidity == dest.uidvalidity
    assert res.source_uids == (1, 3) and res.dest_uids == (2, 3)
    assert [(c.kind, c.mailbox_id, c.uid) for c in res.changes] == [
        (ChangeKind.APPEND, dest.id, 2), (ChangeKind.APPEND, dest.id, 3),
        (ChangeKind.MAILBOX_KEYWORDS, dest.id, 0),  # "k" is new to the destination (api invariant 9)
    ]
    src_msgs = {m.uid: m for m in await store.list_messages(box.id)}
    copies = {m.uid: m for m in await store.list_messages(dest.id)}
    assert len(src_msgs) == 3
    assert copies[2].blob_id == src_msgs[1].blob_id and copies[2].flags == Flag.SEEN
    assert copies[2].keywords == {"k"} and copies[2].internal_date == src_msgs[1].internal_date
    # copying into the same mailbox is allowed and makes new UIDs
    same = await store.copy_messages(box.id, [2], box.id)
    assert same.dest_uids == (4,)
    empty = await store.copy_messages(box.id, [99], dest.id)
    assert (empty.source_uids, empty.dest_uids, empty.changes) == ((), (), ())


async def test_move_messages(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    dest = await store.create_mailbox(u.id, "Moved")
    await store.append_many(box.id, [msg(1), msg(2), msg(3)])
    blobs = {m.uid: m.blob_id for m in await store.list_messages(box.id)}
    res = await store.move_messages(box.id, [1, 3], dest.id)
    assert (res.source_uids, res.dest_uids, res.uidvalidity) == ((1, 3), (1, 2), dest.uidvalidity)
    kinds = [(c.kind, c.mailbox_id, c.uid) for c in res.changes]
    assert (ChangeKind.APPEND, dest.id, 1) in kinds and (ChangeKind.EXPUNGE, box.id, 3) in kinds
    assert [m.uid for m in await store.list_messages(box.id)] == [2]
    moved = await store.list_messages(dest.id)
    assert [m.blob_id for m in moved] == [blobs[1], blobs[3]]
    assert await store.read_message(blobs[1]) == msg(1).raw  # the body survived the move


async def test_copy_move_errors(store: Store) -> None:
    a = await new_user(store, "a@example.org")
    b = await new_user(store, "b@example.org")
    a_box, b_box = await inbox(store, a), await inbox(store, b)
    await store.append(a_box.id, msg(1))
    with pytest.raises(Invalid):
        await store.copy_messages(a_box.id, [1], b_box.id)
    with pytest.raises(Invalid):
        await store.move_messages(a_box.id, [1], b_box.id)
    with pytest.raises(NotFound):
        await store.copy_messages(a_box.id, [1], 10**9)
    with pytest.raises(NotFound):
        await store.move_messages(10**9, [1], a_box.id)
    assert await store.list_messages(b_box.id) == []
    assert len(await store.list_messages(a_box.id)) == 1


async def test_deliver_shares_one_blob(store: Store) -> None:
    users = [await new_user(store, f"u{i}@example.org") for i in range(3)]
    boxes = [await inbox(store, u) for u in users]
    extra = await store.create_mailbox(users[0].id, "Lists")
    targets = [b.id for b in boxes] + [extra.id]
    raw = b"Subject: to many\r\n\r\nhello all\r\n"
    results = await store.deliver(targets, AppendRequest(raw, meta=b"M"))
    assert [r.uid for r in results] == [1, 1, 1, 1]
    assert [r.changes[0].mailbox_id for r in results] == targets
    assert [r.changes[0].user_id for r in results] == [users[0].id, users[1].id, users[2].id, users[0].id]
    blob_ids = {(await store.get_message(t, 1)).blob_id for t in targets}  # type: ignore[union-attr]
    assert len(blob_ids) == 1
    (blob_id,) = blob_ids
    assert stored_bodies(store) in ([blob_id], None)  # one body, however many mailboxes
    assert await store.read_meta(blob_id) == b"M"
    assert await store.deliver([], AppendRequest(raw)) == []
    with pytest.raises(NotFound):
        await store.deliver([boxes[0].id, 10**9], AppendRequest(raw))
    assert len(await store.list_messages(boxes[0].id)) == 1  # all or nothing


async def test_blob_released_at_refcount_zero(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    other = await store.create_mailbox(u.id, "Other")
    raw = msg(1).raw
    await store.deliver([box.id, other.id], AppendRequest(raw))
    await store.copy_messages(box.id, [1], other.id)  # three references now
    blob_id = hashlib.sha256(raw).hexdigest()
    await store.remove_messages(box.id, [1])
    assert await store.read_message(blob_id) == raw
    await store.store_flags(other.id, [1], StoreMode.ADD, Flag.DELETED)
    await store.expunge(other.id)
    assert await store.read_message(blob_id) == raw
    await store.delete_mailbox(u.id, "Other")  # the last reference
    with pytest.raises(NotFound):
        await store.read_message(blob_id)
    assert stored_bodies(store) in ([], None)
    # the same bytes can come back
    r = await store.append(box.id, AppendRequest(raw))
    assert await store.read_message((await store.get_message(box.id, r.uid)).blob_id) == raw  # type: ignore[union-attr]


async def test_release_and_reacquire_in_one_batch(store: Store) -> None:
    """A blob dropped to zero references and taken again by a concurrent write must keep its file."""
    import asyncio

    u = await new_user(store)
    box = await inbox(store, u)
    raw = msg(7).raw
    r = await store.append(box.id, AppendRequest(raw))
    for _ in range(5):
        _, add = await asyncio.gather(
            store.remove_messages(box.id, [r.uid]), store.append(box.id, AppendRequest(raw))
        )
        r = add
        info = await store.get_message(box.id, r.uid)
        assert info is not None and await store.read_message(info.blob_id) == raw


async def test_list_columns_matches_list_messages(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    reqs = [msg(i, flags=Flag.SEEN if i % 3 else 0, internal_date=1e9 + i,
                keywords=frozenset({"$Label1", "Work"}) if i % 4 == 0 else frozenset())
            for i in range(1, 1201)]
    await store.append_many(box.id, reqs)
    await store.store_flags(box.id, [5, 6], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id, [5, 6])
    for lo, hi in ((1, None), (3, 700), (1199, 5000), (5000, None)):
        infos = await store.list_messages(box.id, lo, hi)
        cols = await store.list_columns(box.id, lo, hi)
        assert len(cols) == len(infos)
        assert list(cols.uids) == [m.uid for m in infos]
        assert list(cols.modseqs) == [m.modseq for m in infos]
        assert list(cols.flags) == [m.flags for m in infos]
        assert list(cols.sizes) == [m.size for m in infos]
        assert list(cols.internal_dates) == [m.internal_date for m in infos]
        assert list(cols.blob_ids) == [m.blob_id for m in infos]
        assert [cols.keywords_at(i) for i in range(len(cols))] == [m.keywords for m in infos]
        assert all(cols.keywords[i] for i in cols.keywords)  # only messages with keywords are kept
        narrow = await store.list_columns(box.id, lo, hi, flags_only=True)
        assert (list(narrow.uids), list(narrow.modseqs), list(narrow.flags), narrow.keywords) == (
            list(cols.uids), list(cols.modseqs), list(cols.flags), cols.keywords)
        assert (narrow.sizes, narrow.internal_dates, narrow.blob_ids, narrow.save_dates) == ((), (), (), ())
    with pytest.raises(NotFound):
        await store.list_columns(987654)
    with pytest.raises(NotFound):
        await store.list_columns(987654, flags_only=True)


async def test_select_view_is_uids_first_unseen_and_keywords(store: Store) -> None:
    """SELECT's read (`select_view`): the UIDs ascending, the lowest UID without \\Seen, the keywords in use."""
    u = await new_user(store)
    box = await inbox(store, u)
    view = await store.select_view(box.id)
    assert (list(view.uids), view.first_unseen_uid, view.keywords) == ([], 0, frozenset())
    # UIDs 1..1200; every third unseen (3, 6, 9, ...); keywords on 4, 8, ... and "Urgent" on 1000 alone.
    reqs = [msg(i, flags=Flag.SEEN if i % 3 else 0,
                keywords=(frozenset({"$Label1", "Work"}) if i % 4 == 0 else frozenset())
                | (frozenset({"Urgent"}) if i == 1000 else frozenset()))
            for i in range(1, 1201)]
    await store.append_many(box.id, reqs)
    await store.store_flags(box.id, [3, 5, 1000], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id, [3, 5, 1000])
    view = await store.select_view(box.id)
    assert list(view.uids) == [i for i in range(1, 1201) if i not in (3, 5, 1000)]
    assert view.first_unseen_uid == 6  # 3 is gone
    assert view.keywords == {"$Label1", "Work"}  # "Urgent" left with message 1000
    await store.store_flags(box.id, [i for i in range(1, 1201) if i % 3 == 0 and i != 3], StoreMode.ADD, Flag.SEEN)
    assert (await store.select_view(box.id)).first_unseen_uid == 0
    with pytest.raises(NotFound):
        await store.select_view(987654)


async def test_uids_with_flag_is_the_flag_column_filtered(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(i, flags=(Flag.SEEN if i % 3 else 0) | (Flag.FLAGGED if i % 5 == 0 else 0))
                                     for i in range(1, 301)])
    await store.store_flags(box.id, [7, 8], StoreMode.ADD, Flag.DELETED)
    await store.expunge(box.id, [7, 8])
    for lo, hi in ((1, 300), (10, 20), (299, 5000), (400, 500)):
        cols = await store.list_columns(box.id, lo, hi)
        for flag in (Flag.SEEN, Flag.FLAGGED, Flag.DELETED):
            for present in (True, False):
                want = [uid for uid, f in zip(cols.uids, cols.flags) if bool(f & flag) == present]
                assert await store.uids_with_flag(box.id, lo, hi, int(flag), present) == want
    with pytest.raises(NotFound):
        await store.uids_with_flag(987654, 1, 10, int(Flag.SEEN), True)


async def test_read_metas_many_at_once(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    reqs = [msg(i, meta=b"meta %d" % i if i % 2 else None) for i in range(1, 1101)]  # > one IN list
    await store.append_many(box.id, reqs)
    infos = await store.list_messages(box.id)
    ids = [m.blob_id for m in infos]
    gone = hashlib.sha256(b"never stored").hexdigest()
    got = await store.read_metas([*ids, ids[0], gone])
    assert set(got) == set(ids)  # duplicates once; a body not stored is left out
    for i, m in enumerate(infos, 1):
        assert got[m.blob_id] == (b"meta %d" % i if i % 2 else None) == await store.read_meta(m.blob_id)
    assert await store.read_metas([]) == {}


async def test_write_metas_replaces_metadata_of_stored_bodies(store: Store) -> None:
    # readers store back metadata they recomputed (an older format): one call, bodies gone are skipped
    u = await new_user(store)
    box = await inbox(store, u)
    await store.append_many(box.id, [msg(1, meta=b"format 1"), msg(2)])
    a, b = (m.blob_id for m in await store.list_messages(box.id))
    gone = hashlib.sha256(b"never stored").hexdigest()
    await store.write_metas({a: b"format 2 a", b: b"format 2 b", gone: b"x"})
    assert await store.read_metas([a, b, gone]) == {a: b"format 2 a", b: b"format 2 b"}
    await store.write_metas({})
    infos = await store.list_messages(box.id)
    assert [m.size for m in infos] == [len(msg(1).raw), len(msg(2).raw)]  # the bodies are untouched
    assert await store.read_message(a) == msg(1).raw


# ---- the keywords a mailbox has had (issue 15 item 5): IMAP's FLAGS response (RFC 9051 §7.3.5)


async def test_mailbox_keywords_grow_and_are_announced(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    other = await store.create_mailbox(u.id, "Other")
    assert box.keywords == frozenset()
    r = await store.append(box.id, msg(1))
    assert [c.kind for c in r.changes] == [ChangeKind.APPEND]  # no keyword: nothing about keywords
    w = await store.store_flags(box.id, [r.uid], StoreMode.ADD, Flag.SEEN, ["$NewKW", "Work"])
    assert [(c.kind, c.mailbox_id, c.keywords) for c in w.changes] == [
        (ChangeKind.FLAGS, box.id, frozenset({"$NewKW", "Work"})),
        (ChangeKind.MAILBOX_KEYWORDS, box.id, frozenset({"$NewKW", "Work"})),
    ]
    assert (await store.get_mailbox_by_id(box.id)).keywords == {"$NewKW", "Work"}  # type: ignore[union-attr]
    # known keywords (in any case) do not grow the set; removing one does not shrink it (Dovecot keeps them too)
    w = await store.store_flags(box.id, [r.uid], StoreMode.REPLACE, 0, ["$newkw"])
    assert [c.kind for c in w.changes] == [ChangeKind.FLAGS]
    assert (await store.get_mailbox(u.id, "INBOX")).keywords == {"$NewKW", "Work"}  # type: ignore[union-attr]
    # APPEND, COPY and MOVE bring keywords into the destination's set
    a = await store.append(other.id, msg(2, keywords=frozenset({"Appended"})))
    assert [(c.kind, c.keywords) for c in a.changes] == [
        (ChangeKind.APPEND, frozenset({"Appended"})), (ChangeKind.MAILBOX_KEYWORDS, frozenset({"Appended"}))]
    c = await store.copy_messages(box.id, [r.uid], other.id)
    assert [(ch.kind, ch.mailbox_id, ch.keywords) for ch in c.changes if ch.kind is ChangeKind.MAILBOX_KEYWORDS] == [
        (ChangeKind.MAILBOX_KEYWORDS, other.id, frozenset({"$NewKW"}))]
    third = await store.create_mailbox(u.id, "Third")
    await store.move_messages(other.id, [a.uid], third.id)
    assert (await store.get_mailbox_by_id(third.id)).keywords == {"Appended"}  # type: ignore[union-attr]
    assert (await store.get_mailbox_by_id(other.id)).keywords == {"Appended", "$NewKW"}  # type: ignore[union-attr]
    # deliveries (one body into several mailboxes) too, each mailbox with its own change
    d = await store.deliver([box.id, third.id], msg(3, keywords=frozenset({"$Delivered"})))
    grown = [ch.mailbox_id for res in d for ch in res.changes if ch.kind is ChangeKind.MAILBOX_KEYWORDS]
    assert grown == [box.id, third.id]


async def test_mailbox_keywords_are_capped(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from postroom.store import names

    monkeypatch.setattr(names, "MAX_MAILBOX_KEYWORDS", 2)
    u = await new_user(store)
    box = await inbox(store, u)
    r = await store.append(box.id, msg(1, keywords=frozenset({"a", "b"})))
    with pytest.raises(Invalid):
        await store.store_flags(box.id, [r.uid], StoreMode.ADD, 0, ["c"])
    with pytest.raises(Invalid):
        await store.append(box.id, msg(2, keywords=frozenset({"c"})))
    await store.store_flags(box.id, [r.uid], StoreMode.REPLACE, 0, ["A"])  # known ones are always fine
    assert (await store.get_message(box.id, r.uid)).keywords == {"a"}  # type: ignore[union-attr]
