"""The IMAP structure items of each body in PostgreSQL (table `imap_structure`, schema step 7), for imap/fetch.py.

Theory of operation
-------------------
The SQLite engine's structure.py, whose module doc tells why the ENVELOPE, BODYSTRUCTURE and BODY values are
kept apart from a body's metadata. As there, the row is written from the metadata in the transaction that stores
or replaces it (`put_structure`, called by threads.py `put_keys`, which decodes that metadata anyway), and bodies
stored before the step get theirs from the first FETCH that decodes their metadata (`write_structures`). A batch
is read with one `= ANY($1)` query, however many ids.

Invariants (those of the SQLite engine's structure.py):
1. A row exists only with its `blobs` row (the foreign key cascades when the body's row goes, in that
   transaction) and holds exactly the `envelope`, `bodystructure` and `body` of metadata of the current format
   of that body: bodies never change, so neither does the row.
2. Storing a row never fails the write that stores the message: it is derived data (a missing row only costs
   the reader a decoding).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from postroom.mime.meta import MessageMeta
from postroom.store.api import ImapStructure
from postroom.store.blobs import check_id
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx


async def put_structure(conn: Conn, blob_id: str, meta: MessageMeta) -> None:
    """Keep the structure items of `meta`, the metadata just stored for `blob_id` (invariant 1)."""
    await conn.execute(
        "INSERT INTO imap_structure(blob_id, envelope, bodystructure, body) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (blob_id) DO UPDATE SET envelope = EXCLUDED.envelope,"
        " bodystructure = EXCLUDED.bodystructure, body = EXCLUDED.body",
        blob_id, bytes(meta.envelope), bytes(meta.bodystructure), bytes(meta.body))


class StructureMixin(Base):
    async def read_structures(self, blob_ids: Iterable[str]) -> dict[str, ImapStructure]:
        wanted = sorted(set(blob_ids))
        for blob_id in wanted:
            check_id(blob_id)

        async def q(conn: Conn) -> dict[str, ImapStructure]:
            rows = await conn.fetch("SELECT blob_id, envelope, bodystructure, body FROM imap_structure"
                                    " WHERE blob_id = ANY($1)", wanted)
            return {str(r[0]): ImapStructure(bytes(r[1]), bytes(r[2]), bytes(r[3])) for r in rows}

        if not wanted:
            return {}
        return await self._engine.read(q)

    async def write_structures(self, items: Mapping[str, ImapStructure]) -> None:
        rows = [(blob_id, bytes(s.envelope), bytes(s.bodystructure), bytes(s.body)) for blob_id, s in items.items()]
        for row in rows:
            check_id(row[0])

        async def op(tx: Tx) -> None:
            # A body no longer stored has no `blobs` row: the SELECT yields nothing for it (invariant 1); one
            # that has its row keeps it (the same values).
            await tx.conn.executemany(
                "INSERT INTO imap_structure(blob_id, envelope, bodystructure, body)"
                " SELECT id, $2, $3, $4 FROM blobs WHERE id = $1 ON CONFLICT (blob_id) DO NOTHING", rows)

        if rows:
            await self._engine.write(op)
