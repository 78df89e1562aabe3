"""IMAP METADATA entries (RFC 5464) in PostgreSQL (schema step 4): the SQLite engine's metadata.py, same
invariants. A SETMETADATA locks the holders' user rows before it counts their entries, so two nodes setting
entries at once cannot together pass `names.MAX_METADATA_ENTRIES`.
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.store import names
from postroom.store.api import Change, ChangeKind, Invalid, MetadataTooMany, NotFound
from postroom.store.postgresql.acl import rights_of
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx, rowcount
from postroom.store.sqlite.metadata import _holder


async def _keeper(conn: Conn, user_id: int, mailbox_id: int, needed: str) -> int:
    """The user whose rows hold the mailbox's "/shared" entries, after checking `user_id` may use them
    (RFC 5464 §3.3); NotFound otherwise."""
    if mailbox_id == 0:
        if await conn.fetchval("SELECT 1 FROM users WHERE id = $1", user_id) is None:
            raise NotFound(f"no user with id {user_id}")
        return user_id
    owner = await conn.fetchval("SELECT user_id FROM mailboxes WHERE id = $1", mailbox_id)
    if owner is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    if int(owner) != user_id:
        rights = await rights_of(conn, user_id, mailbox_id)
        if not rights or any(r not in rights for r in needed):
            raise NotFound(f"no mailbox with id {mailbox_id}")
    return int(owner)


class MetadataMixin(Base):
    async def get_metadata(self, user_id: int, mailbox_id: int, names_: Sequence[str],
                           depth: int = 0) -> list[tuple[str, bytes]]:
        wanted = sorted({names.metadata_entry(n, prefix_ok=True) for n in names_})
        if depth not in (0, 1, -1):
            raise Invalid(f"bad METADATA depth {depth}")

        async def q(conn: Conn) -> list[tuple[str, bytes]]:
            keeper = await _keeper(conn, user_id, mailbox_id, "r")
            found: dict[str, bytes] = {}
            for name in wanted:
                holder = _holder(name, user_id, keeper)
                value = await conn.fetchval(
                    "SELECT value FROM metadata WHERE user_id = $1 AND mailbox_id = $2 AND name = $3",
                    holder, mailbox_id, name)
                if value is not None:
                    found[name] = bytes(value)
                if depth == 0:
                    continue
                # The rows under "<name>/": names between "<name>/" and "<name>0" (the C collation: bytes order).
                for child, child_value in await conn.fetch(
                        "SELECT name, value FROM metadata WHERE user_id = $1 AND mailbox_id = $2"
                        " AND name COLLATE \"C\" > $3 AND name COLLATE \"C\" < $4",
                        holder, mailbox_id, name + "/", name + "0"):
                    if depth == 1 and "/" in str(child)[len(name) + 1:]:
                        continue
                    found[str(child)] = bytes(child_value)
            return sorted(found.items())

        return await self._engine.read(q)

    async def set_metadata(self, user_id: int, mailbox_id: int,
                           entries: Sequence[tuple[str, bytes | None]]) -> None:
        checked: list[tuple[str, bytes | None]] = []
        for name, value in entries:
            if value is not None and len(value) > names.MAX_METADATA_VALUE:
                raise Invalid(f"a METADATA value is at most {names.MAX_METADATA_VALUE} octets")
            checked.append((names.metadata_entry(name), None if value is None else bytes(value)))

        async def op(tx: Tx) -> None:
            shared = any(name.startswith("/shared") for name, _ in checked)
            keeper = await _keeper(tx.conn, user_id, mailbox_id, "rw" if shared else "r")  # RFC 5464 §3.3
            holders = sorted({_holder(name, user_id, keeper) for name, _ in checked})
            await tx.conn.execute("SELECT 1 FROM users WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE", holders)
            for name, value in checked:
                holder = _holder(name, user_id, keeper)
                if value is None:
                    if not rowcount(await tx.conn.execute(
                            "DELETE FROM metadata WHERE user_id = $1 AND mailbox_id = $2 AND name = $3",
                            holder, mailbox_id, name)):
                        continue
                else:
                    await tx.conn.execute(
                        "INSERT INTO metadata(user_id, mailbox_id, name, value) VALUES ($1, $2, $3, $4)"
                        " ON CONFLICT (user_id, mailbox_id, name) DO UPDATE SET value = EXCLUDED.value",
                        holder, mailbox_id, name, value)
                tx.changes.append(Change(ChangeKind.METADATA, holder, mailbox_id, name=name))
            for holder in holders:
                count = await tx.conn.fetchval("SELECT count(*) FROM metadata WHERE user_id = $1", holder)
                if count > names.MAX_METADATA_ENTRIES:
                    raise MetadataTooMany(f"at most {names.MAX_METADATA_ENTRIES} METADATA entries per user")

        if checked:
            await self._engine.write(op)
