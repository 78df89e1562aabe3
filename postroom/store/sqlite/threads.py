"""Sort keys and thread ids in SQLite: the narrow columns SORT and THREAD read, and a thread id per message.

Theory of operation
-------------------
A body's sort and thread keys (`mime.sortkeys.SortKeys` and the sent date) are derived from its metadata, so
they are kept per body: `message_keys`, one row per `blobs` row, written in the same transaction as the body
(`acquire_blob`) or when metadata is written back (`write_metas`), from the metadata bytes the store is given.

SORT and THREAD read them per message, from `sort_rows` (schema 15): one narrow row per message, keyed and
clustered by (mailbox_id, uid) like `messages`, holding its internal date and size and a copy of its body's
keys. A UID range of a mailbox is then one range scan of one table, where joining each message to
`message_keys` by its body's id cost a random lookup per message (~0.3 s on 100,000). `sort_uids` lets
SQLite's sorter order that range; `thread_rows` hands THREAD the six columns it reads. The copy is written by
the code that changes what it copies: `add_sort_rows` after `insert_messages` inserts rows (append, delivery,
COPY, MOVE, INBOX's RENAME), `drop_sort_rows` beside every DELETE of message rows (expunge, MOVE's source,
mailbox and user removal), and `keys_stored` when a body's keys are stored while messages already name it
(`write_metas`, or a body without keys delivered again with metadata). `list_sort_rows` (single messages,
bodies without keys) still reads `message_keys` directly.

Thread ids (RFC 8474 THREADID; the webmail's conversation view) are per user and stored per message
(`messages.thread_id`), assigned by `assign_thread` in the transaction that inserts the message row:

* the message joins the thread of any message of the user that shares a Message-ID with it: one whose
  Message-ID is among its references, one that referenced its Message-ID, or a copy (`thread_refs` maps
  each "<msg-id>" seen in a Message-ID or References field to the first thread that named it);
* else, like RFC 5256 §3 REFERENCES step 6 groups threads, the thread whose messages had the same non-empty
  base subject (`thread_refs` key "subject:" + the collation key);
* else a new thread (`counters` row 'thread').

When two known threads meet (a message references both), it joins the older one and the two stay apart: RFC
8474 §5.2 never lets a message's THREADID change. COPY, MOVE and INBOX's RENAME keep the source's thread id.
A body whose keys are not known yet (stored before schema 13, or without metadata) gets `thread_id` 0; when its
metadata is written back (`write_metas`, the lazy upgrade every reader does) its keys are stored and its
messages get their thread then.

Invariants:
1. A `message_keys` row exists only with its `blobs` row (deleted with it by `release_blobs`; the foreign key
   cascades as well) and holds the keys (`MessageMeta.keys`, `sent_date`) of the body's stored metadata.
2. `messages.thread_id` is 0 exactly while its body has no `message_keys` row; once set it never changes.
3. `thread_refs` only grows (per user; removed with the user): an expunged message's ids still lead later
   replies to its thread.
4. Keys never fail the write that stores a message: what cannot be stored is left out (the body then has no
   keys; SORT computes them from its metadata).
5. Giving a thread costs at most `THREAD_REFS` + 2 lookups and as many inserts per message, however long its
   References field: the last references (the parent and its nearest ancestors) are the ones used.
6. The sort keys of a message in a mailbox change only when keys are stored for its body while it names it
   (`keys_stored`: from `refresh_keys`, or `put_keys` of a body stored before without keys), and every such
   write moves the `counters` row 'sort_keys' on; a message enters a mailbox with a UID at or above
   UIDNEXT and leaves it through `delete_messages` (an `expunged` row with a MODSEQ above every earlier one),
   and pruning that record raises `expunged_floor`. So `content_version` (UIDNEXT, newest expunged MODSEQ,
   floor, keys generation) is equal only while SORT and THREAD over the same UIDs answer the same.
7. `sort_rows` holds one row per message row and no other, equal to what `SORT_ROW_SELECT` derives from the
   message and its body's `message_keys` row (schema invariant 20): every writer of message rows or of keys
   of a body that messages name calls `add_sort_rows`, `drop_sort_rows` or `keys_stored` in its transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence

from postroom.mime.meta import MessageMeta, MetaFormatError
from postroom.store.api import Invalid, NotFound, SortRow, ThreadColumns, ThreadSummary
from postroom.store.sqlite.common import CHUNK, Acquired, Base, load_mailbox
from postroom.store.sqlite.engine import Tx
from postroom.store.sqlite.structure import put_structure

_KEY_COLUMNS = ("sent, subject, reply, from_key, to_key, cc_key, display_from, display_to, message_id, refs")
SUBJECT_PREFIX = "subject:"
THREAD_REFS = 50  # the last references a new message is looked up by and recorded under (invariant 5)
KEYS_GENERATION = "sort_keys"  # the `counters` row `refresh_keys` moves on (invariant 6)


def put_keys(conn: sqlite3.Connection, blob_id: str, meta: bytes | None, *, replace: bool = False,
             new: Acquired | None = None) -> bool:
    """Store the keys of a body from its serialised metadata (invariant 1), and its IMAP structure items
    (structure.py, from the same decoding); False if there are no keys to read. Without `replace`, a body that
    has its row keeps it. `new`: what `acquire_blob` said of the body; when its row was made by this job, it has
    neither keys nor messages yet, and `new.parsed` is `meta` decoded already (the writer decodes it once, or
    not at all when the request brought it decoded: `AppendRequest.parsed`)."""
    if meta is None:
        return False
    fresh = new is not None and new.new
    if fresh:
        assert new is not None
        parsed = new.parsed
        if parsed is None:  # another format: its reader recomputes it and writes it back (`write_metas`)
            return False
    else:
        if not replace and conn.execute("SELECT 1 FROM message_keys WHERE blob_id = ?", (blob_id,)).fetchone():
            return True
        try:
            parsed = MessageMeta.from_bytes(bytes(meta))
        except MetaFormatError:  # another format: its reader recomputes it and writes it back (`write_metas`)
            return False
    put_structure(conn, blob_id, parsed)
    sent, k = parsed.sent_date, parsed.keys
    values = (blob_id, sent, k.subject, int(k.reply), k.from_, k.to, k.cc, k.display_from, k.display_to,
              k.message_id, " ".join(k.references))
    if any(isinstance(v, str) and not _storable(v) for v in values):
        return False  # invariant 4: never fails the write that stores the message
    conn.execute(
        f"INSERT OR REPLACE INTO message_keys(blob_id, {_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        values,
    )
    if not replace and not fresh:  # a body stored before without keys, named by messages: they get them now
        keys_stored(conn, blob_id)  # (invariant 7)
    return True


# What `sort_rows` holds for a message (schema invariant 20): its own columns and its body's keys, the empty
# ones while the body has none. Used with a WHERE clause on `m`.
SORT_ROW_SELECT = (
    "SELECT m.mailbox_id, m.uid, m.internal_date, m.size, k.sent, COALESCE(k.subject, ''), COALESCE(k.reply, 0),"
    " COALESCE(k.from_key, ''), COALESCE(k.to_key, ''), COALESCE(k.cc_key, ''), COALESCE(k.display_from, ''),"
    " COALESCE(k.display_to, ''), k.message_id, COALESCE(k.refs, '')"
    " FROM messages m LEFT JOIN message_keys k ON k.blob_id = m.blob_id"
)
_SORT_ROW_COLUMNS = ("mailbox_id, uid, arrival, size, sent, subject, reply, from_key, to_key, cc_key, display_from,"
                     " display_to, message_id, refs")


def add_sort_rows(conn: sqlite3.Connection, mailbox_id: int, uid_min: int, uid_max: int) -> None:
    """The `sort_rows` rows of the message rows just inserted with UIDs `uid_min`..`uid_max` (invariant 7): one
    INSERT ... SELECT over the new UID range (UIDs only grow, so nothing else of the mailbox is in it)."""
    conn.execute(
        f"INSERT INTO sort_rows({_SORT_ROW_COLUMNS}) {SORT_ROW_SELECT}"
        " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ? ORDER BY m.uid",
        (mailbox_id, uid_min, uid_max),
    )


def drop_sort_rows(conn: sqlite3.Connection, mailbox_id: int, uids: Iterable[int] | None = None) -> None:
    """Delete the `sort_rows` rows of removed message rows (invariant 7): `uids` of one mailbox, or all of the
    mailbox's with None."""
    if uids is None:
        conn.execute("DELETE FROM sort_rows WHERE mailbox_id = ?", (mailbox_id,))
    else:
        conn.executemany("DELETE FROM sort_rows WHERE mailbox_id = ? AND uid = ?", [(mailbox_id, u) for u in uids])


