"""What several nodes (or processes) on one store share, beyond mail (issue 16 item 3), on both engines:
values made once (`shared_value`), the POP3 maildrop lock and last login, held list posts and their claims,
and \\Recent claimed once when two store objects (two nodes: two pools, two writers) race for it."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable

import pytest

from postroom.store.api import AlreadyExists, HeldPost, Store

from .conftest import inbox, msg, new_user

TOKEN = "0123456789abcdef0123456789abcdef"


async def test_shared_value_first_writer_wins_for_every_store(store: Store,
                                                              store_factory: Callable[[], Store]) -> None:
    other = store_factory()
    await other.open()
    try:
        first, second = await asyncio.gather(store.shared_value("secret", b"A" * 32),
                                             other.shared_value("secret", b"B" * 32))
        assert first == second and first in (b"A" * 32, b"B" * 32)
        assert await store.shared_value("secret", b"C" * 32) == first  # never replaced
        assert await other.shared_value("cert", b"\x00pem\xff") == b"\x00pem\xff"  # names are apart; bytes kept
    finally:
        await other.close()


async def test_maildrop_lock_is_exclusive_renewable_and_released(store: Store,
                                                                 store_factory: Callable[[], Store]) -> None:
    user = await new_user(store)
    other = store_factory()  # a second node (PostgreSQL) or process (SQLite) on the same store
    await other.open()
    try:
        assert await store.lock_maildrop(user.id, "node-a:1", 60)
        assert not await store.lock_maildrop(user.id, "node-a:2", 60)  # another session of the same process
        assert not await other.lock_maildrop(user.id, "node-b:1", 60)
        assert await store.lock_maildrop(user.id, "node-a:1", 60)  # the holder renews
        await other.unlock_maildrop(user.id, "node-b:1")  # not its lock: nothing happens
        assert not await other.lock_maildrop(user.id, "node-b:1", 60)
        await store.unlock_maildrop(user.id, "node-a:1")
        assert await other.lock_maildrop(user.id, "node-b:1", 60)
        assert not await store.lock_maildrop(user.id, "node-a:1", 60)
        await other.unlock_maildrop(user.id, "node-b:1")
    finally:
        await other.close()


async def test_a_maildrop_lease_that_is_not_renewed_runs_out(store: Store, backend: str,
                                                             store_factory: Callable[[], Store]) -> None:
    if backend != "postgresql":
        pytest.skip("SQLite's lock is a flock the kernel drops with its process: no lease (sqlite/nodes.py)")
    user = await new_user(store)
    other = store_factory()
    await other.open()
    try:
        assert await store.lock_maildrop(user.id, "dead-node:1", 0.3)  # a node that then dies: no renewal
        assert not await other.lock_maildrop(user.id, "node-b:1", 60)
        deadline = time.monotonic() + 10
        while not await other.lock_maildrop(user.id, "node-b:1", 60):
            assert time.monotonic() < deadline, "the dead holder's lease never ran out"
            await asyncio.sleep(0.1)
        assert not await store.lock_maildrop(user.id, "dead-node:1", 0.3)  # its renewal comes too late
    finally:
        await other.close()


async def test_maildrop_last_login_is_shared(store: Store, store_factory: Callable[[], Store]) -> None:
    user = await new_user(store)
    other = store_factory()
    await other.open()
    try:
        assert await store.lock_maildrop(user.id, "a", 60)
        assert await store.maildrop_login(user.id, note=False) == math.inf  # never logged in
        assert await store.maildrop_login(user.id, note=True) == math.inf  # read, then noted
        seen = await other.maildrop_login(user.id, note=False)
        assert 0 <= seen < 3600  # the other node reads the login this one noted: moments ago, not never
        await store.unlock_maildrop(user.id, "a")
    finally:
        await other.close()


async def test_held_post_round_trip_and_one_claim_at_a_time(store: Store,
                                                            store_factory: Callable[[], Store]) -> None:
    raw = b"From: p@example.org\r\nSubject: held\r\n\r\n" + bytes(range(256)) * 40
    await store.hold_post(HeldPost(TOKEN, "list@example.org", "p@example.org", raw, 1000.0))
    with pytest.raises(AlreadyExists):
        await store.hold_post(HeldPost(TOKEN, "list@example.org", "x@example.org", b"x", 1001.0))
    assert await store.get_held_post("f" * 32) is None
    got = await store.get_held_post(TOKEN)
    assert got == HeldPost(TOKEN, "list@example.org", "p@example.org", raw, 1000.0)
    assert [p.token for p in await store.list_held_posts()] == [TOKEN]
    other = store_factory()
    await other.open()
    try:
        claims = await asyncio.gather(*(s.claim_held_post(TOKEN, f"claim-{i}", 60)
                                        for i, s in enumerate([store, other] * 5)))
        winners = [i for i, c in enumerate(claims) if c is not None]
        assert len(winners) == 1 and claims[winners[0]] == got  # lists.py invariant 2, across nodes
        winner = f"claim-{winners[0]}"
        loser = "claim-x"
        assert not await other.drop_held_post(TOKEN, loser)
        await store.release_held_post(TOKEN, loser)  # not its claim: nothing happens
        assert await other.claim_held_post(TOKEN, loser, 60) is None
        await store.release_held_post(TOKEN, winner)  # the handler failed: free again at once
        assert await other.claim_held_post(TOKEN, loser, 60) == got
        assert await store.drop_held_post(TOKEN, loser)
        assert await store.get_held_post(TOKEN) is None
        assert await other.claim_held_post(TOKEN, winner, 60) is None  # gone: a second approval finds nothing
        assert await other.list_held_posts() == []
    finally:
        await other.close()


async def test_a_claim_whose_handler_died_runs_out(store: Store, store_factory: Callable[[], Store]) -> None:
    await store.hold_post(HeldPost(TOKEN, "list@example.org", "p@example.org", b"Subject: x\r\n\r\nx\r\n", 5.0))
    assert await store.claim_held_post(TOKEN, "dead", 0.3) is not None
    other = store_factory()
    await other.open()
    try:
        deadline = time.monotonic() + 10
        while await other.claim_held_post(TOKEN, "alive", 60) is None:
            assert time.monotonic() < deadline, "the dead handler's claim never ran out"
            await asyncio.sleep(0.1)
        assert not await store.drop_held_post(TOKEN, "dead")  # the late handler cannot drop it any more
        assert await other.drop_held_post(TOKEN, "alive")
    finally:
        await other.close()


async def test_recent_is_claimed_once_by_concurrent_claimers(store: Store,
                                                             store_factory: Callable[[], Store]) -> None:
    """RFC 3501 §2.3.2: a message is \\Recent in one session only. Two store objects (two nodes' pools, or two
    processes' writers) claim while mail arrives: the ranges they get are disjoint and cover every UID."""
    user = await new_user(store)
    box = await inbox(store, user)
    other = store_factory()
    await other.open()
    try:
        claimed: list[tuple[int, int]] = []

        async def claimer(s: Store) -> None:
            for _ in range(30):
                old, new = await s.claim_recent(box.id)
                if new > old:
                    claimed.append((old, new))
                await asyncio.sleep(0)

        async def deliver() -> None:
            for n in range(40):
                await store.append(box.id, msg(n))

        await asyncio.gather(deliver(), claimer(store), claimer(other), claimer(store), claimer(other))
        for s in (store, other):
            old, new = await s.claim_recent(box.id)
            if new > old:
                claimed.append((old, new))
        uids = sorted(uid for old, new in claimed for uid in range(old + 1, new + 1))
        assert uids == list(range(1, 41))  # every UID once: none twice, none lost
        assert await other.recent_watermark(box.id) == 40
    finally:
        await other.close()


async def test_pop3_session_lock_is_renewed_while_held_and_lost_is_reported(
        store: Store, store_factory: Callable[[], Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """pop3/session.py `MaildropLocks` over the store: a session's lock outlives several leases (renewed), and a
    renewal that finds the lock taken by another calls `on_lost` (the session then deletes nothing, invariant 7)."""
    from postroom.pop3 import session

    monkeypatch.setattr(session, "LEASE_SECONDS", 0.4)
    monkeypatch.setattr(session, "RENEW_SECONDS", 0.1)
    user = await new_user(store)
    other = store_factory()
    await other.open()
    try:
        locks = session.MaildropLocks(store, node="node-a")
        lost = asyncio.Event()
        assert await locks.acquire(user.id, "s1", lost.set)
        assert not await locks.acquire(user.id, "s2")  # this process's other session
        await asyncio.sleep(1.3)  # three leases: only renewals keep it
        assert not await other.lock_maildrop(user.id, "node-b:s1", 60)
        assert not lost.is_set()
        await store.unlock_maildrop(user.id, locks._holder("s1"))  # as if its lease had run out unseen ...
        assert await other.lock_maildrop(user.id, "node-b:s1", 60)  # ... and another node took the maildrop
        await asyncio.wait_for(lost.wait(), 10)
        await locks.release(user.id, "s1")
        assert locks.holder(user.id) is None
        assert not await store.lock_maildrop(user.id, "node-a:s3", 60)  # node B's lock stands
    finally:
        await other.close()


async def test_mailbox_logins_for_pop_before_smtp(store: Store, store_factory: Callable[[], Store]) -> None:
    other = store_factory()
    await other.open()
    try:
        assert await other.mailbox_login("192.0.2.7") == 0.0
        await store.note_mailbox_login("192.0.2.7", 1000.0, 600)
        await store.note_mailbox_login("192.0.2.7", 900.0, 600)  # an older report (another node) does not go back
        assert await other.mailbox_login("192.0.2.7") == 1000.0
        await other.note_mailbox_login("192.0.2.8", 1700.0, 600)  # 192.0.2.7 is older than the window now
        assert await store.mailbox_login("192.0.2.7") == 0.0
        assert await store.mailbox_login("192.0.2.8") == 1700.0
    finally:
        await other.close()
