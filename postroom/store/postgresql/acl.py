"""Mailbox access control lists in PostgreSQL (RFC 4314): the SQLite engine's acl.py, same invariants.

Concurrency: `set_acl` locks the mailbox row before it reads the entry it rewrites (invariant 5 across nodes:
two "+" modifications never lose each other's rights); `shared_folders_owner` creates the owner under the
domain row's lock, so two nodes never make two.
"""

from __future__ import annotations

from collections.abc import Iterable

from postroom.store import names
from postroom.store.api import (
    ANYONE,
    RIGHTS,
    AclEntry,
    Change,
    ChangeKind,
    Forbidden,
    Invalid,
    NotFound,
    SharedMailbox,
    WriteResult,
)
from postroom.store.postgresql.common import MAILBOX_COLUMNS, Base, find_mailbox, mailbox_from_row
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx
from postroom.store.sqlite.acl import canonical, effective

ALL_RIGHTS = RIGHTS


async def _owner(conn: Conn, mailbox_id: int, *, lock: bool = False) -> tuple[int, int]:
    """(owner's user id, owner's domain id) of a mailbox; NotFound if it is gone. `lock`: the mailbox row."""
    row = await conn.fetchrow(
        "SELECT m.user_id, u.domain_id FROM mailboxes m JOIN users u ON u.id = m.user_id WHERE m.id = $1"
        + (" FOR UPDATE OF m" if lock else ""), mailbox_id)
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    return int(row[0]), int(row[1])


async def _grantee(conn: Conn, identifier: str, owner_id: int,
                   domain_id: int) -> tuple[int | None, bool]:
    negative = identifier.startswith("-")
    ident = identifier[1:] if negative else identifier
    if ident.lower() == ANYONE:
        return None, negative
    address = names.address(ident)
    row = await conn.fetchrow("SELECT id, domain_id FROM users WHERE address = $1", address)
    if row is None or int(row[1]) != domain_id:
        raise Invalid(f"rights can only be given to users of the mailbox owner's domain: {ident}")
    if int(row[0]) == owner_id:
        raise Invalid("the owner of a mailbox always has every right")
    return int(row[0]), negative


async def rights_of(conn: Conn, user_id: int, mailbox_id: int) -> str:
    """The user's rights on the mailbox; "" if it is gone or of another domain."""
    row = await conn.fetchrow(
        "SELECT m.user_id, o.domain_id, (SELECT domain_id FROM users WHERE id = $1)"
        " FROM mailboxes m JOIN users o ON o.id = m.user_id WHERE m.id = $2", user_id, mailbox_id)
    if row is None:
        return ""
    if int(row[0]) == user_id:
        return ALL_RIGHTS
    if row[2] is None or int(row[1]) != int(row[2]):
        return ""
    found = await conn.fetch(
        "SELECT negative, rights FROM acl WHERE mailbox_id = $1 AND (grantee_id = $2 OR grantee_id IS NULL)",
        mailbox_id, user_id)
    return effective((r[0], r[1]) for r in found)


async def require_parent(conn: Conn, user_id: int, parent_id: int | None) -> None:
    """Forbidden unless the user has "k" on `parent_id` (RFC 4314 §4 CREATE)."""
    if parent_id is None or "k" not in await rights_of(conn, user_id, parent_id):
        raise Forbidden("no right to create a mailbox there")


async def inherit(tx: Tx, parent_id: int | None, new_ids: Iterable[int]) -> None:
    """Copy the ACL of `parent_id` to each new mailbox (RFC 4314 §4)."""
    if parent_id is None:
        return
    found = await tx.conn.fetch("SELECT grantee_id, negative, rights FROM acl WHERE mailbox_id = $1", parent_id)
    if not found:
        return
    await tx.conn.executemany(
        "INSERT INTO acl(mailbox_id, grantee_id, negative, rights) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (mailbox_id, coalesce(grantee_id, 0), negative) DO UPDATE SET rights = EXCLUDED.rights",
        [(new_id, r[0], r[1], r[2]) for new_id in new_ids for r in found])


async def nearest_existing(conn: Conn, user_id: int, name: str) -> int | None:
    """The id of the nearest existing parent of `name` in the user's hierarchy, None if none exists."""
    for parent in reversed(names.parents(name)):
        mbox = await find_mailbox(conn, user_id, parent)
        if mbox is not None:
            return mbox.id
    return None