def keys_stored(conn: sqlite3.Connection, blob_id: str) -> bool:
    """The keys of `blob_id` were just stored (or replaced): copy them into the `sort_rows` rows of the messages
    that name it (invariant 7), give those without a thread theirs (invariant 2) and, if there were any, move the
    keys generation on (invariant 6). True if some message names the body."""
    rows = conn.execute(
        "SELECT m.mailbox_id, m.uid, m.thread_id, b.user_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
        " WHERE m.blob_id = ?",
        (blob_id,),
    ).fetchall()
    if not rows:
        return False
    conn.execute("INSERT OR IGNORE INTO counters(name, value) VALUES (?, 0)", (KEYS_GENERATION,))
    conn.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (KEYS_GENERATION,))
    conn.executemany(
        f"INSERT OR REPLACE INTO sort_rows({_SORT_ROW_COLUMNS}) {SORT_ROW_SELECT} WHERE m.mailbox_id = ? AND m.uid = ?",
        [(mailbox_id, uid) for mailbox_id, uid, _, _ in rows],
    )
    for mailbox_id, uid, thread, user_id in rows:
        if not thread:
            conn.execute("UPDATE messages SET thread_id = ? WHERE mailbox_id = ? AND uid = ?",
                         (assign_thread(conn, int(user_id), blob_id), mailbox_id, uid))
    return True


