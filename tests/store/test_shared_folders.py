"""A domain's shared folders (RFC 2342 §5 "Shared Folders", RFC 4314; schema invariant 19, names invariant 6): the
shared-folders owner made on demand and unreachable by address, folders found only through their ACL, the domain
boundary, and the schema 14 migration of a store with data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from postroom.store import names
from postroom.store.api import AlreadyExists, Invalid, NotFound, Store
from postroom.store.sqlite import SQLiteStore
from postroom.store.sqlite.schema import SCHEMA_VERSION

from .conftest import downgrade, msg, new_user

ALICE, BOB, EVE = "alice@example.org", "bob@example.org", "eve@other.test"
OWNER = "shared folders@example.org"


async def test_owner_made_on_demand_once_and_unreachable_by_address(store: Store) -> None:
    alice = await new_user(store, ALICE)
    assert await store.shared_folders_owner("example.org") is None  # nothing made by asking
    owner = await store.shared_folders_owner("Example.ORG", create=True)
    assert owner is not None and await store.shared_folders_owner("example.org", create=True) == owner
    record = await store.get_user_by_id(owner)
    assert record is not None and record.address == OWNER == names.shared_owner("example.org")
    assert (record.password_hash, record.scram) == ("", "")  # nothing verifies against them
    assert await store.list_mailboxes(owner) == []  # no INBOX, nothing to deliver into
    # Not an address: no lookup finds it, nobody can take it, and it is not listed as a user.
    for spelling in (OWNER, "Shared Folders@example.org"):
        assert await store.get_user(spelling) is None
        with pytest.raises(Invalid):
            await store.add_user(spelling, "$argon2id$fake")
        with pytest.raises(Invalid):
            await store.add_alias(spelling, [ALICE])
    assert [u.address for u in await store.list_users("example.org")] == [ALICE]
    assert [u.address for u in await store.list_users()] == [ALICE]
    assert await store.get_shared_mailbox(alice.id, OWNER, "Team") is None  # never as "Other Users/<owner>"
    with pytest.raises(NotFound):
        await store.shared_folders_owner("nowhere.test", create=True)


async def test_folders_are_reached_only_through_their_acl_within_the_domain(store: Store) -> None:
    alice, bob, eve = [await new_user(store, a) for a in (ALICE, BOB, EVE)]
    owner = await store.shared_folders_owner("example.org", create=True)
    assert owner is not None
    team = await store.create_mailbox(owner, "Team")
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(owner, "Team")
    assert await store.get_shared_folder(alice.id, "Team") is None  # exists, but no right yet: as if absent
    await store.set_acl(team.id, ALICE, "lrsi")
    with pytest.raises(Invalid):
        await store.set_acl(team.id, EVE, "lr")  # RFC 4314 here: users of the owner's domain only
    with pytest.raises(Invalid):
        await store.set_acl(team.id, OWNER, "lr")  # not an identifier
    got = await store.get_shared_folder(alice.id, "Team")
    assert got is not None and (got.mailbox.id, got.owner, got.rights) == (team.id, OWNER, "lrsi")
    assert await store.get_shared_folder(alice.id, "Nope") is None
    assert await store.get_shared_folder(bob.id, "Team") is None
    assert await store.get_shared_folder(eve.id, "Team") is None  # another domain has no shared folders
    assert [(m.owner, m.mailbox.name, m.rights) for m in await store.list_shared_mailboxes(alice.id)] == [
        (OWNER, "Team", "lrsi")]
    assert await store.list_shared_mailboxes(bob.id) == []
    await store.set_acl(team.id, "anyone", "l")
    assert [m.rights for m in await store.list_shared_mailboxes(bob.id)] == ["l"]
    assert await store.list_shared_mailboxes(eve.id) == []  # "anyone" is the owner's domain only


async def test_a_domain_goes_with_its_shared_folders_owner_once_no_folder_is_left(store: Store) -> None:
    await store.add_domain("example.org")
    owner = await store.shared_folders_owner("example.org", create=True)
    assert owner is not None
    await store.create_mailbox(owner, "Team")
    with pytest.raises(Invalid, match="shared folders"):
        await store.remove_domain("example.org")
    await store.delete_mailbox(owner, "Team")
    await store.remove_domain("example.org")
    assert await store.get_user_by_id(owner) is None


async def test_schema_13_store_with_data_upgrades(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "v13.db", tmp_path / "blobs")
    await store.open()
    alice = await new_user(store, ALICE)
    box = await store.get_mailbox(alice.id, "INBOX")
    assert box is not None
    await store.append_many(box.id, [msg(1)])
    await store.close()
    downgrade(tmp_path / "v13.db", 13)  # exactly the version 13 tables, with the rows

    store = SQLiteStore(tmp_path / "v13.db", tmp_path / "blobs")
    await store.open()
    try:
        assert len(await store.list_messages(box.id)) == 1
        assert await store.shared_folders_owner("example.org") is None  # the upgrade makes none
        owner = await store.shared_folders_owner("example.org", create=True)
        assert owner is not None
        team = await store.create_mailbox(owner, "Team")
        await store.set_acl(team.id, ALICE, "lr")
        got = await store.get_shared_folder(alice.id, "Team")
        assert got is not None and got.rights == "lr"
        conn = sqlite3.connect(tmp_path / "v13.db")
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        finally:
            conn.close()
    finally:
        await store.close()
