"""What several nodes on one PostgreSQL database share, beyond mail (issue 16 item 3): the POP3 maildrop lock
and last login, moderated list posts, and values made once (the server secret, the generated certificate).

Theory of operation
-------------------
Each is a row, so every node sees the same state and a node that dies leaves nothing another must clean up by
hand. Times are the database's clock (`clock_timestamp()`, seconds since the epoch), never a node's: leases
compare instants written by one node with instants read by another, and nodes' clocks drift.

The POP3 lock (RFC 1939 §8) is a lease row per user (`pop3_locks`), not `pg_try_advisory_lock`. An advisory
lock lives as long as the connection that took it, so each POP3 session in TRANSACTION would pin one
connection of the pool (POOL_SIZE, engine.py) for its whole length (minutes for a slow client on a large
maildrop), and a pool of 10 would stop the 11th session's every query; a dedicated connection per session
instead costs a backend process per POP3 user (PostgreSQL's `max_connections`, 100 by default, across every
node). A lease costs one short UPDATE at login, one per renewal (pop3/session.py renews at a third of the
lease) and one at the end, on any pooled connection. And a lease bounds a dead node's hold by its length on
the database's clock, whereas a connection of a machine that vanished (power, network) holds its advisory lock
until the server's TCP keepalive notices (`tcp_keepalives_idle`: two hours by default). Measured
(bench/pop3_lock.py, bench/RESULTS.md): a login with the lease (take, note the login, release) 22 ms median
against 32 ms for a connection of its own with the advisory lock (which still lacks the LOGIN-DELAY write), and
80 sessions holding advisory locks kept 91 backends busy.

Held posts carry their claim in the row: `claim_held_post` is one UPDATE that takes a free or expired claim,
so two nodes approving the same post at once get one row back between them (lists.py invariant 2); `drop`
deletes only under the claim still held.

Job leases (`job_leases`, schema step 13; jobs.py) name the node that runs a periodic job (DMARC reports, the
rspamd learning sender, retention, the index backlog). Unlike the rows above they are timed on the caller's
clock (`now`, as the queue's leases are): the caller decides when to renew, and nodes' clocks are kept in step.

Invariants:
1. `lock_maildrop`, `claim_held_post` and `claim_job` are each one statement: PostgreSQL's row lock on the conflicting
   INSERT/UPDATE serialises two callers, and the loser sees the winner's row.
2. `shared_value` stores a value at most once per name (INSERT ... ON CONFLICT DO NOTHING) and returns what
   is stored, from the same transaction.
"""

from __future__ import annotations

import math

import asyncpg

from postroom.store.api import AlreadyExists, HeldPost
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx, rowcount

_NOW = "extract(epoch from clock_timestamp())::double precision"
_POST = "token, list_address, mail_from, raw, held_at"


def _post(r: asyncpg.Record) -> HeldPost:
    return HeldPost(str(r[0]), str(r[1]), str(r[2]), bytes(r[3]), float(r[4]))