def _storable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (mime.sortkeys invariant 5 says there is none)
        return False
    return True


def _new_thread(conn: sqlite3.Connection) -> int:
    """A new thread id: the `thread` counter moved on, made at 1 if there is none yet (one statement: one of
    these per delivered message that starts a thread)."""
    (value,) = conn.execute("INSERT INTO counters(name, value) VALUES ('thread', 1)"
                            " ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value").fetchone()
    return int(value)


def assign_thread(conn: sqlite3.Connection, user_id: int, blob_id: str) -> int:
    """The thread a new message of `user_id` with body `blob_id` joins (module doc), its ids recorded; 0 if the
    body's keys are not known (invariant 2)."""
    row = conn.execute("SELECT message_id, refs, subject FROM message_keys WHERE blob_id = ?", (blob_id,)).fetchone()
    if row is None:
        return 0
    message_id, refs, subject = row
    ids = [f"<{r}>" for r in str(refs).split()[-THREAD_REFS:]]  # invariant 5
    if message_id:
        ids.append(f"<{message_id}>")
    thread = 0
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i:i + CHUNK]
        marks = ",".join("?" * len(chunk))
        found = conn.execute(
            f"SELECT MIN(thread_id) FROM thread_refs WHERE user_id = ? AND ref IN ({marks})", (user_id, *chunk)
        ).fetchone()[0]
        if found is not None and (not thread or int(found) < thread):
            thread = int(found)
    subject_ref = SUBJECT_PREFIX + str(subject) if subject else None
    if not thread and subject_ref is not None:  # RFC 5256 §3 step 6: the same base subject, one thread
        found = conn.execute("SELECT thread_id FROM thread_refs WHERE user_id = ? AND ref = ?",
                             (user_id, subject_ref)).fetchone()
        thread = int(found[0]) if found else 0
    if not thread:
        thread = _new_thread(conn)
    if subject_ref is not None:
        ids.append(subject_ref)
    conn.executemany("INSERT OR IGNORE INTO thread_refs(user_id, ref, thread_id) VALUES (?, ?, ?)",
                     [(user_id, r, thread) for r in ids])
    return thread


