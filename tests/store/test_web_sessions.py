"""Webmail sessions in the store (web/sessions.py keeps them here) and the newest-first message page the
webmail's list reads (`Store.page_messages`)."""

from __future__ import annotations

import pytest

from postroom.store.api import AlreadyExists, Flag, Invalid, NotFound, Store, StoreMode, WebSession

from .conftest import inbox, msg, new_user


async def test_session_round_trip_touch_and_delete(store: Store) -> None:
    u = await new_user(store)
    s = WebSession("a" * 64, u.id, "csrf-token", 1000.0, 1000.0)
    await store.add_web_session(s)
    assert await store.get_web_session("a" * 64) == s
    assert await store.get_web_session("b" * 64) is None
    with pytest.raises(AlreadyExists):
        await store.add_web_session(s)
    await store.touch_web_session("a" * 64, 1500.0)
    await store.touch_web_session("a" * 64, 1200.0)  # never backwards
    got = await store.get_web_session("a" * 64)
    assert got is not None and got.last_seen == 1500.0 and got.created == 1000.0
    assert await store.delete_web_sessions(id_hash="a" * 64) == 1
    assert await store.get_web_session("a" * 64) is None
    assert await store.delete_web_sessions(id_hash="a" * 64) == 0
    with pytest.raises(Invalid):
        await store.delete_web_sessions()
    with pytest.raises(NotFound):
        await store.add_web_session(WebSession("c" * 64, u.id + 999, "t", 1.0, 1.0))


async def test_sign_out_everywhere_touches_only_that_user(store: Store) -> None:
    a = await new_user(store, "alice@example.org")
    b = await new_user(store, "bob@example.org")
    for i, user in enumerate((a, a, b)):
        await store.add_web_session(WebSession(f"{i:064x}", user.id, "t", 1.0, 1.0))
    assert await store.delete_web_sessions(user_id=a.id) == 2
    assert await store.get_web_session(f"{0:064x}") is None and await store.get_web_session(f"{1:064x}") is None
    assert await store.get_web_session(f"{2:064x}") is not None
    await store.remove_user("bob@example.org")  # the sessions go with the user
    assert await store.get_web_session(f"{2:064x}") is None


async def test_a_password_change_ends_the_users_sessions(store: Store) -> None:
    """A reset follows a stolen password: whoever signed in with the old one is out (api `set_password`)."""
    a = await new_user(store, "alice@example.org")
    b = await new_user(store, "bob@example.org")
    for i, user in enumerate((a, b)):
        await store.add_web_session(WebSession(f"{i:064x}", user.id, "t", 1.0, 1.0))
    await store.set_password("alice@example.org", "new-hash", "new-scram")
    assert await store.get_web_session(f"{0:064x}") is None
    assert await store.get_web_session(f"{1:064x}") is not None  # bob's stays


async def test_prune_by_idle_and_by_age(store: Store) -> None:
    u = await new_user(store)
    await store.add_web_session(WebSession("1" * 64, u.id, "t", 100.0, 100.0))  # idle since 100
    await store.add_web_session(WebSession("2" * 64, u.id, "t", 50.0, 900.0))  # busy, but old
    await store.add_web_session(WebSession("3" * 64, u.id, "t", 500.0, 900.0))  # fresh
    assert await store.prune_web_sessions(idle_before=200.0, created_before=60.0) == 2
    assert [await store.get_web_session(h * 64) is not None for h in "123"] == [False, False, True]


async def test_page_messages_newest_first_by_uid_ranges(store: Store) -> None:
    u = await new_user(store)
    box = await inbox(store, u)
    for i in range(12):
        await store.append(box.id, msg(i))
    await store.store_flags(box.id, [3, 4], StoreMode.ADD, flags=Flag.DELETED)
    await store.expunge(box.id, [3, 4])  # gaps: a page is still `limit` messages
    page = await store.page_messages(box.id, 5)
    assert [m.uid for m in page] == [12, 11, 10, 9, 8]
    page = await store.page_messages(box.id, 5, below=8)
    assert [m.uid for m in page] == [7, 6, 5, 2, 1]
    assert [m.uid for m in await store.page_messages(box.id, 5, below=1)] == []
    # "newer": the page before the one starting below 8, still newest first
    assert [m.uid for m in await store.page_messages(box.id, 3, above=5)] == [8, 7, 6]
    assert [m.uid for m in await store.page_messages(box.id, 5, above=10)] == [12, 11]
    with pytest.raises(NotFound):
        await store.page_messages(box.id + 999, 5)


async def test_unseen_counts_per_mailbox_of_the_user(store: Store) -> None:
    u = await new_user(store)
    other = await new_user(store, "bob@example.org")
    box = await inbox(store, u)
    trash = await store.get_mailbox(u.id, "Trash")
    assert trash is not None
    for i in range(5):
        await store.append(box.id, msg(i, flags=Flag.SEEN if i < 2 else 0))
    await store.append(trash.id, msg(9))
    await store.append((await inbox(store, other)).id, msg(10))
    counts = await store.unseen_counts(u.id)
    assert counts[box.id] == 3 and counts[trash.id] == 1
    assert set(counts) == {b.id for b in await store.list_mailboxes(u.id)}  # every mailbox, 0s included
    assert all(n == 0 for k, n in counts.items() if k not in (box.id, trash.id))
    await store.store_flags(box.id, [3, 4], StoreMode.ADD, flags=Flag.SEEN | Flag.FLAGGED)
    await store.store_flags(box.id, [1], StoreMode.REMOVE, flags=Flag.SEEN)
    assert (await store.unseen_counts(u.id))[box.id] == 2  # uids 1 and 5
    await store.append(box.id, msg(11))
    assert (await store.unseen_counts(u.id, limit=2))[box.id] == 2  # counted up to the limit only
    assert (await store.unseen_counts(u.id, limit=5))[box.id] == 3
    assert await store.unseen_counts(99999) == {}
