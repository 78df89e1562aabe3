"""Durable message writes per second: Postroom's store beside one-file-per-message Maildir delivery.

    .venv/bin/python bench/store.py [--count N] [--size BYTES] [--large-count N] [--large-size BYTES]
                                    [--inline-max BYTES] [--dir PATH] [--postgresql auto|URL] [--users N]

Postroom: `await store.append(...)` on a fresh SQLite store with the default inline threshold, every call
durable when it returns, with 1 and with 50 concurrent writers. Small messages (--size, default 4 KiB) are
stored in the database and ride the group commit (one WAL fsync per batch); large ones (--large-size, default
1 MiB, fewer of them) are files, each fsync'd with its directory before the commit, so both ways a body is
stored are measured. --inline-max overrides the threshold (-1: every body a file, as before schema version 2).
Maildir: the same messages written the way a Maildir MDA does it: write tmp/<unique>, fsync it, rename into
new/, fsync new/ (with 1 writer, and with 50 writer threads).

--postgresql: the same appends on the PostgreSQL engine as well, side by side (a PostgreSQL column and the ratio
PostgreSQL/SQLite): "auto" starts a throwaway server from Debian's `postgresql` (tests/pgcluster.py: fsync on,
its data in a temporary folder, stopped at the end), or give the URL of an empty database. Bodies there are rows
(schema.py), whatever their size. --users N: the messages go to the INBOXes of N users in turn (default 1: all
into one mailbox, where PostgreSQL serialises the appends on the mailbox's row, fsync included).

The work happens under --dir (default: a temporary directory in bench/results/, on the repository's disk; a
tmpfs would make every fsync free and the numbers meaningless). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from postroom.store.api import AppendRequest, Store
from postroom.store.postgresql import PostgreSQLStore
from postroom.store.sqlite import INLINE_MAX, SQLiteStore

WRITER_COUNTS = (1, 50)


def message(i: int, size: int) -> bytes:
    head = (
        f"From: Bench <bench@example.org>\r\nTo: user@example.org\r\nSubject: message {i}\r\n"
        f"Message-ID: <{i}.{time.time_ns()}@bench.example>\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total, self.done = label, total, 0
        self.started = self.shown = time.perf_counter()
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self.done += 1
            now = time.perf_counter()
            # On a terminal one line redrawn in place; in a log, a line every 2 s and one at the end.
            tty = sys.stderr.isatty()
            if now - self.shown >= (0.25 if tty else 2.0) or self.done == self.total:
                self.shown = now
                rate = self.done / max(now - self.started, 1e-9)
                line = f"  {self.label:<32} {self.done:>6}/{self.total}  {rate:8.0f} msg/s"
                sys.stderr.write(f"\r{line}" if tty else f"{line}\n")
                if tty and self.done == self.total:
                    sys.stderr.write("\n")
                sys.stderr.flush()


def human(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


async def bench_postroom(work: Path, count: int, size: int, writers: int, inline_max: int,
                         pg_url: str = "", users: int = 1) -> float:
    """Appends per second on a fresh store: SQLite, or PostgreSQL at `pg_url` (an empty database)."""
    d = work / f"postroom-{size}-{writers}{'-pg' if pg_url else ''}"
    store: Store
    if pg_url:
        store = PostgreSQLStore(pg_url, d / "blobs", pool_size=max(10, min(writers, 50)))
    else:
        store = SQLiteStore(d / "postroom.db", d / "blobs", inline_max=inline_max)
    await store.open()
    try:
        await store.add_domain("example.org")
        boxes = []
        for n in range(users):
            user = await store.add_user(f"user{n}@example.org", "x")
            box = await store.get_mailbox(user.id, "INBOX")
            assert box is not None
            boxes.append(box.id)
        bodies = [message(i, size) for i in range(count)]
        progress = Progress(f"Postroom{' PG' if pg_url else ''}, {human(size)}, {writers} writer(s)", count)
        queue = list(range(count))

        async def writer() -> None:
            while queue:
                i = queue.pop()
                await store.append(boxes[i % users], AppendRequest(bodies[i]))
                progress.tick()

        started = time.perf_counter()
        await asyncio.gather(*(writer() for _ in range(writers)))
        elapsed = time.perf_counter() - started
        assert sum([len(await store.list_messages(b)) for b in boxes]) == count
        return count / elapsed
    finally:
        await store.close()


def bench_maildir(work: Path, count: int, size: int, writers: int) -> float:
    root = work / f"maildir-{size}-{writers}"
    for sub in ("tmp", "new", "cur"):
        (root / sub).mkdir(parents=True)
    new_dir = root / "new"
    host = socket.gethostname().replace("/", "_").replace(":", "_")
    bodies = [message(i, size) for i in range(count)]
    progress = Progress(f"Maildir, {human(size)}, {writers} writer(s)", count)

    def deliver(i: int) -> None:
        name = f"{time.time_ns()}.P{os.getpid()}Q{i}.{host}"
        tmp = root / "tmp" / name
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(bodies[i])
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, new_dir / name)
        dfd = os.open(new_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        progress.tick()

    started = time.perf_counter()
    if writers == 1:
        for i in range(count):
            deliver(i)
    else:
        with ThreadPoolExecutor(writers) as pool:
            list(pool.map(deliver, range(count)))
    elapsed = time.perf_counter() - started
    assert len(os.listdir(new_dir)) == count
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="small messages per run (default 1000)")
    parser.add_argument("--size", type=int, default=4096, help="bytes per small message (default 4096)")
    parser.add_argument(
        "--large-count", type=int, default=200, help="large messages per run (default 200; 0: none)"
    )
    parser.add_argument("--large-size", type=int, default=1 << 20, help="bytes per large message (1 MiB)")
    parser.add_argument(
        "--inline-max", type=int, default=INLINE_MAX, help=f"Postroom's inline threshold ({INLINE_MAX})"
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: bench/results/tmp*)")
    parser.add_argument("--users", type=int, default=1, help="users whose INBOXes the messages go to (default 1)")
    parser.add_argument("--postgresql", default="", help='also on PostgreSQL: "auto" (a throwaway server) or a URL')
    args = parser.parse_args()
    cluster = None
    if args.postgresql == "auto":
        from tests.pgcluster import Cluster, available

        reason = available()
        if reason is not None:
            parser.error(reason)
        cluster = Cluster()
        cluster.start()

    if args.dir is None:
        (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="store-", dir=ROOT / "bench" / "results"))
    else:
        args.dir.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="store-", dir=args.dir))
    runs = [(args.count, args.size)] + ([(args.large_count, args.large_size)] if args.large_count > 0 else [])
    sys.stderr.write(
        f"store benchmark: {', '.join(f'{n} x {human(size)}' for n, size in runs)} per run,"
        f" inline threshold {args.inline_max} B, under {work}\n"
    )
    rows = []
    try:
        for count, size in runs:
            for writers in WRITER_COUNTS:
                ours = asyncio.run(bench_postroom(work, count, size, writers, args.inline_max, "", args.users))
                pg = 0.0
                if args.postgresql:
                    url = cluster.create_database() if cluster is not None else args.postgresql
                    pg = asyncio.run(bench_postroom(work, count, size, writers, args.inline_max, url, args.users))
                theirs = bench_maildir(work, count, size, writers)
                rows.append((count, size, writers, ours, theirs, pg))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if cluster is not None:
            cluster.stop()

    print()
    print(f"Durable message writes, every write fsync'd before it is acknowledged; {args.users} user(s)' INBOXes")
    print()
    pg_head = " PostgreSQL msg/s | PostgreSQL/SQLite |" if args.postgresql else ""
    pg_rule = "-----------------:|------------------:|" if args.postgresql else ""
    print(f"| message | count | writers | Postroom body | Postroom msg/s | Maildir msg/s | Postroom/Maildir |{pg_head}")
    print(f"|--------:|------:|--------:|:--------------|---------------:|--------------:|-----------------:|{pg_rule}")
    for count, size, writers, ours, theirs, pg in rows:
        where = "in SQLite" if size <= args.inline_max else "file"
        extra = f" {pg:>16,.0f} | {pg / ours:>16.2f}x |" if args.postgresql else ""
        print(
            f"| {human(size):>7} | {count:>5} | {writers:>7} | {where:<13} | {ours:>14,.0f} |"
            f" {theirs:>13,.0f} | {ours / theirs:>15.2f}x |{extra}"
        )


if __name__ == "__main__":
    main()
