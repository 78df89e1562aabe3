"""The full-text index on SQLite: FTS5 tables written with the message, read to narrow SEARCH.

Theory of operation
-------------------
The index is **per body** (blob), not per message: a body is content-addressed and shared by every message that
holds it (a list post to 50 local members, COPY, MOVE), so it is tokenised once, COPY and MOVE cost nothing here,
and the rows go when the body's last reference goes. `fts_docs` gives each indexed body an integer document id
(FTS5 rowids are integers; `blobs` is keyed by the SHA-256 text). The FTS5 tables are contentless (FTS5 keeps no
copy of the text; the scan form in `fts_scan` is one, but for the exact check, not for FTS5), and a contentless row
is deleted by giving FTS5 the very values it indexed: they are derived again from `blobs.meta`, which is what
they were derived from (`write_metas` re-indexes before it replaces it). The derivation is versioned
(`INDEX_VERSION`: this module's text format and Python's Unicode version, which `str.casefold` follows): a store
indexed under another version is emptied and put back in the backlog when it is opened (`check_version`).

* `index_blob` (in a write job): the text of `textindex.index_fields(meta)` into `fts_head` (per header column)
  and `fts_body`, and the body's scan form (`scanform.build`, the case-folded haystacks) into `fts_scan`; a
  body whose metadata is missing or of an older format goes to `fts_backlog` instead.
* `index_later` (in a write job, for a body the job stored): the same rows, written by `index_deferred` once
  for the whole batch after its last job (engine invariant 9). FTS5 turns what it holds in memory into a new
  segment at every SAVEPOINT and RELEASE; written inside each job's SAVEPOINT, every message made a segment,
  and merging them was most of the index's cost (bench/RESULTS.md). The rows commit with the message, unless
  other jobs wait for the writer as the batch ends: then `park_new` puts the batch's new bodies (those still
  stored and not indexed by a later job) in the backlog (one small row each) and `index_parked` indexes them
  once the writer is idle (engine invariant 10), so a burst of deliveries does not wait for its own index rows.
* `index_again` (in a write job, for a body stored already and not indexed that the job gives a reference more:
  one in the backlog, or only a queue entry's): deferred with the new bodies, so the same fallback covers it
  (engine invariant 9); `index_deferred` takes a body it indexes out of the backlog.
* `unindex_blob` (in a write job): the rows out again, with the packed values; the backlog row too.
* `scan` (in a read): the exact check of SEARCH string keys on the scan forms (`scanform.evaluate`) of a batch
  of bodies, for `Store.scan_texts`: a reader thread decompresses and compares, the event loop only combines.
* `candidates` (in a read): a `TextFilter` -> the messages of a UID range whose text may match: per piece of a
  needle, the documents holding all its trigrams in the key's columns (one FTS5 MATCH per table), combined by
  the filter's AND / OR, mapped to messages of the mailbox, plus every message whose body is in the backlog.

Invariants
1. (schema invariant 12) A body with message references is in `fts_docs` or in `fts_backlog` at every commit:
   `acquire_blob` indexes a body that arrives with metadata, or one stored again that is not indexed (in the
   batch's deferred step, which takes it out of the backlog; if it raises, the batch runs again with those
   bodies backlogged, engine invariant 9, and fails only if that failure ended its transaction or backlogging
   raises too) or backlogs it, `write_metas` re-indexes, `release_blobs` unindexes with the last reference.
2. The FTS5 rows of a document are `index_fields` of its body's stored metadata under `fts_docs.version`,
   inserted and deleted with those values while the metadata is unchanged (`write_metas` unindexes with the old
   metadata first); a document id is never reused (AUTOINCREMENT), so a row can never be taken for another
   body's. A store whose `fts_version` differs from `INDEX_VERSION` is re-indexed from scratch.
3. `candidates` never leaves out a message that the exact check would match (textindex invariant 1, plus the
   backlog); it returns None, "no narrowing", rather than a list it cannot vouch for (a term with no piece long
   enough under an OR, or more than `MAX_DOCS` documents for one lookup).
4. A document's `fts_scan` row (schema 16) is `scanform.build` of the same metadata its FTS5 rows were derived
   from, written and deleted with them; `scan` answers only from rows of the current `INDEX_VERSION`, so a
   body missing from its answer (in the backlog, or indexed before schema 16) is checked from its metadata.
5. (schema 23) `fts_head` keeps positions (`detail=full`), so a needle looked up as one phrase in a header
   field's own column (`_phrase`: SUBJECT, FROM, TO, CC, BCC, or HEADER of one of those) matches exactly the
   documents whose column contains it: the column is `SearchText.header(name)` case-folded, the very haystack
   the exact check reads (textindex invariant 3: `TextTerm.whole` says which needles). Such lookups, and ANDs
   and ORs of them, are exact; `candidates` says so (`TextCandidates.exact`) when no candidate came from the
   backlog, and SEARCH then reads no scan form for them. The body table keeps no positions (`detail=none`):
   with them it measured 16 times larger (2.1 times the bodies' size on the bench mail, bench/RESULTS.md), so
   body and TEXT candidates are confirmed on their scan forms, except for a whole needle of exactly three
   characters: it is one trigram, which a field holds exactly when the needle is in it.
6. A body whose rows cannot be derived from its metadata (`index_fields` or `scanform.build` raises: a fault
   on some text) is logged and left in the backlog, searched exactly (invariant 1), before any row of it is
   written: it fails neither the write that stores its message, nor the batch or idle step that indexes other
   bodies with it, nor a step of the backlog (`index_backlog`, which does not ask for its metadata again).
"""

