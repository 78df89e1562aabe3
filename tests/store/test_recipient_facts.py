"""`Store.recipient_facts`: in one read, what `get_quota`, `sender_rules`, `get_mailbox(.., "INBOX")` and
`get_user_settings` answer for a local recipient (store api `RecipientFacts`; sqlite/recipients.py invariants),
the domain's total summed only when the domain has a limit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from postroom.store.api import QuotaUsage, Store, UserSettings

from .conftest import inbox, msg, new_user


async def test_a_new_user_has_their_inbox_no_rules_and_default_settings(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    facts = await store.recipient_facts(alice.id)
    assert facts is not None
    assert facts.inbox_id == (await inbox(store, alice)).id
    assert facts.sender_rules == ()
    assert facts.settings == UserSettings()
    assert facts.quota == QuotaUsage(user_id=alice.id, storage=0, messages=0, storage_limit=0, message_limit=0,
                                     domain_storage=0, domain_storage_limit=0, warned=0)
    assert await store.recipient_facts(999_999) is None


async def test_the_parts_equal_the_single_reads(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    carol = await new_user(store, "carol@other.example")
    await store.append((await inbox(store, alice)).id, msg(1, size=700))
    await store.append((await inbox(store, alice)).id, msg(2, size=100))
    await store.append((await inbox(store, bob)).id, msg(3, size=300))
    await store.append((await inbox(store, carol)).id, msg(4, size=5000))  # another domain: not in the total
    await store.set_user_quota("alice@example.org", storage=10_000, messages=50)
    await store.set_domain_quota("example.org", 100_000)
    # Rules of both scopes, patterns whose order by pattern differs from the order they were added in.
    await store.add_sender_rule("alice@example.org", "block", "zed@spam.example")
    await store.add_sender_rule("alice@example.org", "allow", "@.friends.example")
    await store.add_sender_rule("alice@example.org", "allow", "boss@work.example")
    await store.add_sender_rule("example.org", "block", "@bad.example")
    await store.add_sender_rule("example.org", "allow", "@.a.example")
    await store.add_sender_rule("other.example", "block", "@never.example")  # not alice's domain
    mine = UserSettings(display_name="Alice", vacation=True, vacation_subject="Away", vacation_text="Back soon.",
                        vacation_start=1_800_000_000.5, vacation_end=None, vacation_days=3,
                        identity_names={"alice@example.org": "Alice L."})
    await store.set_user_settings(alice.id, mine)

    facts = await store.recipient_facts(alice.id)
    assert facts is not None
    assert facts.quota == await store.get_quota(alice.id)  # the domain has a limit: its total is summed
    assert (facts.quota.storage, facts.quota.messages, facts.quota.domain_storage) == (800, 2, 1100)
    assert (facts.quota.storage_limit, facts.quota.message_limit, facts.quota.domain_storage_limit) == \
        (10_000, 50, 100_000)
    assert facts.sender_rules == tuple(await store.sender_rules(alice.id))
    assert [(r.scope, r.pattern) for r in facts.sender_rules] == [
        ("alice@example.org", "@.friends.example"), ("alice@example.org", "boss@work.example"),
        ("alice@example.org", "zed@spam.example"), ("example.org", "@.a.example"), ("example.org", "@bad.example")]
    assert facts.settings == mine == await store.get_user_settings(alice.id)
    assert facts.inbox_id == (await inbox(store, alice)).id

    bobs = await store.recipient_facts(bob.id)
    assert bobs is not None
    assert bobs.quota == await store.get_quota(bob.id)
    assert bobs.sender_rules == tuple(await store.sender_rules(bob.id))  # the domain's only
    assert [r.pattern for r in bobs.sender_rules] == ["@.a.example", "@bad.example"]
    assert bobs.settings == UserSettings()
    assert bobs.inbox_id == (await inbox(store, bob)).id != facts.inbox_id


async def test_no_domain_total_without_a_domain_limit(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    await store.append((await inbox(store, alice)).id, msg(1, size=700))
    await store.append((await inbox(store, bob)).id, msg(2, size=300))
    await store.set_user_quota("bob@example.org", storage=1000)
    facts = await store.recipient_facts(bob.id)
    assert facts is not None
    q = await store.get_quota(bob.id)
    assert q.domain_storage == 1000 and q.domain_storage_limit == 0  # get_quota always sums it
    assert facts.quota == QuotaUsage(user_id=bob.id, storage=300, messages=1, storage_limit=1000, message_limit=0,
                                     domain_storage=0, domain_storage_limit=0, warned=q.warned)
    # A limit set on the domain: the next read sums it.
    await store.set_domain_quota("example.org", 5000)
    facts = await store.recipient_facts(bob.id)
    assert facts is not None
    assert (facts.quota.domain_storage, facts.quota.domain_storage_limit) == (1000, 5000)


async def test_a_removed_user_has_no_facts(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    await store.add_sender_rule("alice@example.org", "block", "x@spam.example")
    await store.remove_user("alice@example.org")
    assert await store.recipient_facts(alice.id) is None


async def test_the_sqlite_read_is_point_lookups_only(tmp_path: Path) -> None:
    """sqlite/recipients.py invariant 1: no table scan (the plan names an index or a primary key for each
    table); the domain's users are read only by the `users_domain` index, and only with a domain limit."""
    from postroom.store.sqlite import SQLiteStore
    from postroom.store.sqlite.recipients import FACTS

    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    try:
        await new_user(store, "alice@example.org")
    finally:
        await store.close()
    conn = sqlite3.connect(tmp_path / "t.db")
    try:
        plan = [str(r[3]) for r in conn.execute("EXPLAIN QUERY PLAN " + FACTS, (1,))]
    finally:
        conn.close()
    scans = [step for step in plan if step.startswith("SCAN")]
    assert scans == [], plan
