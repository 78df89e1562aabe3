"""Mailbox access control lists in SQLite (RFC 4314; api invariants 6 and 11, schema invariant 11).

Theory of operation: an ACL entry is a row of `acl` naming the mailbox, the grantee (a user id, or NULL for
"anyone": every user of the owner's domain), whether the rights are negative, and the rights as letters of
`api.RIGHTS`. The owner has no row: their rights are always all of them. A user's rights on another user's
mailbox are computed from the rows naming them or "anyone" (`effective`): the union of the positive ones minus
the union of the negative ones (RFC 4314 §2). Rows cascade with their mailbox and their grantee.

Another user's mailbox is found only here (`get_shared_mailbox`, `list_shared_mailboxes`), and only when the
asking user has a right on it: the one door api invariant 6 leaves open.

A domain's "Shared Folders" (RFC 2342 §5) are the mailboxes of one more user of the domain, its shared-folders
owner (`shared_folders_owner`, schema invariant 19), which nobody can log in as or send mail to; every right on
them comes from their ACL. `get_shared_folder` finds one by name; `list_shared_mailboxes` lists them among the
other users' mailboxes, with that owner's address (`names.is_shared_owner` tells them apart).

Invariants:
1. Every identifier passes `_grantee` before it reaches SQL: "anyone", or the address of an existing user of
   the owner's domain who is not the owner; anything else is Invalid (so no user of another domain can ever be
   granted anything, whatever the caller checked).
2. Rights are stored as a sorted subset of RIGHTS (`canonical`), never empty (an empty set deletes the row).
3. Users of another domain than the owner's have no rights, whatever the rows say ("anyone" is the owner's
   domain only).
4. A mailbox created below one that has an ACL gets a copy of the nearest existing parent's entries
   (`inherit`, RFC 4314 §4: the new mailbox "SHOULD inherit the ACL from the parent mailbox").
5. A SETACL modification ("+" / "-") reads the entry and writes the result in one write job (`set_acl`'s
   `modify`): two sessions adding different rights at once both get theirs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

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
from postroom.store.sqlite.common import CHUNK, MAILBOX_COLUMNS, Base, find_mailbox, mailbox_from_row
from postroom.store.sqlite.engine import Tx

ALL_RIGHTS = RIGHTS


def canonical(rights: Iterable[str]) -> str:
    """The letters of `rights` in RIGHTS order, each once. Invalid for a letter that is not a right."""
    got = set(rights)
    unknown = got - set(RIGHTS)
    if unknown:
        raise Invalid(f"unknown rights: {''.join(sorted(unknown))}")
    return "".join(r for r in RIGHTS if r in got)


def effective(rows: Iterable[tuple[Any, Any]]) -> str:
    """RFC 4314 §2: the union of the positive rights minus the union of the negative ones, from the
    (negative, rights) rows that name the user or "anyone"."""
    plus: set[str] = set()
    minus: set[str] = set()
    for negative, rights in rows:
        (minus if negative else plus).update(str(rights))
    return "".join(r for r in RIGHTS if r in plus and r not in minus)


def _owner(conn: sqlite3.Connection, mailbox_id: int) -> tuple[int, int]:
    """(owner's user id, owner's domain id) of a mailbox; NotFound if it is gone."""
    row = conn.execute(
        "SELECT m.user_id, u.domain_id FROM mailboxes m JOIN users u ON u.id = m.user_id WHERE m.id = ?",
        (mailbox_id,),
    ).fetchone()
    if row is None:
        raise NotFound(f"no mailbox with id {mailbox_id}")
    return int(row[0]), int(row[1])


def _grantee(conn: sqlite3.Connection, identifier: str, owner_id: int, domain_id: int) -> tuple[int | None, bool]:
    """(grantee id or None for anyone, negative) of an identifier (invariant 1)."""
    negative = identifier.startswith("-")
    ident = identifier[1:] if negative else identifier
    if ident.lower() == ANYONE:
        return None, negative
    address = names.address(ident)  # Invalid for what is no address
    row = conn.execute("SELECT id, domain_id FROM users WHERE address = ?", (address,)).fetchone()
    if row is None or int(row[1]) != domain_id:
        raise Invalid(f"rights can only be given to users of the mailbox owner's domain: {ident}")
    if int(row[0]) == owner_id:
        raise Invalid("the owner of a mailbox always has every right")
    return int(row[0]), negative


def rights_of(conn: sqlite3.Connection, user_id: int, mailbox_id: int) -> str:
    """The user's rights on the mailbox (api invariant 11); "" if it is gone or of another domain."""
    row = conn.execute(
        "SELECT m.user_id, o.domain_id, (SELECT domain_id FROM users WHERE id = ?)"
        " FROM mailboxes m JOIN users o ON o.id = m.user_id WHERE m.id = ?",
        (user_id, mailbox_id),
    ).fetchone()
    if row is None:
        return ""
    if int(row[0]) == user_id:
        return ALL_RIGHTS
    if row[2] is None or int(row[1]) != int(row[2]):
        return ""  # invariant 3
    rows = conn.execute(
        "SELECT negative, rights FROM acl WHERE mailbox_id = ? AND (grantee_id = ? OR grantee_id IS NULL)",
        (mailbox_id, user_id),
    ).fetchall()
    return effective(rows)


