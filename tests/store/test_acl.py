"""Access control lists (RFC 4314; api invariants 6 and 10): entries, effective rights, the ACL-checked lookups of
another user's mailbox, cross-user copy with `as_user`, inheritance on CREATE, the change feed's watch, and the
schema 9 migration of a store with data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from postroom.store.api import (
    RIGHTS,
    AclEntry,
    ChangeKind,
    Flag,
    Forbidden,
    Invalid,
    NotFound,
    Store,
)
from postroom.store.hub import Hub

from .conftest import inbox, msg, new_user

BOB = "bob@example.org"
ALICE = "alice@example.org"
CAROL = "carol@example.org"
EVE = "eve@other.test"


async def _folder(store: Store, owner_address: str = BOB, name: str = "Shared") -> tuple[int, int]:
    owner = await store.get_user(owner_address) or await new_user(store, owner_address)
    box = await store.create_mailbox(owner.id, name)
    return owner.id, box.id


async def test_set_get_and_delete_entries(store: Store) -> None:
    alice = await new_user(store, ALICE)
    _, box = await _folder(store)
    assert await store.get_acl(box) == []
    res = await store.set_acl(box, ALICE, "rl")
    assert [c.kind for c in res.changes] == [ChangeKind.MAILBOX_ACL]
    await store.set_acl(box, "anyone", "l")
    await store.set_acl(box, "-Alice@Example.ORG", "w")  # an address in any case: its lookup key
    assert await store.get_acl(box) == [
        AclEntry(ALICE, "lr"), AclEntry("-" + ALICE, "w"), AclEntry("anyone", "l")]
    assert (await store.set_acl(box, ALICE, "lr")).changes == ()  # nothing changed, no change record
    await store.set_acl(box, ALICE, "")  # "" removes the entry
    assert await store.get_acl(box) == [AclEntry("-" + ALICE, "w"), AclEntry("anyone", "l")]
    assert await store.my_rights(alice.id, box) == "l"


async def test_identifiers_are_users_of_the_owners_domain_only(store: Store) -> None:
    bob = await new_user(store, BOB)
    await new_user(store, EVE)
    _, box = await _folder(store)
    for ident in (EVE, "-" + EVE, "nobody@example.org", BOB, "not an address", "@example.org"):
        with pytest.raises(Invalid):
            await store.set_acl(box, ident, "lr")
    with pytest.raises(Invalid):
        await store.set_acl(box, "anyone", "lrQ")  # RFC 4314 §3.1: an unknown right is refused
    with pytest.raises(NotFound):
        await store.set_acl(10**9, "anyone", "l")
    assert await store.get_acl(box) == []
    assert await store.my_rights(bob.id, box) == RIGHTS  # the owner has every right


async def test_effective_rights_union_minus_negative(store: Store) -> None:
    alice = await new_user(store, ALICE)
    carol = await new_user(store, CAROL)
    eve = await new_user(store, EVE)
    _, box = await _folder(store)
    await store.set_acl(box, "anyone", "lrs")
    await store.set_acl(box, ALICE, "wi")
    await store.set_acl(box, "-" + ALICE, "s")
    # RFC 4314 §2: the union of alice's and anyone's positive rights, less her negative ones.
    assert await store.my_rights(alice.id, box) == "lrwi"
    assert await store.my_rights(carol.id, box) == "lrs"
    assert await store.my_rights(eve.id, box) == ""  # "anyone" is the owner's domain only
    await store.set_acl(box, "-anyone", "r")
    assert await store.my_rights(alice.id, box) == "lwi"
    assert await store.my_rights(alice.id, 10**9) == ""


async def test_shared_lookup_goes_through_the_acl(store: Store) -> None:
    alice = await new_user(store, ALICE)
    eve = await new_user(store, EVE)
    bob_id, box = await _folder(store)
    await store.create_mailbox(bob_id, "Private")
    assert await store.get_shared_mailbox(alice.id, BOB, "Shared") is None  # no right yet: as if absent
    assert await store.list_shared_mailboxes(alice.id) == []
    await store.set_acl(box, ALICE, "lr")
    shared = await store.get_shared_mailbox(alice.id, "BOB@example.org", "Shared")
    assert shared is not None and shared.mailbox.id == box and shared.owner == BOB and shared.rights == "lr"
    assert shared.mailbox.user_id == bob_id
    assert await store.get_shared_mailbox(alice.id, BOB, "Private") is None
    assert await store.get_shared_mailbox(alice.id, BOB, "INBOX") is None
    assert await store.get_shared_mailbox(alice.id, ALICE, "INBOX") is None  # never one's own through here
    assert await store.get_shared_mailbox(alice.id, BOB, "a//b") is None
    assert await store.get_shared_mailbox(alice.id, "not an address", "Shared") is None
    assert [(m.owner, m.mailbox.name, m.rights) for m in await store.list_shared_mailboxes(alice.id)] == [
        (BOB, "Shared", "lr")]
    await store.set_acl(box, "anyone", "lr")
    assert await store.get_shared_mailbox(eve.id, BOB, "Shared") is None  # another domain: never
    assert await store.list_shared_mailboxes(eve.id) == []
    await store.set_acl(box, ALICE, "")
    await store.set_acl(box, "anyone", "r")  # "r" without "l": usable, not listed
    assert await store.list_shared_mailboxes(alice.id) == []
    assert [m.mailbox.id for m in await store.list_shared_mailboxes(alice.id, "r")] == [box]
    assert (await store.get_shared_mailbox(alice.id, BOB, "Shared")) is not None


async def test_entries_go_with_the_mailbox_and_the_grantee(store: Store) -> None:
    alice = await new_user(store, ALICE)
    bob_id, box = await _folder(store)
    other = await store.create_mailbox(bob_id, "Other")
    await store.set_acl(box, ALICE, "lr")
    await store.set_acl(other.id, ALICE, "lr")
    await store.delete_mailbox(bob_id, "Shared")
    again = await store.create_mailbox(bob_id, "Shared")  # a new mailbox of the same name is not shared
    assert await store.get_acl(again.id) == []
    await store.remove_user(ALICE)
    assert await store.get_acl(other.id) == []
    alice2 = await new_user(store, ALICE)  # a new user of the same address gets nothing of the old one's
    assert alice2.id != alice.id and await store.my_rights(alice2.id, other.id) == ""


async def test_rename_keeps_the_acl_and_create_inherits_it(store: Store) -> None:
    alice = await new_user(store, ALICE)
    bob_id, box = await _folder(store)
    await store.set_acl(box, ALICE, "lrk")
    await store.rename_mailbox(bob_id, "Shared", "Team")
    assert (await store.get_shared_mailbox(alice.id, BOB, "Team")) is not None
    # RFC 4314 §4: a new mailbox SHOULD inherit the ACL of its parent, here of the nearest existing one.
    child = await store.create_mailbox(bob_id, "Team/a/b")
    middle = await store.get_mailbox(bob_id, "Team/a")
    assert middle is not None
    for mid in (child.id, middle.id):
        assert await store.get_acl(mid) == [AclEntry(ALICE, "lrk")]
    assert await store.get_acl((await store.create_mailbox(bob_id, "Loose")).id) == []


async def test_create_and_rename_as_another_user_need_k_and_x(store: Store) -> None:
    alice = await new_user(store, ALICE)
    bob_id, box = await _folder(store)
    await store.set_acl(box, ALICE, "lr")
    with pytest.raises(Forbidden):
        await store.create_mailbox(bob_id, "Shared/Sub", as_user=alice.id)  # RFC 4314 §4: "k" on the parent
    with pytest.raises(Forbidden):
        await store.create_mailbox(bob_id, "Top", as_user=alice.id)  # no parent at all
    await store.set_acl(box, ALICE, "lrk")
    hidden = await store.create_mailbox(bob_id, "Shared/Hidden")
    await store.set_acl(hidden.id, ALICE, "")
    with pytest.raises(Forbidden):  # the nearest existing parent counts, seen or not
        await store.create_mailbox(bob_id, "Shared/Hidden/X", as_user=alice.id)
    sub = await store.create_mailbox(bob_id, "Shared/Sub", as_user=alice.id)
    assert sub.user_id == bob_id and await store.get_acl(sub.id) == [AclEntry(ALICE, "lrk")]
    with pytest.raises(Forbidden):
        await store.rename_mailbox(bob_id, "Shared/Sub", "Shared/Sub2", as_user=alice.id)  # no "x"
    await store.set_acl(sub.id, ALICE, "lrx")
    with pytest.raises(Forbidden):
        await store.rename_mailbox(bob_id, "Shared/Sub", "Elsewhere", as_user=alice.id)  # no parent with "k"
    await store.rename_mailbox(bob_id, "Shared/Sub", "Shared/Sub2", as_user=alice.id)
    assert await store.get_mailbox(bob_id, "Shared/Sub2") is not None


async def test_too_many_entries(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from postroom.store import names

    monkeypatch.setattr(names, "MAX_ACL_ENTRIES", 2)
    await new_user(store, ALICE)
    await new_user(store, CAROL)
    _, box = await _folder(store)
    await store.set_acl(box, ALICE, "l")
    await store.set_acl(box, CAROL, "l")
    with pytest.raises(Invalid):
        await store.set_acl(box, "anyone", "l")
    await store.set_acl(box, CAROL, "lr")  # changing an entry is no new entry


async def test_copy_across_users_only_with_rights(store: Store) -> None:
    alice = await new_user(store, ALICE)
    bob_id, box = await _folder(store)
    mine = await inbox(store, alice)
    await store.append(box, msg(1, flags=int(Flag.SEEN | Flag.FLAGGED | Flag.DELETED), keywords=frozenset({"k"})))
    with pytest.raises(Invalid):
        await store.copy_messages(box, [1], mine.id)  # without as_user: one user's mailboxes only
    with pytest.raises(Forbidden):
        await store.copy_messages(box, [1], mine.id, as_user=alice.id)  # no "r" on the source
    await store.set_acl(box, ALICE, "lr")
    res = await store.copy_messages(box, [1], mine.id, as_user=alice.id)
    copied = await store.get_message(mine.id, res.dest_uids[0])
    assert copied is not None and copied.flags == int(Flag.SEEN | Flag.FLAGGED | Flag.DELETED)  # all hers
    with pytest.raises(Forbidden):
        await store.move_messages(box, [1], mine.id, as_user=alice.id)  # moving out needs "t" and "e"
    with pytest.raises(Forbidden):
        await store.copy_messages(mine.id, [copied.uid], box, as_user=alice.id)  # no "i" on bob's
    await store.set_acl(box, ALICE, "lris")
    res = await store.copy_messages(mine.id, [copied.uid], box, as_user=alice.id)
    into = await store.get_message(box, res.dest_uids[0])
    # RFC 4314 §4: \Seen needs "s", \Deleted "t", other flags and keywords "w" on the destination.
    assert into is not None and into.flags == int(Flag.SEEN) and into.keywords == frozenset()
    await store.set_acl(box, ALICE, "lrite")
    res = await store.move_messages(box, [1], mine.id, as_user=alice.id)
    assert res.source_uids == (1,) and await store.get_message(box, 1) is None


async def test_watch_delivers_one_mailbox_of_another_user(store: Store) -> None:
    alice = await new_user(store, ALICE)
    bob_id, box = await _folder(store)
    other = await store.create_mailbox(bob_id, "Other")
    sub = store.hub.subscribe(alice.id)
    sub.watch(box)
    await store.append(box, msg(1))
    await store.append(other.id, msg(2))  # the owner's other mailbox: never seen by alice
    await store.append((await inbox(store, alice)).id, msg(3))
    got = [(c.kind, c.mailbox_id) for c in iter(sub.get_nowait, None)]
    assert got == [(ChangeKind.APPEND, box), (ChangeKind.APPEND, (await inbox(store, alice)).id)]
    sub.watch(None)
    await store.append(box, msg(4))
    assert sub.get_nowait() is None
    sub.watch(box)
    sub.close()
    await store.append(box, msg(5))
    assert store.hub.subscriber_count() == 0


def test_hub_watch_counts_once_and_forgets_on_close() -> None:
    from postroom.store.api import Change

    hub = Hub()
    sub = hub.subscribe(1)
    sub.watch(7)
    hub.publish([Change(ChangeKind.APPEND, 1, 7, 1), Change(ChangeKind.APPEND, 2, 7, 2),
                 Change(ChangeKind.APPEND, 2, 8, 3)])
    assert [c.uid for c in iter(sub.get_nowait, None)] == [1, 2]  # its own once; 8 is not watched
    sub.watch(8)
    hub.publish([Change(ChangeKind.APPEND, 2, 7, 4), Change(ChangeKind.APPEND, 2, 8, 5)])
    assert [c.uid for c in iter(sub.get_nowait, None)] == [5]
    sub.close()
    assert hub._watchers == {} and hub._subs == {}


async def test_migration_to_9_keeps_data_and_shares_nothing(tmp_path: Path) -> None:
    """Schema steps 8 and 9 (acl) on a database as version 7 left it, with users, a mailbox and a message."""
    from postroom.store.blobs import blob_id_of
    from postroom.store.sqlite import SQLiteStore
    from postroom.store.sqlite.schema import _STEPS

    db = tmp_path / "v7.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN")
    for version in range(1, 8):  # steps are never edited: exactly the version 7 schema
        _STEPS[version](conn)
    conn.execute("PRAGMA user_version = 7")
    conn.execute("INSERT INTO domains(name, created) VALUES ('example.org', 0)")
    for address in (BOB, ALICE):
        conn.execute("INSERT INTO users(address, domain_id, password_hash, created) VALUES (?, 1, 'h', 0)",
                     (address,))
    box = conn.execute("INSERT INTO mailboxes(user_id, name, uidvalidity, uidnext, highestmodseq)"
                       " VALUES (1, 'Shared', 7, 2, 2) RETURNING id").fetchone()[0]
    raw = msg(1).raw
    conn.execute("INSERT INTO blobs(id, size, refcount) VALUES (?, ?, 1)", (blob_id_of(raw), len(raw)))
    conn.execute("INSERT INTO blob_data(id, data) VALUES (?, ?)", (blob_id_of(raw), raw))
    conn.execute("INSERT INTO messages(mailbox_id, uid, modseq, internal_date, size, blob_id)"
                 " VALUES (?, 1, 2, 0, ?, ?)", (box, len(raw), blob_id_of(raw)))
    conn.execute("COMMIT")
    conn.close()
    store = SQLiteStore(db, tmp_path / "blobs")
    await store.open()
    try:
        alice = await store.get_user(ALICE)
        assert alice is not None
        assert [m.uid for m in await store.list_messages(box)] == [1]
        assert await store.read_message(blob_id_of(raw)) == raw
        assert await store.get_acl(box) == [] and await store.my_rights(alice.id, box) == ""  # nothing shared
        await store.set_acl(box, ALICE, "lr")
        assert await store.my_rights(alice.id, box) == "lr"
    finally:
        await store.close()
