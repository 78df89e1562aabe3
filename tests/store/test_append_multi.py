"""`Store.append_multi` (IMAP MULTIAPPEND, RFC 3502 §3 "all or nothing"): in-memory and staged bodies in one
transaction, consecutive UIDs, nothing stored when any message fails, every staging file gone either way."""

from __future__ import annotations

import pytest

from postroom.store import names
from postroom.store.api import AppendRequest, Flag, Invalid, NotFound, StagedAppend, Store

from .conftest import BODY_BACKENDS, inbox, new_user, stored_bodies
from .test_append_file import LARGE, body, stage, staged

pytestmark = BODY_BACKENDS


async def test_mixed_messages_in_one_transaction(store: Store) -> None:
    mbox = await inbox(store, await new_user(store))
    small, large, other = body(500, 1), body(LARGE, 2), body(700, 3)
    path = stage(store, large)
    res = await store.append_multi(mbox.id, [
        AppendRequest(small, flags=int(Flag.SEEN), internal_date=1_700_000_000.0, meta=b"m1"),
        StagedAppend(path, flags=int(Flag.FLAGGED), keywords=frozenset({"$Work"}), internal_date=1_700_000_100.0,
                     meta=b"m2"),
        AppendRequest(other, keywords=frozenset({"$Later"})),
    ])
    assert [r.uid for r in res] == [1, 2, 3] and {r.uidvalidity for r in res} == {mbox.uidvalidity}
    assert not path.exists() and staged(store) == []
    infos = await store.list_messages(mbox.id)
    assert [await store.read_message(i.blob_id) for i in infos] == [small, large, other]
    assert [i.flags for i in infos] == [Flag.SEEN, Flag.FLAGGED, 0]
    assert [i.keywords for i in infos] == [frozenset(), {"$Work"}, {"$Later"}]
    assert [i.internal_date for i in infos[:2]] == [1_700_000_000.0, 1_700_000_100.0]
    assert await store.read_meta(infos[1].blob_id) == b"m2"
    modseqs = [i.modseq for i in infos]
    assert modseqs == sorted(modseqs) and len(set(modseqs)) == 3
    changes = [c for r in res for c in r.changes]
    assert [c.uid for c in changes if c.kind.value == "append"] == [1, 2, 3]


async def test_one_failure_stores_none(store: Store) -> None:
    mbox = await inbox(store, await new_user(store))
    # The second message brings one keyword too many for the mailbox (api invariant 9): Invalid inside the
    # transaction, after the first message's rows were written in it.
    await store.append(mbox.id, AppendRequest(body(300), keywords=frozenset(
        f"k{i}" for i in range(names.MAX_MAILBOX_KEYWORDS))))
    before = await store.list_messages(mbox.id)
    path = stage(store, body(LARGE, 5))
    with pytest.raises(Invalid):
        await store.append_multi(mbox.id, [
            StagedAppend(path),
            AppendRequest(body(400, 6), keywords=frozenset({"one-too-many"})),
        ])
    assert await store.list_messages(mbox.id) == before
    assert staged(store) == []
    bodies = stored_bodies(store)
    assert bodies is None or bodies == [before[0].blob_id]  # no orphan file of the staged body
    res = await store.append_multi(mbox.id, [AppendRequest(body(400, 7))])
    assert res[0].uid == before[-1].uid + 1  # UIDs of the failed call were not consumed


async def test_gone_mailbox_and_paths_outside_staging(store: Store, tmp_path: object) -> None:
    user = await new_user(store)
    mbox = await store.create_mailbox(user.id, "Gone")
    await store.delete_mailbox(user.id, "Gone")
    path = stage(store, body(LARGE, 8))
    with pytest.raises(NotFound):
        await store.append_multi(mbox.id, [StagedAppend(path), AppendRequest(body(300))])
    assert staged(store) == []
    inside = stage(store, body(LARGE, 9))
    outside = store.staging_dir().parent / "not-staging.eml"
    outside.write_bytes(b"x")
    with pytest.raises(Invalid):
        await store.append_multi((await inbox(store, user)).id, [StagedAppend(inside), StagedAppend(outside)])
    assert outside.exists() and staged(store) == []  # the outside file is left alone, the staged one removed
    outside.unlink()
