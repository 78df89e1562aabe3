"""`postroom migrate` speed: an SQLite store of N messages copied into PostgreSQL, then verified.

    .venv/bin/python bench/migrate.py [--messages N] [--users U] [--size BYTES]

Builds an SQLite store (U users, N messages of about BYTES each spread over their INBOXes, stored with
`append_many` in batches), starts a throwaway PostgreSQL from Debian's `postgresql` (tests/pgcluster.py), and
times `copy_store` and `verify` (store/postgresql/fromsqlite.py: what `postroom migrate` runs). Then it checks
what clients would see: every mailbox's UIDVALIDITY, UIDNEXT and HIGHESTMODSEQ and every message's UID and MODSEQ
equal on both engines. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from postroom.store.api import AppendRequest, Store
from postroom.store.postgresql import PostgreSQLStore
from postroom.store.postgresql.fromsqlite import copy_store, verify
from postroom.store.sqlite import SQLiteStore
from tests.pgcluster import Cluster, available


def message(i: int, size: int) -> bytes:
    head = (f"From: Bench <bench@example.org>\r\nTo: user@example.org\r\nSubject: message {i}\r\n"
            f"Message-ID: <{i}@bench.example>\r\n\r\n").encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + (line * (size // len(line) + 1))[: max(0, size - len(head))]


async def seen_by_clients(store: Store, users: int) -> list[object]:
    out: list[object] = []
    for n in range(users):
        user = await store.get_user(f"user{n}@example.org")
        assert user is not None
        for m in await store.list_mailboxes(user.id):
            out.append((m.name, m.uidvalidity, m.uidnext, m.highestmodseq))
            out.extend((i.uid, i.modseq, i.flags) for i in await store.list_messages(m.id))
    return out


async def main(args: argparse.Namespace, work: Path, url: str) -> None:
    source = SQLiteStore(work / "postroom.db", work / "blobs")
    async with source:
        await source.add_domain("example.org")
        boxes = []
        for n in range(args.users):
            user = await source.add_user(f"user{n}@example.org", "x")
            box = await source.get_mailbox(user.id, "INBOX")
            assert box is not None
            boxes.append(box.id)
        for start in range(0, args.messages, 500):
            batch = [AppendRequest(message(i, args.size)) for i in range(start, min(args.messages, start + 500))]
            await source.append_many(boxes[(start // 500) % args.users], batch)
            sys.stderr.write(f"\r  filling the SQLite store {start + len(batch):>7}/{args.messages}")
        sys.stderr.write("\n")
        before = await seen_by_clients(source, args.users)
    async with PostgreSQLStore(url, work / "pg"):
        pass  # the schema

    def progress(what: str, done: int, total: int) -> None:
        sys.stderr.write(f"\r  {what:<16} {done:>7}/{total}" + ("\n" if done >= total else ""))

    started = time.perf_counter()
    report = await copy_store(work / "postroom.db", source.blobs, url, progress)
    copied = time.perf_counter() - started
    started = time.perf_counter()
    report = await verify(work / "postroom.db", url, report, progress)
    verified = time.perf_counter() - started
    assert not report.problems, report.problems
    async with PostgreSQLStore(url, work / "pg") as copy:
        assert await seen_by_clients(copy, args.users) == before  # clients resync nothing
    print()
    print("| messages | body bytes | users | copy s | copy msg/s | verify s | UIDVALIDITY, UIDs, MODSEQs |")
    print("|---------:|-----------:|------:|-------:|-----------:|---------:|:--------------------------|")
    print(f"| {args.messages:>8,} | {report.body_bytes:>10,} | {args.users:>5} | {copied:>6.1f} |"
          f" {args.messages / copied:>10,.0f} | {verified:>8.1f} | unchanged                 |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    args = ap.parse_args()
    reason = available()
    if reason is not None:
        ap.error(reason)
    cluster = Cluster()
    cluster.start()
    try:
        with tempfile.TemporaryDirectory(prefix="migrate-", dir=ROOT / "bench") as work:
            asyncio.run(main(args, Path(work), cluster.create_database()))
    finally:
        cluster.stop()
