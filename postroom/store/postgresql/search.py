"""Store calls of the full-text index (fts.py does the work): narrowing a SEARCH, checking it on scan forms,
working off the backlog."""

from __future__ import annotations

from collections.abc import Sequence

from postroom.store.api import MAX_SCAN_BODIES, IndexProgress, Invalid, TextCandidates, TextScan
from postroom.store.postgresql import fts
from postroom.store.postgresql.common import Base, load_mailbox
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx
from postroom.store.scanform import ScanTest
from postroom.store.sqlite.search import MAX_BACKLOG_STEP
from postroom.store.textindex import TextFilter


class SearchMixin(Base):
    async def search_text(self, mailbox_id: int, uid_min: int, uid_max: int,
                          flt: TextFilter) -> TextCandidates | None:
        async def q(conn: Conn) -> TextCandidates | None:
            await load_mailbox(conn, mailbox_id)
            return await fts.candidates(conn, mailbox_id, uid_min, min(uid_max, 2**63 - 1), flt)

        return await self._engine.read(q)

    async def scan_texts(self, blob_ids: Sequence[str], tests: Sequence[ScanTest], max_chars: int) -> TextScan:
        if len(blob_ids) > MAX_SCAN_BODIES:
            raise Invalid(f"scan_texts takes at most {MAX_SCAN_BODIES} bodies")
        ids = list(blob_ids)
        return await self._engine.read(lambda conn: fts.scan(conn, ids, tests, max_chars))

    async def index_backlog(self, limit: int, after: str = "") -> IndexProgress:
        if not 0 < limit <= MAX_BACKLOG_STEP:
            raise Invalid(f"index_backlog limit must be 1..{MAX_BACKLOG_STEP}")

        async def op(tx: Tx) -> IndexProgress:
            return await fts.index_backlog(tx.conn, limit, after)

        return await self._engine.write(op)
