"""The outbound queue in SQLite: one entry per accepted message, one row per recipient with its own state.

Theory of operation: `enqueue` stores the body as a blob (shared with any local copy of the same bytes; inline
in the database or a file, by size, as for messages) and the envelope; the scheduler claims the recipients due
(`queue_claim`), tries them, and reports with `queue_update`. An entry lives until every recipient is final
(delivered or bounced), then it and its blob reference go in the same transaction. `queue_due` is the plain
read of what is due (no claim), for tools and tests.

Claims (issue 16 item 3). The scheduler does not act on `queue_due`: it claims with `queue_claim`, which in one
write transaction picks the due recipients whose lease is free (never claimed, released, or expired: lease_until
<= now) and writes its holder and `now + lease_seconds` on them. SQLite runs one write transaction at a time, so
two claimers (two Store objects, two processes on the file) never get the same recipient: the second one's
SELECT sees the first one's leases. The holder renews its leases while an attempt runs (`queue_renew`) and its
result (`queue_update(..., holder=)`) is written only if it still holds every recipient it names, releasing them
in the same transaction; a holder whose lease expired and was claimed by another gets LeaseLost and writes
nothing, so the new holder's result is the one that stands.

What a claim reads (issue 17). A claim takes the first `limit` recipients that are pending, due (next_try <= now)
and free (lease_until <= now) in claim order: entry created, entry id, recipient position (invariant 3). No one
index serves a range on next_try and an order on created, so `_pick` chooses between two exact ways, each with
a bounded cost: (a) it counts the due recipients by the `queue_rcpt_due` index, stopping at PROBE_FACTOR * limit
(an index-only range); if there are fewer, it sorts that small due set (`CLAIM_DUE_SQL`). (b) Otherwise it walks
the pending recipients in claim order (`CLAIM_WALK_SQL`: `queue_claim_order` on queue(created, id), then each
entry's pending recipients by the partial index `queue_rcpt_claim`, schema step 28), reading at most limit +
WALK_SKIP of them and keeping the due and free ones; the walk reads a prefix of claim order, so if it found
`limit` they are the first `limit`. Stepping over WALK_SKIP held or deferred ones without finding enough (a
head of the queue that is mostly in flight or waiting, behind it a large due set), it falls back to (a)'s sort
of the whole due set: the cost every claim had before step 28, now only in that case. So draining a loaded
queue costs each claim about limit + the recipients held ahead of it, not the queue's size; a queue that is
mostly waiting on a retry costs each claim its (small) due set. The walk's subquery is a co-routine that yields
rows in its ORDER BY order and the outer query filters them as they come (no ORDER BY there: it would make
SQLite read and sort the whole budget before the first row); tests/store/test_queue_claim_order.py checks the
order the claim returns against invariant 3 on every way.

Invariants:
1. An entry has at least one recipient and no recipient twice.
2. An entry whose recipients are all final does not exist: `queue_update` removes it in the same transaction.
3. `queue_due` returns oldest first (created, then id), each entry with all its recipients in the order given;
   `queue_claim` takes recipients in that order (created, id, position) among the due and free ones.
4. A recipient is held by at most one holder: a claim takes only leases with lease_until <= now, and a holder's
   write checks `lease_holder` in the same transaction that writes the result (schema invariant 31).
5. `queue_update` reads the entry with all its recipients once, checks every named recipient (Invalid) and,
   with a holder, every lease (LeaseLost) before it writes anything; when the result leaves no recipient
   pending it removes the entry at once (invariant 2) instead of writing rows that the removal deletes: the
   usual end of a message, one recipient delivered, costs one read and the removal.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from postroom.store.api import Invalid, LeaseLost, NotFound, QueueClaim, QueueEntry, QueueRecipient, RcptState
from postroom.store.blobs import blob_id_of
from postroom.store.sqlite.common import CHUNK, Base, acquire_blob, release_blobs
from postroom.store.sqlite.engine import Tx

ENTRY_COLUMNS = "id, blob_id, size, mail_from, envid, ret, created, from_checked"
RCPT_COLUMNS = ("queue_id, rcpt, orcpt, notify, state, attempts, next_try, last_error, delay_notified, lease_holder,"
                " lease_until")
PENDING = (RcptState.QUEUED.value, RcptState.DEFERRED.value)
RET_VALUES = ("", "FULL", "HDRS")


def _rcpt(row: Any) -> QueueRecipient:
    return QueueRecipient(
        rcpt=row[1],
        orcpt=row[2],
        notify=row[3],
        state=RcptState(row[4]),
        attempts=row[5],
        next_try=row[6],
        last_error=row[7],
        delay_notified=bool(row[8]),
        lease_holder=row[9],
        lease_until=row[10],
    )


def _entries(conn: sqlite3.Connection, rows: Sequence[Any]) -> list[QueueEntry]:
    if not rows:
        return []
    rcpts: dict[int, list[QueueRecipient]] = {int(r[0]): [] for r in rows}
    ids = list(rcpts)
    for i in range(0, len(ids), CHUNK):
        part = ids[i : i + CHUNK]
        for r in conn.execute(
            f"SELECT {RCPT_COLUMNS} FROM queue_rcpt WHERE queue_id IN ({','.join('?' * len(part))})"
            " ORDER BY queue_id, position",
            part,
        ):
            rcpts[int(r[0])].append(_rcpt(r))
    return [
        QueueEntry(
            id=r[0], blob_id=r[1], size=r[2], mail_from=r[3], envid=r[4], ret=r[5], created=r[6],
            recipients=tuple(rcpts[int(r[0])]), from_checked=bool(r[7]),
        )
        for r in rows
    ]


def _check_entry(recipients: Sequence[QueueRecipient], ret: str) -> tuple[tuple[QueueRecipient, ...], str]:
    rcpts = tuple(recipients)
    if not rcpts:
        raise Invalid("a queue entry needs at least one recipient")
    if len({r.rcpt for r in rcpts}) != len(rcpts):
        raise Invalid("a recipient appears twice")
    if any(not r.rcpt for r in rcpts):
        raise Invalid("empty recipient")
    ret = ret.upper()
    if ret not in RET_VALUES:
        raise Invalid(f"RET must be FULL or HDRS, not {ret!r}")
    return rcpts, ret


def _enqueue_op(blob_id: str, size: int, raw: bytes, source: Path | None, mail_from: str, envid: str, ret: str,
                now: float, rcpts: tuple[QueueRecipient, ...], from_checked: bool,
                crlf: int | None = None) -> Callable[[Tx], QueueEntry]:
    """The job of `enqueue` (body `raw`) or `enqueue_file` (body in the file `source`, already linked, with its
    `crlf_size` `crlf`)."""

    def op(tx: Tx) -> QueueEntry:
        acquire_blob(tx, blob_id, raw, source=source, size=size if source is not None else None, crlf=crlf,
                     searchable=False)  # a queue entry is not searched
        cur = tx.conn.execute(
            "INSERT INTO queue(blob_id, size, mail_from, envid, ret, created, from_checked)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (blob_id, size, mail_from, envid, ret, now, int(from_checked)),
        )
        queue_id = int(cur.lastrowid or 0)
        tx.conn.executemany(
            "INSERT INTO queue_rcpt(queue_id, position, rcpt, orcpt, notify, state, attempts, next_try,"
            " last_error, delay_notified) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (queue_id, i, r.rcpt, r.orcpt, r.notify, RcptState(r.state).value, r.attempts, r.next_try,
                 r.last_error, int(r.delay_notified))
                for i, r in enumerate(rcpts)
            ],
        )
        return QueueEntry(queue_id, blob_id, size, mail_from, envid, ret, now, rcpts, from_checked)

    return op


PROBE_FACTOR = 4  # a claim of `limit` sorts the due set itself when it has fewer than PROBE_FACTOR * limit rows
WALK_SKIP = 512  # held or not-yet-due pending recipients a claim's ordered walk steps over before it gives up
_PENDING_SQL = "('queued', 'deferred')"  # PENDING as literals: the partial indexes are usable only so (schema 28)
assert _PENDING_SQL == repr(PENDING)
_DUE_COUNT = (  # how many pending recipients are due, up to a bound: an index-only range of queue_rcpt_due
    "SELECT count(*) FROM (SELECT 1 FROM queue_rcpt INDEXED BY queue_rcpt_due"
    f" WHERE state IN {_PENDING_SQL} AND next_try <= ? LIMIT ?)"
)
CLAIM_DUE_SQL = (  # the due set by next_try, sorted: costs the due set (schema index queue_rcpt_due)
    "SELECT r.queue_id, r.rcpt, r.lease_holder FROM queue_rcpt r INDEXED BY queue_rcpt_due CROSS JOIN queue q"
    f" WHERE q.id = r.queue_id AND r.state IN {_PENDING_SQL} AND r.next_try <= ? AND r.lease_until <= ?"
    " ORDER BY q.created, q.id, r.position LIMIT ?"
)
CLAIM_WALK_SQL = (  # the pending recipients in claim order, at most `budget` read, the due and free kept
    "SELECT queue_id, rcpt, lease_holder FROM ("
    " SELECT r.queue_id, r.rcpt, r.lease_holder, r.next_try, r.lease_until"
    " FROM queue q INDEXED BY queue_claim_order CROSS JOIN queue_rcpt r INDEXED BY queue_rcpt_claim"
    f" WHERE r.queue_id = q.id AND r.state IN {_PENDING_SQL}"
    " ORDER BY q.created, q.id, r.position LIMIT ?)"
    " WHERE next_try <= ? AND lease_until <= ? LIMIT ?"
)


def _pick(conn: sqlite3.Connection, now: float, limit: int) -> list[Any]:
    """The first `limit` due and free pending recipients in claim order (created, id, position; invariant 3),
    as rows (queue_id, rcpt, lease_holder). See "What a claim reads" in the module doc for the ways and their costs."""
    if limit == 0:
        return []
    due = conn.execute(_DUE_COUNT, (now, PROBE_FACTOR * limit)).fetchone()[0]
    if due >= PROBE_FACTOR * limit:
        walked = conn.execute(CLAIM_WALK_SQL, (limit + WALK_SKIP, now, now, limit)).fetchall()
        if len(walked) == limit:  # the walk read a prefix of claim order and found enough: the first `limit`
            return walked
    # Few due (a sort of at most PROBE_FACTOR * limit rows), or the walk stepped over WALK_SKIP without enough.
    return conn.execute(CLAIM_DUE_SQL, (now, now, limit)).fetchall()


def check_claim(holder: str, lease_seconds: float) -> None:
    """The arguments of `queue_claim`, shared by both engines: Invalid unless a holder is named and the lease is
    positive and finite."""
    if not holder:
        raise Invalid("a queue claim needs a holder")
    if not 0 < lease_seconds < float("inf"):
        raise Invalid(f"a queue lease must be positive seconds, not {lease_seconds!r}")


def _drop(tx: Tx, queue_id: int, blob_id: str) -> None:
    tx.conn.execute("DELETE FROM queue WHERE id = ?", (queue_id,))  # cascades to queue_rcpt
    release_blobs(tx, {blob_id: 1})


class QueueMixin(Base):
    async def enqueue(
        self,
        raw: bytes,
        mail_from: str,
        recipients: Sequence[QueueRecipient],
        envid: str = "",
        ret: str = "",
        from_checked: bool = True,
    ) -> QueueEntry:
        rcpts, ret = _check_entry(recipients, ret)
        blob_id = blob_id_of(raw)
        op = _enqueue_op(blob_id, len(raw), raw, None, mail_from, envid, ret, self._clock(), rcpts, from_checked)
        if self._engine.inline(len(raw)):
            return await self._engine.write(op, size=len(raw))  # the job stores the body in its transaction
        await self._engine.write_blobs({blob_id: (b"", raw)})
        return await self._write_with_new_blobs(op, {blob_id})

    async def enqueue_file(
        self,
        path: Path,
        mail_from: str,
        recipients: Sequence[QueueRecipient],
        *,
        prefix: bytes = b"",
        envid: str = "",
        ret: str = "",
        from_checked: bool = True,
    ) -> QueueEntry:
        rcpts, ret = _check_entry(recipients, ret)
        path = self._check_staged(path)
        async with self._prefixed(path, prefix) as body:
            size = os.stat(body).st_size
            if self._engine.inline(size):
                raw = await self._engine.io(body.read_bytes)
                return await self.enqueue(raw, mail_from, rcpts, envid, ret, from_checked)
            blob_id, size, crlf = await self._engine.io(self._blobs.adopt, body)
            op = _enqueue_op(blob_id, size, b"", body, mail_from, envid, ret, self._clock(), rcpts, from_checked,
                             crlf)
            return await self._write_with_new_blobs(op, {blob_id})

    async def queue_get(self, queue_id: int) -> QueueEntry | None:
        def q(conn: sqlite3.Connection) -> QueueEntry | None:
            rows = conn.execute(f"SELECT {ENTRY_COLUMNS} FROM queue WHERE id = ?", (queue_id,)).fetchall()
            found = _entries(conn, rows)
            return found[0] if found else None

        return await self._engine.read(q)

    async def queue_list(self) -> list[QueueEntry]:
        def q(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(f"SELECT {ENTRY_COLUMNS} FROM queue ORDER BY created, id").fetchall()
            return _entries(conn, rows)

        return await self._engine.read(q)

    async def queue_due(self, now: float, limit: int = 100) -> list[QueueEntry]:
        def q(conn: sqlite3.Connection) -> list[QueueEntry]:
            rows = conn.execute(
                f"SELECT {ENTRY_COLUMNS} FROM queue WHERE id IN"
                " (SELECT queue_id FROM queue_rcpt WHERE state IN (?, ?) AND next_try <= ?)"
                " ORDER BY created, id LIMIT ?",
                (*PENDING, now, limit),
            ).fetchall()
            return _entries(conn, rows)

        return await self._engine.read(q)

    async def queue_claim(self, now: float, holder: str, lease_seconds: float, limit: int = 100) -> QueueClaim:
        check_claim(holder, lease_seconds)
        until = now + lease_seconds

        def op(tx: Tx) -> QueueClaim:
            # One write transaction: nobody else writes between this SELECT and the UPDATE (invariant 4).
            picked = _pick(tx.conn, now, max(0, limit))
            if not picked:
                return QueueClaim([], [], [])
            tx.conn.executemany(
                "UPDATE queue_rcpt SET lease_holder = ?, lease_until = ? WHERE queue_id = ? AND rcpt = ?",
                [(holder, until, p[0], p[1]) for p in picked],
            )
            ids = sorted({int(p[0]) for p in picked})
            rows: list[Any] = []
            for i in range(0, len(ids), CHUNK):
                part = ids[i : i + CHUNK]
                rows += tx.conn.execute(
                    f"SELECT {ENTRY_COLUMNS} FROM queue WHERE id IN ({','.join('?' * len(part))})", part
                ).fetchall()
            rows.sort(key=lambda r: (r[6], r[0]))  # oldest first (invariant 3)
            taken = [(int(p[0]), str(p[1]), str(p[2])) for p in picked if p[2] and p[2] != holder]
            return QueueClaim([(int(p[0]), str(p[1])) for p in picked], _entries(tx.conn, rows), taken)

        return await self._engine.write(op)

    async def queue_renew(self, holder: str, keys: Sequence[tuple[int, str]], until: float) -> set[tuple[int, str]]:
        wanted = list(dict.fromkeys(keys))
        if not holder or not wanted:
            return set()

        def op(tx: Tx) -> set[tuple[int, str]]:
            held: set[tuple[int, str]] = set()
            for queue_id, rcpt in wanted:
                cur = tx.conn.execute(
                    "UPDATE queue_rcpt SET lease_until = ?, lease_holder = ? WHERE queue_id = ? AND rcpt = ?"
                    " AND lease_holder = ?",
                    (until, holder if until > 0 else "", queue_id, rcpt, holder),
                )
                if cur.rowcount:
                    held.add((queue_id, rcpt))
            return held

        return await self._engine.write(op)

    async def queue_free_leases(self, node: str) -> int:
        if not node:
            raise Invalid("name the node whose leases to free")
        prefix = node + "#"

        def op(tx: Tx) -> int:
            cur = tx.conn.execute(
                "UPDATE queue_rcpt SET lease_holder = '', lease_until = 0"
                " WHERE lease_holder != '' AND substr(lease_holder, 1, ?) = ?",
                (len(prefix), prefix),
            )
            return int(cur.rowcount)

        return await self._engine.write(op)

    async def queue_update(self, queue_id: int, recipients: Sequence[QueueRecipient], holder: str = "") -> None:
        updates = [
            (RcptState(r.state).value, r.attempts, r.next_try, r.last_error, int(r.delay_notified), queue_id, r.rcpt)
            for r in recipients
        ]

        def op(tx: Tx) -> None:
            # The entry and all its recipients in one read (invariant 5): the checks, then the writes.
            rows = tx.conn.execute(
                "SELECT q.blob_id, r.rcpt, r.state, r.lease_holder FROM queue q"
                " LEFT JOIN queue_rcpt r ON r.queue_id = q.id WHERE q.id = ?", (queue_id,),
            ).fetchall()
            if not rows:
                raise NotFound(f"no queue entry {queue_id}")
            state = {str(r[1]): str(r[2]) for r in rows if r[1] is not None}
            holders = {str(r[1]): str(r[3]) for r in rows if r[1] is not None}
            unknown = [u[-1] for u in updates if u[-1] not in state]
            if unknown:
                raise Invalid(f"queue entry {queue_id} has no recipient {unknown[0]!r}")
            if holder:  # the scheduler's result: only for what it still holds (invariant 4)
                lost = list(dict.fromkeys(u[-1] for u in updates if holders[u[-1]] != holder))
                if lost:
                    raise LeaseLost(queue_id, lost)  # raised before any write: nothing of it is written
            for u in updates:
                state[u[-1]] = u[0]
            if not any(s in PENDING for s in state.values()):
                _drop(tx, queue_id, str(rows[0][0]))  # every recipient final (invariant 2): no row to update
                return
            release = ", lease_holder = '', lease_until = 0" if holder else ""
            tx.conn.executemany(
                "UPDATE queue_rcpt SET state = ?, attempts = ?, next_try = ?, last_error = ?,"
                f" delay_notified = ?{release} WHERE queue_id = ? AND rcpt = ?",
                updates,
            )

        await self._engine.write(op)

    async def queue_delete(self, queue_id: int) -> None:
        def op(tx: Tx) -> None:
            row = tx.conn.execute("SELECT blob_id FROM queue WHERE id = ?", (queue_id,)).fetchone()
            if row is None:
                raise NotFound(f"no queue entry {queue_id}")
            _drop(tx, queue_id, str(row[0]))

        await self._engine.write(op)

    async def queue_length(self) -> int:
        def q(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT count(*) FROM queue_rcpt WHERE state IN (?, ?)", PENDING).fetchone()
            return int(row[0])

        return await self._engine.read(q)