class AclMixin(Base):
    async def get_acl(self, mailbox_id: int) -> list[AclEntry]:
        async def q(conn: Conn) -> list[AclEntry]:
            await _owner(conn, mailbox_id)
            found = await conn.fetch(
                "SELECT u.address, a.negative, a.rights FROM acl a LEFT JOIN users u ON u.id = a.grantee_id"
                " WHERE a.mailbox_id = $1", mailbox_id)
            out = [AclEntry(("-" if neg else "") + (ANYONE if addr is None else str(addr)), str(rights))
                   for addr, neg, rights in found]
            return sorted(out, key=lambda e: (e.identifier.lstrip("-"), e.identifier.startswith("-")))

        return await self._engine.read(q)

    async def set_acl(self, mailbox_id: int, identifier: str, rights: str, modify: str = "") -> WriteResult:
        if modify not in ("", "+", "-"):
            raise Invalid(f"bad ACL modification {modify!r}")
        given = canonical(rights)

        async def op(tx: Tx) -> WriteResult:
            owner_id, domain_id = await _owner(tx.conn, mailbox_id, lock=True)
            grantee, negative = await _grantee(tx.conn, identifier, owner_id, domain_id)
            row = await tx.conn.fetchrow(
                "SELECT id, rights FROM acl WHERE mailbox_id = $1 AND coalesce(grantee_id, 0) = $2 AND negative = $3",
                mailbox_id, grantee or 0, int(negative))
            current = str(row[1]) if row is not None else ""
            # RFC 4314 §3.1: "+" adds to the identifier's rights, "-" removes from them.
            wanted = (given if not modify else
                      canonical(set(current) | set(given) if modify == "+" else set(current) - set(given)))
            if current == wanted:
                return WriteResult()
            if not wanted:
                assert row is not None
                await tx.conn.execute("DELETE FROM acl WHERE id = $1", row[0])
            elif row is not None:
                await tx.conn.execute("UPDATE acl SET rights = $1 WHERE id = $2", wanted, row[0])
            else:
                count = await tx.conn.fetchval("SELECT count(*) FROM acl WHERE mailbox_id = $1", mailbox_id)
                if count >= names.MAX_ACL_ENTRIES:
                    raise Invalid(f"too many ACL entries (at most {names.MAX_ACL_ENTRIES})")
                await tx.conn.execute(
                    "INSERT INTO acl(mailbox_id, grantee_id, negative, rights) VALUES ($1, $2, $3, $4)",
                    mailbox_id, grantee, int(negative), wanted)
            change = Change(ChangeKind.MAILBOX_ACL, owner_id, mailbox_id, name=identifier)
            tx.changes.append(change)
            return WriteResult((change,))

        return await self._engine.write(op)

    async def my_rights(self, user_id: int, mailbox_id: int) -> str:
        return await self._engine.read(lambda conn: rights_of(conn, user_id, mailbox_id))

    async def get_shared_mailbox(self, user_id: int, owner: str, name: str) -> SharedMailbox | None:
        try:
            owner = names.address(owner)
            name = names.mailbox(name)
        except Invalid:
            return None

        async def q(conn: Conn) -> SharedMailbox | None:
            owner_id = await conn.fetchval("SELECT id FROM users WHERE address = $1", owner)
            if owner_id is None or int(owner_id) == user_id:
                return None
            mbox = await find_mailbox(conn, int(owner_id), name)
            if mbox is None:
                return None
            rights = await rights_of(conn, user_id, mbox.id)
            return SharedMailbox(mbox, owner, rights) if rights else None

        return await self._engine.read(q)

    async def shared_folders_owner(self, domain: str, create: bool = False) -> int | None:
        dom = names.domain(domain)

        async def find(conn: Conn) -> int | None:
            found = await conn.fetchval(
                "SELECT s.user_id FROM shared_owners s JOIN domains d ON d.id = s.domain_id WHERE d.name = $1", dom)
            return None if found is None else int(found)

        now = self._clock()

        async def op(tx: Tx) -> int:
            domain_id = await tx.conn.fetchval("SELECT id FROM domains WHERE name = $1 FOR UPDATE", dom)
            if domain_id is None:
                raise NotFound(f"no such domain: {dom}")
            found = await find(tx.conn)
            if found is not None:
                return found
            user_id = int(await tx.conn.fetchval(
                "INSERT INTO users(address, domain_id, password_hash, scram, quota_bytes, created)"
                " VALUES ($1, $2, '', '', 0, $3) RETURNING id", names.shared_owner(dom), domain_id, now))
            await tx.conn.execute("INSERT INTO shared_owners(domain_id, user_id) VALUES ($1, $2)", domain_id, user_id)
            return user_id

        if not create:
            return await self._engine.read(find)
        return await self._engine.write(op)

    async def get_shared_folder(self, user_id: int, name: str) -> SharedMailbox | None:
        try:
            name = names.mailbox(name)
        except Invalid:
            return None

        async def q(conn: Conn) -> SharedMailbox | None:
            row = await conn.fetchrow(
                "SELECT o.id, o.address FROM users u JOIN shared_owners s ON s.domain_id = u.domain_id"
                " JOIN users o ON o.id = s.user_id WHERE u.id = $1", user_id)
            if row is None:
                return None
            mbox = await find_mailbox(conn, int(row[0]), name)
            if mbox is None:
                return None
            rights = await rights_of(conn, user_id, mbox.id)
            return SharedMailbox(mbox, str(row[1]), rights) if rights else None

        return await self._engine.read(q)

    async def list_shared_mailboxes(self, user_id: int, right: str = "l") -> list[SharedMailbox]:
        async def q(conn: Conn) -> list[SharedMailbox]:
            domain_id = await conn.fetchval("SELECT domain_id FROM users WHERE id = $1", user_id)
            if domain_id is None:
                return []
            found = await conn.fetch(
                "SELECT a.mailbox_id, o.address, a.negative, a.rights"
                " FROM acl a JOIN mailboxes m ON m.id = a.mailbox_id JOIN users o ON o.id = m.user_id"
                " WHERE o.domain_id = $1 AND m.user_id <> $2 AND (a.grantee_id = $2 OR a.grantee_id IS NULL)",
                domain_id, user_id)
            entries: dict[int, tuple[str, list[tuple[object, object]]]] = {}
            for mailbox_id, owner, negative, rights in found:
                entries.setdefault(int(mailbox_id), (str(owner), []))[1].append((negative, rights))
            granted = {mid: (owner, rights) for mid, (owner, acl_rows) in entries.items()
                       if right in (rights := effective(acl_rows))}
            out: list[SharedMailbox] = []
            for r in await conn.fetch(f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id = ANY($1::bigint[])",
                                      sorted(granted)):
                mbox = mailbox_from_row(tuple(r))
                owner, rights = granted[mbox.id]
                out.append(SharedMailbox(mbox, owner, rights))
            out.sort(key=lambda m: (m.owner, m.mailbox.name))
            return out[: names.MAX_SHARED_LISTED]

        return await self._engine.read(q)
