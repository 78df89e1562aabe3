"""Quotas in the store (api invariant 12, schema invariant 23): usage counters kept exactly by every write, limits
enforced in the write's own transaction, the schema step that counts what already exists."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from postroom.store.api import AppendRequest, Flag, Invalid, NotFound, OverQuota, Store, StoreMode, User
from postroom.store.sqlite import SQLiteStore

from .conftest import BODY_BACKENDS, downgrade, inbox, msg, new_user


async def truth(store: Store, user: User) -> tuple[int, int]:
    """(sum of RFC822.SIZE, count) over the user's mailboxes, counted message by message."""
    size = count = 0
    for box in await store.list_mailboxes(user.id):
        for m in await store.list_messages(box.id):
            size += m.size
            count += 1
    return size, count


@BODY_BACKENDS
async def test_counters_equal_the_sums_after_a_random_mix(store: Store) -> None:
    rng = random.Random(9208)
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    for name in ("A", "B", "C"):
        await store.create_mailbox(alice.id, name)
    for step in range(160):
        boxes = await store.list_mailboxes(alice.id)
        box = rng.choice(boxes)
        uids = [m.uid for m in await store.list_messages(box.id)]
        op = rng.randrange(9)
        if op == 0 or not uids:
            await store.append(box.id, msg(step, size=rng.randrange(10, 3000)))
        elif op == 1:
            targets = [(await inbox(store, alice)).id, (await inbox(store, bob)).id]
            await store.deliver(targets, msg(step, size=rng.randrange(10, 3000)))
        elif op == 2:
            await store.copy_messages(box.id, rng.sample(uids, min(3, len(uids))), rng.choice(boxes).id)
        elif op == 3:
            await store.move_messages(box.id, rng.sample(uids, min(2, len(uids))), rng.choice(boxes).id)
        elif op == 4:
            picked = rng.sample(uids, min(2, len(uids)))
            await store.store_flags(box.id, picked, StoreMode.ADD, Flag.DELETED)
            await store.expunge(box.id, picked)
        elif op == 5:
            await store.remove_messages(box.id, rng.sample(uids, 1))
        elif op == 6:
            await store.append_many(box.id, [msg(step * 10 + i, size=rng.randrange(10, 500)) for i in range(3)])
        elif op == 7 and box.name not in ("INBOX", "A", "B", "C") or op == 7 and rng.random() < 0.2:
            name = f"T{step}"
            made = await store.create_mailbox(alice.id, name)
            await store.copy_messages(box.id, uids, made.id)
            await store.delete_mailbox(alice.id, name)
        elif op == 8 and rng.random() < 0.1:
            await store.rename_mailbox(alice.id, "INBOX", f"Old{step}")  # moves INBOX's messages
        for user in (alice, bob):
            q = await store.get_quota(user.id)
            assert (q.storage, q.messages) == await truth(store, user), step
    assert (await store.get_quota(alice.id)).messages > 0


async def test_storage_limit_refuses_and_stores_nothing(store: Store) -> None:
    alice = await new_user(store)
    box = await inbox(store, alice)
    await store.set_user_quota(alice.address, storage=1000)
    await store.append(box.id, msg(1, size=600))
    with pytest.raises(OverQuota) as err:
        await store.append(box.id, msg(2, size=600))  # 1200 > 1000
    assert err.value.resource == "STORAGE" and err.value.scope == "user" and not err.value.alone
    with pytest.raises(OverQuota) as err:
        await store.append(box.id, msg(3, size=1001))  # could never fit
    assert err.value.alone
    assert [m.size for m in await store.list_messages(box.id)] == [600]
    await store.append(box.id, msg(4, size=400))  # exactly at the limit is allowed
    q = await store.get_quota(alice.id)
    assert (q.storage, q.messages, q.storage_limit) == (1000, 2, 1000)


async def test_message_limit(store: Store) -> None:
    alice = await new_user(store)
    box = await inbox(store, alice)
    await store.set_user_quota(alice.address, messages=2)
    await store.append_many(box.id, [msg(1), msg(2)])
    with pytest.raises(OverQuota) as err:
        await store.append(box.id, msg(3))
    assert err.value.resource == "MESSAGE"
    assert (await store.get_quota(alice.id)).message_limit == 2


async def test_copy_is_checked_and_move_within_the_user_is_not(store: Store) -> None:
    alice = await new_user(store)
    box = await inbox(store, alice)
    other = await store.create_mailbox(alice.id, "Other")
    await store.append_many(box.id, [msg(1, size=400), msg(2, size=400)])
    await store.set_user_quota(alice.address, storage=1000)
    with pytest.raises(OverQuota):
        await store.copy_messages(box.id, [1, 2], other.id)
    moved = await store.move_messages(box.id, [1, 2], other.id)  # usage unchanged: never refused
    assert len(moved.dest_uids) == 2
    assert (await store.get_quota(alice.id)).storage == 800
    await store.set_user_quota(alice.address, storage=500)  # lowered below usage: nothing removed
    assert len(await store.list_messages(other.id)) == 2
    await store.move_messages(other.id, [1], box.id)


