"""Pieces every PostgreSQL module shares: the mixin base, row -> record conversion, bodies and their references.

Row conversions and the keyword encoding are the SQLite engine's (store/sqlite/common.py: pure functions), so
both engines turn rows into the same records.

Invariants:
1. `acquire_blob` and `release_blobs` are the only code that changes `blobs.refcount` (schema invariant 1). A
   new body's chunks are written by the transaction that inserts its row (`INSERT ... ON CONFLICT DO UPDATE`:
   of two transactions storing the same new body, the second waits for the first and only adds a reference).
   A release that reaches zero deletes the row, its chunks by cascade, in the same transaction.
2. Blob rows are locked in sorted id order within a job, after the mailbox rows it locks (engine.py).
3. A body is read from its chunks in one read transaction (one snapshot): never a mix of two bodies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from postroom.store.api import ChangeHub, Invalid, Mailbox, MessageInfo, NotFound
from postroom.store.blobs import BlobStore, crlf_size_of
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Engine, Tx
from postroom.store.postgresql.schema import CHUNK_SIZE
from postroom.store.sqlite.common import (
    count_blobs,
    decode_keywords,
    encode_keywords,
    mailbox_from_row,
    message_from_row,
    structure_columns,
)


class Base:
    """What the per-concern mixins of `PostgreSQLStore` rely on."""

    hub: ChangeHub
    _engine: Engine
    _staging: BlobStore  # staging_dir() and hashing staged files only: bodies live in the database
    _clock: Callable[[], float]
    training_signals: bool = False  # api.Store.training_signals: record users' Junk verdicts (senders.py)

    def _check_staged(self, path: Path) -> Path:
        """`path` if it names a file in the staging directory (`Store.staging_dir`); Invalid otherwise."""
        path = Path(path)
        if path.parent.resolve() != self._staging.staging.resolve() or path.name in ("", ".", ".."):
            raise Invalid(f"not a file in the staging directory: {path}")
        return path


# `FROM mailboxes` (not aliased): `subscribed` is whether the name is in the user's subscriptions.
MAILBOX_COLUMNS = (
    "id, user_id, name, uidvalidity, uidnext, highestmodseq, special_use,"
    " EXISTS(SELECT 1 FROM subscriptions s WHERE s.user_id = mailboxes.user_id AND s.name = mailboxes.name),"
    " keywords"
)
MESSAGE_COLUMNS = "mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id, save_date"


async def load_mailbox(conn: Conn, mailbox_id: int, *, lock: bool = False) -> Mailbox:
    """The mailbox `mailbox_id` (NotFound if none); with `lock`, its row locked until the transaction ends
    (engine.py: every write that reads a mailbox's messages to change them locks it first)."""
    row = await conn.fetchrow(f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1"
                              + (" FOR UPDATE" if lock else ""), mailbox_id)
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    return mailbox_from_row(tuple(row))


async def find_mailbox(conn: Conn, user_id: int, name: str, *, lock: bool = False) -> Mailbox | None:
    row = await conn.fetchrow(f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = $1 AND name = $2"
                              + (" FOR UPDATE" if lock else ""), user_id, name)
    return None if row is None else mailbox_from_row(tuple(row))


async def select_messages(conn: Conn, mailbox_id: int, uids: Sequence[int]) -> list[MessageInfo]:
    """The messages among `uids` that exist, in UID order."""
    wanted = sorted(set(uids))
    if not wanted:
        return []
    rows = await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[]) ORDER BY uid",
        mailbox_id, wanted)
    return [message_from_row(tuple(r)) for r in rows]


