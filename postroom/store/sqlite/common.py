"""Pieces every SQLite module shares: the mixin base, row -> record conversion, blob reference counting.

Invariants:
1. `acquire_blob` and `release_blobs` are the only code that changes `blobs.refcount` (schema invariant 2). A
   release that reaches zero deletes the row in the same transaction, with its `blob_data` row if the body is
   inline; a body that is a file is named in `tx.dead_blobs`, so the engine deletes the file after the commit.
2. Keywords are stored as one space-separated string sorted case-insensitively (keywords are atoms: no spaces).
3. `acquire_blob` decides where a *new* body goes (`tx.inline_max`); a body already stored, inline or as a file,
   only gains references where it is (dedup by sha256 works across both kinds).
4. They keep the full-text index with the references (fts.py invariant 1): `acquire_blob` for a message
   indexes a body not indexed yet (or backlogs it; the rows of a new body, and of one stored again that is not
   indexed, are written after the batch's last job: `fts.index_later`, `fts.index_again`), `release_blobs`
   unindexes a body with its last reference, in the same transaction as the rows.
"""

from __future__ import annotations

import contextlib
import sqlite3
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from postroom.mime.meta import MessageMeta
from postroom.store.api import ChangeHub, Invalid, Mailbox, MessageColumns, MessageInfo, NotFound
from postroom.store.blobs import BlobStore, crlf_size_of
from postroom.store.sqlite import fts
from postroom.store.sqlite.engine import Engine, Tx

T = TypeVar("T")

# SQLite's default limit on host parameters is 32766 since 3.32; stay far below it.
CHUNK = 500


JOIN_MAX = 16 * 1024  # bytes: an inline body with a prefix up to this size is stored joined (`acquire_blob`)
SMALL_MAILBOX = 256  # messages: a mailbox-wide read of a mailbox with UIDNEXT - 1 at most this is a quick read
_LARGE = object()


