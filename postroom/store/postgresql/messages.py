"""Messages in PostgreSQL: append, deliver, flags, expunge, copy and move (the SQLite engine's messages.py).

Theory of operation: as in SQLite, a message row is (mailbox, uid) -> modseq, flags, keywords, blob. What
differs is how UIDs and MODSEQs are handed out with several writers at once: every job that changes a
mailbox's messages first locks the mailbox row (`load_mailbox(..., lock=True)`), and new UIDs and MODSEQs
come from one `UPDATE mailboxes SET uidnext = uidnext + n, highestmodseq = highestmodseq + n ... RETURNING`,
so concurrent appends on several nodes queue on that row and never share a UID or a MODSEQ. Bodies are stored
by `common.acquire_blob` in the job's transaction (chunk rows), staged files a chunk at a time.

Invariants (the SQLite module's 1-6 and 8 hold as written; 7 has no object here: there is no `sort_rows`
copy on PostgreSQL, threads.py):
1. `uidnext` only grows; a UID is never reused.
2. Every append, flag change and removal takes a MODSEQ above `highestmodseq` and stores it back; a STORE that
   changes nothing takes none.
3. Every removed message leaves an `expunged` row and releases its body; rows leave only through
   `prune_expunged`, which raises `expunged_floor` first.
4. Copy and move stay within one user unless `as_user` is named, whose ACL rights are checked in the job.
5. Keywords put on a row grow the mailbox's keyword set in the same job.
6. A new message row gets its thread id in the job that inserts it: its source's when it is a copy, else
   `assign_thread` from its body's keys, which the job stored first (`put_keys`).
8. Every insert checks the owner's quota in its job before the rows go in (quota.py `check`, which locks the
   owner's counters), except a move within one user and a delivery with `enforce_quota=False`.
9. Appends and deliveries of bodies in memory (`append`, `append_many`, `deliver`) that arrive while another
   such job of this store is in its transaction wait, and then go together in one transaction (a group
   commit, as the SQLite engine's writer thread does): mailbox rows locked in id order, then the bodies
   acquired in blob id order, then the rows inserted job by job in arrival order. Each caller still returns only
   after the commit that holds its rows. If the group's transaction fails, each of its jobs runs again alone,
   so an error (over quota, a bad flag) reaches only the caller it belongs to.

Why the group: every job that adds to a mailbox holds that mailbox's row lock from its first statement to its
COMMIT (the fsync included), so appends to one mailbox (a busy INBOX, a list archive) run one transaction at a
time, on every node: with 20 SMTP sessions into one INBOX (`bench/scale.py`) each message waited for the ones
before it, a dozen round trips and a commit each. A group pays the lock, the UID/MODSEQ UPDATE, the change
record and the commit once for all its jobs (bench/RESULTS.md: 1.46x the messages/s, a third less node CPU).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from postroom.mime.meta import MessageMeta
from postroom.store import names
from postroom.store.api import (
    AppendRequest,
    AppendResult,
    Change,
    ChangeKind,
    CopyResult,
    Flag,
    Forbidden,
    Invalid,
    Mailbox,
    MailboxView,
    MessageColumns,
    MessageInfo,
    NotFound,
    StagedAppend,
    StoreError,
    StoreMode,
    Vanished,
    WriteResult,
    flags_allowed,
)
from postroom.store.blobs import blob_id_of, check_id, crlf_size
from postroom.store.postgresql import acl, fts
from postroom.store.postgresql.common import (
    MESSAGE_COLUMNS,
    Base,
    acquire_blob,
    add_blob_refs,
    count_blobs,
    decode_keywords,
    encode_keywords,
    load_mailbox,
    message_from_row,
    read_body,
    release_blobs,
    select_messages,
    structure_columns,
)
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx
from postroom.store.postgresql.quota import check as quota_check
from postroom.store.postgresql.senders import record_signals
from postroom.store.postgresql.threads import assign_thread, put_keys, refresh_keys
from postroom.store.sqlite.fts import parse_meta
from postroom.store.sqlite.messages import _apply, _check_request, _counted, _has_junk, _kws
from postroom.store.sqlite.senders import copy_verdict

PRUNE_BATCH = 10_000
TOP = 2**63 - 1


@dataclass(frozen=True)
class NewMessage:
    """A row to insert, whatever its origin (an append, a copy, INBOX rename)."""

    internal_date: float
    size: int
    flags: int
    keywords: frozenset[str]
    blob_id: str
    thread_id: int = 0


async def grow_keywords(tx: Tx, mbox: Mailbox, keywords: Iterable[str]) -> Change | None:
    """Add to the mailbox's keyword set those of `keywords` it has not had (case-insensitively, invariant 5).
    The caller holds the mailbox row's lock. Invalid past `names.MAX_MAILBOX_KEYWORDS`."""
    wanted = list(keywords)
    if not wanted:
        return None
    text = await tx.conn.fetchval("SELECT keywords FROM mailboxes WHERE id = $1", mbox.id)
    known = {k.lower(): k for k in decode_keywords(str(text))}
    new: dict[str, str] = {}
    for kw in wanted:
        if kw.lower() not in known:
            new.setdefault(kw.lower(), kw)
    if not new:
        return None
    if len(known) + len(new) > names.MAX_MAILBOX_KEYWORDS:
        raise Invalid(f"a mailbox may have at most {names.MAX_MAILBOX_KEYWORDS} keywords")
    known.update(new)
    await tx.conn.execute("UPDATE mailboxes SET keywords = $1 WHERE id = $2", encode_keywords(known.values()), mbox.id)
    change = Change(ChangeKind.MAILBOX_KEYWORDS, mbox.user_id, mbox.id, keywords=frozenset(new.values()))
    tx.changes.append(change)
    return change


