"""Webmail sessions in SQLite (table `web_sessions`, schema version 15), for postroom/web/sessions.py.

The web layer decides what a session is worth (expiry, CSRF); this module only keeps rows, so that every process
with the store open sees a sign-in or a sign-out at once (the next request looks the row up).

Invariants:
1. A row is keyed by the SHA-256 hex of the session id; the id itself never reaches this module.
2. `get_web_session` is a primary-key point lookup; pruning is two range deletes, over the `last_seen` and the
   `created` index: neither reads the table whole.
"""

from __future__ import annotations

import sqlite3

from postroom.store.api import AlreadyExists, Invalid, NotFound, WebSession
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx

_COLUMNS = "id_hash, user_id, csrf, created, last_seen"


class WebSessionsMixin(Base):
    async def add_web_session(self, session: WebSession) -> None:
        row = (session.id_hash, session.user_id, session.csrf, session.created, session.last_seen)

        def op(tx: Tx) -> None:
            if tx.conn.execute("SELECT 1 FROM users WHERE id = ?", (session.user_id,)).fetchone() is None:
                raise NotFound(f"no user with id {session.user_id}")
            try:
                tx.conn.execute(f"INSERT INTO web_sessions({_COLUMNS}) VALUES (?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise AlreadyExists("a session with that id exists") from None

        await self._engine.write(op)

    async def get_web_session(self, id_hash: str) -> WebSession | None:
        def q(conn: sqlite3.Connection) -> WebSession | None:
            r = conn.execute(f"SELECT {_COLUMNS} FROM web_sessions WHERE id_hash = ?", (id_hash,)).fetchone()
            if r is None:
                return None
            return WebSession(str(r[0]), int(r[1]), str(r[2]), float(r[3]), float(r[4]))

        return await self._engine.read(q, quick=True)  # invariant 2: a point lookup

    async def touch_web_session(self, id_hash: str, now: float) -> None:
        def op(tx: Tx) -> None:
            tx.conn.execute("UPDATE web_sessions SET last_seen = max(last_seen, ?) WHERE id_hash = ?", (now, id_hash))

        await self._engine.write(op)

    async def delete_web_sessions(self, *, id_hash: str | None = None, user_id: int | None = None) -> int:
        if (id_hash is None) == (user_id is None):
            raise Invalid("give exactly one of id_hash and user_id")

        def op(tx: Tx) -> int:
            if id_hash is not None:
                return tx.conn.execute("DELETE FROM web_sessions WHERE id_hash = ?", (id_hash,)).rowcount
            return tx.conn.execute("DELETE FROM web_sessions WHERE user_id = ?", (user_id,)).rowcount

        return int(await self._engine.write(op))

    async def prune_web_sessions(self, idle_before: float, created_before: float) -> int:
        def op(tx: Tx) -> int:
            conn = tx.conn  # invariant 2: two index range deletes (an OR would scan)
            idle = conn.execute("DELETE FROM web_sessions WHERE last_seen < ?", (idle_before,)).rowcount
            return idle + conn.execute("DELETE FROM web_sessions WHERE created < ?", (created_before,)).rowcount

        return int(await self._engine.write(op))
