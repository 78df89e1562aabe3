"""Failed-login records in SQLite (table `auth_failures`, schema version 6), for auth/authenticator.py.

The Authenticator holds every record in memory and writes each change through here, so a restart is not a
reset for an attacker. This module only keeps rows: the policy (windows, delays, locks) is the Authenticator's.

Invariants:
1. The table holds no row whose `expires` has passed once a save or a load ran: both delete them (an index on
   `expires` makes that a range delete, not a scan).
2. `load_auth_failures(now, limit)` leaves at most `limit` rows, so the table is bounded by what the
   Authenticator keeps in memory, whatever an attacker cycling addresses does.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from postroom.store.api import AuthFailures
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx

COLUMNS = "address, username, failures, last_failure, locked_since, locked_until, expires"


class AuthFailuresMixin(Base):
    async def load_auth_failures(self, now: float, limit: int) -> list[AuthFailures]:
        def op(tx: Tx) -> list[AuthFailures]:
            conn: sqlite3.Connection = tx.conn
            conn.execute("DELETE FROM auth_failures WHERE expires <= ?", (now,))  # invariant 1
            rows = conn.execute(f"SELECT {COLUMNS} FROM auth_failures ORDER BY expires DESC").fetchall()
            keep, drop = rows[:limit], rows[limit:]
            conn.executemany("DELETE FROM auth_failures WHERE address = ? AND username = ?",
                             [(r[0], r[1]) for r in drop])  # invariant 2
            return [AuthFailures(str(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]), float(r[5]),
                                 float(r[6])) for r in keep]

        return await self._engine.write(op)

    async def read_auth_failures(self, keys: Sequence[tuple[str, str]], now: float) -> list[AuthFailures]:
        wanted = list(keys)

        def op(conn: sqlite3.Connection) -> list[AuthFailures]:
            out = []
            for address, username in wanted:
                r = conn.execute(f"SELECT {COLUMNS} FROM auth_failures WHERE address = ? AND username = ? "
                                 "AND expires > ?", (address, username, now)).fetchone()
                if r is not None:
                    out.append(AuthFailures(str(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]),
                                            float(r[5]), float(r[6])))
            return out

        return await self._engine.read(op, quick=True)  # two point lookups by primary key

    async def save_auth_failures(self, records: Sequence[AuthFailures], remove: Sequence[tuple[str, str]],
                                 now: float) -> None:
        rows = [(r.address, r.username, r.failures, r.last_failure, r.locked_since, r.locked_until, r.expires)
                for r in records]
        gone = list(remove)

        def op(tx: Tx) -> None:
            conn = tx.conn
            if gone:
                conn.executemany("DELETE FROM auth_failures WHERE address = ? AND username = ?", gone)
            if rows:
                conn.executemany(f"INSERT OR REPLACE INTO auth_failures({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                 rows)
            conn.execute("DELETE FROM auth_failures WHERE expires <= ?", (now,))  # invariant 1

        await self._engine.write(op)
