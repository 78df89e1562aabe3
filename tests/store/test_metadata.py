"""IMAP METADATA entries in the store (RFC 5464; `Store.get_metadata` / `set_metadata`, schema invariant 12)."""

from __future__ import annotations

import pytest

from postroom.store import names
from postroom.store.api import ChangeKind, Invalid, MetadataTooMany, NotFound, Store

from .conftest import inbox, new_user


async def test_set_get_depth_and_case(store: Store) -> None:
    user = await new_user(store)
    box = await inbox(store, user)
    await store.set_metadata(user.id, box.id, [
        ("/private/Comment", b"mine"), ("/shared/comment", b"ours"), ("/private/vendor/x/a", b"1"),
        ("/private/vendor/x/a/deep", b"2"), ("/private/vendor/y", b"3")])
    await store.set_metadata(user.id, 0, [("/shared/comment", b"server note")])
    assert await store.get_metadata(user.id, box.id, ["/PRIVATE/comment"]) == [("/private/comment", b"mine")]
    assert await store.get_metadata(user.id, box.id, ["/private/vendor"], 1) == [("/private/vendor/y", b"3")]
    assert await store.get_metadata(user.id, box.id, ["/private/vendor/x"], 1) == [("/private/vendor/x/a", b"1")]
    assert [n for n, _ in await store.get_metadata(user.id, box.id, ["/private"], -1)] == [
        "/private/comment", "/private/vendor/x/a", "/private/vendor/x/a/deep", "/private/vendor/y"]
    assert await store.get_metadata(user.id, 0, ["/shared/comment", "/private/comment"]) == [
        ("/shared/comment", b"server note")]  # the server's entries are apart from the mailbox's
    await store.set_metadata(user.id, box.id, [("/private/comment", None), ("/private/nothing", None)])
    assert await store.get_metadata(user.id, box.id, ["/private/comment"]) == []


async def test_scoped_by_user_and_deleted_with_the_mailbox(store: Store) -> None:
    alice = await new_user(store)
    bob = await new_user(store, "bob@example.org")
    box = await store.create_mailbox(alice.id, "Projects")
    await store.set_metadata(alice.id, box.id, [("/shared/comment", b"alice's")])
    with pytest.raises(NotFound):
        await store.set_metadata(bob.id, box.id, [("/shared/comment", b"bob's")])  # not bob's mailbox
    with pytest.raises(NotFound):
        await store.get_metadata(bob.id, box.id, ["/shared/comment"])
    await store.delete_mailbox(alice.id, "Projects")
    again = await store.create_mailbox(alice.id, "Projects")
    assert await store.get_metadata(alice.id, again.id, ["/shared"], -1) == []
    await store.set_metadata(alice.id, 0, [("/private/x", b"1")])
    await store.remove_user("alice@example.org")
    await new_user(store)  # the same address again: nothing of the old user's is found
    fresh = await store.get_user("alice@example.org")
    assert fresh is not None and await store.get_metadata(fresh.id, 0, ["/private"], -1) == []


async def test_limits_and_all_or_nothing(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    user = await new_user(store)
    box = await inbox(store, user)
    with pytest.raises(Invalid):
        await store.set_metadata(user.id, box.id, [("/private/ok", b"1"), ("/private/bad*", b"2")])
    with pytest.raises(Invalid):
        await store.set_metadata(user.id, box.id, [("/private/big", b"x" * (names.MAX_METADATA_VALUE + 1))])
    for bad in ("/other/x", "/private/", "/private//x", "/shared", "private/x", "/private/é"):
        with pytest.raises(Invalid):
            await store.set_metadata(user.id, box.id, [(bad, b"1")])
    monkeypatch.setattr(names, "MAX_METADATA_ENTRIES", 3)
    await store.set_metadata(user.id, 0, [("/private/a", b"1"), ("/private/b", b"2")])
    with pytest.raises(MetadataTooMany):
        await store.set_metadata(user.id, box.id, [("/private/c", b"3"), ("/private/d", b"4")])
    assert await store.get_metadata(user.id, box.id, ["/private"], -1) == []  # neither was kept
    await store.set_metadata(user.id, box.id, [("/private/c", b"3"), ("/private/a", None)])  # 3 after: fine
    await store.set_metadata(user.id, 0, [("/private/a", None), ("/private/e", b"5")])  # a removal makes room
    assert [n for n, _ in await store.get_metadata(user.id, 0, ["/private"], -1)] == ["/private/b", "/private/e"]


async def test_changes_are_published_to_the_holder_of_the_row(store: Store) -> None:
    """Each entry set, or removed where it was, is one METADATA change record for the user whose row it is (store
    invariant 4): a sharee's "/private" entry reaches only the sharee's feed, a "/shared" one the owner's."""
    alice = await new_user(store)
    bob = await new_user(store, "bob@example.org")
    box = await store.create_mailbox(alice.id, "Projects")
    await store.set_acl(box.id, "bob@example.org", "lrw")
    subs = {u.id: store.hub.subscribe(u.id) for u in (alice, bob)}

    def drained(user_id: int) -> list[tuple[ChangeKind, int, str]]:
        out = []
        while (c := subs[user_id].get_nowait()) is not None:
            out.append((c.kind, c.mailbox_id, c.name))
        return out

    try:
        await store.set_metadata(bob.id, box.id, [("/private/comment", b"bob's"), ("/shared/comment", b"ours")])
        await store.set_metadata(bob.id, 0, [("/private/motd", b"hi"), ("/private/none", None)])
        assert drained(bob.id) == [(ChangeKind.METADATA, box.id, "/private/comment"),
                                   (ChangeKind.METADATA, 0, "/private/motd")]
        assert drained(alice.id) == [(ChangeKind.METADATA, box.id, "/shared/comment")]
    finally:
        for sub in subs.values():
            sub.close()