async def insert_messages(tx: Tx, mbox: Mailbox, items: Sequence[NewMessage], saved: float | None = None, *,
                          quota: bool = True) -> list[AppendResult]:
    """Insert rows with fresh UIDs and MODSEQs (one locking UPDATE ... RETURNING: module doc), saved now."""
    if not items:
        return []
    if quota:
        await quota_check(tx.conn, mbox.user_id, [item.size for item in items])
    save_date = time.time() if saved is None else saved
    n = len(items)
    row = await tx.conn.fetchrow(
        "UPDATE mailboxes SET uidnext = uidnext + $2, highestmodseq = highestmodseq + $2 WHERE id = $1"
        " RETURNING uidnext - $2, highestmodseq - $2", mbox.id, n)
    if row is None:
        raise NotFound(f"no mailbox with id {mbox.id}")
    uid, modseq = int(row[0]), int(row[1])
    rows = []
    results = []
    for item in items:
        modseq += 1
        thread = item.thread_id or await assign_thread(tx.conn, mbox.user_id, item.blob_id)  # invariant 6
        rows.append((mbox.id, uid, modseq, item.internal_date, item.size, item.flags, encode_keywords(item.keywords),
                     item.blob_id, save_date, thread))
        change = Change(ChangeKind.APPEND, mbox.user_id, mbox.id, uid, modseq, item.flags, item.keywords)
        tx.changes.append(change)
        results.append(AppendResult(uid, modseq, mbox.uidvalidity, (change,)))
        uid += 1
    await tx.conn.executemany(
        f"INSERT INTO messages({MESSAGE_COLUMNS}, thread_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)", rows)
    grown = await grow_keywords(tx, mbox, (kw for item in items for kw in item.keywords))
    if grown is not None and len(results) == 1:
        results[0] = dataclasses.replace(results[0], changes=(*results[0].changes, grown))
    return results


async def delete_messages(tx: Tx, mbox: Mailbox, msgs: Sequence[MessageInfo], *, now: float,
                          release: bool = True) -> list[Change]:
    """Remove rows, record them in `expunged` (dated `now`), and (unless the bodies moved) release their
    bodies. The caller holds the mailbox row's lock."""
    if not msgs:
        return []
    top = int(await tx.conn.fetchval(
        "UPDATE mailboxes SET highestmodseq = highestmodseq + $2 WHERE id = $1 RETURNING highestmodseq",
        mbox.id, len(msgs)))
    modseq = top - len(msgs)
    gone = []
    changes = []
    for m in msgs:
        modseq += 1
        gone.append((mbox.id, m.uid, modseq, now))
        changes.append(Change(ChangeKind.EXPUNGE, mbox.user_id, mbox.id, m.uid, modseq))
    await tx.conn.execute("DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])",
                          mbox.id, [m.uid for m in msgs])
    await tx.conn.executemany(
        "INSERT INTO expunged(mailbox_id, uid, modseq, at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (mailbox_id, uid) DO UPDATE SET modseq = EXCLUDED.modseq, at = EXCLUDED.at", gone)
    if release:
        await release_blobs(tx, count_blobs(m.blob_id for m in msgs))
    tx.changes.extend(changes)
    return changes


@dataclass(frozen=True)
class _Body:
    """A body to store: in memory (`prefix` + `raw`) or a staged file (`source`, `size`, `crlf`)."""

    blob_id: str
    raw: bytes = b""
    meta: bytes | None = None
    source: Path | None = None
    size: int = 0
    crlf: int | None = None
    prefix: bytes = b""  # in memory: the body is prefix + raw (`AppendRequest.prefix`)
    parsed: MessageMeta | None = field(default=None, compare=False, repr=False)  # `AppendRequest.parsed`

    async def acquire(self, tx: Tx) -> None:
        """One more reference to the body (stored if new), its sort and thread keys (invariant 6) and its
        full-text index row (fts.py invariant 1). A body new in this transaction has neither yet, and no message
        names it: the checks for those are left out (a quarter of an append's round trips)."""
        if self.source is None:
            new = await acquire_blob(tx, self.blob_id, self.raw, 1, self.meta, prefix=self.prefix)
        else:
            new = await acquire_blob(tx, self.blob_id, b"", 1, self.meta, source=self.source, size=self.size,
                                     crlf=self.crlf)
        if new:  # decoded once, for the keys and the index row (not at all when the caller gave it decoded)
            parsed = self.parsed if self.parsed is not None and self.meta is not None else parse_meta(self.meta)
            await put_keys(tx.conn, self.blob_id, self.meta, fresh=True, parsed=parsed)
            await fts.index_blob(tx.conn, self.blob_id, self.meta, fresh=True, parsed=parsed)
        else:
            await put_keys(tx.conn, self.blob_id, self.meta)
            await fts.index_if_new(tx.conn, self.blob_id)


