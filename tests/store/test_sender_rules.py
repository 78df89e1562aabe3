"""Sender allow/block rules and spam training signals in the store (api invariants 13 and 14, schema invariants 24
and 25): one kind per pattern and scope, scopes by address or domain name, cascades, the bound, schema step 19."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from postroom.store import names
from postroom.store.api import Invalid, NotFound, Store
from postroom.store.sqlite import SQLiteStore

from .conftest import downgrade, new_user


async def test_rules_by_scope_one_kind_per_pattern(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    rule = await store.add_sender_rule("Alice@Example.ORG", "block", "Spam@Bad.EXAMPLE")
    assert (rule.scope, rule.kind, rule.pattern, rule.user_id, rule.domain_id) == \
        ("alice@example.org", "block", "spam@bad.example", alice.id, None)
    await store.add_sender_rule("alice@example.org", "allow", "@.friends.example")
    await store.add_sender_rule("example.org", "block", "@bad.example")
    # The same pattern again with the other kind replaces the rule (invariant 13), it does not add one.
    again = await store.add_sender_rule("alice@example.org", "allow", "spam@bad.example")
    assert again.id == rule.id and again.kind == "allow"
    mine = await store.list_sender_rules("alice@example.org")
    assert [(r.kind, r.pattern) for r in mine] == [("allow", "@.friends.example"), ("allow", "spam@bad.example")]
    domain = await store.list_sender_rules("EXAMPLE.org")
    assert [(r.scope, r.kind, r.pattern, r.user_id) for r in domain] == \
        [("example.org", "block", "@bad.example", None)]
    # What applies to a user's mail: theirs and their domain's; bob has only the domain's.
    assert {r.pattern for r in await store.sender_rules(alice.id)} == \
        {"@.friends.example", "spam@bad.example", "@bad.example"}
    assert [r.pattern for r in await store.sender_rules(bob.id)] == ["@bad.example"]
    assert await store.sender_rules(999_999) == []
    assert await store.remove_sender_rule("alice@example.org", "SPAM@bad.example") is True
    assert await store.remove_sender_rule("alice@example.org", "spam@bad.example") is False
    assert [r.pattern for r in await store.list_sender_rules("alice@example.org")] == ["@.friends.example"]


async def test_bad_rules_and_unknown_scopes(store: Store) -> None:
    await new_user(store, "alice@example.org")
    for pattern in ("", "@", "@.", "nodomain", "a@", "@bad domain"):
        with pytest.raises(Invalid):
            await store.add_sender_rule("alice@example.org", "block", pattern)
    with pytest.raises(Invalid):
        await store.add_sender_rule("alice@example.org", "maybe", "a@b.example")
    with pytest.raises(NotFound):
        await store.add_sender_rule("nobody@example.org", "block", "a@b.example")
    with pytest.raises(NotFound):
        await store.list_sender_rules("elsewhere.example")
    with pytest.raises(NotFound):
        await store.remove_sender_rule("elsewhere.example", "a@b.example")


async def test_rules_go_with_their_scope(store: Store) -> None:
    await new_user(store, "alice@example.org")
    await store.add_domain("empty.example")
    await store.add_sender_rule("alice@example.org", "block", "a@b.example")
    await store.add_sender_rule("empty.example", "block", "a@b.example")
    await store.remove_user("alice@example.org")
    await store.remove_domain("empty.example")
    await new_user(store, "alice@example.org")  # a new user of the same address starts with none
    assert await store.list_sender_rules("alice@example.org") == []
    await store.add_domain("empty.example")
    assert await store.list_sender_rules("empty.example") == []


async def test_rules_per_scope_are_bounded(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names, "MAX_SENDER_RULES", 3)
    await new_user(store, "alice@example.org")
    for i in range(3):
        await store.add_sender_rule("alice@example.org", "block", f"s{i}@b.example")
    with pytest.raises(Invalid):
        await store.add_sender_rule("alice@example.org", "block", "s3@b.example")
    await store.add_sender_rule("alice@example.org", "allow", "s0@b.example")  # a change is not a new rule
    await store.add_sender_rule("example.org", "block", "s3@b.example")  # another scope has its own bound


async def test_training_signals_until_sent_or_given_up(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    with pytest.raises(Invalid):
        await store.add_training_signals(alice.id, "maybe", [1], 10.0)
    assert await store.add_training_signals(alice.id, "spam", [11, 12], 100.0) == 2
    assert await store.add_training_signals(alice.id, "ham", [13], 101.0) == 1
    assert await store.add_training_signals(999_999, "ham", [13], 101.0) == 0
    assert await store.due_training_signals(99.0) == []
    due = await store.due_training_signals(101.0)
    assert [(s.kind, s.blob_id, s.attempts) for s in due] == [("spam", 11, 0), ("spam", 12, 0), ("ham", 13, 0)]
    assert all(s.user_id == alice.id for s in due)
    await store.finish_training_signal(due[0].id)  # sent
    await store.finish_training_signal(due[1].id, retry_at=500.0)  # failed: later
    assert [s.blob_id for s in await store.due_training_signals(200.0)] == [13]
    later = await store.due_training_signals(500.0)
    assert [(s.blob_id, s.attempts) for s in later] == [(13, 0), (12, 1)]
    assert len(await store.due_training_signals(500.0, limit=1)) == 1
    await store.remove_user("alice@example.org")  # the signals go with their user (schema invariant 25)
    assert await store.due_training_signals(1e12) == []


async def test_schema_19_on_a_version_18_store(tmp_path: Path) -> None:
    db, blobs = tmp_path / "v18.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    alice = await new_user(store, "alice@example.org")
    await store.close()
    downgrade(db, 18)
    conn = sqlite3.connect(db)
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name IN ('sender_rules', 'spam_training')").fetchall()
    conn.close()
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        assert await store.list_sender_rules("alice@example.org") == []
        await store.add_sender_rule("alice@example.org", "block", "@bad.example")
        assert [r.pattern for r in await store.sender_rules(alice.id)] == ["@bad.example"]
        assert await store.add_training_signals(alice.id, "spam", [1], 1.0) == 1
    finally:
        await store.close()