from __future__ import annotations

import logging
import sqlite3
import unicodedata
from collections.abc import Callable, Sequence

from postroom.mime.meta import MessageMeta, MetaFormatError
from postroom.store import scanform
from postroom.store.api import IndexProgress, MessageInfo, TextCandidates, TextScan
from postroom.store.sqlite import common  # (a module: common calls index_later, this uses its helpers)
from postroom.store.sqlite.engine import Deferred, Tx
from postroom.store.textindex import (
    HEAD_COLUMNS,
    HEADER_FIELDS,
    MIN_PIECE,
    TextAll,
    TextAny,
    TextFilter,
    TextTerm,
    index_fields,
    trigrams,
)

FORMAT = 3  # of `textindex.index_fields` and `scanform.build`; a change to what is indexed bumps it (2: the
# body parts' header fields in h_names, and the scan form; 3: NUL indexed as U+FFFD, FTS5 stopped at it)
_MAJOR, _MINOR, _MICRO = (int(x) for x in unicodedata.unidata_version.split("."))
INDEX_VERSION = FORMAT * 1_000_000 + _MAJOR * 10_000 + _MINOR * 100 + _MICRO
log = logging.getLogger("postroom.store")
MAX_DOCS = 200_000  # documents one lookup may yield before narrowing is given up (memory of the sets)
BY_BLOB_MAX = 4_096  # documents mapped to messages through `messages_blob` without counting the range first
MAX_PHRASE = 256  # characters of a header needle looked up as one phrase (invariant 5); longer: by trigrams
CREATE_HEAD = ("CREATE VIRTUAL TABLE fts_head USING fts5(h_subject, h_from, h_to, h_cc, h_bcc, h_headers, h_names,"
               " tokenize='trigram case_sensitive 1', detail=full, content='')")  # schema 23 (invariant 5)
_HEAD_COLS = tuple(f"h_{c}" for c in HEAD_COLUMNS)
_INSERT_HEAD = f"INSERT INTO fts_head(rowid, {', '.join(_HEAD_COLS)}) VALUES (?{', ?' * len(_HEAD_COLS)})"
_DELETE_HEAD = (f"INSERT INTO fts_head(fts_head, rowid, {', '.join(_HEAD_COLS)})"
                f" VALUES ('delete', ?{', ?' * len(_HEAD_COLS)})")


def parse_meta(meta: bytes | None) -> MessageMeta | None:
    """Stored metadata decoded, or None when there is none or it is of another format (the body then goes to
    the backlog). A write job decodes a new body's metadata once, for its index rows and its keys (threads.py
    `put_keys`)."""
    if meta is None:
        return None
    try:
        return MessageMeta.from_bytes(meta)
    except MetaFormatError:
        return None


