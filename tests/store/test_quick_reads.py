"""The SQLite engine's quick reads (point lookups on the event loop thread) share one read transaction per turn
of the event loop (sqlite/engine.py invariant 8): a commit by another connection is seen from the next turn
on, and never hidden from a read made after the turn that began the snapshot."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

from postroom.store.sqlite import SQLiteStore


def _add_domain_elsewhere(db: Path, name: str) -> None:
    """A commit by another connection (as the admin CLI or another worker makes one)."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("INSERT INTO domains(name, created) VALUES (?, ?)", (name, time.time()))
    finally:
        conn.close()


async def test_one_snapshot_per_turn_and_a_fresh_one_after(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    try:
        await store.add_domain("first.test")
        assert await store.get_domain("second.test") is None  # begins this turn's snapshot
        _add_domain_elsewhere(store.path, "second.test")  # committed, no turn of the loop in between
        assert await store.get_domain("second.test") is None  # the same turn: the same snapshot
        await asyncio.sleep(0)  # the next turn: the snapshot ended before this task runs again
        assert await store.get_domain("second.test") is not None
        # Several turns, a commit between each: every read after a turn sees the commit before it.
        for i in range(5):
            _add_domain_elsewhere(store.path, f"more{i}.test")
            await asyncio.sleep(0)
            assert await store.get_domain(f"more{i}.test") is not None
    finally:
        await store.close()


async def test_a_write_of_this_process_is_seen_by_the_reads_after_it(tmp_path: Path) -> None:
    """A write's future resolves on the loop after the commit, queued behind the end of any snapshot begun
    before the commit: read-your-writes holds for quick reads."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    await store.open()
    try:
        for i in range(20):
            assert await store.get_domain(f"d{i}.test") is None
            await store.add_domain(f"d{i}.test")
            assert await store.get_domain(f"d{i}.test") is not None
            await store.remove_domain(f"d{i}.test")
            assert await store.get_domain(f"d{i}.test") is None
    finally:
        await store.close()
