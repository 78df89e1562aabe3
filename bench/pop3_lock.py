"""The POP3 maildrop lock on PostgreSQL: a lease row (what store/postgresql/nodes.py does) against a session-level
advisory lock on a connection of its own (the alternative issue 16 named), per login and under concurrency.

    .venv/bin/python bench/pop3_lock.py [--logins N] [--sessions S]

Starts a throwaway PostgreSQL from Debian's `postgresql` (tests/pgcluster.py). For each way it times N logins,
one after another (take the lock, note the login, release: what a POP3 session does around its work), and S
sessions holding their locks at once (S users, all taken, then all released). The lease row runs on the store's
pool (POOL_SIZE connections, engine.py); the advisory lock opens one connection per session and holds it while
the session lives, which is the cost that decides: S held locks are S backend processes of the database
(`max_connections`, 100 by default, shared by every node). Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402

from postroom.store.postgresql import PostgreSQLStore  # noqa: E402
from tests.pgcluster import Cluster, available  # noqa: E402


async def lease_login(store: PostgreSQLStore, user_id: int, holder: str) -> None:
    assert await store.lock_maildrop(user_id, holder, 60.0)
    await store.maildrop_login(user_id, note=True)
    await store.unlock_maildrop(user_id, holder)


async def advisory_session(url: str, user_id: int) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", user_id)
    return conn


async def advisory_login(url: str, user_id: int) -> None:
    conn = await advisory_session(url, user_id)
    await conn.execute("SELECT pg_advisory_unlock($1)", user_id)
    await conn.close()


async def main(args: argparse.Namespace, url: str, work: Path) -> None:
    store = PostgreSQLStore(url, work / "blobs")
    async with store:
        await store.add_domain("example.org")
        ids = [(await store.add_user(f"u{n}@example.org", "x")).id for n in range(args.sessions)]
        rows = []
        for name, one in (("lease row (pool)", lambda uid: lease_login(store, uid, f"bench:{uid}")),
                          ("advisory lock (own connection)", lambda uid: advisory_login(url, uid))):
            times = []
            for n in range(args.logins):
                start = time.perf_counter()
                await one(ids[n % len(ids)])
                times.append(time.perf_counter() - start)
            print(f"{name}: {args.logins} logins done", file=sys.stderr)
            rows.append((name, statistics.median(times) * 1000, sorted(times)[int(len(times) * 0.95)] * 1000))
        # S sessions holding their locks at once.
        start = time.perf_counter()
        assert all(await asyncio.gather(*(store.lock_maildrop(uid, f"held:{uid}", 60.0) for uid in ids)))
        lease_hold = time.perf_counter() - start
        await asyncio.gather(*(store.unlock_maildrop(uid, f"held:{uid}") for uid in ids))
        start = time.perf_counter()
        conns = await asyncio.gather(*(advisory_session(url, uid) for uid in ids))
        advisory_hold = time.perf_counter() - start
        backends = await store._engine.read(lambda c: c.fetchval("SELECT count(*) FROM pg_stat_activity"
                                                                 " WHERE datname = current_database()"))
        for conn in conns:
            await conn.close()
    print(f"\nPOP3 maildrop lock on PostgreSQL ({args.logins} logins one after another; {args.sessions} held at once)")
    print(f"{'way':32} {'login median ms':>16} {'login p95 ms':>13}")
    for name, median, p95 in rows:
        print(f"{name:32} {median:16.2f} {p95:13.2f}")
    print(f"\n{args.sessions} sessions take their locks at once: lease rows {lease_hold * 1000:.0f} ms over the pool; "
          f"advisory locks {advisory_hold * 1000:.0f} ms, then {backends} backends of this database busy while "
          f"they are held (the pool's included)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=80)
    args = parser.parse_args()
    reason = available()
    if reason:
        sys.exit(f"no PostgreSQL to run: {reason}")
    cluster = Cluster()
    cluster.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(main(args, cluster.create_database(), Path(tmp)))
    finally:
        cluster.stop()