def chunks_of(raw: bytes, prefix: bytes = b"") -> list[tuple[int, bytes]]:
    """(n, bytes) of the chunks the body `prefix` + `raw` is stored as (schema invariant 2); an empty body is
    one empty chunk. With a prefix only the chunk holding the seam is joined (at most CHUNK_SIZE bytes): the
    same chunks as of the joined body, without joining it (`AppendRequest.prefix`)."""
    if not prefix:
        if not raw:
            return [(0, b"")]
        return [(i // CHUNK_SIZE, raw[i:i + CHUNK_SIZE]) for i in range(0, len(raw), CHUNK_SIZE)]
    head = prefix[:CHUNK_SIZE]
    if len(head) < CHUNK_SIZE:  # the usual case: a few trace fields
        out = [(0, head + raw[:CHUNK_SIZE - len(head)])]
        start = CHUNK_SIZE - len(head)
    else:  # a prefix of a chunk or more (not made by Postroom today): its chunks, then the seam
        out = chunks_of(prefix)
        start = 0
        if len(prefix) % CHUNK_SIZE:
            n, last = out.pop()
            out.append((n, last + raw[:CHUNK_SIZE - len(last)]))
            start = CHUNK_SIZE - len(last)
    base = out[-1][0] + 1
    out += [(base + i // CHUNK_SIZE, raw[start + i:start + i + CHUNK_SIZE])
            for i in range(0, len(raw) - start, CHUNK_SIZE)]
    return out


def _read_chunk(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(n * CHUNK_SIZE)
        return f.read(CHUNK_SIZE)


async def acquire_blob(tx: Tx, blob_id: str, raw: bytes, count: int = 1, meta: bytes | None = None, *,
                       source: Path | None = None, size: int | None = None, crlf: int | None = None,
                       prefix: bytes = b"") -> bool:
    """Add `count` references to a body, storing it if it is new (invariant 1). With `source`, the body is that
    file of `size` bytes with `crlf` its `crlf_size` (read a chunk at a time, never whole); else `prefix` +
    `raw` (`AppendRequest.prefix`: never joined whole, `chunks_of`). True if the body was new (this
    transaction stored it)."""
    length = len(prefix) + len(raw) if source is None else int(size if size is not None else source.stat().st_size)
    octets = crlf_size_of(raw, prefix) if source is None else crlf
    inserted = await tx.conn.fetchval(
        "INSERT INTO blobs(id, size, refcount, meta, crlf_size) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (id) DO UPDATE SET refcount = blobs.refcount + EXCLUDED.refcount,"
        " meta = COALESCE(blobs.meta, EXCLUDED.meta) RETURNING (xmax = 0)",
        blob_id, length, count, meta, octets)
    if not inserted:
        return False
    if source is None:
        await tx.conn.executemany("INSERT INTO blob_chunks(id, n, data) VALUES ($1, $2, $3)",
                                  [(blob_id, n, part) for n, part in chunks_of(raw, prefix)])
        return True
    for n in range(max(1, -(-length // CHUNK_SIZE))):
        part = await asyncio.to_thread(_read_chunk, source, n)
        await tx.conn.execute("INSERT INTO blob_chunks(id, n, data) VALUES ($1, $2, $3)", blob_id, n, part)
    return True


async def add_blob_refs(tx: Tx, counts: Mapping[str, int]) -> None:
    """More references to bodies that are known to exist (copies of stored messages)."""
    await tx.conn.executemany("UPDATE blobs SET refcount = refcount + $1 WHERE id = $2",
                              [(n, b) for b, n in sorted(counts.items())])


async def release_blobs(tx: Tx, counts: Mapping[str, int]) -> None:
    for blob_id, n in sorted(counts.items()):  # invariant 2
        left = await tx.conn.fetchval(
            "UPDATE blobs SET refcount = refcount - $1 WHERE id = $2 RETURNING refcount", n, blob_id)
        if left is not None and left <= 0:
            await tx.conn.execute("DELETE FROM blobs WHERE id = $1", blob_id)  # chunks by cascade


async def read_body(conn: Conn, blob_id: str, start: int = 0, length: int | None = None) -> bytes:
    """The body's bytes [start, start + length) (all of it by default); NotFound if there is no such body."""
    size = await conn.fetchval("SELECT size FROM blobs WHERE id = $1", blob_id)
    if size is None:
        raise NotFound(f"no message body {blob_id}")
    end = size if length is None else min(size, start + length)
    if start >= end:
        return b""
    rows = await conn.fetch("SELECT n, data FROM blob_chunks WHERE id = $1 AND n BETWEEN $2 AND $3 ORDER BY n",
                            blob_id, start // CHUNK_SIZE, (end - 1) // CHUNK_SIZE)
    data = b"".join(bytes(r[1]) for r in rows)
    offset = start - (start // CHUNK_SIZE) * CHUNK_SIZE
    return data[offset:offset + (end - start)]


__all__ = [
    "MAILBOX_COLUMNS", "MESSAGE_COLUMNS", "Base", "acquire_blob", "add_blob_refs", "count_blobs",
    "decode_keywords", "encode_keywords", "find_mailbox", "load_mailbox", "mailbox_from_row", "message_from_row",
    "read_body", "release_blobs", "select_messages", "structure_columns",
]
