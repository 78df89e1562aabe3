"""The outbound queue in PostgreSQL (schema step 3): the SQLite engine's queue.py, same invariants.

Concurrency: `queue_update` and `queue_delete` lock the entry's row first, so an entry is dropped (with its
body reference) once, whoever finishes it.

Claims (issue 16 item 3): several nodes run a scheduler on one database. `queue_claim` is one statement: a CTE
selects the due recipients with a free lease (lease_until <= now) `FOR UPDATE OF r SKIP LOCKED`, and the UPDATE
around it writes the holder and the lease on exactly those rows. A row another claimer has locked is skipped,
not waited for; a row another claimer has just committed a lease on is re-checked by READ COMMITTED's
re-evaluation of the WHERE clause on the newest row version (lease_until > now now) and left out, so two claimers
get disjoint sets. A claim never waits on a lock (SKIP LOCKED), so it joins no deadlock with `queue_update`
(entry row, then recipient rows). The holder's result is written with `queue_update(..., holder=)`: the
recipient rows are locked (`FOR UPDATE`) and their `lease_holder` checked in the writing transaction; a holder
that lost its lease gets LeaseLost and writes nothing (the SQLite engine's queue.py invariant 4).

What a claim reads (issue 17): as on SQLite (store/sqlite/queue.py, same name), with the same bounds. A bounded
count of the due recipients (PROBE_FACTOR * limit) decides: few due, the claim statement is `CLAIM_DUE_SQL` (the
due set, sorted); many due, it is `CLAIM_WALK_SQL`, which takes the first limit + WALK_SKIP entries by the schema
14 index on queue(created, id) and leases the due and free recipients among them, the first `limit` in claim
order. The walk's shape does not rest on the planner's estimates (a plain join with ORDER BY got a plan that
hash-joined every due recipient): the recipients are a LATERAL subquery per entry, by position, so the plan is a
nested loop over the entries in their order; its row locks are taken a row at a time as the outer LIMIT pulls
them (it locks what it claims, and stops there); the UPDATE finds the rows by the ctid the lock returned (a TID
scan, the latest version: this transaction holds its lock). The claim's transaction plans with the values
(`plan_cache_mode = force_custom_plan`) and without bitmap scans (which read a whole index range before a LIMIT).
The walk reads a prefix of claim order, so what it leased are the first ones; if its entries held fewer than
`limit` (their recipients held or waiting), `CLAIM_DUE_SQL` leases the rest in the same transaction, all of
which come after that prefix. Both statements keep `SKIP LOCKED` and the lease re-check above.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from postroom.store.api import Invalid, LeaseLost, NotFound, QueueClaim, QueueEntry, QueueRecipient, RcptState
from postroom.store.blobs import blob_id_of
from postroom.store.postgresql.common import Base, acquire_blob, release_blobs
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx, rowcount
from postroom.store.sqlite import queue as sqlite_queue
from postroom.store.sqlite.queue import PENDING, PROBE_FACTOR, _check_entry, check_claim

ENTRY_COLUMNS = "id, blob_id, size, mail_from, envid, ret, created, from_checked"
RCPT_COLUMNS = ("queue_id, rcpt, orcpt, notify, state, attempts, next_try, last_error, delay_notified, lease_holder,"
                " lease_until")


async def _entries(conn: Conn, found: Sequence[asyncpg.Record]) -> list[QueueEntry]:
    if not found:
        return []
    rcpts: dict[int, list[QueueRecipient]] = {int(r[0]): [] for r in found}
    for r in await conn.fetch(f"SELECT {RCPT_COLUMNS} FROM queue_rcpt WHERE queue_id = ANY($1::bigint[])"
                              " ORDER BY queue_id, position", list(rcpts)):
        rcpts[int(r[0])].append(QueueRecipient(rcpt=r[1], orcpt=r[2], notify=r[3], state=RcptState(r[4]),
                                               attempts=r[5], next_try=r[6], last_error=r[7],
                                               delay_notified=bool(r[8]), lease_holder=r[9],
                                               lease_until=r[10]))
    return [QueueEntry(id=r[0], blob_id=r[1], size=r[2], mail_from=r[3], envid=r[4], ret=r[5], created=r[6],
                       recipients=tuple(rcpts[int(r[0])]), from_checked=bool(r[7])) for r in found]


async def _drop(tx: Tx, queue_id: int, blob_id: str) -> None:
    await tx.conn.execute("DELETE FROM queue WHERE id = $1", queue_id)  # cascades to queue_rcpt
    await release_blobs(tx, {blob_id: 1})


_PENDING_SQL = "('queued', 'deferred')"  # PENDING as literals: the partial indexes are usable only so
assert _PENDING_SQL == repr(PENDING)
_DUE_COUNT = ("SELECT count(*) FROM (SELECT 1 FROM queue_rcpt"
              f" WHERE state IN {_PENDING_SQL} AND next_try <= $1 LIMIT $2) d")
_LEASE = (" UPDATE queue_rcpt u SET lease_holder = $2, lease_until = $3 FROM c"
          " WHERE u.queue_id = c.queue_id AND u.rcpt = c.rcpt RETURNING u.queue_id, u.rcpt, c.lease_holder")
CLAIM_DUE_SQL = (  # the due set by next_try (index queue_rcpt_due), sorted; $1 now, $4 limit
    "WITH c AS (SELECT r.queue_id, r.rcpt, r.lease_holder FROM queue_rcpt r JOIN queue q ON q.id = r.queue_id"
    f" WHERE r.state IN {_PENDING_SQL} AND r.next_try <= $1 AND r.lease_until <= $1"
    " ORDER BY q.created, q.id, r.position LIMIT $4 FOR UPDATE OF r SKIP LOCKED)" + _LEASE
)
CLAIM_WALK_SQL = (  # the first $5 entries in claim order (index queue_claim_order), their due and free recipients
    "WITH c AS (SELECT k.t, k.lease_holder"
    " FROM (SELECT id FROM queue ORDER BY created, id LIMIT $5) q CROSS JOIN LATERAL"
    " (SELECT r.ctid AS t, r.lease_holder FROM queue_rcpt r WHERE r.queue_id = q.id"
    f" AND r.state IN {_PENDING_SQL} AND r.next_try <= $1 AND r.lease_until <= $1"
    " ORDER BY r.position FOR UPDATE SKIP LOCKED) k LIMIT $4)"
    " UPDATE queue_rcpt u SET lease_holder = $2, lease_until = $3 FROM c"
    " WHERE u.ctid = c.t RETURNING u.queue_id, u.rcpt, c.lease_holder"
)


async def _claim(conn: Conn, now: float, holder: str, until: float, limit: int) -> list[asyncpg.Record]:
    """Lease to `holder` until `until` the first `limit` due and free pending recipients in claim order (created,
    id, position); rows (queue_id, rcpt, previous lease_holder), in no order. See "What a claim reads"."""
    if limit == 0:
        return []
    picked: list[asyncpg.Record] = []
    # For this transaction only: plans for these values (a generic plan, which PostgreSQL switches to after five
    # runs of a prepared statement, cannot see that the LIMITs are small), and no bitmap scans (a bitmap index
    # scan reads the whole due range before the count's LIMIT applies; a plain index scan stops there).
    await conn.execute("SELECT set_config('plan_cache_mode', 'force_custom_plan', true),"
                       " set_config('enable_bitmapscan', 'off', true)")
    if await conn.fetchval(_DUE_COUNT, now, PROBE_FACTOR * limit) >= PROBE_FACTOR * limit:
        picked = await conn.fetch(CLAIM_WALK_SQL, now, holder, until, limit,
                                  limit + sqlite_queue.WALK_SKIP)  # read at call time: the tests vary it
    if len(picked) < limit:  # few due, or the walk's entries held fewer: the rest from the sorted due set
        picked += await conn.fetch(CLAIM_DUE_SQL, now, holder, until, limit - len(picked))
    return picked


class QueueMixin(Base):
    async def _enqueue(self, blob_id: str, size: int, raw: bytes, source: Path | None, mail_from: str, envid: str,
                       ret: str, rcpts: tuple[QueueRecipient, ...], from_checked: bool,
                       crlf: int | None = None) -> QueueEntry:
        now = self._clock()

        async def op(tx: Tx) -> QueueEntry:
            await acquire_blob(tx, blob_id, raw, source=source, size=size if source is not None else None, crlf=crlf)
            queue_id = int(await tx.conn.fetchval(
                "INSERT INTO queue(blob_id, size, mail_from, envid, ret, created, from_checked)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                blob_id, size, mail_from, envid, ret, now, int(from_checked)))
            await tx.conn.executemany(
                "INSERT INTO queue_rcpt(queue_id, position, rcpt, orcpt, notify, state, attempts, next_try,"
                " last_error, delay_notified) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                [(queue_id, i, r.rcpt, r.orcpt, r.notify, RcptState(r.state).value, r.attempts, r.next_try,
                  r.last_error, int(r.delay_notified)) for i, r in enumerate(rcpts)])
            return QueueEntry(queue_id, blob_id, size, mail_from, envid, ret, now, rcpts, from_checked)

        return await self._engine.write(op)

    async def enqueue(self, raw: bytes, mail_from: str, recipients: Sequence[QueueRecipient], envid: str = "",
                      ret: str = "", from_checked: bool = True) -> QueueEntry:
        rcpts, ret = _check_entry(recipients, ret)
        return await self._enqueue(blob_id_of(raw), len(raw), raw, None, mail_from, envid, ret, rcpts, from_checked)

    async def enqueue_file(self, path: Path, mail_from: str, recipients: Sequence[QueueRecipient], *,
                           prefix: bytes = b"", envid: str = "", ret: str = "",
                           from_checked: bool = True) -> QueueEntry:
        rcpts, ret = _check_entry(recipients, ret)
        path = self._check_staged(path)
        body = await asyncio.to_thread(self._staging.stage_copy, path, prefix) if prefix else path
        try:
            blob_id, size, crlf = await asyncio.to_thread(self._staging.hash_file, body)
            return await self._enqueue(blob_id, size, b"", body, mail_from, envid, ret, rcpts, from_checked, crlf)
        finally:
            if body != path:
                body.unlink(missing_ok=True)

    async def queue_get(self, queue_id: int) -> QueueEntry | None:
        async def q(conn: Conn) -> QueueEntry | None:
            found = await _entries(conn, await conn.fetch(f"SELECT {ENTRY_COLUMNS} FROM queue WHERE id = $1",
                                                          queue_id))
            return found[0] if found else None

        return await self._engine.read(q)

    async def queue_list(self) -> list[QueueEntry]:
        async def q(conn: Conn) -> list[QueueEntry]:
            return await _entries(conn, await conn.fetch(f"SELECT {ENTRY_COLUMNS} FROM queue ORDER BY created, id"))

        return await self._engine.read(q)

    async def queue_due(self, now: float, limit: int = 100) -> list[QueueEntry]:
        async def q(conn: Conn) -> list[QueueEntry]:
            return await _entries(conn, await conn.fetch(
                f"SELECT {ENTRY_COLUMNS} FROM queue WHERE id IN"
                " (SELECT queue_id FROM queue_rcpt WHERE state = ANY($1::text[]) AND next_try <= $2)"
                " ORDER BY created, id LIMIT $3", list(PENDING), now, limit))

        return await self._engine.read(q)

    async def queue_claim(self, now: float, holder: str, lease_seconds: float, limit: int = 100) -> QueueClaim:
        check_claim(holder, lease_seconds)

        async def op(tx: Tx) -> QueueClaim:
            picked = await _claim(tx.conn, now, holder, now + lease_seconds, max(0, limit))
            if not picked:
                return QueueClaim([], [], [])
            rows = await tx.conn.fetch(f"SELECT {ENTRY_COLUMNS} FROM queue WHERE id = ANY($1::bigint[])"
                                       " ORDER BY created, id", sorted({int(p[0]) for p in picked}))
            taken = [(int(p[0]), str(p[1]), str(p[2])) for p in picked if p[2] and p[2] != holder]
            entries = await _entries(tx.conn, rows)
            took = {(int(p[0]), str(p[1])) for p in picked}  # RETURNING has no order: the entries' order
            return QueueClaim([(e.id, r.rcpt) for e in entries for r in e.recipients if (e.id, r.rcpt) in took],
                              entries, taken)

        return await self._engine.write(op)

    async def queue_renew(self, holder: str, keys: Sequence[tuple[int, str]], until: float) -> set[tuple[int, str]]:
        wanted = list(dict.fromkeys(keys))
        if not holder or not wanted:
            return set()

        async def op(tx: Tx) -> set[tuple[int, str]]:
            rows = await tx.conn.fetch(
                "UPDATE queue_rcpt u SET lease_until = $2, lease_holder = $3"
                " FROM unnest($4::bigint[], $5::text[]) AS k(queue_id, rcpt)"
                " WHERE u.queue_id = k.queue_id AND u.rcpt = k.rcpt AND u.lease_holder = $1"
                " RETURNING u.queue_id, u.rcpt",
                holder, until, holder if until > 0 else "", [k[0] for k in wanted], [k[1] for k in wanted])
            return {(int(r[0]), str(r[1])) for r in rows}

        return await self._engine.write(op)

    async def queue_free_leases(self, node: str) -> int:
        if not node:
            raise Invalid("name the node whose leases to free")
        prefix = node + "#"

        async def op(tx: Tx) -> int:
            return rowcount(await tx.conn.execute(
                "UPDATE queue_rcpt SET lease_holder = '', lease_until = 0"
                " WHERE lease_holder <> '' AND substr(lease_holder, 1, $1) = $2", len(prefix), prefix))

        return await self._engine.write(op)

    async def queue_update(self, queue_id: int, recipients: Sequence[QueueRecipient], holder: str = "") -> None:
        updates = [(RcptState(r.state).value, r.attempts, r.next_try, r.last_error, int(r.delay_notified), queue_id,
                    r.rcpt) for r in recipients]

        async def op(tx: Tx) -> None:
            blob_id = await tx.conn.fetchval("SELECT blob_id FROM queue WHERE id = $1 FOR UPDATE", queue_id)
            if blob_id is None:
                raise NotFound(f"no queue entry {queue_id}")
            if holder:  # the scheduler's result: only for what it still holds, checked under the rows' locks
                held = {r[0]: r[1] for r in await tx.conn.fetch(
                    "SELECT rcpt, lease_holder FROM queue_rcpt WHERE queue_id = $1 AND rcpt = ANY($2::text[])"
                    " FOR UPDATE", queue_id, [u[-1] for u in updates])}
                missing = [u[-1] for u in updates if u[-1] not in held]
                if missing:
                    raise Invalid(f"queue entry {queue_id} has no recipient {missing[0]!r}")
                lost = [u[-1] for u in updates if held[u[-1]] != holder]
                if lost:
                    raise LeaseLost(queue_id, lost)  # before any UPDATE: nothing of it is written
            release = ", lease_holder = '', lease_until = 0" if holder else ""
            for u in updates:
                status = await tx.conn.execute(
                    "UPDATE queue_rcpt SET state = $1, attempts = $2, next_try = $3, last_error = $4,"
                    f" delay_notified = $5{release} WHERE queue_id = $6 AND rcpt = $7", *u)
                if rowcount(status) == 0:
                    raise Invalid(f"queue entry {queue_id} has no recipient {u[-1]!r}")
            if not await tx.conn.fetchval(
                    "SELECT 1 FROM queue_rcpt WHERE queue_id = $1 AND state = ANY($2::text[]) LIMIT 1",
                    queue_id, list(PENDING)):
                await _drop(tx, queue_id, str(blob_id))

        await self._engine.write(op)

    async def queue_delete(self, queue_id: int) -> None:
        async def op(tx: Tx) -> None:
            blob_id = await tx.conn.fetchval("SELECT blob_id FROM queue WHERE id = $1 FOR UPDATE", queue_id)
            if blob_id is None:
                raise NotFound(f"no queue entry {queue_id}")
            await _drop(tx, queue_id, str(blob_id))

        await self._engine.write(op)

    async def queue_length(self) -> int:
        async def q(conn: Conn) -> int:
            return int(await conn.fetchval("SELECT count(*) FROM queue_rcpt WHERE state = ANY($1::text[])",
                                           list(PENDING)))

        return await self._engine.read(q)
