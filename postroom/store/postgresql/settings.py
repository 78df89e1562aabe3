"""User settings and the auto-reply record in PostgreSQL (schema step 10): the SQLite engine's settings.py, whose
module doc tells what the two tables hold and whose invariants hold here.

Theory of operation
-------------------
`set_user_settings` is one upsert of the user's row. `claim_auto_reply` is atomic across nodes without a lock of
its own: one `INSERT ... ON CONFLICT DO UPDATE ... WHERE auto_replies.sent < since RETURNING`: a row comes back
only when the claim succeeded (no row, or one older than the window), and two transactions claiming the same
(user, sender) at once serialise on the primary key's row, the second then seeing the first's time.
"""

from __future__ import annotations

from postroom.store.api import NotFound, UserSettings
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx
from postroom.store.sqlite.settings import COLUMNS, sender_key, settings_of, settings_row

_UPDATE = ", ".join(f"{c.strip()} = EXCLUDED.{c.strip()}" for c in COLUMNS.split(","))


class SettingsMixin(Base):
    async def get_user_settings(self, user_id: int) -> UserSettings:
        async def q(conn: Conn) -> UserSettings:
            r = await conn.fetchrow(f"SELECT {COLUMNS} FROM user_settings WHERE user_id = $1", user_id)
            return UserSettings() if r is None else settings_of(r)

        return await self._engine.read(q)

    async def set_user_settings(self, user_id: int, settings: UserSettings) -> None:
        values = settings_row(settings)

        async def op(tx: Tx) -> None:
            if await tx.conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR SHARE", user_id) is None:
                raise NotFound(f"no user with id {user_id}")
            await tx.conn.execute(
                f"INSERT INTO user_settings(user_id, {COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                f" ON CONFLICT (user_id) DO UPDATE SET {_UPDATE}", user_id, *values)

        await self._engine.write(op)

    async def claim_auto_reply(self, user_id: int, sender: str, now: float, since: float) -> bool:
        key = sender_key(sender)

        async def op(tx: Tx) -> bool:
            if await tx.conn.fetchval("SELECT 1 FROM users WHERE id = $1 FOR SHARE", user_id) is None:
                return False
            await tx.conn.execute("DELETE FROM auto_replies WHERE user_id = $1 AND sent < $2 AND sender <> $3",
                                  user_id, since, key)
            got = await tx.conn.fetchval(
                "INSERT INTO auto_replies(user_id, sender, sent) VALUES ($1, $2, $3) ON CONFLICT (user_id, sender)"
                " DO UPDATE SET sent = EXCLUDED.sent WHERE auto_replies.sent < $4 RETURNING 1",
                user_id, key, now, since)
            return got is not None

        return bool(await self._engine.write(op))