def _values(meta: MessageMeta) -> list[str]:
    """The indexed values, in `HEAD_COLUMNS` order and then the body."""
    fields = index_fields(meta)
    return [fields[c] for c in HEAD_COLUMNS] + [fields["body"]]


def derive_rows(blob_id: str, parsed: MessageMeta) -> tuple[list[str], bytes] | None:
    """A body's indexed values (`_values`) and scan form (`scanform.build`), or None when deriving them raised
    (logged with its traceback): that body stays in the backlog, searched exactly from its metadata
    (invariant 1), and costs no other body its index rows, nor its message a refusal (invariant 6)."""
    try:
        return _values(parsed), scanform.build(parsed)
    except Exception:  # noqa: BLE001 - a fault on one body's text must not stop the index of the others
        log.warning("full-text index: body %s cannot be indexed; it stays in the backlog, searched exactly",
                    blob_id, exc_info=True)
        return None


def check_version(conn: sqlite3.Connection) -> bool:
    """At open: if the store was indexed under another `INDEX_VERSION`, empty the index and put every body in
    the backlog (invariant 2); record the version. True if it was reset."""
    row = conn.execute("SELECT value FROM counters WHERE name = 'fts_version'").fetchone()
    if row is not None and int(row[0]) == INDEX_VERSION:
        return False
    reset = row is not None
    if reset:
        conn.execute("INSERT INTO fts_head(fts_head) VALUES ('delete-all')")
        conn.execute("INSERT INTO fts_body(fts_body) VALUES ('delete-all')")
        conn.execute("DELETE FROM fts_docs")
        conn.execute("DELETE FROM fts_scan")
        conn.execute("INSERT OR IGNORE INTO fts_backlog(blob_id) SELECT id FROM blobs")
    conn.execute("INSERT OR REPLACE INTO counters(name, value) VALUES ('fts_version', ?)", (INDEX_VERSION,))
    return reset


def index_blob(conn: sqlite3.Connection, blob_id: str, meta: bytes | None, *, fresh: bool = False,
               parsed: MessageMeta | None = None) -> bool:
    """Index body `blob_id` (not indexed now) from its stored metadata `meta` (`parsed`: decoded already, when
    the caller has it); if that is missing or of an older format, or the rows cannot be derived from it
    (invariant 6), put it in the backlog instead (invariant 1). True if indexed. `fresh`: its `blobs` row was
    made by this transaction, so it has no backlog row (those go with the body: `unindex_blob`) and none is
    deleted."""
    if parsed is None:
        parsed = parse_meta(meta)
    derived = None if parsed is None else derive_rows(blob_id, parsed)
    if derived is None:
        conn.execute("INSERT OR IGNORE INTO fts_backlog(blob_id) VALUES (?)", (blob_id,))
        return False
    values, form = derived
    docid = conn.execute(
        "INSERT INTO fts_docs(blob_id, version) VALUES (?, ?) RETURNING docid", (blob_id, INDEX_VERSION)
    ).fetchone()[0]
    conn.execute(_INSERT_HEAD, (docid, *values[:-1]))
    conn.execute("INSERT INTO fts_body(rowid, body) VALUES (?, ?)", (docid, values[-1]))
    conn.execute("INSERT INTO fts_scan(docid, form) VALUES (?, ?)", (docid, form))
    if not fresh:
        conn.execute("DELETE FROM fts_backlog WHERE blob_id = ?", (blob_id,))
    return True


def index_later(tx: Tx, blob_id: str, meta: bytes | None, parsed: MessageMeta | None) -> None:
    """Index body `blob_id`, whose `blobs` row this job just made with metadata `meta` (`parsed`: `parse_meta`
    of it): into the backlog now if it cannot be indexed (invariant 1), else its rows are written once for the
    whole batch after its last job (`index_deferred`, engine invariant 9): one FTS5 segment per batch, where
    rows written inside each job's SAVEPOINT made one per message."""
    if meta is None or parsed is None:
        tx.conn.execute("INSERT OR IGNORE INTO fts_backlog(blob_id) VALUES (?)", (blob_id,))
        return
    tx.defer(INDEX_NEW, (blob_id, meta, parsed))


