"""The full-text index on PostgreSQL (schema step 6): the text of each body in `fts_text`, pg_trgm to narrow.

Theory of operation
-------------------
As on SQLite (store/sqlite/fts.py: its essay), the index is per body and made from the body's stored metadata:
`textindex.index_fields` gives the case-folded text of each header column and of the body, `scanform.build` the
scan form the exact check reads. Here both go into one row of `fts_text` per indexed body (keyed by the body's
id, removed with it by the foreign key's cascade), and each text column has a GIN index of pg_trgm's trigrams.

`candidates` narrows a SEARCH with `LIKE '%piece%'` on the key's columns, for each piece of each needle
(`TextTerm.pieces`, case-folded like the indexed text), combined by the filter's AND / OR, over the messages of
the UID range: PostgreSQL answers a LIKE from the trigram index and then checks it on the row, so the answer
is exactly the bodies whose folded field holds the piece, never fewer than the exact check would match
(textindex invariant 1), plus every message whose body is in the backlog. The exact check then runs on the
scan forms (`scan`), as on SQLite: the answers are identical. When every needle was looked up whole
(`TextTerm.whole`) under ANDs and ORs, the LIKEs were the exact check itself (textindex invariant 3): the
candidates say so (`TextCandidates.exact`, for any key, body and TEXT included), and SEARCH reads no scan form.

Invariants (SQLite's fts.py 1-4, with these differences):
1. A body referenced by messages has its `fts_text` row or its `fts_backlog` row (`index_blob`, called by
   `acquire_blob` for a message's body; `replace_meta` for `write_metas`); both go with the `blobs` row.
2. Rows are of `fts_text.version`; a store indexed under another `INDEX_VERSION` is emptied into the backlog
   when opened (`check_version`).
3. (SQLite's invariant 6) A body whose rows cannot be derived from its metadata is logged and left in the
   backlog before any row of it is written: it fails neither the append or delivery that stores it (written
   in the same transaction here) nor a step of the backlog.
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.mime.meta import MessageMeta
from postroom.store import scanform
from postroom.store.api import IndexProgress, MessageInfo, TextCandidates, TextScan
from postroom.store.postgresql.common import MESSAGE_COLUMNS, message_from_row
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.sqlite.fts import INDEX_VERSION, derive_rows, parse_meta
from postroom.store.textindex import HEAD_COLUMNS, TextAll, TextAny, TextFilter, TextTerm

_COLUMNS = (*(f"h_{c}" for c in HEAD_COLUMNS), "body")  # `derive_rows`' values, in this order (no NUL, which
# PostgreSQL's text cannot hold: textindex gives U+FFFD)


async def check_version(conn: Conn) -> bool:
    """At open: if the index is of another `INDEX_VERSION`, empty it into the backlog. True if it was reset."""
    found = await conn.fetchval("SELECT value FROM counters WHERE name = 'fts_version'")
    if found is not None and int(found) == INDEX_VERSION:
        return False
    if found is not None:
        await conn.execute("DELETE FROM fts_text")
        await conn.execute("INSERT INTO fts_backlog(blob_id) SELECT DISTINCT blob_id FROM messages"
                           " ON CONFLICT DO NOTHING")
    await conn.execute("INSERT INTO counters(name, value) VALUES ('fts_version', $1)"
                       " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", INDEX_VERSION)
    return found is not None


async def index_blob(conn: Conn, blob_id: str, meta: bytes | None, *, fresh: bool = False,
                     parsed: MessageMeta | None = None) -> bool:
    """Index body `blob_id` from its stored metadata, or put it in the backlog when that is missing or of an
    older format. True if indexed. `fresh`: stored by this transaction, so not in the backlog. `parsed`: `meta`
    decoded already (`parse_meta`), when the caller has it."""
    if parsed is None:
        parsed = parse_meta(meta)
    derived = None if parsed is None else derive_rows(blob_id, parsed)  # SQLite's fts.py invariant 6
    if derived is None:
        await conn.execute("INSERT INTO fts_backlog(blob_id) VALUES ($1) ON CONFLICT DO NOTHING", blob_id)
        return False
    values, form = derived
    marks = ", ".join(f"${i}" for i in range(4, 4 + len(_COLUMNS)))
    await conn.execute(
        f"INSERT INTO fts_text(blob_id, version, form, {', '.join(_COLUMNS)}) VALUES ($1, $2, $3, {marks})"
        " ON CONFLICT (blob_id) DO NOTHING", blob_id, INDEX_VERSION, form, *values)
    if not fresh:
        await conn.execute("DELETE FROM fts_backlog WHERE blob_id = $1", blob_id)
    return True


async def index_if_new(conn: Conn, blob_id: str) -> None:
    """A body that now has a message (it may have been a queue entry's only): indexed if it is not yet."""
    if await conn.fetchval("SELECT 1 FROM fts_text WHERE blob_id = $1 UNION ALL"
                           " SELECT 1 FROM fts_backlog WHERE blob_id = $1 LIMIT 1", blob_id) is None:
        meta = await conn.fetchval("SELECT meta FROM blobs WHERE id = $1", blob_id)
        await index_blob(conn, blob_id, None if meta is None else bytes(meta))


async def replace_meta(conn: Conn, blob_id: str, meta: bytes) -> bool:
    """New metadata for a stored body (`write_metas`): replaced, and the body indexed again from it."""
    if await conn.fetchval("SELECT 1 FROM blobs WHERE id = $1", blob_id) is None:
        return False
    await conn.execute("UPDATE blobs SET meta = $1 WHERE id = $2", meta, blob_id)
    await conn.execute("DELETE FROM fts_text WHERE blob_id = $1", blob_id)
    if await conn.fetchval("SELECT 1 FROM messages WHERE blob_id = $1 LIMIT 1", blob_id):
        await index_blob(conn, blob_id, meta)
    return True


def _like(piece: str) -> str:
    return "%" + piece.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _term_sql(term: TextTerm, args: list[object]) -> tuple[str, bool] | None:
    """(a condition on `t` that a body whose text may match `term` meets, whether exactly those match: a whole
    needle's LIKE on the field text itself, textindex invariant 3); None if the term cannot narrow."""
    pieces = term.pieces()
    if not pieces:
        return None
    columns = [f"t.h_{f}" if f != "body" else "t.body" for f in term.fields()]
    conds = []
    for piece in pieces:
        args.append(_like(piece.replace("\x00", "")))
        conds.append("(" + " OR ".join(f"{c} LIKE ${len(args)}" for c in columns) + ")")
    return "(" + " AND ".join(conds) + ")", term.whole() is not None


def _filter_sql(flt: TextFilter, args: list[object]) -> tuple[str, bool] | None:
    """(condition, exact) for a filter: an AND keeps the parts that narrow (exact if all are, and none was left
    out), an OR needs both sides to."""
    if isinstance(flt, TextTerm):
        return _term_sql(flt, args)
    parts = []
    exact = True
    for t in flt.terms:
        part = _filter_sql(t, args)
        if part is None and isinstance(flt, TextAny):
            return None  # one side cannot narrow: neither can the OR
        if part is None:
            exact = False
        else:
            parts.append(part[0])
            exact = exact and part[1]
    if not parts:
        return None
    return "(" + (" AND " if isinstance(flt, TextAll) else " OR ").join(parts) + ")", exact


async def candidates(conn: Conn, mailbox_id: int, uid_min: int, uid_max: int,
                     flt: TextFilter) -> TextCandidates | None:
    """The messages of the UID range that may match `flt` (module doc), or None when it cannot be narrowed."""
    args: list[object] = [mailbox_id, uid_min, uid_max]
    narrowed = _filter_sql(flt, args)
    if narrowed is None:
        return None
    cond, exact = narrowed
    columns = ", ".join("m." + c.strip() for c in MESSAGE_COLUMNS.split(","))
    found: dict[int, MessageInfo] = {}
    for r in await conn.fetch(
            f"SELECT {columns} FROM messages m JOIN fts_text t ON t.blob_id = m.blob_id"
            f" WHERE m.mailbox_id = $1 AND m.uid BETWEEN $2 AND $3 AND t.version = {INDEX_VERSION} AND {cond}",
            *args):
        m = message_from_row(tuple(r))
        found[m.uid] = m
    unindexed = 0
    before = len(found)  # exact only if no body from the backlog (or of another version) joins the candidates
    for r in await conn.fetch(
            f"SELECT {columns} FROM messages m WHERE m.mailbox_id = $1 AND m.uid BETWEEN $2 AND $3"
            " AND (EXISTS(SELECT 1 FROM fts_backlog b WHERE b.blob_id = m.blob_id)"
            f" OR EXISTS(SELECT 1 FROM fts_text t WHERE t.blob_id = m.blob_id AND t.version <> {INDEX_VERSION}))",
            mailbox_id, uid_min, uid_max):
        m = message_from_row(tuple(r))
        if m.uid not in found:
            unindexed += 1
        found[m.uid] = m
    return TextCandidates([found[u] for u in sorted(found)], unindexed, exact and len(found) == before)


async def index_backlog(conn: Conn, limit: int, after: str) -> IndexProgress:
    """One step of the backlog (`Store.index_backlog`), in the caller's write transaction."""
    found = await conn.fetch(
        "SELECT b.blob_id, s.meta, EXISTS(SELECT 1 FROM messages m WHERE m.blob_id = b.blob_id)"
        " FROM fts_backlog b LEFT JOIN blobs s ON s.id = b.blob_id WHERE b.blob_id > $1 ORDER BY b.blob_id"
        " LIMIT $2 FOR UPDATE OF b", after, limit)
    indexed = 0
    needs: list[str] = []
    last = after
    for blob_id, meta, referenced in found:
        last = str(blob_id)
        indexed_now = await conn.fetchval("SELECT 1 FROM fts_text WHERE blob_id = $1", last)
        if not referenced or indexed_now:  # a body only queued, or gone: nothing to search
            await conn.execute("DELETE FROM fts_backlog WHERE blob_id = $1", last)
        elif (parsed := parse_meta(None if meta is None else bytes(meta))) is None:
            needs.append(last)
        elif await index_blob(conn, last, bytes(meta), parsed=parsed):
            indexed += 1  # (else its rows cannot be derived: it stays, and the step goes on)
    remaining = await conn.fetchval("SELECT count(*) FROM fts_backlog WHERE blob_id > $1", last)
    return IndexProgress(len(found), indexed, needs, last, int(remaining))


async def scan(conn: Conn, blob_ids: Sequence[str], tests: Sequence[scanform.ScanTest], max_chars: int) -> TextScan:
    """`Store.scan_texts`: the tests evaluated on the scan form of each body of `blob_ids` indexed under the
    current version; the others are left out (the caller reads their metadata)."""
    hits: dict[str, int] = {}
    compared = 0
    for blob_id, form in await conn.fetch("SELECT blob_id, form FROM fts_text WHERE blob_id = ANY($1::text[])"
                                          " AND version = $2", list(dict.fromkeys(blob_ids)), INDEX_VERSION):
        try:
            bits, chars = scanform.evaluate(bytes(form), tests)
        except scanform.ScanFormError:
            continue  # scanform invariant 2: the metadata decides
        hits[str(blob_id)] = bits
        compared += chars
        if compared > max_chars:
            break
    return TextScan(hits, compared)
