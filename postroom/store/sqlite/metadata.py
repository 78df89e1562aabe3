"""IMAP METADATA entries (RFC 5464) in SQLite: one row per (user, mailbox or server, entry name).

Theory of operation: the table `metadata` (schema step 12, schema invariant 16) keys each entry by the user it
belongs to, the mailbox (0 for the server's entries) and its lower-case name. A GETMETADATA with a DEPTH reads
the named entries and, for depth 1 or infinity, the rows whose names start with "<name>/" (one index range per
name); depth 1 keeps those with no further "/". A SETMETADATA is one write job: every entry checked, then set or
removed, then the user's count checked, so a refusal changes nothing (RFC 5464 §4.3).

Another user's mailbox (RFC 5464 §3.3 with ACL, RFC 4314): the asking user's "/private" entries on it are rows
of the asking user; its "/shared" entries are rows of its owner, the same rows the owner reads and writes. Reading
either needs "r" on the mailbox, writing "/shared" entries needs "w" too; the rights are checked in the same
read or write job (`_keeper`), whatever the caller checked before.

Invariants:
1. Every call is scoped by user id; a mailbox id must be one of that user's mailboxes, or one whose ACL gives the
   user the rights the call needs (api invariant 6); anything else is NotFound.
2. A user never has more than `names.MAX_METADATA_ENTRIES` rows, nor a value over `names.MAX_METADATA_VALUE`
   (a sharee's "/shared" entries count for the owner, who granted "w").
3. A "/private" entry is only ever read or written in the asking user's rows, a "/shared" entry of a mailbox
   only in its owner's (`_holder`).
4. Each entry a SETMETADATA sets, or removes where there was one, is one METADATA change record, published once
   the write commits (NOTIFY's MailboxMetadataChange and ServerMetadataChange, RFC 5465 §5.6, §5.7). Its
   user_id is the row's holder, so a "/private" entry reaches only its user's feed and a mailbox's "/shared"
   entry the owner's feed and the sessions watching the mailbox (store/hub.py), the sharees among them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from postroom.store import names
from postroom.store.api import Change, ChangeKind, Invalid, MetadataTooMany, NotFound
from postroom.store.sqlite.acl import rights_of
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx


def _keeper(conn: sqlite3.Connection, user_id: int, mailbox_id: int, needed: str) -> int:
    """The user whose rows hold the mailbox's "/shared" entries (its owner; for the server, `user_id`), after
    checking that `user_id` may use them (invariant 1): their own mailbox, or one whose ACL gives them every
    right in `needed` (RFC 5464 §3.3). NotFound otherwise, and for a mailbox or user that is gone."""
    if mailbox_id == 0:
        if conn.execute("SELECT 1 FROM users WHERE id = ?", (user_id,)).fetchone() is None:
            raise NotFound(f"no user with id {user_id}")
        return user_id
    row = conn.execute("SELECT user_id FROM mailboxes WHERE id = ?", (mailbox_id,)).fetchone()
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    owner = int(row[0])
    if owner != user_id:
        rights = rights_of(conn, user_id, mailbox_id)  # "" across domains (acl.py invariant 3)
        if not rights or any(r not in rights for r in needed):
            raise NotFound(f"no mailbox with id {mailbox_id}")  # invariant 1
    return owner


def _holder(name: str, user_id: int, keeper: int) -> int:
    """Whose row an entry is (invariant 3): "/private" entries the user's, "/shared" ones the keeper's."""
    return keeper if name.startswith("/shared") else user_id


class MetadataMixin(Base):
    async def get_metadata(self, user_id: int, mailbox_id: int, names_: Sequence[str],
                           depth: int = 0) -> list[tuple[str, bytes]]:
        wanted = sorted({names.metadata_entry(n, prefix_ok=True) for n in names_})
        if depth not in (0, 1, -1):
            raise Invalid(f"bad METADATA depth {depth}")

        def q(conn: sqlite3.Connection) -> list[tuple[str, bytes]]:
            keeper = _keeper(conn, user_id, mailbox_id, "r")
            found: dict[str, bytes] = {}
            for name in wanted:
                holder = _holder(name, user_id, keeper)
                row = conn.execute("SELECT value FROM metadata WHERE user_id = ? AND mailbox_id = ? AND name = ?",
                                   (holder, mailbox_id, name)).fetchone()
                if row is not None:
                    found[name] = bytes(row[0])
                if depth == 0:
                    continue
                # The rows under "<name>/": names between "<name>/" and "<name>0" ("0" follows "/" in ASCII).
                for child, value in conn.execute(
                        "SELECT name, value FROM metadata WHERE user_id = ? AND mailbox_id = ? AND name > ?"
                        " AND name < ?", (holder, mailbox_id, name + "/", name + "0")):
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
            shared = any(name.startswith("/shared") for name, _ in checked)
            keeper = _keeper(tx.conn, user_id, mailbox_id, "rw" if shared else "r")  # RFC 5464 §3.3
            holders: set[int] = set()
            for name, value in checked:
                holder = _holder(name, user_id, keeper)
                holders.add(holder)
                if value is None:
                    gone = tx.conn.execute("DELETE FROM metadata WHERE user_id = ? AND mailbox_id = ? AND name = ?",
                                           (holder, mailbox_id, name)).rowcount
                    if not gone:
                        continue  # nothing changed, nothing to tell
                else:
                    tx.conn.execute("INSERT OR REPLACE INTO metadata(user_id, mailbox_id, name, value)"
                                    " VALUES (?, ?, ?, ?)", (holder, mailbox_id, name, value))
                tx.changes.append(Change(ChangeKind.METADATA, holder, mailbox_id, name=name))  # invariant 4
            for holder in holders:
                (count,) = tx.conn.execute("SELECT count(*) FROM metadata WHERE user_id = ?", (holder,)).fetchone()
                if count > names.MAX_METADATA_ENTRIES:  # invariant 2; raising rolls this job's changes back
                    raise MetadataTooMany(f"at most {names.MAX_METADATA_ENTRIES} METADATA entries per user")

        if checked:
            await self._engine.write(op, size=sum(len(v or b"") for _, v in checked))