class NodesMixin(Base):
    shared_by_nodes = True

    async def shared_value(self, name: str, candidate: bytes) -> bytes:
        async def op(tx: Tx) -> bytes:
            await tx.conn.execute(f"INSERT INTO shared_values(name, value, created) VALUES ($1, $2, {_NOW})"
                                  " ON CONFLICT (name) DO NOTHING", name, candidate)  # invariant 2
            return bytes(await tx.conn.fetchval("SELECT value FROM shared_values WHERE name = $1", name))

        return await self._engine.write(op)

    async def lock_maildrop(self, user_id: int, holder: str, lease_seconds: float) -> bool:
        async def op(tx: Tx) -> bool:
            # Invariant 1: insert the lease, or take the row over when it is ours or its lease ran out.
            got = await tx.conn.fetchval(
                f"INSERT INTO pop3_locks AS l(user_id, holder, expires) SELECT $1, $2, {_NOW} + $3"
                " WHERE EXISTS (SELECT 1 FROM users WHERE id = $1)"
                f" ON CONFLICT (user_id) DO UPDATE SET holder = $2, expires = {_NOW} + $3"
                f" WHERE l.holder = $2 OR l.holder = '' OR l.expires < {_NOW} RETURNING 1",
                user_id, holder, float(lease_seconds))
            return got is not None

        return await self._engine.write(op)

    async def unlock_maildrop(self, user_id: int, holder: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.conn.execute("UPDATE pop3_locks SET holder = '', expires = 0 WHERE user_id = $1 AND holder = $2",
                                  user_id, holder)

        await self._engine.write(op)

    async def maildrop_login(self, user_id: int, note: bool) -> float:
        ago = f"SELECT {_NOW} - last_login FROM pop3_locks WHERE user_id = $1 AND last_login > 0"

        async def op(tx: Tx) -> float:
            elapsed = await tx.conn.fetchval(ago, user_id)
            if note:
                await tx.conn.execute(f"UPDATE pop3_locks SET last_login = {_NOW} WHERE user_id = $1", user_id)
            return math.inf if elapsed is None else max(0.0, float(elapsed))

        async def q(conn: Conn) -> float:
            elapsed = await conn.fetchval(ago, user_id)
            return math.inf if elapsed is None else max(0.0, float(elapsed))

        return await (self._engine.write(op) if note else self._engine.read(q))

    async def note_mailbox_login(self, address: str, when: float, keep_seconds: float) -> None:
        async def op(tx: Tx) -> None:
            await tx.conn.execute("INSERT INTO mailbox_logins(address, at) VALUES ($1, $2) ON CONFLICT (address)"
                                  " DO UPDATE SET at = greatest(mailbox_logins.at, excluded.at)", address, when)
            await tx.conn.execute("DELETE FROM mailbox_logins WHERE at < $1", when - keep_seconds)

        await self._engine.write(op)

    async def mailbox_login(self, address: str) -> float:
        async def q(conn: Conn) -> float:
            return float(await conn.fetchval("SELECT at FROM mailbox_logins WHERE address = $1", address) or 0.0)

        return await self._engine.read(q)

    async def hold_post(self, post: HeldPost) -> None:
        async def op(tx: Tx) -> None:
            try:
                await tx.conn.execute(f"INSERT INTO held_posts({_POST}) VALUES ($1, $2, $3, $4, $5)",
                                      post.token, post.list_address, post.mail_from, post.raw,
                                      post.held_at or self._clock())
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("a held post with that token exists") from None

        await self._engine.write(op)

    async def get_held_post(self, token: str) -> HeldPost | None:
        async def q(conn: Conn) -> HeldPost | None:
            r = await conn.fetchrow(f"SELECT {_POST} FROM held_posts WHERE token = $1", token)
            return None if r is None else _post(r)

        return await self._engine.read(q)

    async def list_held_posts(self) -> list[HeldPost]:
        async def q(conn: Conn) -> list[HeldPost]:
            return [_post(r) for r in await conn.fetch(f"SELECT {_POST} FROM held_posts ORDER BY held_at, token")]

        return await self._engine.read(q)

    async def claim_held_post(self, token: str, claim: str, lease_seconds: float) -> HeldPost | None:
        async def op(tx: Tx) -> HeldPost | None:
            r = await tx.conn.fetchrow(
                f"UPDATE held_posts SET claim = $2, claimed_until = {_NOW} + $3"
                f" WHERE token = $1 AND (claim = '' OR claimed_until < {_NOW}) RETURNING {_POST}",
                token, claim, float(lease_seconds))  # invariant 1
            return None if r is None else _post(r)

        return await self._engine.write(op)

    async def claim_job(self, name: str, holder: str, seconds: float, now: float) -> bool:
        async def op(tx: Tx) -> bool:
            got = await tx.conn.fetchval(  # invariant 1
                "INSERT INTO job_leases AS j(name, holder, expires) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE"
                " SET holder = excluded.holder, expires = excluded.expires WHERE j.holder = excluded.holder"
                " OR j.expires <= $4 RETURNING 1", name, holder, float(now + seconds), float(now))
            return got is not None

        return await self._engine.write(op)

    async def release_job(self, name: str, holder: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.conn.execute("DELETE FROM job_leases WHERE name = $1 AND holder = $2", name, holder)

        await self._engine.write(op)

    async def drop_held_post(self, token: str, claim: str) -> bool:
        async def op(tx: Tx) -> bool:
            return rowcount(await tx.conn.execute("DELETE FROM held_posts WHERE token = $1 AND claim = $2",
                                                  token, claim)) > 0

        return await self._engine.write(op)

    async def release_held_post(self, token: str, claim: str) -> None:
        async def op(tx: Tx) -> None:
            await tx.conn.execute("UPDATE held_posts SET claim = '', claimed_until = 0 WHERE token = $1"
                                  " AND claim = $2", token, claim)

        await self._engine.write(op)
