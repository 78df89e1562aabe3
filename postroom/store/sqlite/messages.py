"""Messages in SQLite: append, deliver, flags, expunge, copy and move.

Theory of operation: a message row is (mailbox, uid) -> modseq, flags, keywords, blob. Appending takes
`mailboxes.uidnext` and `highestmodseq + 1` and bumps both in the same statement group; every other change to a
message takes `highestmodseq + 1` (one new MODSEQ per changed message, in UID order) and bumps it. A body of at
most the store's inline threshold is inserted into `blob_data` by the job itself, so a batch of deliveries costs
one WAL fsync; a larger one is written as a blob file by the calling coroutine before its job is queued (engine
invariant 3). `append_file` takes a body the caller already wrote into `staging_dir()`: if large, it is hashed
and fsync'd on the I/O pool and hard-linked under its blob name (no copy) before the job is queued, and the
staging name is removed after the commit (the job can link it again if a concurrent deletion won the race);
if small, it is read and appended like any other. `read_message` looks in `blob_data` first and falls back to
the file.

Invariants:
1. `uidnext` only grows: rows are never renumbered, expunge never lowers it, so a UID is never reused (api 3).
2. Every append, flag change and removal takes a MODSEQ above `highestmodseq` and stores it back (api 4). A
   STORE that changes nothing takes none.
3. Every removed message leaves an `expunged(mailbox_id, uid, modseq, at)` row for QRESYNC and releases its
   blob. Rows leave only through `prune_expunged`, which raises the mailbox's `expunged_floor` past them
   first (schema invariant 10), so `vanished` knows when its answer would be incomplete.
4. Copy and move stay within one user (api 6): a destination of another user is Invalid, unless the caller
   names the user it acts for (`as_user`), whose ACL rights on both mailboxes are then checked in the same job
   (acl.py, RFC 4314 §4): a right missing is Forbidden, flags the user may not set are left off the copies.
5. Every write that puts keywords on a row of a mailbox passes them through `grow_keywords` in the same job, so
   `mailboxes.keywords` holds them by the commit that makes the row hold them (schema invariant 7, api 9).
6. A new message row gets its thread id in the job that inserts it (threads.py): its source's when it is a
   copy, else `assign_thread` from its body's keys, which the job stored first (`put_keys`).
7. Every message row inserted or deleted here has its `sort_rows` row inserted or deleted in the same job
   (`add_sort_rows`, `drop_sort_rows`: threads.py invariant 7, schema invariant 20).
8. Every insert checks the owner's quota in its job before the rows go in (`insert_messages` -> quota.py
   `check`; quota.py invariant 1), except a move within one user and a delivery made with `enforce_quota=False`.
   The usage counters themselves follow every row by trigger (schema invariant 23).
9. A removal (`expunge`, `remove_messages`) takes at most `REMOVE_STEP` messages per write job, in UID order,
   so the write lock, which every delivery and every other write of the store waits for, is never held for a
   whole large mailbox: a removal costs ~1 ms a message (its full-text rows are deleted with it), and one job
   for 20,000 messages held the lock for 23 s. Each step commits on its own; one that fails stops the removal
   with the earlier steps done (their messages are gone, the rest keep \\Deleted or are still there).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sqlite3
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    StoreMode,
    Vanished,
    WriteResult,
    flags_allowed,
)
from postroom.store.blobs import blob_id_of, check_id, crlf_size
from postroom.store.sqlite import acl, fts
from postroom.store.sqlite.common import (
    CHUNK,
    MESSAGE_COLUMNS,
    Base,
    acquire_blob,
    add_blob_refs,
    claim_recent_in,
    count_blobs,
    decode_keywords,
    encode_keywords,
    load_mailbox,
    message_from_row,
    release_blobs,
    select_messages,
    structure_columns,
)
from postroom.store.sqlite.engine import Tx
from postroom.store.sqlite.quota import check as quota_check
from postroom.store.sqlite.senders import copy_verdict, record_signals
from postroom.store.sqlite.threads import (
    add_sort_rows,
    assign_thread,
    drop_sort_rows,
    put_keys,
    refresh_keys,
    thread_ids_of,
)

REMOVE_STEP = 500  # messages per write job of a removal (invariant 9): ~0.5-1 s of the write lock
PRUNE_BATCH = 10_000  # expunged records forgotten per write transaction (`prune_expunged`)
QUICK_BODIES = 64  # read_messages: at most this many inline bodies are read on the calling thread (Engine.read)


@dataclass(frozen=True)
class NewMessage:
    """A row to insert, whatever its origin (an append, a copy, INBOX rename)."""

    internal_date: float
    size: int
    flags: int
    keywords: frozenset[str]
    blob_id: str
    thread_id: int = 0  # a copy's (invariant 6); 0: given by `assign_thread`


def grow_keywords(tx: Tx, mbox: Mailbox, keywords: Iterable[str]) -> Change | None:
    """Add to the mailbox's keyword set those of `keywords` it has not had (case-insensitively, invariant 5).
    Returns the MAILBOX_KEYWORDS change (also appended to `tx.changes`), or None if the set did not grow.
    Invalid if it would hold more than `names.MAX_MAILBOX_KEYWORDS`."""
    wanted = list(keywords)
    if not wanted:
        return None
    (text,) = tx.conn.execute("SELECT keywords FROM mailboxes WHERE id = ?", (mbox.id,)).fetchone()
    known = {k.lower(): k for k in decode_keywords(str(text))}
    new: dict[str, str] = {}
    for kw in wanted:
        low = kw.lower()
        if low not in known:
            new.setdefault(low, kw)
    if not new:
        return None
    if len(known) + len(new) > names.MAX_MAILBOX_KEYWORDS:
        raise Invalid(f"a mailbox may have at most {names.MAX_MAILBOX_KEYWORDS} keywords")
    known.update(new)
    tx.conn.execute("UPDATE mailboxes SET keywords = ? WHERE id = ?", (encode_keywords(known.values()), mbox.id))
    change = Change(ChangeKind.MAILBOX_KEYWORDS, mbox.user_id, mbox.id, keywords=frozenset(new.values()))
    tx.changes.append(change)
    return change


def insert_messages(tx: Tx, mbox: Mailbox, items: Sequence[NewMessage],
                    saved: float | None = None, *, quota: bool = True) -> list[AppendResult]:
    """Insert rows with fresh UIDs and MODSEQs, saved now (`saved`, default the clock: RFC 8514 save date, schema
    invariant 14); grow the mailbox's keyword set (invariant 5). Blob references are the caller's business.
    With `quota` (invariant 7) the owner's limits are checked first: OverQuota, and nothing inserted."""
    if quota:
        quota_check(tx.conn, mbox.user_id, [item.size for item in items])
    save_date = time.time() if saved is None else saved
    row = tx.conn.execute("SELECT uidnext, highestmodseq FROM mailboxes WHERE id = ?", (mbox.id,)).fetchone()
    uid, modseq = int(row[0]), int(row[1])
    rows = []
    results = []
    for item in items:
        modseq += 1
        kws = encode_keywords(item.keywords)
        thread = item.thread_id or assign_thread(tx.conn, mbox.user_id, item.blob_id)  # invariant 6
        rows.append((mbox.id, uid, modseq, item.internal_date, item.size, item.flags, kws, item.blob_id, save_date,
                     thread))
        change = Change(ChangeKind.APPEND, mbox.user_id, mbox.id, uid, modseq, item.flags, item.keywords)
        tx.changes.append(change)
        results.append(AppendResult(uid, modseq, mbox.uidvalidity, (change,)))
        uid += 1
    tx.conn.executemany(f"INSERT INTO messages({MESSAGE_COLUMNS}, thread_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        rows)
    if rows:
        add_sort_rows(tx.conn, mbox.id, rows[0][1], rows[-1][1])  # invariant 7
    tx.conn.execute("UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?", (uid, modseq, mbox.id))
    grown = grow_keywords(tx, mbox, (kw for item in items for kw in item.keywords))
    if grown is not None and len(results) == 1:  # a single append reports it with its own change
        results[0] = dataclasses.replace(results[0], changes=(*results[0].changes, grown))
    return results


def delete_messages(tx: Tx, mbox: Mailbox, msgs: Sequence[MessageInfo], *, now: float,
                    release: bool = True) -> list[Change]:
    """Remove rows, record them in `expunged` (dated `now`, for `prune_expunged`), and (unless the bodies moved
    elsewhere) release their blobs."""
    if not msgs:
        return []
    modseq = int(tx.conn.execute("SELECT highestmodseq FROM mailboxes WHERE id = ?", (mbox.id,)).fetchone()[0])
    gone = []
    changes = []
    for m in msgs:
        modseq += 1
        gone.append((mbox.id, m.uid, modseq, now))
        changes.append(Change(ChangeKind.EXPUNGE, mbox.user_id, mbox.id, m.uid, modseq))
    tx.conn.executemany("DELETE FROM messages WHERE mailbox_id = ? AND uid = ?", [(mbox.id, m.uid) for m in msgs])
    drop_sort_rows(tx.conn, mbox.id, [m.uid for m in msgs])  # invariant 7
    tx.conn.executemany("INSERT OR REPLACE INTO expunged(mailbox_id, uid, modseq, at) VALUES (?, ?, ?, ?)", gone)
    tx.conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, mbox.id))
    if release:
        release_blobs(tx, count_blobs(m.blob_id for m in msgs))
    tx.changes.extend(changes)
    return changes