def thread_ids_of(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]) -> dict[int, int]:
    """uid -> thread id of the given messages of a mailbox (those that exist)."""
    out: dict[int, int] = {}
    wanted = sorted(set(uids))
    for i in range(0, len(wanted), CHUNK):
        chunk = wanted[i:i + CHUNK]
        marks = ",".join("?" * len(chunk))
        out.update(conn.execute(
            f"SELECT uid, thread_id FROM messages WHERE mailbox_id = ? AND uid IN ({marks})", (mailbox_id, *chunk)))
    return out


def refresh_keys(tx: Tx, metas: Iterable[tuple[str, bytes]]) -> None:
    """`write_metas`: store the keys of bodies whose metadata was recomputed; their messages get them in
    `sort_rows` and a thread if they had none (`keys_stored`: invariants 2, 6, 7)."""
    for blob_id, meta in metas:
        if put_keys(tx.conn, blob_id, meta, replace=True):
            keys_stored(tx.conn, blob_id)


# Store.sort_uids key -> the `sort_rows` expression it sorts by (BINARY collation: UTF-8 byte order is code point
# order, the order of the collation keys mime.sortkeys stores).
SORT_EXPRESSIONS = {
    "arrival": "arrival",
    "date": "COALESCE(sent, arrival)",  # RFC 5256 §2.2
    "size": "size",
    "subject": "subject",
    "from": "from_key",
    "to": "to_key",
    "cc": "cc_key",
    "display_from": "display_from",
    "display_to": "display_to",
}