# A body out of the backlog once it is indexed (schema invariant 12)
_UNBACKLOG_INDEXED = ("DELETE FROM fts_backlog WHERE blob_id = ?"
                      " AND EXISTS (SELECT 1 FROM fts_docs WHERE fts_docs.blob_id = ?)")
# A body into the backlog only if it is still stored and not indexed (schema invariant 12: exactly one of the two)
_BACKLOG_UNINDEXED = ("INSERT OR IGNORE INTO fts_backlog(blob_id) SELECT id FROM blobs WHERE id = ?"
                      " AND NOT EXISTS (SELECT 1 FROM fts_docs WHERE fts_docs.blob_id = blobs.id)")
# A body's document, made only if its row still holds the metadata the rows come from and it is not indexed yet
_INSERT_DOC = ("INSERT INTO fts_docs(blob_id, version) SELECT id, ? FROM blobs WHERE id = ? AND meta = ?"
               " AND NOT EXISTS (SELECT 1 FROM fts_docs WHERE fts_docs.blob_id = blobs.id) RETURNING docid")


def index_deferred(conn: sqlite3.Connection, items: list[tuple[str, bytes, MessageMeta]]) -> None:
    """The batch's deferred step (`index_later`, `index_again`): the full-text rows of the bodies its jobs
    stored, (blob id, metadata, decoded) each, after its last job. A body that is gone by now, that a later job
    of the batch indexed already, or whose row holds other metadata than `meta` (removed and stored again) is
    left as it is, so rows are always derived from the stored metadata (invariant 2). A body it indexes leaves
    the backlog (one stored again may be there). Raises what writing the rows raised, with part of them
    written: no SAVEPOINT of its own, since one makes SQLite keep a statement journal of every page the rows
    change, a temporary file per batch (~10 % of the writer's CPU, bench/RESULTS.md). The engine then rolls
    the batch back and runs it again with `park_new` in this step's place (engine invariant 9), so the bodies
    go to the backlog (invariant 1: a message is never refused for its index rows), unless the error ended
    the whole transaction (SQLite rolls it back on SQLITE_FULL) or `park_new` raises too: then the batch fails
    with it (engine invariant 1: out of space, `InsufficientStorage`). In `index_parked`, the idle writer's
    transaction is rolled back and its bodies stay in the backlog."""
    latest = {blob_id: (meta, parsed) for blob_id, meta, parsed in items}  # a body stored twice: the last
    head, body, scan, indexed = [], [], [], []
    for blob_id, (meta, parsed) in latest.items():
        derived = derive_rows(blob_id, parsed)
        if derived is None:  # invariant 6: this one to the backlog (if still stored and not indexed), the rest on
            conn.execute(_BACKLOG_UNINDEXED, (blob_id,))
            continue
        row = conn.execute(_INSERT_DOC, (INDEX_VERSION, blob_id, meta)).fetchone()
        if row is None:
            continue
        values, form = derived
        head.append((row[0], *values[:-1]))
        body.append((row[0], values[-1]))
        scan.append((row[0], form))
        indexed.append((blob_id,))
    conn.executemany(_INSERT_HEAD, head)
    conn.executemany("INSERT INTO fts_body(rowid, body) VALUES (?, ?)", body)
    conn.executemany("INSERT INTO fts_scan(docid, form) VALUES (?, ?)", scan)
    # A body stored again (`index_again`) may be in the backlog: out of it once indexed (schema invariant 12).
    # A new body is not there: no statement per body unless the backlog holds any (one lookup per batch).
    if indexed and conn.execute("SELECT 1 FROM fts_backlog LIMIT 1").fetchone() is not None:
        conn.executemany("DELETE FROM fts_backlog WHERE blob_id = ?", indexed)