def require_parent(conn: sqlite3.Connection, user_id: int, parent_id: int | None) -> None:
    """Forbidden unless the user has "k" on `parent_id` (the nearest existing parent: RFC 4314 §4 CREATE)."""
    if parent_id is None or "k" not in rights_of(conn, user_id, parent_id):
        raise Forbidden("no right to create a mailbox there")


def inherit(tx: Tx, parent_id: int | None, new_ids: Iterable[int]) -> None:
    """Copy the ACL of `parent_id` to each new mailbox (invariant 4)."""
    if parent_id is None:
        return
    rows = tx.conn.execute(
        "SELECT grantee_id, negative, rights FROM acl WHERE mailbox_id = ?", (parent_id,)
    ).fetchall()
    if not rows:
        return
    tx.conn.executemany(
        "INSERT OR REPLACE INTO acl(mailbox_id, grantee_id, negative, rights) VALUES (?, ?, ?, ?)",
        [(new_id, g, n, r) for new_id in new_ids for g, n, r in rows],
    )


def nearest_existing(conn: sqlite3.Connection, user_id: int, name: str) -> int | None:
    """The id of the nearest existing parent of `name` in the user's hierarchy, None if none exists."""
    for parent in reversed(names.parents(name)):
        mbox = find_mailbox(conn, user_id, parent)
        if mbox is not None:
            return mbox.id
    return None


