"""Sender allow/block rules and spam training signals in the store (api invariants 13 and 14, schema invariants 25
and 26): one kind per pattern and scope, scopes by address or domain name, cascades, the bound, schema step 22."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from postroom.store import names
from postroom.store.api import Invalid, NotFound, Store, StoreMode
from postroom.store.sqlite import SQLiteStore

from .conftest import downgrade, inbox, msg, new_user


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
        await store.add_training_signals(alice.id, "maybe", ["b1"], 10.0)
    assert await store.add_training_signals(alice.id, "spam", ["b11", "b12"], 100.0) == 2
    assert await store.add_training_signals(alice.id, "ham", ["b13"], 101.0) == 1
    assert await store.add_training_signals(999_999, "ham", ["b13"], 101.0) == 0
    assert await store.due_training_signals(99.0) == []
    due = await store.due_training_signals(101.0)
    assert [(s.kind, s.blob_id, s.attempts) for s in due] == [("spam", "b11", 0), ("spam", "b12", 0), ("ham", "b13", 0)]
    assert all(s.user_id == alice.id for s in due)
    await store.finish_training_signal(due[0].id)  # sent
    await store.finish_training_signal(due[1].id, retry_at=500.0)  # failed: later
    assert [s.blob_id for s in await store.due_training_signals(200.0)] == ["b13"]
    later = await store.due_training_signals(500.0)
    assert [(s.blob_id, s.attempts) for s in later] == [("b13", 0), ("b12", 1)]
    assert len(await store.due_training_signals(500.0, limit=1)) == 1
    # A newer verdict on a pending body replaces it (schema invariant 26): the user changed their mind.
    await store.add_training_signals(alice.id, "ham", ["b12"], 600.0)
    assert [(s.kind, s.blob_id, s.attempts) for s in await store.due_training_signals(600.0)] == \
        [("ham", "b13", 0), ("ham", "b12", 0)]
    await store.remove_user("alice@example.org")  # the signals go with their user (schema invariant 26)
    assert await store.due_training_signals(1e12) == []


async def signals(store: Store) -> list[tuple[str, str]]:
    return [(s.kind, s.blob_id) for s in await store.due_training_signals(1e12)]


async def test_moves_and_flags_record_the_users_verdict(store: Store) -> None:
    """api invariant 14: into Junk or +$Junk is "spam", out of Junk (not to Trash) is "ham", in the same write;
    deliveries into Junk and other moves record nothing; with `training_signals` off nothing at all."""
    alice = await new_user(store, "alice@example.org")
    box = await inbox(store, alice)
    junk = await store.get_mailbox(alice.id, "Junk")
    trash = await store.get_mailbox(alice.id, "Trash")
    archive = await store.create_mailbox(alice.id, "Projects")
    assert junk is not None and junk.special_use == "\\Junk" and trash is not None
    r = [await store.append(box.id, msg(i)) for i in range(5)]
    blobs = {m.uid: m.blob_id for m in await store.list_messages(box.id)}
    await store.move_messages(box.id, [r[0].uid], junk.id)  # off: nothing recorded
    assert await signals(store) == []
    store.training_signals = True
    await store.move_messages(box.id, [r[1].uid], junk.id)
    await store.copy_messages(box.id, [r[2].uid], junk.id)
    await store.store_flags(box.id, [r[3].uid], StoreMode.ADD, keywords=["$junk"])
    await store.store_flags(box.id, [r[3].uid], StoreMode.ADD, keywords=["$Junk"])  # already there: nothing new
    await store.move_messages(box.id, [r[4].uid], archive.id)  # not a verdict
    assert await signals(store) == [("spam", blobs[r[1].uid]), ("spam", blobs[r[2].uid]), ("spam", blobs[r[3].uid])]
    in_junk = {m.blob_id: m.uid for m in await store.list_messages(junk.id)}
    await store.move_messages(junk.id, [in_junk[blobs[r[0].uid]]], trash.id)  # deleting spam is not ham
    await store.move_messages(junk.id, [in_junk[blobs[r[1].uid]]], archive.id)  # not spam after all
    assert ("ham", blobs[r[1].uid]) in await signals(store) and ("spam", blobs[r[1].uid]) not in await signals(store)
    assert all(b != blobs[r[0].uid] for _, b in await signals(store))
    # The server's own deliveries into Junk (the filters' verdicts) are not the user's.
    before = await signals(store)
    await store.deliver([junk.id], msg(9))
    assert await signals(store) == before


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
        assert await store.add_training_signals(alice.id, "spam", ["b1"], 1.0) == 1
    finally:
        await store.close()


@pytest.mark.parametrize("size", [100, 300 * 1024])  # inline, and a body file past the inline threshold
async def test_deliver_with_keywords_for_some_boxes(store: Store, size: int) -> None:
    """One delivery where some copies go to Junk with $Junk (a blocked sender, router invariant 15): one write,
    the keyword only on those copies; from memory and from a staged file."""
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    a_in, b_junk = await inbox(store, alice), await store.get_mailbox(bob.id, "Junk")
    assert b_junk is not None
    extra = {b_junk.id: frozenset({"$Junk"})}
    await store.deliver([a_in.id, b_junk.id], msg(1, size=size), box_keywords=extra)
    staged = store.staging_dir() / "staged-test"
    staged.write_bytes(msg(2, size=size).raw)
    await store.deliver_file([a_in.id, b_junk.id], staged, prefix=b"Return-Path: <x@y.example>\r\n",
                             box_keywords=extra)
    assert [m.keywords for m in await store.list_messages(a_in.id)] == [frozenset(), frozenset()]
    assert [m.keywords for m in await store.list_messages(b_junk.id)] == [frozenset({"$Junk"})] * 2