class ThreadsMixin(Base):
    async def sort_uids(self, mailbox_id: int, criteria: Sequence[tuple[str, bool]], uid_min: int = 1,
                        uid_max: int | None = None) -> list[int]:
        top = uid_max if uid_max is not None else 2**63 - 1
        try:
            terms = [SORT_EXPRESSIONS[key] + (" DESC" if reverse else "") for key, reverse in criteria]
        except KeyError as e:
            raise Invalid(f"unknown sort key {e}") from None
        order = ", ".join([*terms, "uid"])  # ties by UID, ascending, whatever is reversed (RFC 5256 §3)

        def q(conn: sqlite3.Connection) -> list[int]:
            load_mailbox(conn, mailbox_id)
            # invariant 7: one range of the clustered table; SQLite's sorter orders it
            rows = conn.execute(
                f"SELECT uid FROM sort_rows WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY {order}",
                (mailbox_id, uid_min, top),
            ).fetchall()
            return [r[0] for r in rows]

        return await self._engine.read(q)

    async def thread_rows(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> ThreadColumns:
        top = uid_max if uid_max is not None else 2**63 - 1

        def q(conn: sqlite3.Connection) -> ThreadColumns:
            load_mailbox(conn, mailbox_id)
            rows = conn.execute(
                "SELECT uid, COALESCE(sent, arrival), subject, reply, message_id, refs FROM sort_rows"
                " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",  # invariant 7: one range scan
                (mailbox_id, uid_min, top),
            ).fetchall()
            if not rows:
                return ThreadColumns()
            return ThreadColumns(*map(list, zip(*rows)))  # columns in C: no Python call per message

        return await self._engine.read(q)

    async def list_sort_rows(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None, *,
                             unknown_only: bool = False) -> list[SortRow]:
        top = uid_max if uid_max is not None else 2**63 - 1
        only = " AND m.thread_id = 0" if unknown_only else ""  # invariant 2: 0 exactly while keys are unknown
        # Only the unknown ones: the (thread_id, mailbox_id) index holds them together (with their UIDs), so the
        # common answer, none, reads no row of the mailbox.
        indexed = " INDEXED BY messages_thread" if unknown_only else ""

        def q(conn: sqlite3.Connection) -> list[SortRow]:
            load_mailbox(conn, mailbox_id)
            rows = conn.execute(
                "SELECT m.uid, m.internal_date, m.size, m.blob_id, m.thread_id, k.blob_id IS NOT NULL,"
                " k.sent, COALESCE(k.subject, ''), COALESCE(k.reply, 0), COALESCE(k.from_key, ''),"
                " COALESCE(k.to_key, ''), COALESCE(k.cc_key, ''), COALESCE(k.display_from, ''),"
                " COALESCE(k.display_to, ''), k.message_id, COALESCE(k.refs, '')"
                f" FROM messages m{indexed} LEFT JOIN message_keys k ON k.blob_id = m.blob_id"
                f" WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?{only} ORDER BY m.uid",
                (mailbox_id, uid_min, top),
            )
            make = SortRow._make
            return [make(r) for r in rows]

        return await self._engine.read(q)

    async def content_version(self, mailbox_id: int) -> tuple[int, ...]:
        def q(conn: sqlite3.Connection) -> tuple[int, ...]:  # invariant 6: three point lookups
            row = conn.execute("SELECT uidnext, expunged_floor FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            (gone,) = conn.execute("SELECT max(modseq) FROM expunged INDEXED BY expunged_modseq WHERE mailbox_id = ?",
                                   (mailbox_id,)).fetchone()
            gen = conn.execute("SELECT value FROM counters WHERE name = ?", (KEYS_GENERATION,)).fetchone()
            return int(row[0]), int(gone or 0), int(row[1]), int(gen[0]) if gen else 0

        return await self._engine.read(q, quick=True)

    async def thread_ids(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> dict[int, int]:
        top = uid_max if uid_max is not None else 2**63 - 1

        def q(conn: sqlite3.Connection) -> dict[int, int]:
            load_mailbox(conn, mailbox_id)
            return dict(conn.execute(
                "SELECT uid, thread_id FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?",
                (mailbox_id, uid_min, top)))

        return await self._engine.read(q)

    async def thread_summaries(self, mailbox_id: int, thread_ids: Sequence[int]) -> dict[int, ThreadSummary]:
        wanted = sorted({t for t in thread_ids if t > 0})

        def q(conn: sqlite3.Connection) -> dict[int, ThreadSummary]:
            load_mailbox(conn, mailbox_id)
            out: dict[int, ThreadSummary] = {}
            for k in range(0, len(wanted), CHUNK):
                part = wanted[k:k + CHUNK]
                # The (thread_id, mailbox_id) index finds each thread's messages in this mailbox (with their
                # UIDs, the table's key); only those rows are read for the date and flags.
                for tid, count, newest, date, unseen in conn.execute(
                        "SELECT thread_id, count(*), max(uid), max(internal_date), total(flags & 1 = 0)"
                        " FROM messages INDEXED BY messages_thread WHERE thread_id IN"
                        f" ({','.join('?' * len(part))}) AND mailbox_id = ? GROUP BY thread_id",
                        (*part, mailbox_id)):
                    out[int(tid)] = ThreadSummary(int(count), int(newest), float(date), int(unseen))
            return out

        return await self._engine.read(q) if wanted else {}

    async def thread_uids(self, mailbox_id: int, thread_id: int, limit: int) -> list[int]:
        def q(conn: sqlite3.Connection) -> list[int]:
            load_mailbox(conn, mailbox_id)
            return [r[0] for r in conn.execute(
                "SELECT uid FROM messages INDEXED BY messages_thread WHERE thread_id = ? AND mailbox_id = ?"
                " ORDER BY uid LIMIT ?", (thread_id, mailbox_id, max(0, limit)))]

        return await self._engine.read(q) if thread_id > 0 else []

