"""The change feed: what a subscriber receives, when, and what happens when it falls behind."""

from __future__ import annotations

import asyncio

import pytest

from postroom.store.api import AlreadyExists, Change, ChangeKind, Flag, Store, StoreError, StoreMode
from postroom.store.hub import Hub, SubscriptionOverflow

from .conftest import inbox, msg, new_user


def drain(sub: object) -> list[Change]:
    out = []
    while (c := sub.get_nowait()) is not None:  # type: ignore[attr-defined]
        out.append(c)
    return out


async def test_feed_carries_every_change(store: Store) -> None:
    u = await new_user(store)
    other = await new_user(store, "other@example.org")
    box = await inbox(store, u)
    sub = store.hub.subscribe(u.id)
    other_sub = store.hub.subscribe(other.id)
    try:
        r = await store.append(box.id, msg(1))
        assert drain(sub) == list(r.changes)  # published by the time the write returned
        w = await store.store_flags(box.id, [r.uid], StoreMode.ADD, Flag.DELETED)
        assert drain(sub) == list(w.changes)
        w = await store.expunge(box.id)
        assert [(c.kind, c.uid) for c in drain(sub)] == [(ChangeKind.EXPUNGE, r.uid)]
        m = await store.create_mailbox(u.id, "P/Q")
        assert [(c.kind, c.name) for c in drain(sub)] == [
            (ChangeKind.MAILBOX_CREATED, "P"), (ChangeKind.MAILBOX_CREATED, "P/Q")
        ]
        await store.rename_mailbox(u.id, "P/Q", "R")
        assert [(c.kind, c.mailbox_id, c.old_name, c.name) for c in drain(sub)] == [
            (ChangeKind.MAILBOX_RENAMED, m.id, "P/Q", "R")
        ]
        await store.set_subscribed(u.id, "R", True)
        assert [c.kind for c in drain(sub)] == [ChangeKind.MAILBOX_SUBSCRIBED]
        await store.set_subscribed(u.id, "R", False)
        assert [(c.kind, c.name) for c in drain(sub)] == [(ChangeKind.MAILBOX_UNSUBSCRIBED, "R")]
        await store.delete_mailbox(u.id, "R")
        assert [c.kind for c in drain(sub)] == [ChangeKind.MAILBOX_DELETED]
        assert drain(other_sub) == []  # nothing of u's reaches other
        await store.append((await inbox(store, other)).id, msg(2))
        assert [c.user_id for c in drain(other_sub)] == [other.id]
        assert drain(sub) == []
        await store.remove_user(u.address)
        assert {c.kind for c in drain(sub)} == {ChangeKind.MAILBOX_DELETED}
    finally:
        sub.close()
        other_sub.close()


async def test_failed_write_publishes_nothing(store: Store) -> None:
    u = await new_user(store)
    sub = store.hub.subscribe(u.id)
    with pytest.raises(AlreadyExists):
        await store.create_mailbox(u.id, "INBOX")
    assert drain(sub) == []
    sub.close()


async def test_get_waits_for_commit(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    sub = store.hub.subscribe(u.id)
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    r = await store.append(box.id, msg(1))
    change = await asyncio.wait_for(waiter, 5)
    assert change == r.changes[0]
    sub.close()


async def test_concurrent_writes_arrive_in_modseq_order(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    sub = store.hub.subscribe(u.id)
    await asyncio.gather(*(store.append(box.id, msg(i)) for i in range(20)))
    changes = drain(sub)
    assert len(changes) == 20
    assert [c.modseq for c in changes] == sorted(c.modseq for c in changes)
    sub.close()


async def test_hub_overflow_and_close() -> None:
    hub = Hub(maxsize=3)
    sub = hub.subscribe(1)
    changes = [Change(ChangeKind.APPEND, 1, 7, uid=i) for i in range(1, 5)]
    hub.publish(changes[:3])
    assert len(sub) == 3 and not sub.overflowed
    hub.publish(changes[3:])
    assert sub.overflowed and len(sub) == 0
    with pytest.raises(SubscriptionOverflow):
        sub.get_nowait()
    with pytest.raises(SubscriptionOverflow):
        await sub.get()
    hub.publish(changes[:1])  # still overflowed: dropped
    sub.reset()
    assert sub.get_nowait() is None
    hub.publish(changes[1:2])
    assert await sub.get() == changes[1]
    # close wakes a waiting reader and unregisters
    waiter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    sub.close()
    sub.close()
    with pytest.raises(StoreError):
        await waiter
    assert hub.subscriber_count(1) == 0
    hub.publish(changes)  # nobody listening: fine


async def test_hub_async_iteration() -> None:
    hub = Hub()
    sub = hub.subscribe(5)
    hub.publish([Change(ChangeKind.APPEND, 5, 1, uid=1), Change(ChangeKind.APPEND, 6, 1, uid=9)])
    hub.publish([Change(ChangeKind.APPEND, 5, 1, uid=2)])
    got = []
    async for change in sub:
        got.append(change.uid)
        if len(got) == 2:
            sub.close()
    assert got == [1, 2]
