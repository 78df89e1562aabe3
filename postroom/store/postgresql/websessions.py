"""Webmail sessions in PostgreSQL (table `web_sessions`, schema step 2): the SQLite engine's websessions.py.

Invariants:
1. A row is keyed by the SHA-256 hex of the session id; the id itself never reaches this module.
2. `get_web_session` is a primary-key point lookup; pruning is two index range deletes.
"""

from __future__ import annotations

import asyncpg

from postroom.store.api import AlreadyExists, Invalid, NotFound, WebSession
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx, rowcount

_COLUMNS = "id_hash, user_id, csrf, created, last_seen"


class WebSessionsMixin(Base):
    async def add_web_session(self, session: WebSession) -> None:
        async def op(tx: Tx) -> None:
            if await tx.conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR SHARE", session.user_id) is None:
                raise NotFound(f"no user with id {session.user_id}")
            try:
                await tx.conn.execute(f"INSERT INTO web_sessions({_COLUMNS}) VALUES ($1, $2, $3, $4, $5)",
                                      session.id_hash, session.user_id, session.csrf, session.created,
                                      session.last_seen)
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("a session with that id exists") from None

        await self._engine.write(op)

    async def get_web_session(self, id_hash: str) -> WebSession | None:
        async def q(conn: Conn) -> WebSession | None:
            r = await conn.fetchrow(f"SELECT {_COLUMNS} FROM web_sessions WHERE id_hash = $1", id_hash)
            if r is None:
                return None
            return WebSession(str(r[0]), int(r[1]), str(r[2]), float(r[3]), float(r[4]))

        return await self._engine.read(q)

    async def touch_web_session(self, id_hash: str, now: float) -> None:
        async def op(tx: Tx) -> None:
            await tx.conn.execute("UPDATE web_sessions SET last_seen = greatest(last_seen, $1) WHERE id_hash = $2",
                                  now, id_hash)

        await self._engine.write(op)

    async def delete_web_sessions(self, *, id_hash: str | None = None, user_id: int | None = None) -> int:
        if (id_hash is None) == (user_id is None):
            raise Invalid("give exactly one of id_hash and user_id")

        async def op(tx: Tx) -> int:
            if id_hash is not None:
                return rowcount(await tx.conn.execute("DELETE FROM web_sessions WHERE id_hash = $1", id_hash))
            return rowcount(await tx.conn.execute("DELETE FROM web_sessions WHERE user_id = $1", user_id))

        return int(await self._engine.write(op))

    async def prune_web_sessions(self, idle_before: float, created_before: float) -> int:
        async def op(tx: Tx) -> int:
            idle = rowcount(await tx.conn.execute("DELETE FROM web_sessions WHERE last_seen < $1", idle_before))
            return idle + rowcount(await tx.conn.execute("DELETE FROM web_sessions WHERE created < $1",
                                                         created_before))

        return int(await self._engine.write(op))
