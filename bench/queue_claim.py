"""What one outbound-queue claim costs as the queue grows (issue 17), on both store engines.

    .venv/bin/python bench/queue_claim.py [--sizes 1000,10000,50000] [--claims N] [--limit N]
                                          [--postgresql auto|none] [--dir PATH]

For each queue size N the store is filled with N one-recipient entries (through `store.enqueue`, created in
order), then two shapes are timed, each `--claims` times:

- "drain": every recipient due; each round claims `--limit` recipients (`queue_claim`, the scheduler's call)
  and writes them delivered (`queue_update` with the holder), as a scheduler draining a loaded queue does. The
  previous round's claim is still held while the next one is timed (the scheduler claims ahead,
  delivery/queue.py invariant 6), so the claim also steps over held recipients.
- "backlog": the N entries deferred an hour into the future (a destination that is down) and 100 new entries due
  behind them; each round claims and delivers `--limit` of the due ones.

The table gives the mean milliseconds of one `queue_claim` call (wall time, the store's own thread included:
the machine may be loaded, so compare the columns of one run). Below it, SQLite's EXPLAIN QUERY PLAN of the
claim's statements (store/sqlite/queue.py; on a checkout before issue 17, of the one claim query it had), taken
on the largest queue. --postgresql "auto" (the default) starts a throwaway server (tests/pgcluster.py) and gives
each measurement a fresh database; "none" skips PostgreSQL. Progress goes to stderr, the tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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


class Factory:
    """Fresh stores under `base`: SQLite without `cluster`, else PostgreSQL on a new database of `cluster`
    (tests/pgcluster.py) each time."""

    def __init__(self, base: Path, cluster: Any = None) -> None:
        self.base, self.cluster, self.made = base, cluster, 0

    def __call__(self) -> Store:
        self.made += 1
        d = self.base / str(self.made)
        if self.cluster is not None:
            return PostgreSQLStore(self.cluster.create_database(), d)
        return SQLiteStore(d / "db", d / "blobs")


OLD_CLAIM_SQL = ("SELECT r.queue_id, r.rcpt, r.lease_holder FROM queue_rcpt r JOIN queue q ON q.id = r.queue_id"
                 " WHERE r.state IN (?, ?) AND r.next_try <= ? AND r.lease_until <= ?"
                 " ORDER BY q.created, q.id, r.position LIMIT ?")  # the claim before issue 17
PLANS: list[str] = []


def explain(db: Path) -> list[str]:
    """EXPLAIN QUERY PLAN of the SQLite engine's claim statements on the database file `db`."""
    from postroom.store.sqlite import queue as q

    found = [(n, getattr(q, n)) for n in ("CLAIM_WALK_SQL", "CLAIM_DUE_SQL") if hasattr(q, n)]
    out = []
    conn = sqlite3.connect(db)
    try:
        for name, sql in found or [("claim (before issue 17)", OLD_CLAIM_SQL)]:
            out.append(f"{name}:")
            for row in conn.execute("EXPLAIN QUERY PLAN " + sql, [1] * sql.count("?")):
                out.append(f"    {row[3]}")
    finally:
        conn.close()
    return out


async def measure(make: Factory, size: int, claims: int, limit: int) -> tuple[float, float]:
    """(drain ms, backlog ms) for a queue of `size` on a fresh store from `make()`."""
    now = time.time()
    results = []
    for shape in ("drain", "backlog"):
        store = make()
        await store.open()
        try:
            progress(f"  {shape}: filling {size:,}")
            if shape == "drain":
                await fill(store, size, 0, 0.0, RcptState.QUEUED)
                if isinstance(store, SQLiteStore):
                    PLANS[:] = explain(store.path)
            else:
                await fill(store, size, 0, now + 3600, RcptState.DEFERRED)
                await fill(store, 100, size, 0.0, RcptState.QUEUED)
            results.append(await drain(store, now, claims if shape == "drain" else max(1, min(claims, 100 // limit)),
                                       limit) * 1000)
        finally:
            await store.close()
    return results[0], results[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,50000")
    parser.add_argument("--claims", type=int, default=30)
    parser.add_argument("--limit", type=int, default=32)
    parser.add_argument("--postgresql", choices=("auto", "none"), default="auto")
    parser.add_argument("--dir", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    base = Path(args.dir) if args.dir else ROOT / "bench" / "results"
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="queue_claim.", dir=base))
    cluster = None
    try:
        if args.postgresql == "none":
            args.postgresql = ""
        else:
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
            row = [size, *asyncio.run(measure(Factory(work / f"sqlite-{size}"), size, args.claims, args.limit))]
            if args.postgresql:
                progress(f"PostgreSQL, {size:,} queued")
                row += asyncio.run(measure(Factory(work / f"pg-{size}", cluster), size, args.claims, args.limit))
            rows.append(row)
        head = "| queued | SQLite drain ms/claim | SQLite backlog ms/claim |"
        rule = "|-------:|----------------------:|------------------------:|"
        if args.postgresql:
            head += " PostgreSQL drain ms/claim | PostgreSQL backlog ms/claim |"
            rule += "--------------------------:|----------------------------:|"
        print(f"\nqueue_claim, limit {args.limit}: mean of {args.claims} claims (drain),"
              f" {max(1, min(args.claims, 100 // args.limit))} (backlog)\n")
        print(head)
        print(rule)
        for row in rows:
            print("| " + f"{row[0]:>6,} | " + " | ".join(f"{v:>{len(h) - 2}.3f}" for v, h in
                                                         zip(row[1:], head.split("|")[2:], strict=False)) + " |")
        print(f"\nSQLite EXPLAIN QUERY PLAN, {sizes[-1]:,} queued\n")
        print("\n".join(PLANS))
    finally:
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
