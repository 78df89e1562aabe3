"""Sort keys and thread ids in PostgreSQL (schema step 5): the SQLite engine's threads.py, with one difference.

The keys of each body are rows of `message_keys` and each message has its `thread_id`, given by
`assign_thread` in the transaction that inserts it, exactly as on SQLite (its module doc tells the rules; its
invariants 1-6 hold here). What PostgreSQL does not need is SQLite's `sort_rows` copy (its invariant 7): SQLite
clusters `messages` by key and pays a random lookup per message to join `message_keys`, so it keeps a narrow
copy; PostgreSQL hash-joins a UID range of `messages` with `message_keys` in one pass, so SORT and THREAD read
that join, and no writer has a copy to keep.

Text keys sort with COLLATE "C" (byte order: UTF-8 byte order is code point order, the order of the collation
keys mime.sortkeys stores), whatever the database's own collation is.

Concurrency: `assign_thread` takes a transaction-scoped advisory lock per user before it looks up and records
the user's references, so two messages of one conversation delivered at once on two nodes join one thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from postroom.mime.meta import MessageMeta, MetaFormatError
from postroom.store.api import Invalid, NotFound, SortRow, ThreadColumns, ThreadSummary
from postroom.store.postgresql.common import Base, load_mailbox
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx
from postroom.store.postgresql.structure import put_structure
from postroom.store.sqlite.threads import KEYS_GENERATION, SUBJECT_PREFIX, THREAD_REFS, _storable

_KEY_COLUMNS = "sent, subject, reply, from_key, to_key, cc_key, display_from, display_to, message_id, refs"
TOP = 2**63 - 1


async def put_keys(conn: Conn, blob_id: str, meta: bytes | None, *, replace: bool = False,
                   fresh: bool = False, parsed: MessageMeta | None = None) -> bool:
    """Store the keys of a body from its serialised metadata, and its IMAP structure items (structure.py, from
    the same decoding); False if there are no keys to read. Without
    `replace`, a body that has its row keeps it. `fresh`: the body was stored by this transaction, so it has no
    keys and no message names it yet (nothing to look up first, no messages to give a thread). `parsed`: `meta`
    decoded already (the append path decodes it once, for these keys and the index row)."""
    if meta is None:
        return False
    if not replace and not fresh and await conn.fetchval("SELECT 1 FROM message_keys WHERE blob_id = $1", blob_id):
        return True
    if parsed is None:
        try:
            parsed = MessageMeta.from_bytes(bytes(meta))
        except MetaFormatError:  # another format: its reader recomputes it and writes it back (`write_metas`)
            return False
    await put_structure(conn, blob_id, parsed)
    sent, k = parsed.sent_date, parsed.keys
    values = (blob_id, sent, k.subject, int(k.reply), k.from_, k.to, k.cc, k.display_from, k.display_to,
              k.message_id, " ".join(k.references))
    if any(isinstance(v, str) and (not _storable(v) or "\x00" in v) for v in values):
        return False  # never fails the write that stores the message (PostgreSQL text holds no NUL either)
    await conn.execute(
        f"INSERT INTO message_keys(blob_id, {_KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (blob_id) DO UPDATE SET sent = EXCLUDED.sent, subject = EXCLUDED.subject,"
        " reply = EXCLUDED.reply, from_key = EXCLUDED.from_key, to_key = EXCLUDED.to_key, cc_key = EXCLUDED.cc_key,"
        " display_from = EXCLUDED.display_from, display_to = EXCLUDED.display_to,"
        " message_id = EXCLUDED.message_id, refs = EXCLUDED.refs", *values)
    if not replace and not fresh:
        await keys_stored(conn, blob_id)
    return True


async def keys_stored(conn: Conn, blob_id: str) -> bool:
    """The keys of `blob_id` were just stored: give the messages naming it without a thread theirs and move the
    keys generation on. True if some message names the body."""
    found = await conn.fetch(
        "SELECT m.mailbox_id, m.uid, m.thread_id, b.user_id FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
        " WHERE m.blob_id = $1", blob_id)
    if not found:
        return False
    await conn.execute("INSERT INTO counters(name, value) VALUES ($1, 1)"
                       " ON CONFLICT (name) DO UPDATE SET value = counters.value + 1", KEYS_GENERATION)
    for mailbox_id, uid, thread, user_id in found:
        if not thread:
            await conn.execute("UPDATE messages SET thread_id = $1 WHERE mailbox_id = $2 AND uid = $3",
                               await assign_thread(conn, int(user_id), blob_id), mailbox_id, uid)
    return True


async def assign_thread(conn: Conn, user_id: int, blob_id: str) -> int:
    """The thread a new message of `user_id` with body `blob_id` joins, its ids recorded; 0 if the body's keys
    are not known."""
    row = await conn.fetchrow("SELECT message_id, refs, subject FROM message_keys WHERE blob_id = $1", blob_id)
    if row is None:
        return 0
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"thread:{user_id}")
    message_id, refs, subject = row
    ids = [f"<{r}>" for r in str(refs).split()[-THREAD_REFS:]]
    if message_id:
        ids.append(f"<{message_id}>")
    thread = 0
    if ids:
        found = await conn.fetchval("SELECT min(thread_id) FROM thread_refs WHERE user_id = $1 AND ref = ANY($2)",
                                    user_id, ids)
        thread = int(found) if found is not None else 0
    subject_ref = SUBJECT_PREFIX + str(subject) if subject else None
    if not thread and subject_ref is not None:  # RFC 5256 §3 step 6: the same base subject, one thread
        found = await conn.fetchval("SELECT thread_id FROM thread_refs WHERE user_id = $1 AND ref = $2",
                                    user_id, subject_ref)
        thread = int(found) if found is not None else 0
    if not thread:
        thread = int(await conn.fetchval(
            "INSERT INTO counters(name, value) VALUES ('thread', 1)"
            " ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value"))
    if subject_ref is not None:
        ids.append(subject_ref)
    await conn.executemany("INSERT INTO thread_refs(user_id, ref, thread_id) VALUES ($1, $2, $3)"
                           " ON CONFLICT DO NOTHING", [(user_id, r, thread) for r in ids])
    return thread


async def refresh_keys(tx: Tx, metas: Iterable[tuple[str, bytes]]) -> None:
    """`write_metas`: store the keys of bodies whose metadata was recomputed; their messages get a thread if
    they had none."""
    for blob_id, meta in metas:
        if await put_keys(tx.conn, blob_id, meta, replace=True):
            await keys_stored(tx.conn, blob_id)


SORT_EXPRESSIONS = {
    "arrival": "m.internal_date",
    "date": "COALESCE(k.sent, m.internal_date)",  # RFC 5256 §2.2
    "size": "m.size",
    "subject": "COALESCE(k.subject, '') COLLATE \"C\"",
    "from": "COALESCE(k.from_key, '') COLLATE \"C\"",
    "to": "COALESCE(k.to_key, '') COLLATE \"C\"",
    "cc": "COALESCE(k.cc_key, '') COLLATE \"C\"",
    "display_from": "COALESCE(k.display_from, '') COLLATE \"C\"",
    "display_to": "COALESCE(k.display_to, '') COLLATE \"C\"",
}
_JOIN = "FROM messages m LEFT JOIN message_keys k ON k.blob_id = m.blob_id"


class ThreadsMixin(Base):
    async def sort_uids(self, mailbox_id: int, criteria: Sequence[tuple[str, bool]], uid_min: int = 1,
                        uid_max: int | None = None) -> list[int]:
        top = min(uid_max if uid_max is not None else TOP, TOP)
        try:
            terms = [SORT_EXPRESSIONS[key] + (" DESC" if reverse else "") for key, reverse in criteria]
        except KeyError as e:
            raise Invalid(f"unknown sort key {e}") from None
        order = ", ".join([*terms, "m.uid"])  # ties by UID, ascending, whatever is reversed (RFC 5256 §3)

        async def q(conn: Conn) -> list[int]:
            await load_mailbox(conn, mailbox_id)
            found = await conn.fetch(f"SELECT m.uid {_JOIN} WHERE m.mailbox_id = $1 AND m.uid BETWEEN $2 AND $3"
                                     f" ORDER BY {order}", mailbox_id, uid_min, top)
            return [int(r[0]) for r in found]

        return await self._engine.read(q)

    async def thread_rows(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> ThreadColumns:
        top = min(uid_max if uid_max is not None else TOP, TOP)

        async def q(conn: Conn) -> ThreadColumns:
            await load_mailbox(conn, mailbox_id)
            found = await conn.fetch(
                "SELECT m.uid, COALESCE(k.sent, m.internal_date), COALESCE(k.subject, ''), COALESCE(k.reply, 0),"
                f" k.message_id, COALESCE(k.refs, '') {_JOIN} WHERE m.mailbox_id = $1 AND m.uid BETWEEN $2 AND $3"
                " ORDER BY m.uid", mailbox_id, uid_min, top)
            if not found:
                return ThreadColumns()
            return ThreadColumns(*map(list, zip(*(tuple(r) for r in found))))

        return await self._engine.read(q)

    async def list_sort_rows(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None, *,
                             unknown_only: bool = False) -> list[SortRow]:
        top = min(uid_max if uid_max is not None else TOP, TOP)
        only = " AND m.thread_id = 0" if unknown_only else ""  # 0 exactly while the keys are unknown

        async def q(conn: Conn) -> list[SortRow]:
            await load_mailbox(conn, mailbox_id)
            found = await conn.fetch(
                "SELECT m.uid, m.internal_date, m.size, m.blob_id, m.thread_id, k.blob_id IS NOT NULL,"
                " k.sent, COALESCE(k.subject, ''), COALESCE(k.reply, 0), COALESCE(k.from_key, ''),"
                " COALESCE(k.to_key, ''), COALESCE(k.cc_key, ''), COALESCE(k.display_from, ''),"
                f" COALESCE(k.display_to, ''), k.message_id, COALESCE(k.refs, '') {_JOIN}"
                f" WHERE m.mailbox_id = $1 AND m.uid BETWEEN $2 AND $3{only} ORDER BY m.uid", mailbox_id, uid_min, top)
            return [SortRow._make(tuple(r)) for r in found]

        return await self._engine.read(q)

    async def content_version(self, mailbox_id: int) -> tuple[int, ...]:
        async def q(conn: Conn) -> tuple[int, ...]:
            row = await conn.fetchrow("SELECT uidnext, expunged_floor FROM mailboxes WHERE id = $1", mailbox_id)
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            gone = await conn.fetchval("SELECT max(modseq) FROM expunged WHERE mailbox_id = $1", mailbox_id)
            gen = await conn.fetchval("SELECT value FROM counters WHERE name = $1", KEYS_GENERATION)
            return int(row[0]), int(gone or 0), int(row[1]), int(gen or 0)

        return await self._engine.read(q)

    async def thread_ids(self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None) -> dict[int, int]:
        top = min(uid_max if uid_max is not None else TOP, TOP)

        async def q(conn: Conn) -> dict[int, int]:
            await load_mailbox(conn, mailbox_id)
            return {int(r[0]): int(r[1]) for r in await conn.fetch(
                "SELECT uid, thread_id FROM messages WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3",
                mailbox_id, uid_min, top)}

        return await self._engine.read(q)

    async def thread_summaries(self, mailbox_id: int, thread_ids: Sequence[int]) -> dict[int, ThreadSummary]:
        wanted = sorted({t for t in thread_ids if t > 0})

        async def q(conn: Conn) -> dict[int, ThreadSummary]:
            await load_mailbox(conn, mailbox_id)
            # The (thread_id, mailbox_id) index finds each thread's messages in this mailbox; only those rows are
            # read for the date and flags.
            found = await conn.fetch(
                "SELECT thread_id, count(*), max(uid), max(internal_date), count(*) FILTER (WHERE flags & 1 = 0)"
                " FROM messages WHERE thread_id = ANY($1) AND mailbox_id = $2 GROUP BY thread_id",
                wanted, mailbox_id)
            return {int(r[0]): ThreadSummary(int(r[1]), int(r[2]), float(r[3]), int(r[4])) for r in found}

        return await self._engine.read(q) if wanted else {}

    async def thread_uids(self, mailbox_id: int, thread_id: int, limit: int) -> list[int]:
        async def q(conn: Conn) -> list[int]:
            await load_mailbox(conn, mailbox_id)
            return [int(r[0]) for r in await conn.fetch(
                "SELECT uid FROM messages WHERE thread_id = $1 AND mailbox_id = $2 ORDER BY uid LIMIT $3",
                thread_id, mailbox_id, max(0, limit))]

        return await self._engine.read(q) if thread_id > 0 else []