def _check_request(req: AppendRequest) -> tuple[int, frozenset[str]]:
    return names.flags(req.flags), frozenset(names.keywords(req.keywords).values())


def _kws(keywords: Iterable[str]) -> frozenset[str]:
    """Validated keywords, one spelling each (`names.keywords`)."""
    return frozenset(names.keywords(keywords).values())


def _has_junk(kws: Iterable[str]) -> bool:
    """Whether a keyword set holds $Junk (keywords compare case-insensitively, RFC 9051 §2.3.2)."""
    return any(k.lower() == "$junk" for k in kws)


def _apply(mode: StoreMode, flags: int, kws: dict[str, str], old_flags: int,
           old_kws: frozenset[str]) -> tuple[int, frozenset[str]]:
    current = {k.lower(): k for k in old_kws}
    if mode is StoreMode.ADD:
        new_flags = old_flags | flags
        for low, kw in kws.items():
            current.setdefault(low, kw)
    elif mode is StoreMode.REMOVE:
        new_flags = old_flags & ~flags
        for low in kws:
            current.pop(low, None)
    else:
        new_flags = flags
        current = {low: current.get(low, kw) for low, kw in kws.items()}
    return new_flags, frozenset(current.values())


def _flag_rows(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]) -> list[tuple[int, int, int, str]]:
    """(uid, modseq, flags, keywords as stored) of the messages among `uids` that exist, in UID order; like
    `select_messages` without making a record per message (STORE on a whole mailbox)."""
    wanted = sorted(set(uids))
    if not wanted:
        return []
    if len(wanted) > CHUNK:
        rows = conn.execute(
            "SELECT uid, modseq, flags, keywords FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"
            " ORDER BY uid",
            (mailbox_id, wanted[0], wanted[-1]),
        ).fetchall()
        if len(rows) != len(wanted):
            keep = set(wanted)
            rows = [r for r in rows if r[0] in keep]
        return rows
    marks = ",".join("?" * len(wanted))
    return conn.execute(
        f"SELECT uid, modseq, flags, keywords FROM messages WHERE mailbox_id = ? AND uid IN ({marks}) ORDER BY uid",
        (mailbox_id, *wanted),
    ).fetchall()