def park_new(conn: sqlite3.Connection, items: list[tuple[str, bytes, MessageMeta]]) -> list[str]:
    """Instead of `index_deferred` while jobs wait (engine invariant 10): the batch's new bodies into the
    backlog, so they are searched exactly until indexed (invariant 1); returns their ids for `index_parked`.
    Like `index_deferred`, it leaves alone a body that a later job of the batch removed (a backlog row would
    outlive it: `index_parked` only looks at stored bodies) or indexed already (`write_metas` in a later job
    indexes the body it gives new metadata): schema invariant 12 holds at this commit too."""
    ids = list(dict.fromkeys(blob_id for blob_id, _, _ in items))
    conn.executemany(_BACKLOG_UNINDEXED, [(blob_id,) for blob_id in ids])
    return ids


def index_parked(conn: sqlite3.Connection, blob_ids: list[str]) -> None:
    """In a write transaction of an idle writer: index the bodies `park_new` put in the backlog that are
    still there (one removed meanwhile left the backlog with its last reference: `unindex_blob`), and take
    them out of it; one whose metadata is of another format stays there for `postroom index`. The rows of a
    chunk are written as a batch's are (`index_deferred`: one statement per table, one FTS5 segment), and only
    a body indexed by then leaves the backlog (schema invariant 12: exactly one of the two)."""
    for i in range(0, len(blob_ids), common.CHUNK):
        chunk = blob_ids[i:i + common.CHUNK]
        rows = conn.execute(
            f"SELECT b.blob_id, s.meta FROM fts_backlog b JOIN blobs s ON s.id = b.blob_id"
            f" WHERE b.blob_id IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        items = []
        for blob_id, meta in rows:
            parsed = parse_meta(None if meta is None else bytes(meta))
            if parsed is not None:  # else another format: left in the backlog
                items.append((str(blob_id), bytes(meta), parsed))
        index_deferred(conn, items)  # skips a body indexed meanwhile; if it raises, all stay in the backlog
        conn.executemany(_UNBACKLOG_INDEXED, [(blob_id, blob_id) for blob_id, _ in rows])


INDEX_NEW = Deferred("full-text index", index_deferred, park=park_new, run_parked=index_parked)


def index_again(tx: Tx, blob_id: str, meta: bytes | None) -> None:
    """Index body `blob_id`, stored already and not indexed now (`acquire_blob` gives it one more reference: it
    may be in the backlog, or only a queue entry's), from its stored metadata `meta`: into the backlog now if it
    cannot be indexed (invariant 1), else its rows are written with the new bodies' after the batch's last job
    (`index_deferred`, which takes it out of the backlog), so that a failure falls back to the backlog as a new
    body's does and the message is not refused for its index rows (it was, indexed inside its job)."""
    parsed = parse_meta(meta)
    if meta is None or parsed is None:
        tx.conn.execute("INSERT OR IGNORE INTO fts_backlog(blob_id) VALUES (?)", (blob_id,))
        return
    tx.defer(INDEX_NEW, (blob_id, meta, parsed))


def unindex_blob(conn: sqlite3.Connection, blob_id: str) -> None:
    """Remove body `blob_id` from the index and the backlog (its last reference goes, or it is re-indexed).
    Call it while `blobs.meta` still holds the metadata it was indexed from (invariant 2). `unindex_blobs` of
    one body."""
    unindex_blobs(conn, [blob_id])


UNINDEX_TEXT_MAX = 4 << 20
"""Characters of indexed values `unindex_blobs` holds at once: the FTS5 'delete' rows of a removal go out in
groups of about this much text (each body's up to `text.MAX_BODY_CHARS` plus its headers), so removing a mailbox
of 100,000 messages holds a few MiB of their text, not all of it."""


def unindex_blobs(conn: sqlite3.Connection, blob_ids: Sequence[str]) -> None:
    """`unindex_blob` for many bodies, with the statements of each table together: the FTS5 'delete' rows of all
    of them (in groups of at most about `UNINDEX_TEXT_MAX` characters of values, for bounded memory), read one
    body at a time, then the other tables. A statement that opens a statement transaction (a foreign-key action,
    RETURNING) between two FTS5 writes makes FTS5 flush what it holds as a new segment, so `unindex_blob` per
    body amid `release_blobs`' other statements cost ~0.8 ms a body in segments and their merging (an EXPUNGE of
    20,000 messages: 30 s, bench/RESULTS.md 2026-12-02); the reads between the groups open none."""
    head: list[tuple[object, ...]] = []
    body: list[tuple[int, str]] = []
    docids: list[tuple[int]] = []
    held = 0
    for i in range(0, len(blob_ids), common.CHUNK):
        chunk = blob_ids[i:i + common.CHUNK]
        marks = ",".join("?" * len(chunk))
        for docid, version, meta in conn.execute(  # a row at a time: a body's metadata holds its text
                "SELECT d.docid, d.version, b.meta FROM fts_docs d LEFT JOIN blobs b ON b.id = d.blob_id"
                f" WHERE d.blob_id IN ({marks})", chunk):
            docids.append((int(docid),))
            parsed = parse_meta(None if meta is None else bytes(meta))
            if int(version) == INDEX_VERSION and parsed is not None:  # else unreachable rows stay (invariant 2)
                values = _values(parsed)
                head.append((int(docid), *values[:-1]))  # the values it was indexed with
                body.append((int(docid), values[-1]))
                held += sum(map(len, values))
                if held >= UNINDEX_TEXT_MAX:
                    _delete_rows(conn, head, body)
                    head, body, held = [], [], 0
    _delete_rows(conn, head, body)
    conn.executemany("DELETE FROM fts_docs WHERE docid = ?", docids)
    conn.executemany("DELETE FROM fts_scan WHERE docid = ?", docids)
    conn.executemany("DELETE FROM fts_backlog WHERE blob_id = ?", [(b,) for b in blob_ids])


def _delete_rows(conn: sqlite3.Connection, head: list[tuple[object, ...]], body: list[tuple[int, str]]) -> None:
    """The FTS5 'delete' rows of `unindex_blobs`: (docid, head values...) and (docid, body), as indexed."""
    conn.executemany(_DELETE_HEAD, head)
    conn.executemany("INSERT INTO fts_body(fts_body, rowid, body) VALUES ('delete', ?, ?)", body)


def refill_head(conn: sqlite3.Connection, progress: Callable[[int, int], None], every: int = 20_000) -> None:
    """Write `fts_head` (empty) again for every indexed body from its stored metadata (schema 23), calling
    `progress(done, total)` every `every` bodies on stores larger than that. A body whose metadata cannot be
    read, or one indexed under another version, marks the whole index as of no version instead, so opening the
    store rebuilds it (`check_version`): head rows are never missing for an indexed body (invariant 3)."""
    total = int(conn.execute("SELECT count(*) FROM fts_docs").fetchone()[0])
    done = 0
    rows = conn.execute(
        "SELECT d.docid, d.version, b.meta FROM fts_docs d LEFT JOIN blobs b ON b.id = d.blob_id ORDER BY d.docid")
    for docid, version, meta in rows:
        parsed = parse_meta(None if meta is None else bytes(meta))
        if parsed is None or int(version) != INDEX_VERSION:
            conn.execute("UPDATE counters SET value = 0 WHERE name = 'fts_version'")
            return
        conn.execute(_INSERT_HEAD, (int(docid), *_values(parsed)[:-1]))
        done += 1
        if total > every and done % every == 0:
            progress(done, total)


def is_indexed(conn: sqlite3.Connection, blob_id: str) -> bool:
    return conn.execute("SELECT 1 FROM fts_docs WHERE blob_id = ?", (blob_id,)).fetchone() is not None


def replace_meta(conn: sqlite3.Connection, blob_id: str, meta: bytes) -> bool:
    """New metadata for a stored body (`write_metas`): the old rows out (with the old metadata), the metadata
    replaced, the new text in. False if the body is not stored."""
    if conn.execute("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)).fetchone() is None:
        return False
    unindex_blob(conn, blob_id)
    conn.execute("UPDATE blobs SET meta = ? WHERE id = ?", (meta, blob_id))
    index_blob(conn, blob_id, meta)
    return True


class _TooMany(Exception):
    """A lookup matched more than MAX_DOCS documents: narrowing is not worth its memory."""


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _match(conn: sqlite3.Connection, table: str, query: str) -> set[int]:
    rows = conn.execute(f"SELECT rowid FROM {table} WHERE {table} MATCH ? LIMIT ?", (query, MAX_DOCS + 1))
    found = {int(r[0]) for r in rows}
    if len(found) > MAX_DOCS:
        raise _TooMany
    return found


def _m_columns() -> str:
    """`common.MESSAGE_COLUMNS` qualified by the alias `m` (made at call time: common imports this module)."""
    return ", ".join("m." + c.strip() for c in common.MESSAGE_COLUMNS.split(","))


def _phrase(term: TextTerm) -> tuple[str, str] | None:
    """(column, FTS5 phrase) when `term` is answered exactly by one phrase lookup in a header field's own column
    (invariant 5), else None."""
    field = term.header if term.key == "header" else term.key
    if field not in HEADER_FIELDS:
        return None
    folded = term.whole()
    if folded is None or len(folded) > MAX_PHRASE:
        return None
    return f"h_{field}", _quote(folded)


def _term_docs(conn: sqlite3.Connection, term: TextTerm) -> tuple[set[int] | None, bool]:
    """(documents that may match `term`, whether exactly those match: invariant 5); (None, False) if it cannot
    narrow (no piece of three characters or more)."""
    phrase = _phrase(term)
    if phrase is not None:
        column, quoted = phrase
        return _match(conn, "fts_head", "{" + column + "} : " + quoted), True
    pieces = term.pieces()
    if not pieces:
        return None, False
    fields = term.fields()
    head = [f"h_{f}" for f in fields if f != "body"]
    out: set[int] | None = None
    for piece in pieces:
        grams = " AND ".join(_quote(t) for t in trigrams(piece))
        docs: set[int] = set()
        if head:
            docs |= _match(conn, "fts_head", "{" + " ".join(head) + "} : (" + grams + ")")
        if "body" in fields:
            docs |= _match(conn, "fts_body", grams)
        out = docs if out is None else out & docs
        if not out:
            break
    # A whole needle of three characters is one trigram: a document holds it exactly when a field does, no
    # positions needed (invariant 5), so even the body's lookup is exact for it.
    whole = term.whole()
    return out, whole is not None and len(whole) == MIN_PIECE


def _filter_docs(conn: sqlite3.Connection, flt: TextFilter) -> tuple[set[int] | None, bool]:
    """(documents that may match `flt`, whether exactly those match); (None, False) if it cannot narrow. An AND
    keeps the parts that narrow (exact only if every part narrowed exactly); an OR needs both sides to."""
    if isinstance(flt, TextTerm):
        return _term_docs(conn, flt)
    parts = []
    exact = True
    for t in flt.terms:
        docs, part_exact = _filter_docs(conn, t)
        if docs is None and isinstance(flt, TextAny):
            return None, False  # one side cannot narrow: neither can the OR
        if docs is None:
            exact = False
            continue
        parts.append(docs)
        exact = exact and part_exact
        if isinstance(flt, TextAll) and not docs:
            return docs, exact
    if not parts:
        return None, False
    if isinstance(flt, TextAll):
        return set.intersection(*parts), exact
    return set.union(*parts), exact


def candidates(conn: sqlite3.Connection, mailbox_id: int, uid_min: int, uid_max: int,
               flt: TextFilter) -> TextCandidates | None:
    """The messages of `mailbox_id` with UIDs in [uid_min, uid_max] that may match `flt` (invariant 3), or None
    when the index cannot narrow it."""
    try:
        docs, exact = _filter_docs(conn, flt)
    except _TooMany:
        return None
    if docs is None:
        return None
    found: dict[int, MessageInfo] = {}
    # Few documents: from each to its body's messages (index messages_blob), a cost that follows the answer,
    # not the mailbox; the range is counted only when there are many.
    if len(docs) <= BY_BLOB_MAX or len(docs) <= 2 * int(conn.execute(
            "SELECT count(*) FROM messages WHERE mailbox_id = ? AND uid BETWEEN ? AND ?",
            (mailbox_id, uid_min, uid_max)).fetchone()[0]):
        ids = sorted(docs)
        for i in range(0, len(ids), common.CHUNK):
            chunk = ids[i:i + common.CHUNK]
            rows = conn.execute(
                f"SELECT {_m_columns()} FROM fts_docs d JOIN messages m INDEXED BY messages_blob"
                f" ON m.blob_id = d.blob_id WHERE d.docid IN ({','.join('?' * len(chunk))})"
                " AND m.mailbox_id = ? AND m.uid BETWEEN ? AND ?", (*chunk, mailbox_id, uid_min, uid_max))
            for r in rows:
                m = common.message_from_row(r)
                found[m.uid] = m
    else:
        # Documents from all over the store: walk the range once and keep those indexed in the set.
        rows = conn.execute(
            f"SELECT d.docid, {_m_columns()} FROM messages m JOIN fts_docs d ON d.blob_id = m.blob_id"
            " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?", (mailbox_id, uid_min, uid_max))
        for r in rows:
            if int(r[0]) in docs:
                m = common.message_from_row(r[1:])
                found[m.uid] = m
    unindexed = 0
    backlog = False
    if conn.execute("SELECT 1 FROM fts_backlog LIMIT 1").fetchone() is not None:
        rows = conn.execute(
            f"SELECT {_m_columns()} FROM messages m JOIN fts_backlog b ON b.blob_id = m.blob_id"
            " WHERE m.mailbox_id = ? AND m.uid BETWEEN ? AND ?", (mailbox_id, uid_min, uid_max))
        for r in rows:
            m = common.message_from_row(r)
            backlog = True
            if m.uid not in found:
                unindexed += 1
            found[m.uid] = m
    return TextCandidates([found[u] for u in sorted(found)], unindexed, exact and not backlog)


def index_backlog(conn: sqlite3.Connection, limit: int, after: str) -> IndexProgress:
    """One step of the backlog (`Store.index_backlog`), in the caller's write transaction."""
    rows = conn.execute(
        "SELECT b.blob_id, s.meta, EXISTS(SELECT 1 FROM messages m WHERE m.blob_id = b.blob_id)"
        " FROM fts_backlog b LEFT JOIN blobs s ON s.id = b.blob_id WHERE b.blob_id > ? ORDER BY b.blob_id LIMIT ?",
        (after, limit),
    ).fetchall()
    indexed = 0
    needs: list[str] = []
    last = after
    for blob_id, meta, referenced in rows:
        last = str(blob_id)
        if not referenced or is_indexed(conn, last):  # a body only queued, or gone: nothing to search
            conn.execute("DELETE FROM fts_backlog WHERE blob_id = ?", (last,))
        elif (parsed := parse_meta(None if meta is None else bytes(meta))) is None:
            needs.append(last)
        elif index_blob(conn, last, bytes(meta), parsed=parsed):
            indexed += 1  # (else its rows cannot be derived: it stays, invariant 6, and the step goes on)
    remaining = conn.execute("SELECT count(*) FROM fts_backlog WHERE blob_id > ?", (last,)).fetchone()[0]
    return IndexProgress(len(rows), indexed, needs, last, int(remaining))


def scan(conn: sqlite3.Connection, blob_ids: Sequence[str], tests: Sequence[scanform.ScanTest],
         max_chars: int) -> TextScan:
    """`Store.scan_texts` (invariant 4): the tests evaluated on the scan form of each body of `blob_ids` that has
    one under the current `INDEX_VERSION`; the others are left out (the caller reads their metadata). Stops
    once more than `max_chars` characters were compared."""
    hits: dict[str, int] = {}
    compared = 0
    ids = list(dict.fromkeys(blob_ids))
    for i in range(0, len(ids), common.CHUNK):
        chunk = ids[i:i + common.CHUNK]
        marks = ",".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT d.blob_id, s.form FROM fts_docs d JOIN fts_scan s ON s.docid = d.docid"
            f" WHERE d.blob_id IN ({marks}) AND d.version = ?", (*chunk, INDEX_VERSION))
        for blob_id, form in rows:
            try:
                bits, chars = scanform.evaluate(form, tests)
            except scanform.ScanFormError:
                continue  # scanform invariant 2: the metadata decides
            hits[str(blob_id)] = bits
            compared += chars
            if compared > max_chars:
                return TextScan(hits, compared)
    return TextScan(hits, compared)
