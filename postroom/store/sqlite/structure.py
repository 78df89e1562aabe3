"""The IMAP structure items of each body in SQLite (table `imap_structure`, schema 19), for imap/fetch.py.

Theory of operation
-------------------
FETCH ENVELOPE, BODYSTRUCTURE and BODY answer from a body's structure alone, and `mime.meta` encodes those three
values once, when the metadata is computed. Reading them back from the metadata means decoding a JSON document
that also carries the body's search text (up to hundreds of kilobytes), per message: over a 20,000-message
mailbox that decoding was most of a `FETCH 1:* (ENVELOPE BODYSTRUCTURE)` (issue 17 item 7). So the three values
are kept apart, one narrow row per body, written from the metadata in the transaction that stores or replaces
it (`put_structure`, called by threads.py `put_keys`, which decodes that metadata anyway), and read in batches
of `CHUNK` ids. Bodies stored before schema 19 have no row: the first FETCH that needs one decodes their
metadata as before and stores the row (`write_structures`), so an upgrade costs nothing at start.

Invariants:
1. A row exists only with its `blobs` row (`release_blobs` deletes it in the same transaction; the foreign key
   cascades should any code forget) and holds exactly the `envelope`, `bodystructure` and `body` of metadata of
   the current format of that body (schema invariant 24): bodies never change, so neither does the row.
2. Storing a row never fails the write that stores the message: it is derived data (a missing row only costs
   the reader a decoding).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from postroom.mime.meta import MessageMeta
from postroom.store.api import ImapStructure
from postroom.store.blobs import check_id
from postroom.store.sqlite.common import CHUNK, Base
from postroom.store.sqlite.engine import Tx


def put_structure(conn: sqlite3.Connection, blob_id: str, meta: MessageMeta) -> None:
    """Keep the structure items of `meta`, the metadata just stored for `blob_id` (invariant 1)."""
    conn.execute("INSERT OR REPLACE INTO imap_structure(blob_id, envelope, bodystructure, body) VALUES (?, ?, ?, ?)",
                 (blob_id, meta.envelope, meta.bodystructure, meta.body))


class StructureMixin(Base):
    async def read_structures(self, blob_ids: Iterable[str]) -> dict[str, ImapStructure]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        def q(conn: sqlite3.Connection) -> dict[str, ImapStructure]:
            out: dict[str, ImapStructure] = {}
            make = ImapStructure._make
            for i in range(0, len(wanted), CHUNK):
                chunk = wanted[i:i + CHUNK]
                marks = ",".join("?" * len(chunk))
                for row in conn.execute("SELECT blob_id, envelope, bodystructure, body FROM imap_structure"
                                        f" WHERE blob_id IN ({marks})", chunk):
                    out[row[0]] = make(row[1:])
            return out

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def write_structures(self, items: Mapping[str, ImapStructure]) -> None:
        rows = [(blob_id, bytes(s.envelope), bytes(s.bodystructure), bytes(s.body)) for blob_id, s in items.items()]
        for row in rows:
            check_id(row[0])

        def op(tx: Tx) -> None:
            # A body no longer stored has no `blobs` row: the SELECT yields nothing for it (invariant 1).
            tx.conn.executemany(
                "INSERT OR IGNORE INTO imap_structure(blob_id, envelope, bodystructure, body)"
                " SELECT id, ?, ?, ? FROM blobs WHERE id = ?",
                [(e, b, y, blob_id) for blob_id, e, b, y in rows],
            )

        if rows:
            await self._engine.write(op, size=sum(len(r[1]) + len(r[2]) + len(r[3]) for r in rows))
