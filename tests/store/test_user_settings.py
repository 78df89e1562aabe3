"""User settings and the auto-reply record in the store (api invariant 16, SQLite schema invariant 28): defaults,
replacement, isolation between users, the once-per-window claim, pruning, cascade, schema step 24."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from postroom.store.api import NotFound, Store, UserSettings
from postroom.store.sqlite import SQLiteStore

from .conftest import downgrade, new_user

DAY = 86400.0


async def test_settings_default_replace_and_stay_per_user(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    assert await store.get_user_settings(alice.id) == UserSettings()
    assert await store.get_user_settings(999_999) == UserSettings()
    mine = UserSettings(display_name="Alice Liddell", signature="Alice\nRabbit hole, 1", default_identity=
                        "al@example.org", identity_names={"al@example.org": "Al", "alice@example.org": "Alice L."},
                        vacation=True, vacation_subject="Away", vacation_text="Back on Monday.\n-- \nA",
                        vacation_start=1_800_000_000.5, vacation_end=None, vacation_days=3)
    await store.set_user_settings(alice.id, mine)
    assert await store.get_user_settings(alice.id) == mine
    assert await store.get_user_settings(bob.id) == UserSettings()  # one user's settings are theirs alone
    # A second save replaces every field, including turning the reply off and clearing the times.
    other = UserSettings(display_name="Alice", vacation=False, vacation_start=None, vacation_end=1_900_000_000.0,
                         vacation_days=7)
    await store.set_user_settings(alice.id, other)
    assert await store.get_user_settings(alice.id) == other
    with pytest.raises(NotFound):
        await store.set_user_settings(999_999, mine)


async def test_claim_auto_reply_once_per_window_per_sender(store: Store) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    t = 1_800_000_000.0
    assert await store.claim_auto_reply(alice.id, "Carol@Example.NET", t, t - 7 * DAY) is True
    # The same sender, whatever the case, within the window: no second reply (RFC 3834 §2).
    assert await store.claim_auto_reply(alice.id, "carol@example.net", t + DAY, t + DAY - 7 * DAY) is False
    assert await store.claim_auto_reply(alice.id, "carol@example.net", t + 6 * DAY, t - DAY) is False
    # Another sender, and the same sender for another user, are claims of their own.
    assert await store.claim_auto_reply(alice.id, "dave@example.net", t + DAY, t - 6 * DAY) is True
    assert await store.claim_auto_reply(bob.id, "carol@example.net", t + DAY, t - 6 * DAY) is True
    # Past the window: the claim succeeds again, and is then refused in the new window.
    assert await store.claim_auto_reply(alice.id, "carol@example.net", t + 8 * DAY, t + DAY) is True
    assert await store.claim_auto_reply(alice.id, "carol@example.net", t + 9 * DAY, t + 2 * DAY) is False
    assert await store.claim_auto_reply(999_999, "carol@example.net", t, t - DAY) is False


async def test_concurrent_claims_succeed_once(store: Store) -> None:
    """Many deliveries from one sender at once (on PostgreSQL each on its own pool connection): one claim wins
    (api invariant 16), whatever the interleaving."""
    alice = await new_user(store, "alice@example.org")
    t = 1_800_000_000.0
    got = await asyncio.gather(*(store.claim_auto_reply(alice.id, "carol@example.net", t + i, t - DAY)
                                 for i in range(12)))
    assert sorted(got) == [False] * 11 + [True]


async def test_claim_prunes_the_users_old_rows(store: Store, data_dir: Path, backend: str) -> None:
    alice = await new_user(store, "alice@example.org")
    bob = await new_user(store, "bob@example.org")
    t = 1_800_000_000.0
    for i in range(5):
        assert await store.claim_auto_reply(alice.id, f"s{i}@example.net", t, t - DAY)
    assert await store.claim_auto_reply(bob.id, "s0@example.net", t, t - DAY)
    # Ten days later one claim of alice's deletes her five old rows (not bob's): each could refuse nothing more.
    assert await store.claim_auto_reply(alice.id, "new@example.net", t + 10 * DAY, t + 3 * DAY)
    rows = await _rows(store, data_dir, backend)
    assert sorted(rows) == [(alice.id, "new@example.net"), (bob.id, "s0@example.net")]


async def test_settings_and_record_go_with_the_user(store: Store, data_dir: Path, backend: str) -> None:
    alice = await new_user(store, "alice@example.org")
    await store.set_user_settings(alice.id, UserSettings(signature="A"))
    assert await store.claim_auto_reply(alice.id, "carol@example.net", 1.0, 0.0)
    await store.remove_user("alice@example.org")
    assert await store.get_user_settings(alice.id) == UserSettings()
    assert await _rows(store, data_dir, backend) == []


async def _rows(store: Store, data_dir: Path, backend: str) -> list[tuple[int, str]]:
    if backend == "postgresql":
        import asyncpg

        conn = await asyncpg.connect((data_dir / "postgresql.url").read_text().strip())
        try:
            return [(int(r[0]), str(r[1])) for r in await conn.fetch("SELECT user_id, sender FROM auto_replies")]
        finally:
            await conn.close()
    conn2 = sqlite3.connect(data_dir / "postroom.db")
    try:
        return [(int(r[0]), str(r[1])) for r in conn2.execute("SELECT user_id, sender FROM auto_replies")]
    finally:
        conn2.close()


async def test_schema_step_24_upgrades_an_older_database(tmp_path: Path) -> None:
    db, blobs = tmp_path / "postroom.db", tmp_path / "blobs"
    store = SQLiteStore(db, blobs)
    await store.open()
    alice = await new_user(store, "alice@example.org")
    await store.close()
    downgrade(db, 23)
    conn = sqlite3.connect(db)
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name IN ('user_settings', 'auto_replies')").fetchall()
    conn.close()
    store = SQLiteStore(db, blobs)
    await store.open()
    try:
        assert await store.get_user_settings(alice.id) == UserSettings()
        await store.set_user_settings(alice.id, UserSettings(display_name="Alice"))
        assert (await store.get_user_settings(alice.id)).display_name == "Alice"
        assert await store.claim_auto_reply(alice.id, "bob@example.net", 1.0, 0.0)
    finally:
        await store.close()
