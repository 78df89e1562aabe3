"""Which b-trees a delivery writes: the WAL frames of N deliveries, counted per table and index.

    .venv/bin/python bench/wal_pages.py [--count 500] [--sessions 10] [--size 5000]

`--sessions` tasks call `store.deliver` as local delivery does (the messages of bench/store_ingest.py), after
200 deliveries to warm the tables up, into a fresh store under a temporary folder. The writer's automatic
checkpoint is turned off for the measured deliveries, so the WAL then holds every page they wrote; each frame's
page number is mapped to its b-tree through SQLite's `dbstat` table. Printed: frames per message by table or
index. Every page of a commit is written whole (4 KiB), so a b-tree keyed by a random value (the SHA-256 body
id) costs about one page per message, where one keyed by an increasing value shares its last leaf among the
messages of a batch.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import sqlite3
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import store_ingest  # noqa: E402 - bench/: the message shapes

from postroom.store.sqlite import SQLiteStore  # noqa: E402
from postroom.store.sqlite.engine import Tx  # noqa: E402

WARM = 200


def wal_frames(wal: bytes) -> collections.Counter[int]:
    """Page number -> frames of it in a WAL file (https://sqlite.org/fileformat2.html#walformat: a 32-byte
    header with the page size at offset 8, then frames of a 24-byte header, whose first 4 bytes are the page
    number, and one page)."""
    size = struct.unpack(">I", wal[8:12])[0]
    frames: collections.Counter[int] = collections.Counter()
    at = 32
    while at + 24 + size <= len(wal):
        frames[struct.unpack(">I", wal[at:at + 4])[0]] += 1
        at += 24 + size
    return frames


async def run(args: argparse.Namespace, work: Path) -> None:
    store = SQLiteStore(work / "postroom.db", work / "blobs")
    await store.open()
    try:
        box = await store_ingest.bench_inbox(store)
        todo = list(reversed(store_ingest.deliveries(args.count + WARM, args.size)))

        async def session(leave: int) -> None:
            while len(todo) > leave:
                await store.deliver([box.id], todo.pop())

        await asyncio.gather(*(session(args.count) for _ in range(args.sessions)))

        def no_checkpoint(tx: Tx) -> None:
            tx.conn.execute("PRAGMA wal_autocheckpoint = 0")

        await store._engine.write(no_checkpoint)
        probe = sqlite3.connect(work / "postroom.db")
        probe.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        await asyncio.gather(*(session(0) for _ in range(args.sessions)))
        frames = wal_frames((work / "postroom.db-wal").read_bytes())
        names = dict(probe.execute("SELECT pageno, name FROM dbstat"))
        probe.close()
        by: collections.Counter[str] = collections.Counter()
        for page, n in frames.items():
            by[names.get(page, "(free or new)")] += n
        total = sum(frames.values())
        print(f"{args.count} deliveries, {total} WAL frames: {total / args.count:.1f} pages per message")
        for name, n in by.most_common():
            print(f"  {n / args.count:6.2f}  {name}")
    finally:
        await store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=500, help="deliveries measured (default 500)")
    ap.add_argument("--sessions", type=int, default=10, help="concurrent deliveries (default 10)")
    ap.add_argument("--size", type=int, default=5000, help="bytes per message (default 5000)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="wal-pages-"))
    try:
        asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
