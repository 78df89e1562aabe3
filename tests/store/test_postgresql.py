"""What only the PostgreSQL engine has to show: several writers on several connections pools (as several
server nodes would be) never share a UID or a MODSEQ, its change feed survives losing its LISTEN
connection, and its schema steps upgrade an older database. The rest of its behaviour is the conformance
suite's, shared with SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from postroom.store import Store, SubscriptionOverflow
from postroom.store.api import OverQuota
from postroom.store.postgresql import PostgreSQLStore

from .conftest import inbox, make_store, msg, new_user

pytestmark = pytest.mark.parametrize("backend", ["postgresql"], indirect=True)


async def test_two_nodes_appending_to_one_mailbox_never_share_a_uid(store: Store,
                                                                    store_factory: Callable[[], Store]) -> None:
    box = await inbox(store, await new_user(store))
    other = store_factory()  # a second pool on the same database: another node
    await other.open()
    try:
        async def writer(s: Store, base: int) -> list[tuple[int, int]]:
            out = []
            for i in range(25):
                r = await s.append(box.id, msg(base + i))
                out.append((r.uid, r.modseq))
            return out

        results = await asyncio.gather(*(writer(s, 100 * k) for k, s in enumerate([store, other, store, other])))
    finally:
        await other.close()
    pairs = [p for batch in results for p in batch]
    assert len({uid for uid, _ in pairs}) == 100 and len({m for _, m in pairs}) == 100
    stored = await store.list_messages(box.id)
    assert sorted(uid for uid, _ in pairs) == [m.uid for m in stored] == list(range(1, 101))
    after = await store.get_mailbox_by_id(box.id)
    assert after is not None and after.uidnext == 101 and after.highestmodseq == max(m for _, m in pairs)


async def test_the_feed_listens_again_after_losing_its_connection(store: Store,
                                                                 store_factory: Callable[[], Store]) -> None:
    assert isinstance(store, PostgreSQLStore)
    user = await new_user(store)
    box = await inbox(store, user)
    sub = store.hub.subscribe(user.id)
    listener = store.feed._listener
    assert listener is not None
    admin = await asyncpg.connect(store.dsn)
    try:
        await admin.execute("SELECT pg_terminate_backend($1)", listener.get_server_pid())
    finally:
        await admin.close()
    with pytest.raises(SubscriptionOverflow):  # what was missed is unknown: the subscriber resyncs
        await asyncio.wait_for(sub.get(), 10)
    sub.reset()
    mine = await store.append(box.id, msg(1))  # a write goes on meanwhile, and is announced
    assert (await asyncio.wait_for(sub.get(), 10)).uid == mine.uid
    for _ in range(200):  # the feed listens again (RECONNECT_SECONDS), then says once more what it missed
        if store.feed._listener is not None:
            break
        await asyncio.sleep(0.05)
    assert store.feed._listener is not None
    with pytest.raises(SubscriptionOverflow):
        await asyncio.wait_for(sub.get(), 10)
    sub.reset()
    other = store_factory()  # another process's change reaches this one's subscriber again
    await other.open()
    try:
        theirs = await other.append(box.id, msg(2))
    finally:
        await other.close()
    assert (await asyncio.wait_for(sub.get(), 10)).uid == theirs.uid
    sub.close()


async def test_upgrade_from_step_6_keeps_accounts_and_adds_the_new_tables(backend: str, data_dir: Path) -> None:
    from postroom.store.postgresql import schema

    url = (data_dir / "postgresql.url").read_text().strip()
    conn = await asyncpg.connect(url)
    try:  # a database as the engine left it before steps 7-12, with a domain and a user
        async with conn.transaction():
            await conn.execute("CREATE TABLE schema_version(version integer NOT NULL)")
            await conn.execute("INSERT INTO schema_version(version) VALUES (6)")
            for step in schema._STEPS[:6]:
                await step(conn)
            domain_id = await conn.fetchval("INSERT INTO domains(name, dkim_selector, created)"
                                            " VALUES ('example.org', 'old', 1) RETURNING id")
            await conn.execute("INSERT INTO users(address, domain_id, password_hash, created)"
                               " VALUES ('alice@example.org', $1, 'x', 1)", domain_id)
            # a queued recipient, from before the queue leases (step 12)
            await conn.execute("INSERT INTO blobs(id, size, refcount) VALUES ('b1', 1, 1)")
            await conn.execute("INSERT INTO blob_chunks(id, n, data) VALUES ('b1', 0, 'x')")
            queue_id = await conn.fetchval("INSERT INTO queue(blob_id, size, mail_from, created)"
                                           " VALUES ('b1', 1, 'a@example.org', 1) RETURNING id")
            await conn.execute("INSERT INTO queue_rcpt(queue_id, position, rcpt, state) VALUES ($1, 0, 'r@x.example',"
                               " 'queued')", queue_id)
    finally:
        await conn.close()
    store = make_store(backend, data_dir)
    assert isinstance(store, PostgreSQLStore)
    async with store:
        user = await store.get_user("alice@example.org")
        assert user is not None and user.admin is False  # an upgrade makes nobody an admin
        domain = await store.get_domain("example.org")
        assert domain is not None and (domain.dkim_selector, domain.dkim_next) == ("old", "")
        assert await store.switch_dkim("example.org") is False  # nothing kept
        await store.add_sender_rule("example.org", "block", "@bad.example")
        assert [r.pattern for r in await store.sender_rules(user.id)] == ["@bad.example"]
        assert await store.read_structures([]) == {}
        [entry] = await store.queue_list()  # the recipient queued before is free: the first claim takes it
        assert (entry.recipients[0].lease_holder, entry.recipients[0].lease_until) == ("", 0.0)
        assert (await store.queue_claim(2.0, "n1#1", 60.0)).claimed == [(queue_id, "r@x.example")]
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT version FROM schema_version") == schema.SCHEMA_VERSION == 14
    finally:
        await conn.close()


async def _transactions(store: Store, mailbox_id: int) -> int:
    """How many write transactions put APPEND changes on `mailbox_id`: each write records its changes under a
    token of its own (feed.py)."""
    assert isinstance(store, PostgreSQLStore)
    conn = await asyncpg.connect(store.dsn)
    try:
        return int(await conn.fetchval("SELECT count(DISTINCT (origin, token)) FROM changes"
                                       " WHERE mailbox_id = $1 AND kind = 'append'", mailbox_id))
    finally:
        await conn.close()


async def test_appends_that_wait_go_together_in_one_transaction(store: Store) -> None:
    """messages.py invariant 9: 40 appends at once into one mailbox are committed in far fewer transactions
    than 40, each caller gets its own UID, in arrival order, and every row is there."""
    box = await inbox(store, await new_user(store))
    results = await asyncio.gather(*(store.append(box.id, msg(i)) for i in range(40)))
    assert [r.uid for r in results] == list(range(1, 41))  # arrival order
    assert len({r.modseq for r in results}) == 40
    # the first alone, then the 39 that arrived while it was in its transaction
    assert await _transactions(store, box.id) < 10
    stored = await store.list_messages(box.id)
    assert [m.uid for m in stored] == list(range(1, 41))
    assert [await store.read_message(m.blob_id) for m in stored] == [msg(i).raw for i in range(40)]


async def test_a_failing_append_in_a_group_fails_alone(store: Store) -> None:
    """messages.py invariant 9: a group's transaction that fails (one delivery over its user's quota) is run
    again job by job: only that caller gets the error, the others' messages are stored."""
    alice = await new_user(store)
    bob = await new_user(store, "bob@example.org")
    await store.set_user_quota("bob@example.org", storage=10)  # no message fits
    a, b = await inbox(store, alice), await inbox(store, bob)
    jobs = [store.deliver([b.id if i == 5 else a.id], msg(i)) for i in range(12)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(results[5], OverQuota)
    assert all(isinstance(r, list) and len(r) == 1 for i, r in enumerate(results) if i != 5)
    assert len(await store.list_messages(a.id)) == 11 and await store.list_messages(b.id) == []
