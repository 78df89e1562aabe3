"""Failed-login records in PostgreSQL (table `auth_failures`, schema step 2): the SQLite engine's authfail.py.

Invariants:
1. The table holds no row whose `expires` has passed once a save or a load ran: both delete them.
2. `load_auth_failures(now, limit)` leaves at most `limit` rows.
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.store.api import AuthFailures
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx

COLUMNS = "address, username, failures, last_failure, locked_since, locked_until, expires"


class AuthFailuresMixin(Base):
    async def load_auth_failures(self, now: float, limit: int) -> list[AuthFailures]:
        async def op(tx: Tx) -> list[AuthFailures]:
            await tx.conn.execute("DELETE FROM auth_failures WHERE expires <= $1", now)  # invariant 1
            found = await tx.conn.fetch(f"SELECT {COLUMNS} FROM auth_failures ORDER BY expires DESC")
            keep, drop = found[:limit], found[limit:]
            await tx.conn.executemany("DELETE FROM auth_failures WHERE address = $1 AND username = $2",
                                      [(r[0], r[1]) for r in drop])  # invariant 2
            return [AuthFailures(str(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5]),
                                 float(r[6])) for r in keep]

        return await self._engine.write(op)

    async def save_auth_failures(self, records: Sequence[AuthFailures], remove: Sequence[tuple[str, str]],
                                 now: float) -> None:
        found = [(r.address, r.username, r.failures, r.last_failure, r.locked_since, r.locked_until, r.expires)
                 for r in records]
        gone = sorted(set(remove))

        async def op(tx: Tx) -> None:
            if gone:
                await tx.conn.executemany("DELETE FROM auth_failures WHERE address = $1 AND username = $2", gone)
            if found:
                await tx.conn.executemany(
                    f"INSERT INTO auth_failures({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                    " ON CONFLICT (address, username) DO UPDATE SET failures = EXCLUDED.failures,"
                    " last_failure = EXCLUDED.last_failure, locked_since = EXCLUDED.locked_since,"
                    " locked_until = EXCLUDED.locked_until, expires = EXCLUDED.expires", found)
            await tx.conn.execute("DELETE FROM auth_failures WHERE expires <= $1", now)  # invariant 1

        await self._engine.write(op)

    async def read_auth_failures(self, keys: Sequence[tuple[str, str]], now: float) -> list[AuthFailures]:
        wanted = list(keys)

        async def q(conn: Conn) -> list[AuthFailures]:
            if not wanted:
                return []
            found = await conn.fetch(
                f"SELECT {COLUMNS} FROM auth_failures WHERE (address, username) IN"
                " (SELECT * FROM unnest($1::text[], $2::text[])) AND expires > $3",
                [a for a, _ in wanted], [u for _, u in wanted], now)
            by_key = {(str(r[0]), str(r[1])): r for r in found}
            return [AuthFailures(str(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5]),
                                 float(r[6])) for r in (by_key.get(k) for k in dict.fromkeys(wanted)) if r is not None]

        return await self._engine.read(q)
