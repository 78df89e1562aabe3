"""The SQLite store's writer side of SMTP ingest, alone: CPU per delivered message, and what the index costs.

    .venv/bin/python bench/store_ingest.py [--count 3000] [--sessions 20] [--size 5000]
                                           [--index now|backlog] [--drain STEP]

`--sessions` tasks call `store.deliver` as local delivery does (Return-Path and Received as the request's
prefix, metadata computed beforehand, outside the clock), `--count` messages of about `--size` bytes shaped
like smtp-source's, into one INBOX of a fresh store under bench/results/. Printed: messages/s, CPU of the whole
process and of the writer thread per message (user and system, from /proc), bytes written per message
(`wchar`) and the batches the writer formed.

`--index backlog` is a design not taken, measured: each new body goes to `fts_backlog` at delivery instead of
being indexed (`fts.index_later` replaced for the run), and with `--drain STEP` the backlog is then indexed in
write jobs of STEP bodies (metadata read and decoded again, rows written by `fts.index_deferred`), the CPU per
body printed. bench/RESULTS.md, "SMTP durable ingest, the writer's side", has the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import written_bytes  # bench/common.py

from postroom.auth.passwords import make_credentials
from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest, Mailbox
from postroom.store.sqlite import SQLiteStore, fts
from postroom.store.sqlite.engine import Tx


def thread_cpu(tid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of thread `tid` of this process."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/self/task/{tid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) / tick, int(fields[12]) / tick


def message(i: int, size: int, stamp: int | None = None) -> tuple[bytes, bytes]:
    """(prefix, raw): trace fields as local delivery adds them, and a message shaped like smtp-source's. Its
    Message-Id is `<i.stamp@remote.test>`, `stamp` the clock's nanoseconds unless given (fixed bytes)."""
    stamp = time.time_ns() if stamp is None else stamp
    head = (f"From: <bench@remote.test>\r\nTo: <user@example.org>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n"
            f"Message-Id: <{i}.{stamp}@remote.test>\r\nSubject: La de da {i}\r\n\r\n").encode()
    out = bytearray(head)
    n = 0
    while len(out) < size:
        out += f"La de da de da {n}.\r\n".encode()
        n += 1
    prefix = (b"Return-Path: <bench@remote.test>\r\nReceived: from client.remote.test ([127.0.0.1])\r\n"
              b"\tby mx.example.org with ESMTP id %d; Tue, 1 Dec 2026 10:00:00 +0000\r\n" % i)
    return prefix, bytes(out[:size])


def deliveries(count: int, size: int) -> list[AppendRequest]:
    """`count` delivery requests of `message` shape, ~`size` bytes, with their metadata computed and decoded
    (as local delivery gives it: `AppendRequest.parsed`)."""
    out = []
    for i in range(count):
        prefix, raw = message(i, size)
        meta = compute_meta(prefix + raw)
        out.append(AppendRequest(raw=raw, prefix=prefix, meta=meta.to_bytes(), parsed=meta))
    return out


async def bench_inbox(store: SQLiteStore) -> Mailbox:
    """The INBOX of a new user user@example.org in a fresh `store`."""
    await store.add_domain("example.org")
    password, scram = make_credentials("bench-password")
    user = await store.add_user("user@example.org", password, scram)
    box = await store.get_mailbox(user.id, "INBOX")
    assert box is not None
    return box


def backlog_at_delivery(tx: Tx, blob_id: str, meta: bytes | None, parsed: object) -> None:
    """`--index backlog`: the new body goes to the backlog instead of being indexed."""
    tx.conn.execute("INSERT OR IGNORE INTO fts_backlog(blob_id) VALUES (?)", (blob_id,))


async def run(args: argparse.Namespace, work: Path) -> None:
    store = SQLiteStore(work / "postroom.db", work / "blobs")
    await store.open()
    try:
        box = await bench_inbox(store)
        todo = list(reversed(deliveries(args.count, args.size)))

        async def session() -> None:
            while todo:
                await store.deliver([box.id], todo.pop())

        engine = store._engine
        assert engine._writer is not None and engine._writer.native_id is not None
        writer = engine._writer.native_id
        batches = [0, 0]

        def committed(seconds: float, jobs: int) -> None:
            batches[0] += 1
            batches[1] += jobs

        engine.on_commit = committed
        io0, c0, w0, t0 = written_bytes(os.getpid()), time.process_time(), thread_cpu(writer), time.perf_counter()
        await asyncio.gather(*(session() for _ in range(args.sessions)))
        io1, c1, w1, t1 = written_bytes(os.getpid()), time.process_time(), thread_cpu(writer), time.perf_counter()
        n = args.count
        print(f"index {args.index}: {n / (t1 - t0):.0f} msg/s, {1000 * (c1 - c0) / n:.3f} ms CPU per message "
              f"(writer thread {1000 * (w1[0] - w0[0]) / n:.3f} user + {1000 * (w1[1] - w0[1]) / n:.3f} system), "
              f"{(io1 - io0) / n / 1024:.0f} KiB written per message, {batches[1] / max(1, batches[0]):.1f} jobs "
              f"per batch")
        if args.drain:
            step = args.drain

            def drain(tx: Tx) -> int:
                rows = tx.conn.execute("SELECT b.blob_id, s.meta FROM fts_backlog b JOIN blobs s ON s.id = b.blob_id"
                                       " ORDER BY b.blob_id LIMIT ?", (step,)).fetchall()
                items = [(str(b), bytes(m), fts.parse_meta(bytes(m))) for b, m in rows]
                tx.conn.executemany("DELETE FROM fts_backlog WHERE blob_id = ?", [(b,) for b, _, _ in items])
                fts.index_deferred(tx.conn, [(b, m, p) for b, m, p in items if p is not None])
                return len(items)

            c0, t0 = time.process_time(), time.perf_counter()
            done = 0
            while True:
                k = await engine.write(drain)
                done += k
                if k < step:
                    break
            c1, t1 = time.process_time(), time.perf_counter()
            print(f"  backlog indexed in steps of {step}: {1000 * (c1 - c0) / max(1, done):.3f} ms CPU per body, "
                  f"{done} bodies in {t1 - t0:.1f} s")
    finally:
        await store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3000, help="messages (default 3000)")
    ap.add_argument("--sessions", type=int, default=20, help="concurrent deliveries (default 20)")
    ap.add_argument("--size", type=int, default=5000, help="bytes per message (default 5000)")
    ap.add_argument("--index", choices=("now", "backlog"), default="now",
                    help="now: as the store does; backlog: the design not taken (module doc)")
    ap.add_argument("--drain", type=int, default=0, help="with --index backlog: index it after, STEP bodies a job")
    args = ap.parse_args()
    if args.index == "backlog":
        fts.index_later = backlog_at_delivery  # type: ignore[assignment]
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="store-ingest-", dir=results))  # a real disk: fsync must cost
    try:
        asyncio.run(run(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
