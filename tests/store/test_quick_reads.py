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


def test_a_snapshot_left_by_a_stopped_loop_is_not_reused_by_the_next(tmp_path: Path) -> None:
    """One store used by two event loops in turn on one thread: the first loop stops in the turn of a quick read
    (its callback that ends the snapshot never runs); the second loop's first read takes a fresh snapshot."""
    store = SQLiteStore(tmp_path / "t.db", tmp_path / "blobs")
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(store.open())
        seen: list[object] = []

        async def read_then_stop() -> None:
            seen.append(await store.get_domain("late.test"))  # begins this turn's snapshot ...
            loop.stop()  # ... and the loop stops at the end of this turn

        task = loop.create_task(read_then_stop())
        loop.run_forever()
        assert task.done() and seen == [None]
        _add_domain_elsewhere(store.path, "late.test")
        other = asyncio.new_event_loop()
        try:
            assert other.run_until_complete(store.get_domain("late.test")) is not None
        finally:
            other.close()
    finally:
        loop.run_until_complete(store.close())
        loop.close()
