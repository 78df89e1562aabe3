"""What one outbound-queue claim costs as the queue grows (issue 17), on both store engines.

    .venv/bin/python bench/queue_claim.py [--sizes 1000,10000,50000] [--claims N] [--limit N]
                                          [--postgresql auto|URL|""] [--dir PATH]

For each queue size N the store is filled with N one-recipient entries (through `store.enqueue`, created in
order), then two shapes are timed, each `--claims` times:

- "drain": every recipient due; each round claims `--limit` recipients (`queue_claim`, the scheduler's call)
  and writes them delivered (`queue_update` with the holder), as a scheduler draining a loaded queue does. The
  previous round's claim is still held while the next one is timed (the scheduler claims ahead,
  delivery/queue.py invariant 6), so the claim also steps over held recipients.
- "backlog": the N entries deferred an hour into the future (a destination that is down) and 100 new entries due
  behind them; each round claims and delivers `--limit` of the due ones.

The table gives the mean milliseconds of one `queue_claim` call (wall time, the store's own thread included:
the machine may be loaded, so compare the columns of one run). --postgresql "auto" starts a throwaway server
(tests/pgcluster.py), a URL uses that (empty) database, "" skips PostgreSQL. Progress goes to stderr, the table
to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from postroom.store.api import QueueRecipient, RcptState, Store
from postroom.store.postgresql import PostgreSQLStore
from postroom.store.sqlite import SQLiteStore

BODY = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: bench\r\n\r\nhello\r\n"
HOLDER = "bench#1"


def progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


async def fill(store: Store, count: int, start: int, next_try: float, state: RcptState) -> None:
    """`count` one-recipient entries, enqueued in order in batches (the engines group their commits)."""
    batch = 200
    for i in range(0, count, batch):
        await asyncio.gather(*(
            store.enqueue(BODY + str(start + j).encode(), "a@example.org",
                          [QueueRecipient(f"r{start + j}@example.net", state=state, next_try=next_try)])
            for j in range(i, min(count, i + batch))
        ))


async def drain(store: Store, now: float, claims: int, limit: int) -> float:
    """Mean seconds per claim over `claims` rounds, each delivering the round before's recipients."""
    spent = 0.0
    held: list[tuple[int, str]] = []
    for _ in range(claims):
        t0 = time.perf_counter()
        got = await store.queue_claim(now, HOLDER, 300.0, limit)
        spent += time.perf_counter() - t0
        for queue_id, rcpt in held:  # the previous claim finishes while this one is in flight
            await store.queue_update(queue_id, [QueueRecipient(rcpt, state=RcptState.DELIVERED)], holder=HOLDER)
        held = got.claimed
    return spent / claims


async def measure(make: object, size: int, claims: int, limit: int) -> tuple[float, float]:
    """(drain ms, backlog ms) for a queue of `size` on a fresh store from `make()`."""
    now = time.time()
    results = []
    for shape in ("drain", "backlog"):
        store = make()  # type: ignore[operator]
        await store.open()
        try:
            progress(f"  {shape}: filling {size:,}")
            if shape == "drain":
                await fill(store, size, 0, 0.0, RcptState.QUEUED)
            else:
                await fill(store, size, 0, now + 3600, RcptState.DEFERRED)
                await fill(store, 100, size, 0.0, RcptState.QUEUED)
            results.append(await drain(store, now, claims if shape == "drain" else min(claims, 100 // limit),
                                       limit) * 1000)
        finally:
            await store.close()
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--claims", type=int, default=30)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--postgresql", default="auto")
    parser.add_argument("--dir", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(args.dir) if args.dir else ROOT / "bench" / "results"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="queue_claim.", dir=base))
    cluster = None
    try:
        if args.postgresql == "auto":
            from tests.pgcluster import Cluster, available

            why = available()
            if why:
                progress(f"no PostgreSQL: {why}")
                args.postgresql = ""
            else:
                cluster = Cluster()
                cluster.start()
        rows = []
        for size in sizes:
            progress(f"SQLite, {size:,} queued")
            n = iter(range(1000))

            def sqlite() -> SQLiteStore:
                d = work / f"sqlite-{size}-{next(n)}"
                return SQLiteStore(d / "db", d / "blobs")

            row = [size, *asyncio.run(measure(sqlite, size, args.claims, args.limit))]
            if args.postgresql:
                progress(f"PostgreSQL, {size:,} queued")
                m = iter(range(1000))

                def pg() -> PostgreSQLStore:
                    url = cluster.create_database() if cluster is not None else args.postgresql
                    return PostgreSQLStore(url, work / f"pg-{size}-{next(m)}")

                row += asyncio.run(measure(pg, size, args.claims, args.limit))
            rows.append(row)
        head = "| queued | SQLite drain ms/claim | SQLite backlog ms/claim |"
        rule = "|-------:|----------------------:|------------------------:|"
        if args.postgresql:
            head += " PostgreSQL drain ms/claim | PostgreSQL backlog ms/claim |"
            rule += "--------------------------:|----------------------------:|"
        print(f"\nqueue_claim, limit {args.limit}, mean of {args.claims} claims (drain)\n")
        print(head)
        print(rule)
        for row in rows:
            print("| " + f"{row[0]:>6,} | " + " | ".join(f"{v:>{len(h) - 2}.3f}" for v, h in
                                                         zip(row[1:], head.split("|")[2:], strict=False)) + " |")
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