class AclMixin(Base):
    async def get_acl(self, mailbox_id: int) -> list[AclEntry]:
        def q(conn: sqlite3.Connection) -> list[AclEntry]:
            _owner(conn, mailbox_id)
            rows = conn.execute(
                "SELECT u.address, a.negative, a.rights FROM acl a LEFT JOIN users u ON u.id = a.grantee_id"
                " WHERE a.mailbox_id = ?",
                (mailbox_id,),
            ).fetchall()
            out = [AclEntry(("-" if neg else "") + (ANYONE if addr is None else str(addr)), str(rights))
                   for addr, neg, rights in rows]
            return sorted(out, key=lambda e: (e.identifier.lstrip("-"), e.identifier.startswith("-")))

        return await self._engine.read(q, quick=True)

    async def set_acl(self, mailbox_id: int, identifier: str, rights: str, modify: str = "") -> WriteResult:
        if modify not in ("", "+", "-"):
            raise Invalid(f"bad ACL modification {modify!r}")
        given = canonical(rights)  # invariant 2

        def op(tx: Tx) -> WriteResult:
            owner_id, domain_id = _owner(tx.conn, mailbox_id)
            grantee, negative = _grantee(tx.conn, identifier, owner_id, domain_id)
            row = tx.conn.execute(
                "SELECT id, rights FROM acl WHERE mailbox_id = ? AND ifnull(grantee_id, 0) = ? AND negative = ?",
                (mailbox_id, grantee or 0, int(negative)),
            ).fetchone()
            current = str(row[1]) if row is not None else ""
            # RFC 4314 §3.1: "+" adds to the identifier's rights, "-" removes from them; read and written in this
            # one transaction (invariant 5), so concurrent modifications never lose each other's rights.
            wanted = (given if not modify else
                      canonical(set(current) | set(given) if modify == "+" else set(current) - set(given)))
            if current == wanted:
                return WriteResult()
            if not wanted:
                tx.conn.execute("DELETE FROM acl WHERE id = ?", (row[0],))
            elif row is not None:
                tx.conn.execute("UPDATE acl SET rights = ? WHERE id = ?", (wanted, row[0]))
            else:
                (count,) = tx.conn.execute("SELECT count(*) FROM acl WHERE mailbox_id = ?", (mailbox_id,)).fetchone()
                if count >= names.MAX_ACL_ENTRIES:
                    raise Invalid(f"too many ACL entries (at most {names.MAX_ACL_ENTRIES})")
                tx.conn.execute(
                    "INSERT INTO acl(mailbox_id, grantee_id, negative, rights) VALUES (?, ?, ?, ?)",
                    (mailbox_id, grantee, int(negative), wanted),
                )
            change = Change(ChangeKind.MAILBOX_ACL, owner_id, mailbox_id, name=identifier)
            tx.changes.append(change)
            return WriteResult((change,))

        return await self._engine.write(op)

    async def my_rights(self, user_id: int, mailbox_id: int) -> str:
        return await self._engine.read(lambda conn: rights_of(conn, user_id, mailbox_id), quick=True)

    async def get_shared_mailbox(self, user_id: int, owner: str, name: str) -> SharedMailbox | None:
        try:
            owner = names.address(owner)
            name = names.mailbox(name)
        except Invalid:
            return None

        def q(conn: sqlite3.Connection) -> SharedMailbox | None:
            row = conn.execute("SELECT id FROM users WHERE address = ?", (owner,)).fetchone()
            if row is None or int(row[0]) == user_id:
                return None
            mbox = find_mailbox(conn, int(row[0]), name)
            if mbox is None:
                return None
            rights = rights_of(conn, user_id, mbox.id)  # invariant 3: "" across domains
            return SharedMailbox(mbox, owner, rights) if rights else None

        return await self._engine.read(q, quick=True)

    async def shared_folders_owner(self, domain: str, create: bool = False) -> int | None:
        dom = names.domain(domain)

        def find(conn: sqlite3.Connection) -> int | None:
            row = conn.execute(
                "SELECT s.user_id FROM shared_owners s JOIN domains d ON d.id = s.domain_id WHERE d.name = ?", (dom,)
            ).fetchone()
            return None if row is None else int(row[0])

        now = self._clock()

        def op(tx: Tx) -> int:
            found = find(tx.conn)
            if found is not None:
                return found
            row = tx.conn.execute("SELECT id FROM domains WHERE name = ?", (dom,)).fetchone()
            if row is None:
                raise NotFound(f"no such domain: {dom}")
            # schema invariant 19: empty hash and verifier (nothing verifies), no mailboxes, an address that no
            # lookup by address finds (names invariant 6).
            cur = tx.conn.execute(
                "INSERT INTO users(address, domain_id, password_hash, scram, quota_bytes, created)"
                " VALUES (?, ?, '', '', 0, ?)",
                (names.shared_owner(dom), int(row[0]), now),
            )
            user_id = int(cur.lastrowid or 0)
            tx.conn.execute("INSERT INTO shared_owners(domain_id, user_id) VALUES (?, ?)", (int(row[0]), user_id))
            return user_id

        if not create:
            return await self._engine.read(find, quick=True)
        return await self._engine.write(op)

    async def get_shared_folder(self, user_id: int, name: str) -> SharedMailbox | None:
        try:
            name = names.mailbox(name)
        except Invalid:
            return None

        def q(conn: sqlite3.Connection) -> SharedMailbox | None:
            row = conn.execute(
                "SELECT o.id, o.address FROM users u JOIN shared_owners s ON s.domain_id = u.domain_id"
                " JOIN users o ON o.id = s.user_id WHERE u.id = ?",
                (user_id,),
            ).fetchone()
            if row is None:
                return None
            mbox = find_mailbox(conn, int(row[0]), name)
            if mbox is None:
                return None
            rights = rights_of(conn, user_id, mbox.id)  # only what the ACL grants: nobody owns it
            return SharedMailbox(mbox, str(row[1]), rights) if rights else None

        return await self._engine.read(q, quick=True)

    async def list_shared_mailboxes(self, user_id: int, right: str = "l") -> list[SharedMailbox]:
        def q(conn: sqlite3.Connection) -> list[SharedMailbox]:
            row = conn.execute("SELECT domain_id FROM users WHERE id = ?", (user_id,)).fetchone()
            if row is None:
                return []
            rows = conn.execute(
                "SELECT a.mailbox_id, o.address, a.negative, a.rights"
                " FROM acl a JOIN mailboxes m ON m.id = a.mailbox_id JOIN users o ON o.id = m.user_id"
                " WHERE o.domain_id = ? AND m.user_id <> ? AND (a.grantee_id = ? OR a.grantee_id IS NULL)",
                (int(row[0]), user_id, user_id),
            ).fetchall()
            entries: dict[int, tuple[str, list[tuple[Any, Any]]]] = {}
            for mailbox_id, owner, negative, rights in rows:
                entries.setdefault(int(mailbox_id), (str(owner), []))[1].append((negative, rights))
            granted = {mid: (owner, rights) for mid, (owner, acl_rows) in entries.items()
                       if right in (rights := effective(acl_rows))}
            out: list[SharedMailbox] = []
            ids = sorted(granted)
            for i in range(0, len(ids), CHUNK):
                part = ids[i:i + CHUNK]
                for r in conn.execute(
                    f"SELECT {MAILBOX_COLUMNS} FROM mailboxes WHERE id IN ({','.join('?' * len(part))})", part
                ):
                    mbox = mailbox_from_row(r)
                    owner, rights = granted[mbox.id]
                    out.append(SharedMailbox(mbox, owner, rights))
            out.sort(key=lambda m: (m.owner, m.mailbox.name))
            return out[: names.MAX_SHARED_LISTED]

        return await self._engine.read(q)
