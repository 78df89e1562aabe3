"""IMAP METADATA entries (RFC 5464) in SQLite: one row per (user, mailbox or server, entry name).

Theory of operation: the table `metadata` (schema step 12, schema invariant 16) keys each entry by the user it
belongs to, the mailbox (0 for the server's entries) and its lower-case name. A GETMETADATA with a DEPTH reads
the named entries and, for depth 1 or infinity, the rows whose names start with "<name>/" (one index range per
name); depth 1 keeps those with no further "/". A SETMETADATA is one write job: every entry checked, then set or
removed, then the user's count checked, so a refusal changes nothing (RFC 5464 §4.3).

Invariants:
1. Every call is scoped by user id; a mailbox id must be one of that user's mailboxes (api invariant 6).
2. A user never has more than `names.MAX_METADATA_ENTRIES` rows, nor a value over `names.MAX_METADATA_VALUE`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from postroom.store import names
from postroom.store.api import Invalid, MetadataTooMany, NotFound
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx


def _check_mailbox(conn: sqlite3.Connection, user_id: int, mailbox_id: int) -> None:
    if mailbox_id == 0:
        if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
            raise NotFound(f"no user with id {user_id}")
        return
    row = conn.execute("SELECT 1 FROM mailboxes WHERE id = ? AND user_id = ?", (mailbox_id, user_id)).fetchone()
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")  # invariant 1


class MetadataMixin(Base):
    async def get_metadata(self, user_id: int, mailbox_id: int, names_: Sequence[str],
                           depth: int = 0) -> list[tuple[str, bytes]]:
        wanted = sorted({names.metadata_entry(n, prefix_ok=True) for n in names_})
        if depth not in (0, 1, -1):
            raise Invalid(f"bad METADATA depth {depth}")

        def q(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            _check_mailbox(conn, user_id, mailbox_id)
            found: dict[str, bytes] = {}
            for name in wanted:
                row = conn.execute("SELECT value FROM metadata WHERE user_id = ? AND mailbox_id = ? AND name = ?",
                                   (user_id, mailbox_id, name)).fetchone()
                if row is not None:
                    found[name] = bytes(row[0])
                if depth == 0:
                    continue
                # The rows under "<name>/": names between "<name>/" and "<name>0" ("0" follows "/" in ASCII).
                for child, value in conn.execute(
                        "SELECT name, value FROM metadata WHERE user_id = ? AND mailbox_id = ? AND name > ?"
                        " AND name < ?", (user_id, mailbox_id, name + "/", name + "0")):
                    if depth == 1 and "/" in str(child)[len(name) + 1:]:
                        continue
                    found[str(child)] = bytes(value)
            return sorted(found.items())

        return await self._engine.read(q)

    async def set_metadata(self, user_id: int, mailbox_id: int,
                           entries: Sequence[tuple[str, bytes | None]]) -> None:
        checked: list[tuple[str, bytes | None]] = []
        for name, value in entries:
            if value is not None and len(value) > names.MAX_METADATA_VALUE:
                raise Invalid(f"a METADATA value is at most {names.MAX_METADATA_VALUE} octets")  # invariant 2
            checked.append((names.metadata_entry(name), None if value is None else bytes(value)))

        def op(tx: Tx) -> None:
            _check_mailbox(tx.conn, user_id, mailbox_id)
            for name, value in checked:
                if value is None:
                    tx.conn.execute("DELETE FROM metadata WHERE user_id = ? AND mailbox_id = ? AND name = ?",
                                    (user_id, mailbox_id, name))
                else:
                    tx.conn.execute("INSERT OR REPLACE INTO metadata(user_id, mailbox_id, name, value)"
                                    " VALUES (?, ?, ?, ?)", (user_id, mailbox_id, name, value))
            (count,) = tx.conn.execute("SELECT count(*) FROM metadata WHERE user_id = ?", (user_id,)).fetchone()
            if count > names.MAX_METADATA_ENTRIES:  # invariant 2; raising rolls this job's changes back
                raise MetadataTooMany(f"at most {names.MAX_METADATA_ENTRIES} METADATA entries per user")

        if checked:
            await self._engine.write(op, size=sum(len(v or b"") for _, v in checked))