class Base:
    """What the per-concern mixins of `SQLiteStore` rely on."""

    hub: ChangeHub
    _engine: Engine
    _blobs: BlobStore
    _clock: Callable[[], float]
    training_signals: bool = False  # api.Store.training_signals: record users' Junk verdicts (senders.py)

    async def _read_mailbox(self, mailbox_id: int, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)`, a read of one whole mailbox (counts, a listing), in one read transaction: on the event-loop
        thread (`Engine.read(quick=True)`) when the mailbox cannot hold more than `SMALL_MAILBOX` messages (its
        UIDNEXT - 1, read in the same transaction, bounds them: a few pages, as a point lookup), else on a reader
        thread. The hop to a reader thread and back costs more than reading a small mailbox (the steady IMAP
        profile: STATUS and SELECT of Drafts, Sent, Trash); a large one costs one point read more."""

        def small(conn: sqlite3.Connection) -> Any:
            row = conn.execute("SELECT uidnext FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
            if row is not None and int(row[0]) - 1 > SMALL_MAILBOX:
                return _LARGE
            return fn(conn)  # an unknown mailbox: fn raises NotFound as it would anywhere

        found = await self._engine.read(small, quick=True)
        if found is _LARGE:
            return await self._engine.read(fn)
        return cast(T, found)

    def _check_staged(self, path: Path) -> Path:
        """`path` if it names a file in the staging directory (`Store.staging_dir`); Invalid otherwise."""
        path = Path(path)
        if path.parent.resolve() != self._blobs.staging.resolve() or path.name in ("", ".", ".."):
            raise Invalid(f"not a file in the staging directory: {path}")
        return path

    @contextlib.asynccontextmanager
    async def _prefixed(self, path: Path, prefix: bytes) -> AsyncIterator[Path]:
        """The staged body to store: `path` itself, or a new staging file of `prefix` + `path` (removed on the
        way out; `path` stays the caller's). For `deliver_file` and `enqueue_file`."""
        body = await self._engine.io(self._blobs.stage_copy, path, prefix) if prefix else path
        try:
            yield body
        finally:
            if body != path:
                body.unlink(missing_ok=True)

    async def _write_with_new_blobs(self, op: Callable[[Tx], T], blob_ids: set[str]) -> T:
        """Run the write job `op`, whose blobs' files were written before it; if it fails, those files are
        forgotten (deleted unless a committed row names them), so a failed write leaves no orphan file."""
        try:
            return await self._engine.write(op)
        except Exception:
            await self._engine.forget_blobs(blob_ids)
            raise


# `FROM mailboxes` (not aliased): `subscribed` is whether the name is in the user's subscriptions (schema invariant 8).
MAILBOX_COLUMNS = (
    "id, user_id, name, uidvalidity, uidnext, highestmodseq, special_use,"
    " EXISTS(SELECT 1 FROM subscriptions s WHERE s.user_id = mailboxes.user_id AND s.name = mailboxes.name),"
    " keywords"
)
MESSAGE_COLUMNS = "mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id, save_date"


def mailbox_from_row(row: Any) -> Mailbox:
    id_, user_id, name, uidvalidity, uidnext, highestmodseq, special_use, subscribed, keywords = row
    return Mailbox(
        id=int(id_),
        user_id=int(user_id),
        name=str(name),
        uidvalidity=int(uidvalidity),
        uidnext=int(uidnext),
        highestmodseq=int(highestmodseq),
        special_use=None if special_use is None else str(special_use),
        subscribed=bool(subscribed),
        keywords=decode_keywords(str(keywords)),
    )


_NO_KEYWORDS: frozenset[str] = frozenset()


def message_from_row(row: Any) -> MessageInfo:
    """A `messages` row (MESSAGE_COLUMNS) as a MessageInfo. The columns' affinities (INTEGER, REAL, TEXT) give
    the Python types already, so nothing is converted: this runs once per message of every listing."""
    mailbox_id, uid, modseq, internal_date, size, flags, keywords, blob_id, save_date = row
    return MessageInfo(mailbox_id, uid, modseq, internal_date, size, flags,
                       frozenset(keywords.split()) if keywords else _NO_KEYWORDS, blob_id, save_date)


def encode_keywords(keywords: Iterable[str]) -> str:
    return " ".join(sorted(keywords, key=str.lower))


def decode_keywords(text: str) -> frozenset[str]:
    return frozenset(text.split()) if text else _NO_KEYWORDS


def structure_columns(rows: Sequence[Sequence[Any]], flags_only: bool, stamp: tuple[int, int]) -> MessageColumns:
    """`MessageColumns` of the rows of `list_columns(structure=True)` (either engine; `rows` non-empty): uid,
    modseq, flags, keywords, blob id, envelope, bodystructure, body, then, unless `flags_only`, size, internal
    date and save date."""
    cols = tuple(zip(*rows))
    uids, modseqs, flags, kws, blob_ids, envs, shapes, bodies = cols[:8]
    sizes, dates, saved = ((), (), ()) if flags_only else cols[8:]
    keywords = {i: decode_keywords(k) for i, k in enumerate(kws) if k}
    return MessageColumns(array("I", uids), modseqs, flags, sizes, dates, blob_ids, keywords, saved,
                          envs, shapes, bodies, stamp)


def load_mailbox(conn: sqlite3.Connection, mailbox_id: int) -> Mailbox:
    row = conn.execute(f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    return mailbox_from_row(row)


def claim_recent_in(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int]:
    """`Store.claim_recent` inside a write transaction: the mailbox's \\Recent watermark moved up to UIDNEXT - 1,
    (old, new); (old, old) when there is nothing to claim. NotFound for an unknown mailbox."""
    row = conn.execute("SELECT recent_uid, uidnext FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    old, top = int(row[0]), int(row[1]) - 1
    if top <= old:
        return old, old
    conn.execute("UPDATE mailboxes SET recent_uid = ? WHERE id = ?", (top, mailbox_id))
    return old, top


def find_mailbox(conn: sqlite3.Connection, user_id: int, name: str) -> Mailbox | None:
    row = conn.execute(
        f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = ? AND name = ?", (user_id, name)
    ).fetchone()
    return None if row is None else mailbox_from_row(row)


def select_messages(conn: sqlite3.Connection, mailbox_id: int, uids: Sequence[int]) -> list[MessageInfo]:
    """The messages among `uids` that exist, in UID order. A long list is read as one UID range scan."""
    wanted = sorted(set(uids))
    if not wanted:
        return []
    if len(wanted) > CHUNK:
        rows = conn.execute(
            f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
            (mailbox_id, wanted[0], wanted[-1]),
        ).fetchall()
        keep = set(wanted)
        return [message_from_row(r) for r in rows if r[1] in keep]
    marks = ",".join("?" * len(wanted))
    rows = conn.execute(
        f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ? AND uid IN ({marks}) ORDER BY uid",
        (mailbox_id, *wanted),
    ).fetchall()
    return [message_from_row(r) for r in rows]


class Acquired(NamedTuple):
    """What `acquire_blob` did: whether the body is new (its row made by this job), and then its metadata
    decoded (`fts.parse_meta`; None if it has none of the current format), for `put_keys` to reuse."""

    new: bool
    parsed: MessageMeta | None = None


def acquire_blob(tx: Tx, blob_id: str, raw: bytes, count: int = 1, meta: bytes | None = None, *,
                 source: Path | None = None, size: int | None = None, crlf: int | None = None,
                 searchable: bool = True, prefix: bytes = b"", parsed: MessageMeta | None = None) -> Acquired:
    """Add `count` references to a blob. A new one gets its row and its body: a `blob_data` row if it is small
    enough, else its file (written by the caller before the job; here again only if a deletion raced us).
    The body is `prefix` + `raw` (`AppendRequest.prefix`), written piece by piece, never joined, unless it is an
    inline body of at most `JOIN_MAX` bytes (one INSERT is cheaper than writing the pieces).
    With `source` the body is the file `source` of `size` bytes and `crlf` its `blobs.crlf_size` (`append_file`,
    always a file): `raw` is unused and a raced deletion is repaired by linking `source` again. A new row gets
    its `crlf_size` (schema invariant 9). A `searchable` body (a message's, not only a queue entry's) is indexed
    if it is not yet, or put in the index backlog when it has no metadata of the current format (invariant 4),
    after the batch's last job (`fts.index_again`: a failing index falls back to the backlog, engine invariant
    9, and does not refuse the message); a new one's (`fts.index_later`) from its metadata decoded here
    once (returned, for `put_keys`), or not at all when the caller gives it decoded (`parsed`, equal to
    `MessageMeta.from_bytes(meta)`: `AppendRequest.parsed`)."""
    length = len(prefix) + len(raw) if source is None else int(size if size is not None else source.stat().st_size)
    if count < 1:
        raise ValueError(f"acquire_blob needs at least one reference, not {count}")
    crlf_octets = crlf_size_of(raw, prefix) if source is None else crlf
    # One statement for both cases (a probe and an INSERT cost ~30 us more for each new body). A row that was
    # there had at least one reference (schema invariant 2), so it now has more than `count`: the new row is
    # the one whose refcount is exactly `count`.
    (refcount,) = tx.conn.execute(
        "INSERT INTO blobs(id, size, refcount, meta, crlf_size) VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE"
        " SET refcount = refcount + excluded.refcount, meta = COALESCE(meta, excluded.meta) RETURNING refcount",
        (blob_id, length, count, meta, crlf_octets),
    ).fetchone()
    if refcount != count:  # a body stored already: one more reference where it is (invariant 3)
        if searchable and not fts.is_indexed(tx.conn, blob_id):  # after the last job too (fts.index_again)
            stored = tx.conn.execute("SELECT meta FROM blobs WHERE id = ?", (blob_id,)).fetchone()[0]
            fts.index_again(tx, blob_id, None if stored is None else bytes(stored))
        return Acquired(False)
    if meta is None:
        parsed = None
    if searchable:
        if parsed is None:
            parsed = fts.parse_meta(meta)
        fts.index_later(tx, blob_id, meta, parsed)  # a new row: nothing in the backlog to delete
    else:
        parsed = None
    if source is not None:
        if not tx.blobs.exists(blob_id):
            tx.blobs.link(blob_id, source, length)
    elif length <= tx.inline_max and (not prefix or length <= JOIN_MAX):
        # A small body with a prefix is joined: one INSERT of the joined bytes costs ~30 us less than the
        # incremental blob I/O below, and a copy of at most JOIN_MAX bytes is nothing for memory.
        tx.conn.execute("INSERT OR REPLACE INTO blob_data(id, data) VALUES (?, ?)",
                        (blob_id, prefix + raw if prefix else raw))
    elif length <= tx.inline_max:
        # The row made at its full length, then the two pieces written into it through incremental blob
        # I/O (sqlite3 `blobopen`): a larger prefix + raw is never joined in memory (issue 17 item 5).
        rowid = tx.conn.execute("INSERT OR REPLACE INTO blob_data(id, data) VALUES (?, zeroblob(?))"
                                " RETURNING rowid", (blob_id, length)).fetchone()[0]
        with tx.conn.blobopen("blob_data", "data", rowid) as blob:
            blob.write(prefix)
            blob.write(raw)
    elif not tx.blobs.exists(blob_id):
        tx.blobs.write(blob_id, raw, prefix)
    return Acquired(True, parsed)


def add_blob_refs(tx: Tx, counts: Mapping[str, int]) -> None:
    """More references to blobs that are known to exist (copies of stored messages)."""
    tx.conn.executemany(
        "UPDATE blobs SET refcount = refcount + ? WHERE id = ?", [(n, b) for b, n in counts.items()]
    )


def release_blobs(tx: Tx, counts: Mapping[str, int]) -> None:
    """Take `counts[blob_id]` references from each blob; one left with none is deleted with its rows (its body
    row or, after the commit, its file: engine invariant 4). Each table's statements come together, the
    full-text index's first (`fts.unindex_blobs`, which reads `blobs.meta`)."""
    dead = []
    for blob_id, n in counts.items():
        row = tx.conn.execute(
            "UPDATE blobs SET refcount = refcount - ? WHERE id = ? RETURNING refcount", (n, blob_id)
        ).fetchone()
        if row is not None and row[0] <= 0:
            dead.append(blob_id)
    if not dead:
        return
    fts.unindex_blobs(tx.conn, dead)  # first: it derives the rows to delete from blobs.meta
    keys = [(blob_id,) for blob_id in dead]
    inline: set[str] = set()
    for i in range(0, len(dead), CHUNK):
        chunk = dead[i:i + CHUNK]
        marks = ",".join("?" * len(chunk))
        inline.update(r[0] for r in tx.conn.execute(f"DELETE FROM blob_data WHERE id IN ({marks}) RETURNING id", chunk))
    tx.conn.executemany("DELETE FROM message_keys WHERE blob_id = ?", keys)  # schema invariant 17
    tx.conn.executemany("DELETE FROM imap_structure WHERE blob_id = ?", keys)  # schema invariant 24
    tx.conn.executemany("DELETE FROM blobs WHERE id = ?", keys)
    tx.dead_blobs.update(blob_id for blob_id in dead if blob_id not in inline)


def count_blobs(blob_ids: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for b in blob_ids:
        counts[b] = counts.get(b, 0) + 1
    return counts