@dataclass
class _AppendJob:
    """One caller's append: its rows (`items[i]` into `mailbox_ids[i]`, body `bodies[i]`), and the future its
    caller awaits (invariant 9)."""

    mailbox_ids: list[int]
    bodies: list[_Body]
    items: list[NewMessage]
    saved: float
    quota: bool
    done: asyncio.Future[list[AppendResult]]


class _AppendGroup:
    """The jobs waiting for the transaction in progress to end (invariant 9), and whether one is in progress."""

    MAX_JOBS = 200  # jobs in one transaction at most: a group holds its row locks until it commits

    def __init__(self) -> None:
        self.waiting: list[_AppendJob] = []
        self.running = False
        self.task: asyncio.Task[None] | None = None  # held here: the loop keeps only a weak reference


async def _append_jobs(tx: Tx, jobs: Sequence[_AppendJob]) -> list[list[AppendResult]]:
    """The rows of `jobs` in one transaction: mailbox rows locked in id order, bodies acquired in blob id order,
    rows inserted job by job (invariant 9). Returns each job's results."""
    boxes = {i: await load_mailbox(tx.conn, i, lock=True) for i in sorted({i for j in jobs for i in j.mailbox_ids})}
    for body in sorted((b for j in jobs for b in j.bodies), key=lambda b: b.blob_id):
        await body.acquire(tx)
    out = []
    for job in jobs:
        results = []
        for mailbox_id, item in zip(job.mailbox_ids, job.items, strict=True):
            results.extend(await insert_messages(tx, boxes[mailbox_id], [item], job.saved, quota=job.quota))
        out.append(results)
    return out