async def test_deliver_refuses_all_when_one_is_over_unless_exempted(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    await store.set_user_quota(bob.address, storage=100)
    boxes = [(await inbox(store, alice)).id, (await inbox(store, bob)).id]
    with pytest.raises(OverQuota):
        await store.deliver(boxes, msg(1, size=500))
    assert (await store.get_quota(alice.id)).messages == 0  # one transaction: nothing for anyone
    await store.deliver(boxes, msg(2, size=500), enforce_quota=False)  # the server's own notices
    assert (await store.get_quota(bob.id)).storage == 500


async def test_domain_quota_is_the_total_of_its_users(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    await store.set_domain_quota("Example.ORG", 1000)
    assert (await store.get_domain("example.org")).quota_bytes == 1000  # type: ignore[union-attr]
    await store.append((await inbox(store, alice)).id, msg(1, size=700))
    with pytest.raises(OverQuota) as err:
        await store.append((await inbox(store, bob)).id, msg(2, size=400))
    assert err.value.scope == "domain"
    q = await store.get_quota(bob.id)
    assert (q.storage, q.domain_storage, q.domain_storage_limit) == (0, 700, 1000)


async def test_limits_and_warned_are_validated(store: Store) -> None:
    alice = await new_user(store)
    with pytest.raises(NotFound):
        await store.set_user_quota("nobody@example.org", storage=1)
    with pytest.raises(NotFound):
        await store.set_domain_quota("nowhere.example", 1)
    with pytest.raises(Invalid):
        await store.set_user_quota(alice.address, storage=-1)
    with pytest.raises(Invalid):
        await store.raise_quota_warned(alice.id, 50)
    with pytest.raises(NotFound):
        await store.get_quota(alice.id + 1000)
    assert await store.raise_quota_warned(alice.id, 95)
    assert not await store.raise_quota_warned(alice.id, 95) and not await store.raise_quota_warned(alice.id, 80)
    assert (await store.get_quota(alice.id)).warned == 95
    user = await store.get_user(alice.address)
    assert user is not None and user.quota_messages == 0


async def test_removed_user_takes_its_counter_along(store: Store) -> None:
    alice = await new_user(store)
    await store.append((await inbox(store, alice)).id, msg(1))
    await store.remove_user(alice.address)
    with pytest.raises(NotFound):
        await store.get_quota(alice.id)


async def test_schema_18_counts_what_a_version_17_store_holds(tmp_path: Path) -> None:
    db, blobs = tmp_path / "v17.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    alice = await new_user(store, "alice@example.org")
    empty = await new_user(store, "empty@example.org")
    other = await store.create_mailbox(alice.id, "Other")
    await store.append((await inbox(store, alice)).id, AppendRequest(b"Subject: a\r\n\r\n" + b"x" * 100))
    await store.append(other.id, AppendRequest(b"Subject: b\r\n\r\nshort\r\n"))
    await store.close()
    downgrade(db, 17)  # exactly the version 17 schema, with the rows
    conn = sqlite3.connect(db)
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'quota_usage'").fetchall()
    conn.close()
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        q = await store.get_quota(alice.id)
        assert (q.storage, q.messages) == await truth(store, alice) == (114 + 21, 2)
        assert ((await store.get_quota(empty.id)).messages, (await store.get_quota(empty.id)).storage) == (0, 0)
        await store.append(other.id, AppendRequest(b"Subject: c\r\n\r\n"))  # the triggers work after the step
        assert ((await store.get_quota(alice.id)).messages) == 3
    finally:
        await store.close()


async def test_warned_mark_falls_with_usage(store: Store) -> None:
    """The warning mark is lowered to the level usage is at when messages go (or the limit rises), so the next
    crossing warns again; a message that arrives does not lower it."""
    alice = await new_user(store)
    box = await inbox(store, alice)
    await store.set_user_quota(alice.address, storage=1000)
    await store.append_many(box.id, [msg(1, size=500), msg(2, size=300), msg(3, size=160)])  # 960: 96 %
    assert await store.raise_quota_warned(alice.id, 95)
    await store.remove_messages(box.id, [3])  # 800: 80 %
    assert (await store.get_quota(alice.id)).warned == 80
    await store.append(box.id, msg(4, size=50))
    assert (await store.get_quota(alice.id)).warned == 80
    await store.remove_messages(box.id, [1])  # 350
    assert (await store.get_quota(alice.id)).warned == 0
    await store.append(box.id, msg(5, size=500))  # 850
    assert await store.raise_quota_warned(alice.id, 80)
    await store.set_user_quota(alice.address, storage=10_000)
    assert (await store.get_quota(alice.id)).warned == 0


async def test_concurrent_deliveries_never_pass_the_limit_together(store: Store) -> None:
    """The check runs in the inserting transaction (quota.py invariant 1): 20 deliveries of 100 octets at once
    into a quota of 1,000 store exactly 10, whatever the group commit batches together."""
    import asyncio

    alice = await new_user(store)
    box = await inbox(store, alice)
    await store.set_user_quota(alice.address, storage=1000)
    outcomes = await asyncio.gather(*(store.deliver([box.id], msg(i, size=100)) for i in range(20)),
                                    return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, OverQuota)]
    assert len(refused) == 10 and len(outcomes) - len(refused) == 10, outcomes
    q = await store.get_quota(alice.id)
    assert (q.storage, q.messages) == (1000, 10) == await truth(store, alice)