class MessagesMixin(Base):
    async def _append_job(self, mailbox_ids: Sequence[int], reqs: Sequence[AppendRequest],
                          quota: bool = True, claim: bool = False) -> list[AppendResult]:
        """Append reqs[i] to mailbox_ids[i] for every i, in one job (one transaction); `quota`: checked
        (invariant 7); `claim`: the \\Recent claim of the last mailbox in the same job (`append`)."""
        now = self._clock()
        prepared = []
        bodies: dict[str, tuple[bytes, bytes]] = {}
        inline_bytes: dict[str, int] = {}
        for req in reqs:
            flags, kws = _check_request(req)
            blob_id = blob_id_of(req.raw, req.prefix)  # of prefix + raw, never joined (AppendRequest)
            if self._engine.inline(req.size):
                inline_bytes[blob_id] = req.size
            else:
                bodies[blob_id] = (req.prefix, req.raw)  # a file, made durable before the job is queued
            date = now if req.internal_date is None else float(req.internal_date)
            prepared.append((req, blob_id, NewMessage(date, req.size, flags, kws, blob_id)))

        def op(tx: Tx) -> list[AppendResult]:
            boxes: dict[int, Mailbox] = {}
            results = []
            for mailbox_id, (req, blob_id, item) in zip(mailbox_ids, prepared):
                mbox = boxes.get(mailbox_id) or load_mailbox(tx.conn, mailbox_id)
                boxes[mailbox_id] = mbox
                got = acquire_blob(tx, blob_id, req.raw, 1, req.meta, prefix=req.prefix, parsed=req.parsed)
                put_keys(tx.conn, blob_id, req.meta, new=got)  # invariant 6
                results.extend(insert_messages(tx, mbox, [item], now, quota=quota))
            if claim:
                results[-1] = dataclasses.replace(results[-1], recent=claim_recent_in(tx.conn, mailbox_ids[-1]))
            return results

        await self._engine.write_blobs(bodies)
        try:
            return await self._engine.write(op, size=sum(inline_bytes.values()))
        except Exception:
            if bodies:
                await self._engine.forget_blobs(set(bodies))
            raise

    async def append(self, mailbox_id: int, message: AppendRequest, *, claim_recent: bool = False) -> AppendResult:
        return (await self._append_job([mailbox_id], [message], claim=claim_recent))[0]

    def staging_dir(self) -> Path:
        return self._blobs.staging

    async def append_file(
        self,
        mailbox_id: int,
        path: Path,
        *,
        flags: int = 0,
        keywords: frozenset[str] = frozenset(),
        internal_date: float | None = None,
        meta: bytes | None = None,
    ) -> AppendResult:
        path = Path(path)
        staging = self._blobs.staging
        if path.parent.resolve() != staging.resolve() or path.name in ("", ".", ".."):
            raise Invalid(f"not a file in the staging directory: {path}")
        try:
            req = AppendRequest(b"", flags, frozenset(keywords), internal_date, meta)
            checked_flags, kws = _check_request(req)
            size = os.stat(path).st_size
            if self._engine.inline(size):
                raw = await self._engine.io(path.read_bytes)
                return await self.append(mailbox_id, AppendRequest(raw, flags, kws, internal_date, meta))
            blob_id, size, crlf = await self._engine.io(self._blobs.adopt, path)
            date = self._clock() if internal_date is None else float(internal_date)
            item = NewMessage(date, size, checked_flags, kws, blob_id)

            def op(tx: Tx) -> AppendResult:
                mbox = load_mailbox(tx.conn, mailbox_id)
                got = acquire_blob(tx, blob_id, b"", 1, meta, source=path, size=size, crlf=crlf)
                put_keys(tx.conn, blob_id, meta, new=got)
                return insert_messages(tx, mbox, [item], self._clock())[0]

            return await self._write_with_new_blobs(op, {blob_id})
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
        async with self._prefixed(path, prefix) as body:
            size = os.stat(body).st_size
            if self._engine.inline(size):
                raw = await self._engine.io(body.read_bytes)
                return await self.deliver(mailbox_ids, AppendRequest(raw, meta=meta, keywords=keywords),
                                          enforce_quota=enforce_quota, box_keywords=box_keywords)
            blob_id, size, crlf = await self._engine.io(self._blobs.adopt, body)
            now = self._clock()
            items = {b: NewMessage(now, size, 0, _kws(keywords | extra.get(b, frozenset())),
                                   blob_id) for b in mailbox_ids}
            wanted = list(mailbox_ids)

            def op(tx: Tx) -> list[AppendResult]:
                results = []
                for mailbox_id in wanted:
                    mbox = load_mailbox(tx.conn, mailbox_id)
                    got = acquire_blob(tx, blob_id, b"", 1, meta, source=body, size=size, crlf=crlf)
                    put_keys(tx.conn, blob_id, meta, new=got)
                    item = items[mailbox_id]
                    results.extend(insert_messages(tx, mbox, [item], item.internal_date, quota=enforce_quota))
                return results

            return await self._write_with_new_blobs(op, {blob_id})

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
                if Path(path).parent.resolve() == self._blobs.staging.resolve():
                    Path(path).unlink(missing_ok=True)
            raise
        adopted: set[str] = set()
        try:
            now = self._clock()
            bodies: dict[str, tuple[bytes, bytes]] = {}
            inline_bytes = 0
            # (item, raw body or None, meta, staged source, crlf size) per message, in order
            prepared: list[tuple[NewMessage, bytes | None, bytes | None, Path | None, int | None]] = []
            for m in messages:
                date = now if m.internal_date is None else float(m.internal_date)
                flags = names.flags(m.flags)
                kws = frozenset(names.keywords(m.keywords).values())
                if isinstance(m, StagedAppend):
                    # Always a file, whatever its size: the point is not to hold these bodies in memory.
                    blob_id, size, crlf = await self._engine.io(self._blobs.adopt, Path(m.path))
                    adopted.add(blob_id)
                    prepared.append((NewMessage(date, size, flags, kws, blob_id), None, m.meta, Path(m.path), crlf))
                    continue
                raw = m.joined()  # a prefix here (no caller gives one today) costs one copy
                blob_id = blob_id_of(raw)
                if self._engine.inline(len(raw)):
                    inline_bytes += len(raw)
                else:
                    bodies[blob_id] = (b"", raw)
                prepared.append((NewMessage(date, len(raw), flags, kws, blob_id), raw, m.meta, None, None))

            def op(tx: Tx) -> list[AppendResult]:
                mbox = load_mailbox(tx.conn, mailbox_id)
                for item, raw, meta, source, crlf in prepared:
                    if source is None:
                        assert raw is not None
                        got = acquire_blob(tx, item.blob_id, raw, 1, meta)
                    else:
                        got = acquire_blob(tx, item.blob_id, b"", 1, meta, source=source, size=item.size, crlf=crlf)
                    put_keys(tx.conn, item.blob_id, meta, new=got)  # invariant 6
                return insert_messages(tx, mbox, [p[0] for p in prepared], now)  # RFC 3502 §3: one transaction

            adopted.update(bodies)
            await self._engine.write_blobs(bodies)
            return await self._engine.write(op, size=inline_bytes)
        except Exception:
            if adopted:  # no row names the files written for this call: they go (engine invariant 4)
                await self._engine.forget_blobs(adopted)
            raise
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
        top = uid_max if uid_max is not None else 2**63 - 1

        def q(conn: sqlite3.Connection) -> list[MessageInfo]:
            load_mailbox(conn, mailbox_id)
            rows = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                (mailbox_id, uid_min, top),
            )
            return [message_from_row(r) for r in rows]

        return await self._engine.read(q)

    async def list_columns(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None, *,
                           flags_only: bool = False, structure: bool = False) -> MessageColumns:
        top = uid_max if uid_max is not None else 2**63 - 1

        def narrow(conn: sqlite3.Connection) -> MessageColumns:
            mbox = load_mailbox(conn, mailbox_id)
            stamp = (mbox.uidvalidity, mbox.highestmodseq)  # read before the rows
            rows = conn.execute(
                "SELECT uid, modseq, flags, keywords FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"
                " ORDER BY uid", (mailbox_id, uid_min, top)).fetchall()
            if not rows:
                return MessageColumns(array("I"), (), (), (), (), (), {}, (), stamp=stamp)
            uids, modseqs, flags, kws = zip(*rows)
            keywords = {i: decode_keywords(k) for i, k in enumerate(kws) if k}
            return MessageColumns(array("I", uids), modseqs, flags, (), (), (), keywords, (), stamp=stamp)

        def q(conn: sqlite3.Connection) -> MessageColumns:
            mbox = load_mailbox(conn, mailbox_id)
            stamp = (mbox.uidvalidity, mbox.highestmodseq)  # read before the rows
            rows = conn.execute(
                "SELECT uid, modseq, flags, size, internal_date, blob_id, keywords, save_date FROM messages"
                " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                (mailbox_id, uid_min, top),
            ).fetchall()
            if not rows:
                return MessageColumns(array("I"), (), (), (), (), (), {}, (), stamp=stamp)
            uids, modseqs, flags, sizes, dates, blob_ids, kws, saved = zip(*rows)  # column by column, in C
            keywords = {i: decode_keywords(k) for i, k in enumerate(kws) if k}
            return MessageColumns(array("I", uids), modseqs, flags, sizes, dates, blob_ids, keywords, saved,
                                  stamp=stamp)

        def wide(conn: sqlite3.Connection) -> MessageColumns:
            mbox = load_mailbox(conn, mailbox_id)
            stamp = (mbox.uidvalidity, mbox.highestmodseq)  # read before the rows
            # structure.py invariant 1: a kept row holds the values of the body's current metadata. The body id
            # only where no row is kept (its reader decodes the metadata); with `flags_only`, no other column.
            rows = conn.execute(
                "SELECT m.uid, m.modseq, m.flags, m.keywords,"
                " CASE WHEN s.blob_id IS NULL THEN m.blob_id ELSE '' END, s.envelope, s.bodystructure, s.body"
                + ("" if flags_only else ", m.size, m.internal_date, m.save_date")
                + " FROM messages m LEFT JOIN imap_structure s ON s.blob_id = m.blob_id"
                " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ? ORDER BY m.uid",
                (mailbox_id, uid_min, top),
            ).fetchall()
            if not rows:
                return MessageColumns(array("I"), (), (), (), (), (), {}, (), stamp=stamp)
            return structure_columns(rows, flags_only, stamp)

        return await self._engine.read(wide if structure else narrow if flags_only else q)

    async def select_view(self, mailbox_id: int) -> MailboxView:
        def q(conn: sqlite3.Connection) -> MailboxView:
            load_mailbox(conn, mailbox_id)
            # One row, so one sqlite3_step (api: the GIL is released and retaken around each). group_concat keeps
            # the order of the primary key scan, but SQLite does not promise it: sorted() makes it so, in O(n)
            # on input that is sorted already.
            (text,) = conn.execute("SELECT group_concat(uid) FROM messages WHERE mailbox_id = ?",
                                   (mailbox_id,)).fetchone()
            uids = array("I", sorted(map(int, text.split(",")))) if text else array("I")
            # The partial index of unseen messages (schema 15) holds (mailbox_id, uid): its first entry.
            row = conn.execute("SELECT uid FROM messages INDEXED BY messages_unseen WHERE mailbox_id = ?"
                               " AND flags & 1 = 0 ORDER BY uid LIMIT 1", (mailbox_id,)).fetchone()
            kws = conn.execute("SELECT DISTINCT keywords FROM messages WHERE mailbox_id = ? AND keywords <> ''",
                               (mailbox_id,)).fetchall()
            return MailboxView(uids, int(row[0]) if row else 0,
                               frozenset(k for (text,) in kws for k in decode_keywords(text)))

        return await self._read_mailbox(mailbox_id, q)

    async def uids_with_flag(self, mailbox_id: int, uid_min: int, uid_max: int, flag: int, present: bool) -> list[int]:
        op = "<>" if present else "="

        def q(conn: sqlite3.Connection) -> list[int]:
            load_mailbox(conn, mailbox_id)
            rows = conn.execute(f"SELECT uid FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?"
                                f" AND flags & ? {op} 0 ORDER BY uid", (mailbox_id, uid_min, uid_max, flag))
            return [r[0] for r in rows]

        return await self._engine.read(q)

    async def get_message(self, mailbox_id: int, uid: int) -> MessageInfo | None:
        def q(conn: sqlite3.Connection) -> MessageInfo | None:
            row = conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid = ?", (mailbox_id, uid)
            ).fetchone()
            return None if row is None else message_from_row(row)

        return await self._engine.read(q, quick=True)

    async def page_messages(self, mailbox_id: int, limit: int, *, below: int | None = None,
                            above: int | None = None) -> list[MessageInfo]:
        limit = max(0, min(limit, 10_000))
        top = 2**63 - 1

        def q(conn: sqlite3.Connection) -> list[MessageInfo]:
            load_mailbox(conn, mailbox_id)
            if above is not None:  # the lowest `limit` above it (the primary key's range, ascending), reversed
                rows = conn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid > ? ORDER BY uid LIMIT ?",
                    (mailbox_id, max(0, above), limit)).fetchall()
                rows.reverse()
            else:  # schema invariant 4: the (mailbox_id, uid) key scanned backwards from `below`, `limit` rows
                rows = conn.execute(
                    f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid < ? ORDER BY uid DESC"
                    " LIMIT ?", (mailbox_id, min(below, top) if below is not None else top, limit)).fetchall()
            return [message_from_row(r) for r in rows]

        return await self._engine.read(q)

    async def list_changed(self, mailbox_id: int, modseq: int, uid_min: int = 1,
                           uid_max: int | None = None) -> MessageColumns:
        top = uid_max if uid_max is not None else 2**63 - 1
        since = min(max(modseq, 0), 2**63 - 1)

        def q(conn: sqlite3.Connection) -> MessageColumns:
            load_mailbox(conn, mailbox_id)
            # The (mailbox_id, modseq) index, named so the planner cannot prefer the primary key for its order:
            # the rows read are the rows changed (api: proportional to the changes), sorted here by UID.
            rows = sorted(conn.execute(
                "SELECT uid, modseq, flags, size, internal_date, blob_id, keywords FROM messages"
                " INDEXED BY messages_modseq WHERE mailbox_id = ? AND modseq > ? AND uid BETWEEN ? AND ?",
                (mailbox_id, since, uid_min, top),
            ).fetchall())
            if not rows:
                return MessageColumns(array("I"), (), (), (), (), (), {})
            uids, modseqs, flags, sizes, dates, blob_ids, kws = zip(*rows)
            keywords = {i: decode_keywords(k) for i, k in enumerate(kws) if k}
            return MessageColumns(array("I", uids), modseqs, flags, sizes, dates, blob_ids, keywords)

        return await self._engine.read(q)

    async def vanished(self, mailbox_id: int, modseq: int) -> Vanished:
        since = min(max(modseq, 0), 2**63 - 1)

        def q(conn: sqlite3.Connection) -> Vanished:
            row = conn.execute("SELECT uidnext, expunged_floor FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            uidnext, floor = int(row[0]), int(row[1])
            if since < floor:  # schema invariant 10: removals in (since, floor] may have been forgotten
                return Vanished((), False, uidnext)
            uids = sorted(r[0] for r in conn.execute(
                "SELECT uid FROM expunged INDEXED BY expunged_modseq WHERE mailbox_id = ? AND modseq > ?",
                (mailbox_id, since)))
            return Vanished(array("I", uids), True, uidnext)

        return await self._engine.read(q)

    async def prune_expunged(self, before: float) -> int:
        def op(tx: Tx) -> int:
            rows = tx.conn.execute(
                "SELECT mailbox_id, uid, modseq FROM expunged INDEXED BY expunged_at WHERE at < ? LIMIT ?",
                (before, PRUNE_BATCH),
            ).fetchall()
            floors: dict[int, int] = {}
            for mailbox_id, _, modseq in rows:
                floors[mailbox_id] = max(floors.get(mailbox_id, 0), int(modseq))
            # Schema invariant 10: the floor first, then the rows, in one transaction.
            tx.conn.executemany("UPDATE mailboxes SET expunged_floor = max(expunged_floor, ?) WHERE id = ?",
                                [(m, mailbox_id) for mailbox_id, m in floors.items()])
            tx.conn.executemany("DELETE FROM expunged WHERE mailbox_id = ? AND uid = ?", [r[:2] for r in rows])
            return len(rows)

        total = 0
        while True:  # one bounded write per batch, so other writers get their turn in between
            done = await self._engine.write(op)
            total += done
            if done < PRUNE_BATCH:
                return total

    async def read_message(self, blob_id: str) -> bytes:
        check_id(blob_id)

        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM blob_data WHERE id = ?", (blob_id,)).fetchone()
            return None if row is None else bytes(row[0])

        # An inline body is at most `inline_max` bytes under one key: read it like a point lookup, on this
        # thread. The hop to a reader thread cost more than the read: bench/pop3.py, one RETR at a time, went
        # from ~1,850 to ~4,200 msg/s.
        data = await self._engine.read(q, quick=True)
        if data is not None:
            return data
        return await self._engine.io(self._blobs.read, blob_id)  # a large body, or one from schema version 1

    async def read_messages(self, blob_ids: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        def q(conn: sqlite3.Connection) -> dict[str, bytes]:
            out: dict[str, bytes] = {}
            for i in range(0, len(wanted), CHUNK):
                chunk = wanted[i:i + CHUNK]
                marks = ",".join("?" * len(chunk))
                for blob_id, data in conn.execute(f"SELECT id, data FROM blob_data WHERE id IN ({marks})", chunk):
                    out[str(blob_id)] = bytes(data)
            return out

        if not wanted:
            return {}
        # Keyed lookups of inline bodies, as in read_message: a few of them on this thread (no hop), a longer
        # list on a reader thread. What the table does not hold is a file (or no body at all: left out).
        out = await self._engine.read(q, quick=len(wanted) <= QUICK_BODIES)
        files = [b for b in wanted if b not in out]
        if files:
            read = await asyncio.gather(*(self._engine.io(self._blobs.read, b) for b in files),
                                        return_exceptions=True)
            for blob_id, got in zip(files, read, strict=True):
                if isinstance(got, bytes):
                    out[blob_id] = got
                elif not isinstance(got, NotFound):
                    raise got
        return out

    async def read_message_range(self, blob_id: str, start: int, length: int) -> bytes:
        check_id(blob_id)
        if start < 0 or length < 0:
            raise Invalid("a range of a body needs a start and a length of at least 0")

        def q(conn: sqlite3.Connection) -> bytes | None:
            # substr() of a BLOB counts bytes, from 1
            row = conn.execute("SELECT substr(data, ?, ?) FROM blob_data WHERE id = ?",
                               (start + 1, length, blob_id)).fetchone()
            return None if row is None else bytes(row[0] or b"")

        data = await self._engine.read(q, quick=True)  # an inline body is small: a point lookup (read_message)
        if data is not None:
            return data
        return await self._engine.io(self._blobs.read_range, blob_id, start, length)

    async def read_meta(self, blob_id: str) -> bytes | None:
        check_id(blob_id)

        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT meta FROM blobs WHERE id = ?", (blob_id,)).fetchone()
            if row is None:
                raise NotFound(f"no message body {blob_id}")
            return None if row[0] is None else bytes(row[0])

        return await self._engine.read(q)

    async def read_metas(self, blob_ids: Iterable[str]) -> dict[str, bytes | None]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        def q(conn: sqlite3.Connection) -> dict[str, bytes | None]:
            out: dict[str, bytes | None] = {}
            for i in range(0, len(wanted), CHUNK):
                chunk = wanted[i:i + CHUNK]
                marks = ",".join("?" * len(chunk))
                for blob_id, meta in conn.execute(f"SELECT id, meta FROM blobs WHERE id IN ({marks})", chunk):
                    out[str(blob_id)] = None if meta is None else bytes(meta)
            return out

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def write_metas(self, metas: Mapping[str, bytes]) -> None:
        rows = [(bytes(meta), blob_id) for blob_id, meta in metas.items()]
        for _, blob_id in rows:
            check_id(blob_id)

        def op(tx: Tx) -> None:
            for meta, blob_id in rows:
                fts.replace_meta(tx.conn, blob_id, meta)  # common invariant 4: the index follows the meta
            refresh_keys(tx, ((b, m) for m, b in rows))  # threads.py invariant 2

        if rows:
            await self._engine.write(op, size=sum(len(m) for m, _ in rows))

    async def read_previews(self, blob_ids: Iterable[str]) -> dict[str, str]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        def q(conn: sqlite3.Connection) -> dict[str, str]:
            out: dict[str, str] = {}
            for i in range(0, len(wanted), CHUNK):
                chunk = wanted[i:i + CHUNK]
                marks = ",".join("?" * len(chunk))
                for blob_id, text in conn.execute(
                        f"SELECT id, preview FROM blobs WHERE id IN ({marks}) AND preview IS NOT NULL", chunk):
                    out[str(blob_id)] = str(text)
            return out

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def write_previews(self, previews: Mapping[str, str]) -> None:
        rows = [(str(text), blob_id) for blob_id, text in previews.items()]
        for text, blob_id in rows:
            check_id(blob_id)
            if len(text) > 1024:
                raise Invalid("a preview is at most 1,024 characters")

        def op(tx: Tx) -> None:
            tx.conn.executemany("UPDATE blobs SET preview = ? WHERE id = ?", rows)  # schema invariant 15

        if rows:
            await self._engine.write(op, size=sum(len(t) for t, _ in rows))

    async def list_octets(self, mailbox_id: int) -> list[tuple[int, str, int]]:
        def q(conn: sqlite3.Connection) -> list[tuple[int, str, int | None]]:
            load_mailbox(conn, mailbox_id)
            # The narrow index of schema 21 again: the numbers without the metadata pages of the blobs rows.
            return conn.execute(
                "SELECT m.uid, m.blob_id, b.crlf_size FROM messages AS m JOIN blobs AS b INDEXED BY blobs_crlf"
                " ON b.id = m.blob_id WHERE m.mailbox_id = ? ORDER BY m.uid", (mailbox_id,)).fetchall()

        return await _counted(self.crlf_sizes, await self._engine.read(q))

    async def crlf_sizes(self, blob_ids: Iterable[str]) -> dict[str, int]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        def q(conn: sqlite3.Connection) -> tuple[dict[str, int], list[str]]:
            known: dict[str, int] = {}
            missing: list[str] = []
            for i in range(0, len(wanted), CHUNK):
                chunk = wanted[i:i + CHUNK]
                marks = ",".join("?" * len(chunk))
                # The narrow index (schema 21): the table's rows carry the metadata, pages of it per lookup.
                for blob_id, octets in conn.execute(
                        f"SELECT id, crlf_size FROM blobs INDEXED BY blobs_crlf WHERE id IN ({marks})", chunk):
                    if octets is None:
                        missing.append(str(blob_id))
                    else:
                        known[str(blob_id)] = int(octets)
            return known, missing

        if not wanted:
            return {}
        known, missing = await self._engine.read(q)
        if missing:
            # Bodies stored before schema 7 (schema invariant 9): count each once, one at a time (a body is
            # never held whole when it is a file), and keep the numbers so the next listing reads none.
            counted: dict[str, int] = {}
            for blob_id in missing:
                try:
                    counted[blob_id] = await self._counted_crlf_size(blob_id)
                except NotFound:
                    continue  # removed meanwhile: left out, like a blob id that is not stored
            if counted:
                rows = [(n, b) for b, n in counted.items()]

                def op(tx: Tx) -> None:
                    tx.conn.executemany("UPDATE blobs SET crlf_size = ? WHERE id = ? AND crlf_size IS NULL", rows)

                await self._engine.write(op)
            known.update(counted)
        return known

    async def _counted_crlf_size(self, blob_id: str) -> int:
        def q(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT data FROM blob_data WHERE id = ?", (blob_id,)).fetchone()
            return None if row is None else bytes(row[0])

        data = await self._engine.read(q)
        if data is not None:
            return crlf_size(data)
        return await self._engine.io(self._blobs.crlf_size, blob_id)

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        mode: StoreMode,
        flags: int = 0,
        keywords: Iterable[str] = (),
        unchanged_since: int | None = None,
    ) -> WriteResult:
        mode = StoreMode(mode)
        flags = names.flags(flags)
        kws = names.keywords(keywords)
        wanted = list(uids)
        flags_only = not kws and mode is not StoreMode.REPLACE
        adding = mode is StoreMode.ADD

        def op(tx: Tx) -> WriteResult:
            mbox = load_mailbox(tx.conn, mailbox_id)
            modseq = mbox.highestmodseq
            updates = []
            changes = []
            modified: set[int] = set()
            rows = _flag_rows(tx.conn, mailbox_id, wanted)
            junked: list[int] = []
            if unchanged_since is not None:
                # RFC 7162 §3.1.3: a UID no longer here was removed after any MODSEQ the caller holds: it fails
                # the test like a message changed since (api: store_flags).
                modified = set(wanted).difference(r[0] for r in rows)
            for uid, old_modseq, old_flags, old_text in rows:
                if unchanged_since is not None and old_modseq > unchanged_since:
                    modified.add(uid)
                    continue  # RFC 7162 §3.1.3: modified since; left alone
                if flags_only:  # the common STORE +FLAGS / -FLAGS: no keyword to decode or compare
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
                tx.conn.executemany(
                    "UPDATE messages SET flags = ?, keywords = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                    updates,
                )
                tx.conn.execute("UPDATE mailboxes SET highestmodseq = ? WHERE id = ?", (modseq, mailbox_id))
            tx.changes.extend(changes)
            if updates and mode is not StoreMode.REMOVE:
                grown = grow_keywords(tx, mbox, kws.values())  # invariant 5
                if grown is not None:
                    changes.append(grown)
            if junked:  # senders.py invariant 4: $Junk added is the user's "spam", in the same transaction
                blobs = [r[0] for r in tx.conn.execute(
                    f"SELECT blob_id FROM messages WHERE mailbox_id = ? AND uid IN ({','.join('?' * len(junked))})",
                    (mailbox_id, *junked))]
                record_signals(tx.conn, mbox.user_id, "spam", blobs, now)
            return WriteResult(tuple(changes), tuple(sorted(modified)))

        now = self._clock()
        training = self.training_signals and mode is not StoreMode.REMOVE and "$junk" in kws
        return await self._engine.write(op)

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> WriteResult:
        if uids is not None:
            return await self._remove(mailbox_id, sorted(set(uids)), deleted_only=True)
        now = self._clock()
        changes: list[Change] = []
        after = 0  # invariant 9: steps in UID order, each past the last UID the one before removed

        def op(tx: Tx) -> tuple[Change, ...]:
            mbox = load_mailbox(tx.conn, mailbox_id)
            rows = tx.conn.execute(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid > ? AND flags & ?"
                " ORDER BY uid LIMIT ?", (mailbox_id, after, int(Flag.DELETED), REMOVE_STEP))
            msgs = [message_from_row(r) for r in rows]
            return tuple(delete_messages(tx, mbox, msgs, now=now))

        while True:
            step = await self._engine.write(op)
            changes.extend(step)
            if len(step) < REMOVE_STEP:
                return WriteResult(tuple(changes))
            after = step[-1].uid

    async def remove_messages(self, mailbox_id: int, uids: Sequence[int]) -> WriteResult:
        return await self._remove(mailbox_id, sorted(set(uids)), deleted_only=False)

    async def _remove(self, mailbox_id: int, wanted: list[int], deleted_only: bool) -> WriteResult:
        """Remove those of the messages `wanted` (UIDs in order) that exist (and carry \\Deleted, with
        `deleted_only`), `REMOVE_STEP` UIDs per write job (invariant 9)."""
        now = self._clock()
        changes: list[Change] = []
        for i in range(0, max(1, len(wanted)), REMOVE_STEP):  # no UIDs: one job still (NotFound, no mailbox)
            chunk = wanted[i:i + REMOVE_STEP]

            def op(tx: Tx, chunk: list[int] = chunk) -> tuple[Change, ...]:
                mbox = load_mailbox(tx.conn, mailbox_id)
                msgs = select_messages(tx.conn, mailbox_id, chunk)
                if deleted_only:
                    msgs = [m for m in msgs if m.flags & Flag.DELETED]
                return tuple(delete_messages(tx, mbox, msgs, now=now))

            changes.extend(await self._engine.write(op))
        return WriteResult(tuple(changes))

    async def _copy(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, move: bool,
                    as_user: int | None) -> CopyResult:
        wanted = list(uids)

        def op(tx: Tx) -> CopyResult:
            src = load_mailbox(tx.conn, mailbox_id)
            dest = load_mailbox(tx.conn, dest_mailbox_id)
            mask, keep_keywords = int(names.ALL_FLAGS), True
            if as_user is None:
                if src.user_id != dest.user_id:
                    raise Invalid("cannot copy or move messages to another user's mailbox")
            else:  # invariant 4
                if not set("rte" if move else "r") <= set(acl.rights_of(tx.conn, as_user, mailbox_id)):
                    raise Forbidden("no right to " + ("move messages out of" if move else "read") + " the mailbox")
                rights = acl.rights_of(tx.conn, as_user, dest_mailbox_id)
                if "i" not in rights:
                    raise Forbidden("no right to insert messages into the mailbox")
                mask = flags_allowed(rights)
                keep_keywords = "w" in rights
            msgs = select_messages(tx.conn, mailbox_id, wanted)
            mark = len(tx.changes)
            threads = thread_ids_of(tx.conn, mailbox_id, [m.uid for m in msgs])  # invariant 6
            items = [NewMessage(m.internal_date, m.size, m.flags & mask, m.keywords if keep_keywords else frozenset(),
                                m.blob_id, threads.get(m.uid, 0)) for m in msgs]
            # A new save date (RFC 8514 §3); a move within one user leaves its usage as it is (invariant 7).
            results = insert_messages(tx, dest, items, self._clock(), quota=not (move and src.user_id == dest.user_id))
            if move:
                delete_messages(tx, load_mailbox(tx.conn, mailbox_id), msgs, now=now, release=False)
            else:
                add_blob_refs(tx, count_blobs(m.blob_id for m in msgs))
            verdict = copy_verdict(src, dest, move) if training and msgs else None
            if verdict is not None:  # senders.py invariant 4: the user's verdict, in the same transaction
                record_signals(tx.conn, as_user if as_user is not None else dest.user_id, verdict,
                               (m.blob_id for m in msgs), now)
            return CopyResult(
                uidvalidity=dest.uidvalidity,
                source_uids=tuple(m.uid for m in msgs),
                dest_uids=tuple(r.uid for r in results),
                changes=tuple(tx.changes[mark:]),
            )

        now = self._clock()
        training = self.training_signals
        return await self._engine.write(op)

    async def copy_messages(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, *,
                            as_user: int | None = None) -> CopyResult:
        return await self._copy(mailbox_id, uids, dest_mailbox_id, False, as_user)

    async def move_messages(self, mailbox_id: int, uids: Sequence[int], dest_mailbox_id: int, *,
                            as_user: int | None = None) -> CopyResult:
        return await self._copy(mailbox_id, uids, dest_mailbox_id, True, as_user)


async def _counted(crlf_sizes: Callable[[list[str]], Awaitable[dict[str, int]]],
                   rows: list[tuple[int, str, int | None]]) -> list[tuple[int, str, int]]:
    """`list_octets` rows with a number for each body: one stored before the engine kept it (schema invariant 9)
    is counted by `crlf_sizes` (and kept); a message whose body went meanwhile is left out."""
    missing = [blob_id for _, blob_id, octets in rows if octets is None]
    counted = await crlf_sizes(missing) if missing else {}
    return [(uid, blob_id, octets if octets is not None else counted[blob_id]) for uid, blob_id, octets in rows
            if octets is not None or blob_id in counted]