class MessagesMixin(Base):
    _appends: _AppendGroup | None = None

    async def _append_job(self, mailbox_ids: Sequence[int], reqs: Sequence[AppendRequest],
                          quota: bool = True) -> list[AppendResult]:
        """Append reqs[i] to mailbox_ids[i] for every i, in one transaction (with other callers' appends that
        arrive meanwhile: invariant 9)."""
        now = self._clock()
        bodies, items = [], []
        for req in reqs:
            flags, kws = _check_request(req)
            blob_id = blob_id_of(req.raw, req.prefix)  # of prefix + raw, never joined (AppendRequest)
            date = now if req.internal_date is None else float(req.internal_date)
            bodies.append(_Body(blob_id, req.raw, req.meta, prefix=req.prefix, parsed=req.parsed))
            items.append(NewMessage(date, req.size, flags, kws, blob_id))
        job = _AppendJob(list(mailbox_ids), bodies, items, now, quota, asyncio.get_running_loop().create_future())
        # its error is the caller's; read here too, so a caller that went away leaves no "never retrieved" warning
        job.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        if self._appends is None:
            self._appends = _AppendGroup()
        group = self._appends
        group.waiting.append(job)
        if not group.running:
            group.running = True
            group.task = asyncio.get_running_loop().create_task(self._run_appends(group), name="postroom-pg-appends")
        return await asyncio.shield(job.done)  # a caller that goes away leaves its job to finish

    async def _run_appends(self, group: _AppendGroup) -> None:
        """Run the waiting jobs a group at a time until none waits (invariant 9)."""
        jobs: list[_AppendJob] = []
        try:
            while group.waiting:
                jobs, group.waiting = group.waiting[:group.MAX_JOBS], group.waiting[group.MAX_JOBS:]
                await self._run_group(jobs)
        finally:
            group.running = False
            # Left unanswered only when this task itself ended early (cancelled: the loop is closing)
            for job in [*jobs, *group.waiting]:
                if not job.done.done():
                    job.done.set_exception(StoreError("the store is closing"))
            group.waiting = []

    async def _run_group(self, jobs: Sequence[_AppendJob]) -> None:
        """One transaction for `jobs`; if it fails and holds more than one job, each runs again alone."""
        try:
            outs = await self._engine.write(lambda tx: _append_jobs(tx, jobs))
        except Exception as e:  # noqa: BLE001 - handed to the callers
            if len(jobs) > 1:
                for job in jobs:
                    await self._run_group([job])
            elif not jobs[0].done.done():
                jobs[0].done.set_exception(e)
            return
        for job, out in zip(jobs, outs, strict=True):
            if not job.done.done():
                job.done.set_result(out)

    async def append(self, mailbox_id: int, message: AppendRequest, *, claim_recent: bool = False) -> AppendResult:
        result = (await self._append_job([mailbox_id], [message]))[0]
        if claim_recent:  # here a transaction of its own, after the append's (appends are batched across callers)
            result = dataclasses.replace(result, recent=await self.claim_recent(mailbox_id))  # type: ignore[attr-defined]
        return result

    def staging_dir(self) -> Path:
        return self._staging.staging

    async def _staged_body(self, path: Path, meta: bytes | None) -> _Body:
        blob_id, size, crlf = await asyncio.to_thread(self._staging.hash_file, path)
        return _Body(blob_id, meta=meta, source=path, size=size, crlf=crlf)

    async def append_file(self, mailbox_id: int, path: Path, *, flags: int = 0,
                          keywords: frozenset[str] = frozenset(), internal_date: float | None = None,
                          meta: bytes | None = None) -> AppendResult:
        path = Path(path)
        if path.parent.resolve() != self._staging.staging.resolve() or path.name in ("", ".", ".."):
            raise Invalid(f"not a file in the staging directory: {path}")
        try:
            checked_flags, kws = _check_request(AppendRequest(b"", flags, frozenset(keywords), internal_date, meta))
            body = await self._staged_body(path, meta)
            date = self._clock() if internal_date is None else float(internal_date)
            item = NewMessage(date, body.size, checked_flags, kws, body.blob_id)

            async def op(tx: Tx) -> AppendResult:
                mbox = await load_mailbox(tx.conn, mailbox_id, lock=True)
                await body.acquire(tx)
                return (await insert_messages(tx, mbox, [item], self._clock()))[0]

            return await self._engine.write(op)
        finally:
            path.unlink(missing_ok=True)

    async def deliver_file(self, mailbox_ids: Sequence[int], path: Path, *, prefix: bytes = b"",
                           meta: bytes | None = None, keywords: frozenset[str] = frozenset(),
                           enforce_quota: bool = True,
                           box_keywords: Mapping[int, frozenset[str]] | None = None) -> list[AppendResult]:
        path = self._check_staged(path)
        if not mailbox_ids:
            return []
        extra = box_keywords or {}
        staged = await asyncio.to_thread(self._staging.stage_copy, path, prefix) if prefix else path
        try:
            body = await self._staged_body(staged, meta)
            now = self._clock()
            items = {b: NewMessage(now, body.size, 0, _kws(keywords | extra.get(b, frozenset())), body.blob_id)
                     for b in mailbox_ids}
            wanted = list(mailbox_ids)

            async def op(tx: Tx) -> list[AppendResult]:
                boxes = {i: await load_mailbox(tx.conn, i, lock=True) for i in sorted(set(wanted))}
                results = []
                for mailbox_id in wanted:
                    await body.acquire(tx)
                    item = items[mailbox_id]
                    results.extend(await insert_messages(tx, boxes[mailbox_id], [item], item.internal_date,
                                                         quota=enforce_quota))
                return results

            return await self._engine.write(op)
        finally:
            if staged != path:
                staged.unlink(missing_ok=True)

    async def append_many(self, mailbox_id: int, messages: Sequence[AppendRequest]) -> list[AppendResult]:
        if not messages:
            return []
        return await self._append_job([mailbox_id] * len(messages), messages)

    async def append_multi(self, mailbox_id: int,
                           messages: Sequence[AppendRequest | StagedAppend]) -> list[AppendResult]:
        staged = [m.path for m in messages if isinstance(m, StagedAppend)]
        try:
            for path in staged:
                self._check_staged(path)
        except Invalid:
            for path in staged:  # api: a path outside staging is left alone, the others removed
                if Path(path).parent.resolve() == self._staging.staging.resolve():
                    Path(path).unlink(missing_ok=True)
            raise
        try:
            now = self._clock()
            prepared: list[tuple[NewMessage, _Body]] = []
            for m in messages:
                date = now if m.internal_date is None else float(m.internal_date)
                flags = names.flags(m.flags)
                kws = frozenset(names.keywords(m.keywords).values())
                if isinstance(m, StagedAppend):
                    body = await self._staged_body(Path(m.path), m.meta)
                else:
                    body = _Body(blob_id_of(m.raw, m.prefix), m.raw, m.meta, size=m.size, prefix=m.prefix)
                size = body.size if body.source is not None else len(body.prefix) + len(body.raw)
                prepared.append((NewMessage(date, size, flags, kws, body.blob_id), body))

            async def op(tx: Tx) -> list[AppendResult]:
                mbox = await load_mailbox(tx.conn, mailbox_id, lock=True)
                for _, body in prepared:
                    await body.acquire(tx)
                return await insert_messages(tx, mbox, [p[0] for p in prepared], now)  # RFC 3502 §3: one transaction

            return await self._engine.write(op)
        finally:
            for path in staged:
                Path(path).unlink(missing_ok=True)

    async def deliver(self, mailbox_ids: Sequence[int], message: AppendRequest, *,
                      enforce_quota: bool = True,
                      box_keywords: Mapping[int, frozenset[str]] | None = None) -> list[AppendResult]:
        if not mailbox_ids:
            return []
        extra = box_keywords or {}
        reqs = [dataclasses.replace(message, keywords=message.keywords | extra[b]) if extra.get(b) else message
                for b in mailbox_ids]
        return await self._append_job(list(mailbox_ids), reqs, enforce_quota)

    async def list_messages(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> list[MessageInfo]:
        top = min(uid_max if uid_max is not None else TOP, TOP)

        async def q(conn: Conn) -> list[MessageInfo]:
            await load_mailbox(conn, mailbox_id)
            found = await conn.fetch(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1"
                                     " AND uid BETWEEN $2 AND $3 ORDER BY uid", mailbox_id, uid_min, top)
            return [message_from_row(tuple(r)) for r in found]

        return await self._engine.read(q)

    async def list_columns(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None, *,
                           flags_only: bool = False, structure: bool = False) -> MessageColumns:
        top = min(uid_max if uid_max is not None else TOP, TOP)

        async def narrow(conn: Conn) -> MessageColumns:
            mbox = await load_mailbox(conn, mailbox_id)
            stamp = (mbox.uidvalidity, mbox.highestmodseq)  # read before the rows
            found = await conn.fetch(
                "SELECT uid, modseq, flags, keywords FROM messages WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3"
                " ORDER BY uid", mailbox_id, uid_min, top)
            if not found:
                return MessageColumns(array("I"), (), (), (), (), (), {}, (), stamp=stamp)
            uids, modseqs, flags, kws = zip(*(tuple(r) for r in found))
            keywords = {i: decode_keywords(k) for i, k in enumerate(kws) if k}
            return MessageColumns(array("I", uids), modseqs, flags, (), (), (), keywords, (), stamp=stamp)

        async def q(conn: Conn) -> MessageColumns:
            mbox = await load_mailbox(conn, mailbox_id)
            stamp = (mbox.uidvalidity, mbox.highestmodseq)  # read before the rows
            found = await conn.fetch(
                "SELECT uid, modseq, flags, size, internal_date, blob_id, keywords, save_date FROM messages"
                " WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3 ORDER BY uid", mailbox_id, uid_min, top)
            if not found:
                return MessageColumns(array("I"), (), (), (), (), (), {}, (), stamp=stamp)
            uids, modseqs, flags, sizes, dates, blob_ids, kws, saved = zip(*(tuple(r) for r in found))
            keywords = {i: decode_keywords(k) for i, k in enumerate(kws) if k}
            return MessageColumns(array("I", uids), modseqs, flags, sizes, dates, blob_ids, keywords, saved,
                                  stamp=stamp)

        async def wide(conn: Conn) -> MessageColumns:
            mbox = await load_mailbox(conn, mailbox_id)
            stamp = (mbox.uidvalidity, mbox.highestmodseq)  # read before the rows
            # structure.py invariant 1: a kept row holds the values of the body's current metadata. The body id
            # only where no row is kept (its reader decodes the metadata); with `flags_only`, no other column.
            found = await conn.fetch(
                "SELECT m.uid, m.modseq, m.flags, m.keywords,"
                " CASE WHEN s.blob_id IS NULL THEN m.blob_id ELSE '' END, s.envelope, s.bodystructure, s.body"
                + ("" if flags_only else ", m.size, m.internal_date, m.save_date")
                + " FROM messages m LEFT JOIN imap_structure s ON s.blob_id = m.blob_id"
                " WHERE m.mailbox_id = $1 AND m.uid BETWEEN $2 AND $3 ORDER BY m.uid", mailbox_id, uid_min, top)
            if not found:
                return MessageColumns(array("I"), (), (), (), (), (), {}, (), stamp=stamp)
            return structure_columns([tuple(r) for r in found], flags_only, stamp)

        return await self._engine.read(wide if structure else narrow if flags_only else q)

    async def select_view(self, mailbox_id: int) -> MailboxView:
        async def q(conn: Conn) -> MailboxView:
            await load_mailbox(conn, mailbox_id)
            # One row of one array (api): asyncpg decodes it in C, no record per message.
            found = await conn.fetchval(
                "SELECT array_agg(uid ORDER BY uid) FROM messages WHERE mailbox_id = $1", mailbox_id)
            first = await conn.fetchval(
                "SELECT min(uid) FROM messages WHERE mailbox_id = $1 AND flags & 1 = 0", mailbox_id)
            kws = await conn.fetch(
                "SELECT DISTINCT keywords FROM messages WHERE mailbox_id = $1 AND keywords <> ''", mailbox_id)
            return MailboxView(array("I", found or ()), int(first or 0),
                               frozenset(k for r in kws for k in decode_keywords(r[0])))

        return await self._engine.read(q)

    async def uids_with_flag(self, mailbox_id: int, uid_min: int, uid_max: int, flag: int, present: bool) -> list[int]:
        op = "<>" if present else "="

        async def q(conn: Conn) -> list[int]:
            await load_mailbox(conn, mailbox_id)
            found = await conn.fetch(f"SELECT uid FROM messages WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3"
                                     f" AND flags & $4 {op} 0 ORDER BY uid", mailbox_id, uid_min, min(uid_max, TOP),
                                     flag)
            return [int(r[0]) for r in found]

        return await self._engine.read(q)

    async def get_message(self, mailbox_id: int, uid: int) -> MessageInfo | None:
        async def q(conn: Conn) -> MessageInfo | None:
            row = await conn.fetchrow(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1 AND uid = $2",
                                      mailbox_id, uid)
            return None if row is None else message_from_row(tuple(row))

        if not 0 < uid <= TOP:
            return None
        return await self._engine.read(q)

    async def page_messages(self, mailbox_id: int, limit: int, *, below: int | None = None,
                            above: int | None = None) -> list[MessageInfo]:
        limit = max(0, min(limit, 10_000))

        async def q(conn: Conn) -> list[MessageInfo]:
            await load_mailbox(conn, mailbox_id)
            if above is not None:
                found = list(await conn.fetch(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1 AND uid > $2 ORDER BY uid LIMIT $3",
                    mailbox_id, min(max(0, above), TOP), limit))
                found.reverse()
            else:
                found = list(await conn.fetch(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1 AND uid < $2 ORDER BY uid DESC"
                    " LIMIT $3", mailbox_id, min(below, TOP) if below is not None else TOP, limit))
            return [message_from_row(tuple(r)) for r in found]

        return await self._engine.read(q)

    async def list_changed(self, mailbox_id: int, modseq: int, uid_min: int = 1,
                           uid_max: int | None = None) -> MessageColumns:
        top = min(uid_max if uid_max is not None else TOP, TOP)
        since = min(max(modseq, 0), TOP)

        async def q(conn: Conn) -> MessageColumns:
            await load_mailbox(conn, mailbox_id)
            found = await conn.fetch(
                "SELECT uid, modseq, flags, size, internal_date, blob_id, keywords FROM messages"
                " WHERE mailbox_id = $1 AND modseq > $2 AND uid BETWEEN $3 AND $4 ORDER BY uid",
                mailbox_id, since, uid_min, top)
            if not found:
                return MessageColumns(array("I"), (), (), (), (), (), {})
            uids, modseqs, flags, sizes, dates, blob_ids, kws = zip(*(tuple(r) for r in found))
            keywords = {i: decode_keywords(k) for i, k in enumerate(kws) if k}
            return MessageColumns(array("I", uids), modseqs, flags, sizes, dates, blob_ids, keywords)

        return await self._engine.read(q)

    async def vanished(self, mailbox_id: int, modseq: int) -> Vanished:
        since = min(max(modseq, 0), TOP)

        async def q(conn: Conn) -> Vanished:
            row = await conn.fetchrow("SELECT uidnext, expunged_floor FROM mailboxes WHERE id = $1", mailbox_id)
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            uidnext, floor = int(row[0]), int(row[1])
            if since < floor:  # removals in (since, floor] may have been forgotten
                return Vanished((), False, uidnext)
            found = await conn.fetch("SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
                                     mailbox_id, since)
            return Vanished(array("I", [int(r[0]) for r in found]), True, uidnext)

        return await self._engine.read(q)

    async def prune_expunged(self, before: float) -> int:
        async def op(tx: Tx) -> int:
            found = await tx.conn.fetch(
                "SELECT mailbox_id, uid, modseq FROM expunged WHERE at < $1 ORDER BY mailbox_id, uid LIMIT $2",
                before, PRUNE_BATCH)
            floors: dict[int, int] = {}
            for mailbox_id, _, modseq in found:
                floors[int(mailbox_id)] = max(floors.get(int(mailbox_id), 0), int(modseq))
            await tx.conn.executemany("UPDATE mailboxes SET expunged_floor = greatest(expunged_floor, $1)"
                                      " WHERE id = $2", [(m, mailbox_id) for mailbox_id, m in sorted(floors.items())])
            await tx.conn.executemany("DELETE FROM expunged WHERE mailbox_id = $1 AND uid = $2",
                                      [(r[0], r[1]) for r in found])
            return len(found)

        total = 0
        while True:
            done = await self._engine.write(op)
            total += done
            if done < PRUNE_BATCH:
                return total

    async def read_message(self, blob_id: str) -> bytes:
        check_id(blob_id)
        return await self._engine.read(lambda conn: read_body(conn, blob_id))

    async def read_messages(self, blob_ids: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        async def q(conn: Conn) -> dict[str, bytes]:
            # Two queries in one snapshot, whatever the count: the bodies that exist (an empty one has no chunk
            # to say so), then every chunk of them in order (schema invariant 2).
            parts: dict[str, list[bytes]] = {
                str(r[0]): [] for r in await conn.fetch("SELECT id FROM blobs WHERE id = ANY($1::text[])", wanted)}
            if parts:
                for r in await conn.fetch("SELECT id, data FROM blob_chunks WHERE id = ANY($1::text[]) ORDER BY id, n",
                                          list(parts)):
                    parts[str(r[0])].append(bytes(r[1]))
            return {blob_id: b"".join(chunks) for blob_id, chunks in parts.items()}

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def read_message_range(self, blob_id: str, start: int, length: int) -> bytes:
        check_id(blob_id)
        if start < 0 or length < 0:
            raise Invalid("a range of a body needs a start and a length of at least 0")
        return await self._engine.read(lambda conn: read_body(conn, blob_id, start, length))

    async def read_meta(self, blob_id: str) -> bytes | None:
        check_id(blob_id)

        async def q(conn: Conn) -> bytes | None:
            row = await conn.fetchrow("SELECT meta FROM blobs WHERE id = $1", blob_id)
            if row is None:
                raise NotFound(f"no message body {blob_id}")
            return None if row[0] is None else bytes(row[0])

        return await self._engine.read(q)

    async def read_metas(self, blob_ids: Iterable[str]) -> dict[str, bytes | None]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        async def q(conn: Conn) -> dict[str, bytes | None]:
            found = await conn.fetch("SELECT id, meta FROM blobs WHERE id = ANY($1::text[])", wanted)
            return {str(r[0]): None if r[1] is None else bytes(r[1]) for r in found}

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def write_metas(self, metas: Mapping[str, bytes]) -> None:
        found = [(bytes(meta), blob_id) for blob_id, meta in sorted(metas.items())]
        for _, blob_id in found:
            check_id(blob_id)

        async def op(tx: Tx) -> None:
            for meta, blob_id in found:
                await fts.replace_meta(tx.conn, blob_id, meta)  # the index follows the metadata
            await refresh_keys(tx, ((b, m) for m, b in found))  # threads.py: keys follow the metadata

        if found:
            await self._engine.write(op)

    async def read_previews(self, blob_ids: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        async def q(conn: Conn) -> dict[str, str]:
            found = await conn.fetch(
                "SELECT id, preview FROM blobs WHERE id = ANY($1::text[]) AND preview IS NOT NULL", wanted)
            return {str(r[0]): str(r[1]) for r in found}

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def write_previews(self, previews: Mapping[str, str]) -> None:
        found = [(str(text), blob_id) for blob_id, text in sorted(previews.items())]
        for text, blob_id in found:
            check_id(blob_id)
            if len(text) > 1024:
                raise Invalid("a preview is at most 1,024 characters")

        async def op(tx: Tx) -> None:
            await tx.conn.executemany("UPDATE blobs SET preview = $1 WHERE id = $2", found)

        if found:
            await self._engine.write(op)

    async def list_octets(self, mailbox_id: int) -> list[tuple[int, str, int]]:
        async def q(conn: Conn) -> list[tuple[int, str, int | None]]:
            await load_mailbox(conn, mailbox_id)
            found = await conn.fetch("SELECT m.uid, m.blob_id, b.crlf_size FROM messages AS m JOIN blobs AS b"
                                     " ON b.id = m.blob_id WHERE m.mailbox_id = $1 ORDER BY m.uid", mailbox_id)
            return [(int(r[0]), str(r[1]), None if r[2] is None else int(r[2])) for r in found]

        return await _counted(self.crlf_sizes, await self._engine.read(q))

    async def crlf_sizes(self, blob_ids: Iterable[str]) -> dict[str, int]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        async def q(conn: Conn) -> dict[str, int]:
            out: dict[str, int] = {}
            for blob_id, octets in await conn.fetch("SELECT id, crlf_size FROM blobs WHERE id = ANY($1::text[])",
                                                    wanted):
                # Every row of this engine got its crlf_size when inserted; count one that did not (a copy
                # from an SQLite store of schema < 7) from its body.
                out[str(blob_id)] = int(octets) if octets is not None else crlf_size(await read_body(conn, blob_id))
            return out

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def store_flags(self, mailbox_id: int, uids: Sequence[int], mode: StoreMode, flags: int = 0,
                          keywords: Iterable[str] = (), unchanged_since: int | None = None) -> WriteResult:
        mode = StoreMode(mode)
        flags = names.flags(flags)
        kws = names.keywords(keywords)
        wanted = sorted(set(uids))
        flags_only = not kws and mode is not StoreMode.REPLACE
        adding = mode is StoreMode.ADD

        async def op(tx: Tx) -> WriteResult:
            mbox = await load_mailbox(tx.conn, mailbox_id, lock=True)
            modseq = mbox.highestmodseq
            updates = []
            changes = []
            modified: set[int] = set()
            junked: list[int] = []
            found = [tuple(r) for r in await tx.conn.fetch(
                "SELECT uid, modseq, flags, keywords FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])"
                " ORDER BY uid", mailbox_id, [u for u in wanted if 0 < u <= TOP])]
            if unchanged_since is not None:  # RFC 7162 §3.1.3: a UID no longer here fails the test
                modified = set(wanted).difference(r[0] for r in found)
            for uid, old_modseq, old_flags, old_text in found:
                if unchanged_since is not None and old_modseq > unchanged_since:
                    modified.add(uid)
                    continue  # RFC 7162 §3.1.3: modified since; left alone
                if flags_only:
                    new_flags = old_flags | flags if adding else old_flags & ~flags
                    if new_flags == old_flags:
                        continue
                    old_kws = new_kws = decode_keywords(old_text)
                else:
                    old_kws = decode_keywords(old_text)
                    new_flags, new_kws = _apply(mode, flags, kws, old_flags, old_kws)
                    if new_flags == old_flags and new_kws == old_kws:
                        continue
                modseq += 1
                if training and not _has_junk(old_kws) and _has_junk(new_kws):
                    junked.append(uid)
                text = old_text if new_kws is old_kws else encode_keywords(new_kws)
                updates.append((new_flags, text, modseq, mailbox_id, uid))
                changes.append(Change(ChangeKind.FLAGS, mbox.user_id, mailbox_id, uid, modseq, new_flags, new_kws))
            if updates:
                await tx.conn.executemany(
                    "UPDATE messages SET flags = $1, keywords = $2, modseq = $3 WHERE mailbox_id = $4 AND uid = $5",
                    updates)
                await tx.conn.execute("UPDATE mailboxes SET highestmodseq = $1 WHERE id = $2", modseq, mailbox_id)
            tx.changes.extend(changes)
            if updates and mode is not StoreMode.REMOVE:
                grown = await grow_keywords(tx, mbox, kws.values())
                if grown is not None:
                    changes.append(grown)
            if junked:  # senders.py invariant 4: $Junk added is the user's "spam", in the same transaction
                blobs = [str(r[0]) for r in await tx.conn.fetch(
                    "SELECT blob_id FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])",
                    mailbox_id, junked)]
                await record_signals(tx.conn, mbox.user_id, "spam", blobs, now)
            return WriteResult(tuple(changes), tuple(sorted(modified)))

        now = self._clock()
        training = self.training_signals and mode is not StoreMode.REMOVE and "$junk" in kws
        return await self._engine.write(op)

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> WriteResult:
        wanted = None if uids is None else [u for u in uids if 0 < u <= TOP]

        async def op(tx: Tx) -> WriteResult:
            mbox = await load_mailbox(tx.conn, mailbox_id, lock=True)
            if wanted is None:
                found = await tx.conn.fetch(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1 AND flags & $2 <> 0 ORDER BY uid",
                    mailbox_id, int(Flag.DELETED))
                msgs = [message_from_row(tuple(r)) for r in found]
            else:
                msgs = [m for m in await select_messages(tx.conn, mailbox_id, wanted) if m.flags & Flag.DELETED]
            return WriteResult(tuple(await delete_messages(tx, mbox, msgs, now=now)))

        now = self._clock()
        return await self._engine.write(op)

    async def remove_messages(self, mailbox_id: int, uids: Sequence[int]) -> WriteResult:
        wanted = [u for u in uids if 0 < u <= TOP]

        async def op(tx: Tx) -> WriteResult:
            mbox = await load_mailbox(tx.conn, mailbox_id, lock=True)
            msgs = await select_messages(tx.conn, mailbox_id, wanted)
            return WriteResult(tuple(await delete_messages(tx, mbox, msgs, now=now)))

        now = self._clock()
        return await self._engine.write(op)

    async def _copy(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, move: bool,
                    as_user: int | None) -> CopyResult:
        wanted = [u for u in uids if 0 < u <= TOP]

        async def op(tx: Tx) -> CopyResult:
            locked = {i: await load_mailbox(tx.conn, i, lock=True) for i in sorted({mailbox_id, dest_mailbox_id})}
            src, dest = locked[mailbox_id], locked[dest_mailbox_id]
            mask, keep_keywords = int(names.ALL_FLAGS), True
            if as_user is None:
                if src.user_id != dest.user_id:
                    raise Invalid("cannot copy or move messages to another user's mailbox")
            else:  # invariant 4
                if not set("rte" if move else "r") <= set(await acl.rights_of(tx.conn, as_user, mailbox_id)):
                    raise Forbidden("no right to " + ("move messages out of" if move else "read") + " the mailbox")
                rights = await acl.rights_of(tx.conn, as_user, dest_mailbox_id)
                if "i" not in rights:
                    raise Forbidden("no right to insert messages into the mailbox")
                mask = flags_allowed(rights)
                keep_keywords = "w" in rights
            found = await tx.conn.fetch(
                f"SELECT {MESSAGE_COLUMNS}, thread_id FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])"
                " ORDER BY uid", mailbox_id, sorted(set(wanted)))
            msgs = [message_from_row(tuple(r)[:-1]) for r in found]
            mark = len(tx.changes)
            items = [NewMessage(m.internal_date, m.size, m.flags & mask, m.keywords if keep_keywords else frozenset(),
                                m.blob_id, int(r[-1])) for m, r in zip(msgs, found)]
            results = await insert_messages(tx, dest, items, self._clock(),
                                            quota=not (move and src.user_id == dest.user_id))
            if move:
                await delete_messages(tx, src, msgs, now=now, release=False)
            else:
                await add_blob_refs(tx, count_blobs(m.blob_id for m in msgs))
            verdict = copy_verdict(src, dest, move) if training and msgs else None
            if verdict is not None:  # senders.py invariant 4: the user's verdict, in the same transaction
                await record_signals(tx.conn, as_user if as_user is not None else dest.user_id, verdict,
                                     [m.blob_id for m in msgs], now)
            return CopyResult(uidvalidity=dest.uidvalidity, source_uids=tuple(m.uid for m in msgs),
                              dest_uids=tuple(r.uid for r in results), changes=tuple(tx.changes[mark:]))

        now = self._clock()
        training = self.training_signals
        return await self._engine.write(op)

    async def copy_messages(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, *,
                            as_user: int | None = None) -> CopyResult:
        return await self._copy(mailbox_id, uids, dest_mailbox_id, False, as_user)

    async def move_messages(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, *,
                            as_user: int | None = None) -> CopyResult:
        return await self._copy(mailbox_id, uids, dest_mailbox_id, True, as_user)


__all__ = ["MessagesMixin", "NewMessage", "delete_messages", "insert_messages"]
