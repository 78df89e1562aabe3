"""Domains, users, aliases and mailing lists in SQLite.

Invariants:
1. Every address and domain is normalised by `store.names` before it reaches SQL (validated). Users, alias
   sources and list addresses are stored as their lower-case key (`names.address`), so they are found whatever
   the case; alias targets, list owners and list members are stored with the local part as given
   (`names.address_as_given`, RFC 5321 §2.4), since they are sent onward.
5. An alias has each target once and a list each member once, compared by the lower-case key: adding
   `big.member@x` to a list holding `Big.Member@x` is AlreadyExists (an alias: a no-op), the first spelling
   stays, and removing either spelling removes it (as Mailman keeps one case-preserved address per member).
   Rows stored lower-case by versions before this rule keep that spelling: their case cannot be recovered.
2. A user, alias source or list address belongs to a domain row that exists; a domain cannot be removed while
   any of them remain (Invalid), so the foreign keys never dangle.
3. A user and a list never share an address (the router must find exactly one owner of an address).
4. Removing a user releases the blobs of all their messages in the same transaction (common invariant 1) and
   publishes MAILBOX_DELETED for each of their mailboxes, so open sessions learn they are gone.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from postroom.store import names
from postroom.store.api import (
    SPECIAL_USE_DEFAULTS,
    Alias,
    AlreadyExists,
    Change,
    ChangeKind,
    Domain,
    Invalid,
    ListPolicy,
    MailingList,
    NotFound,
    User,
)
from postroom.store.sqlite.common import Base, release_blobs
from postroom.store.sqlite.engine import Tx
from postroom.store.sqlite.mailboxes import insert_mailbox
from postroom.store.sqlite.threads import drop_sort_rows

USER_COLUMNS = "id, address, domain_id, password_hash, scram, quota_bytes, created, quota_messages, admin"
DOMAIN_COLUMNS = ("id, name, created, dkim_selector, dkim_private_key, dkim_ed25519_selector, dkim_ed25519_key,"
                  " quota_bytes, dkim_next")


def _domain(row: Any) -> Domain:
    return Domain(id=row[0], name=row[1], created=row[2], dkim_selector=row[3], dkim_private_key=row[4],
                  dkim_ed25519_selector=row[5], dkim_ed25519_key=row[6], quota_bytes=row[7], dkim_next=row[8])


def _user(row: Any) -> User:
    return User(id=row[0], address=row[1], domain_id=row[2], password_hash=row[3], scram=row[4], quota_bytes=row[5],
                created=row[6], quota_messages=row[7], admin=bool(row[8]))


def _domain_id(conn: sqlite3.Connection, name: str) -> int:
    row = conn.execute("SELECT id FROM domains WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f"no such domain: {name}")
    return int(row[0])


def _list(conn: sqlite3.Connection, row: Any) -> MailingList:
    members = conn.execute(
        "SELECT member FROM list_members WHERE list_address = ? ORDER BY member", (row[0],)
    ).fetchall()
    return MailingList(
        address=row[0],
        owner=row[1],
        policy=ListPolicy(row[2]),
        bounce_address=row[3],
        members=tuple(m[0] for m in members),
    )


class AccountsMixin(Base):
    # ---- domains
    async def add_domain(self, name: str) -> Domain:
        name = names.domain(name)
        now = self._clock()

        def op(tx: Tx) -> Domain:
            if tx.conn.execute("SELECT 1 FROM domains WHERE name = ?", (name,)).fetchone():
                raise AlreadyExists(f"domain exists: {name}")
            cur = tx.conn.execute("INSERT INTO domains(name, created) VALUES (?, ?)", (name, now))
            return Domain(id=int(cur.lastrowid or 0), name=name, created=now)

        return await self._engine.write(op)

    async def get_domain(self, name: str) -> Domain | None:
        name = names.domain(name)

        def q(conn: sqlite3.Connection) -> Domain | None:
            row = conn.execute(f"SELECT {DOMAIN_COLUMNS} FROM domains WHERE name = ?", (name,)).fetchone()
            return None if row is None else _domain(row)

        return await self._engine.read(q, quick=True)

    async def list_domains(self) -> list[Domain]:
        def q(conn: sqlite3.Connection) -> list[Domain]:
            return [_domain(r) for r in conn.execute(f"SELECT {DOMAIN_COLUMNS} FROM domains ORDER BY name")]

        return await self._engine.read(q)

    async def remove_domain(self, name: str) -> None:
        name = names.domain(name)

        def op(tx: Tx) -> None:
            domain_id = _domain_id(tx.conn, name)
            # schema invariant 19: the shared-folders owner is not one of the domain's users; it goes with the
            # domain once its last shared folder is gone.
            for sql, what in (
                ("users WHERE domain_id = ? AND id NOT IN (SELECT user_id FROM shared_owners)", "users"),
                ("aliases WHERE domain_id = ?", "aliases"),
                ("lists WHERE domain_id = ?", "mailing lists"),
                ("mailboxes WHERE user_id IN (SELECT user_id FROM shared_owners WHERE domain_id = ?)",
                 "shared folders"),
            ):
                if tx.conn.execute(f"SELECT 1 FROM {sql} LIMIT 1", (domain_id,)).fetchone():
                    raise Invalid(f"domain {name} still has {what}")
            tx.conn.execute("DELETE FROM users WHERE id IN (SELECT user_id FROM shared_owners WHERE domain_id = ?)",
                            (domain_id,))
            tx.conn.execute("DELETE FROM domains WHERE id = ?", (domain_id,))

        await self._engine.write(op)

    async def set_dkim(self, name: str, selector: str, private_key_pem: str, ed25519_selector: str = "",
                       ed25519_key_pem: str = "") -> None:
        name = names.domain(name)

        def op(tx: Tx) -> None:
            cur = tx.conn.execute(
                "UPDATE domains SET dkim_selector = ?, dkim_private_key = ?, dkim_ed25519_selector = ?,"
                " dkim_ed25519_key = ? WHERE name = ?",
                (selector, private_key_pem, ed25519_selector, ed25519_key_pem, name),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no such domain: {name}")

        await self._engine.write(op)

    async def set_dkim_next(self, name: str, selector: str, private_key_pem: str, ed25519_selector: str,
                            ed25519_key_pem: str) -> bool:
        name = names.domain(name)
        kept = json.dumps({"selector": selector, "private_key": private_key_pem, "ed25519_selector": ed25519_selector,
                           "ed25519_key": ed25519_key_pem})

        def op(tx: Tx) -> bool:
            row = tx.conn.execute("SELECT dkim_next FROM domains WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no such domain: {name}")
            if row[0]:
                return False  # an earlier rotation's keys wait for their switch (api docstring)
            tx.conn.execute("UPDATE domains SET dkim_next = ? WHERE name = ?", (kept, name))
            return True

        return await self._engine.write(op)

    async def switch_dkim(self, name: str) -> bool:
        name = names.domain(name)

        def op(tx: Tx) -> bool:
            row = tx.conn.execute("SELECT dkim_next FROM domains WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise NotFound(f"no such domain: {name}")
            if not row[0]:
                return False
            kept = json.loads(row[0])
            tx.conn.execute(
                "UPDATE domains SET dkim_selector = ?, dkim_private_key = ?, dkim_ed25519_selector = ?,"
                " dkim_ed25519_key = ?, dkim_next = '' WHERE name = ?",
                (kept["selector"], kept["private_key"], kept["ed25519_selector"], kept["ed25519_key"], name),
            )
            return True

        return await self._engine.write(op)

    # ---- users
    async def add_user(self, address: str, password_hash: str, scram: str = "", quota_bytes: int = 0) -> User:
        address = names.address(address)
        if quota_bytes < 0:
            raise Invalid("quota_bytes must not be negative")
        now = self._clock()

        def op(tx: Tx) -> User:
            domain_id = _domain_id(tx.conn, names.domain_of(address))
            if tx.conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone():
                raise AlreadyExists(f"user exists: {address}")
            if tx.conn.execute("SELECT 1 FROM lists WHERE address = ?", (address,)).fetchone():
                raise AlreadyExists(f"a mailing list has the address {address}")
            cur = tx.conn.execute(
                "INSERT INTO users(address, domain_id, password_hash, scram, quota_bytes, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (address, domain_id, password_hash, scram, quota_bytes, now),
            )
            user_id = int(cur.lastrowid or 0)
            for mailbox_name, special_use in SPECIAL_USE_DEFAULTS:
                insert_mailbox(tx, user_id, mailbox_name, special_use, subscribe=True)
            return User(user_id, address, domain_id, password_hash, scram, quota_bytes, now)

        return await self._engine.write(op)

    async def get_user(self, address: str) -> User | None:
        try:
            address = names.address(address)
        except Invalid:
            return None

        def q(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE address = ?", (address,)).fetchone()
            return None if row is None else _user(row)

        return await self._engine.read(q, quick=True)

    async def get_user_by_id(self, user_id: int) -> User | None:
        def q(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE id = ?", (user_id,)).fetchone()
            return None if row is None else _user(row)

        return await self._engine.read(q, quick=True)

    async def list_users(self, domain: str | None = None) -> list[User]:
        dom = None if domain is None else names.domain(domain)

        def q(conn: sqlite3.Connection) -> list[User]:
            real = "id NOT IN (SELECT user_id FROM shared_owners)"  # schema invariant 19: not a user to list
            if dom is None:
                rows = conn.execute(f"SELECT {USER_COLUMNS} FROM users WHERE {real} ORDER BY address").fetchall()
            else:
                rows = conn.execute(
                    f"SELECT {USER_COLUMNS} FROM users WHERE domain_id = ? AND {real} ORDER BY address",
                    (_domain_id(conn, dom),),
                ).fetchall()
            return [_user(r) for r in rows]

        return await self._engine.read(q)

    async def set_password(self, address: str, password_hash: str, scram: str = "") -> None:
        address = names.address(address)

        def op(tx: Tx) -> None:
            cur = tx.conn.execute(
                "UPDATE users SET password_hash = ?, scram = ? WHERE address = ?", (password_hash, scram, address)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no such user: {address}")
            tx.conn.execute("DELETE FROM web_sessions WHERE user_id = (SELECT id FROM users WHERE address = ?)",
                            (address,))  # api docstring: a reset signs everyone out

        await self._engine.write(op)

    async def set_admin(self, address: str, admin: bool) -> None:
        address = names.address(address)

        def op(tx: Tx) -> None:
            cur = tx.conn.execute("UPDATE users SET admin = ? WHERE address = ?", (int(admin), address))
            if cur.rowcount == 0:
                raise NotFound(f"no such user: {address}")

        await self._engine.write(op)

    async def remove_user(self, address: str) -> None:
        address = names.address(address)

        def op(tx: Tx) -> None:
            row = tx.conn.execute("SELECT id FROM users WHERE address = ?", (address,)).fetchone()
            if row is None:
                raise NotFound(f"no such user: {address}")
            user_id = int(row[0])
            counts = dict(
                tx.conn.execute(
                    "SELECT m.blob_id, count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
                    " WHERE b.user_id = ? GROUP BY m.blob_id",
                    (user_id,),
                ).fetchall()
            )
            boxes = tx.conn.execute("SELECT id, name FROM mailboxes WHERE user_id = ?", (user_id,)).fetchall()
            tx.conn.execute(
                "DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_id = ?)", (user_id,)
            )
            for box_id, _ in boxes:
                drop_sort_rows(tx.conn, box_id)  # threads.py invariant 7
            tx.conn.execute("DELETE FROM users WHERE id = ?", (user_id,))  # cascades to mailboxes, expunged
            release_blobs(tx, counts)
            tx.changes.extend(Change(ChangeKind.MAILBOX_DELETED, user_id, b[0], name=b[1]) for b in boxes)

        await self._engine.write(op)

    # ---- aliases
    async def add_alias(self, source: str, targets: Sequence[str]) -> None:
        source = names.alias_source(source)
        if isinstance(targets, str):
            raise Invalid("targets must be a sequence of addresses, not one string")
        clean = [names.address_as_given(t) for t in targets]
        if not clean:
            raise Invalid("an alias needs at least one target")

        def op(tx: Tx) -> None:
            domain_id = _domain_id(tx.conn, names.domain_of(source))
            rows = tx.conn.execute("SELECT target FROM aliases WHERE source = ?", (source,)).fetchall()
            known = {str(r[0]).lower() for r in rows}
            new = []
            for t in clean:  # invariant 5: one target per key, the first spelling stays
                if t.lower() not in known:
                    known.add(t.lower())
                    new.append((source, t, domain_id))
            tx.conn.executemany("INSERT INTO aliases(source, target, domain_id) VALUES (?, ?, ?)", new)

        await self._engine.write(op)

    async def remove_alias(self, source: str, target: str | None = None) -> None:
        source = names.alias_source(source)
        tgt = None if target is None else names.address(target)

        def op(tx: Tx) -> None:
            if tgt is None:
                cur = tx.conn.execute("DELETE FROM aliases WHERE source = ?", (source,))
            else:
                rows = tx.conn.execute("SELECT target FROM aliases WHERE source = ?", (source,)).fetchall()
                stored = [str(r[0]) for r in rows if str(r[0]).lower() == tgt]  # invariant 5: by key
                cur = tx.conn.execute("DELETE FROM aliases WHERE source = ? AND target = ?",
                                      (source, stored[0] if stored else tgt))
            if cur.rowcount == 0:
                raise NotFound(f"no such alias: {source}" + ("" if tgt is None else f" -> {tgt}"))

        await self._engine.write(op)

    async def list_aliases(self, source: str | None = None) -> list[Alias]:
        src = None if source is None else names.alias_source(source)

        def q(conn: sqlite3.Connection) -> list[Alias]:
            if src is None:
                rows = conn.execute("SELECT source, target FROM aliases ORDER BY source, target").fetchall()
            else:
                rows = conn.execute(
                    "SELECT source, target FROM aliases WHERE source = ? ORDER BY target", (src,)
                ).fetchall()
            return [Alias(r[0], r[1]) for r in rows]

        return await self._engine.read(q, quick=src is not None)

    # ---- mailing lists
    async def create_list(
        self, address: str, owner: str, policy: ListPolicy, bounce_address: str = ""
    ) -> MailingList:
        address = names.address(address)
        owner = names.address_as_given(owner)
        policy = ListPolicy(policy)
        if bounce_address:
            bounce_address = names.address(bounce_address)
        else:
            local, _, dom = address.rpartition("@")
            bounce_address = f"{names.quote_local(names.unquote_local(local) + '-bounces')}@{dom}"

        def op(tx: Tx) -> MailingList:
            domain_id = _domain_id(tx.conn, names.domain_of(address))
            if tx.conn.execute("SELECT 1 FROM lists WHERE address = ?", (address,)).fetchone():
                raise AlreadyExists(f"list exists: {address}")
            if tx.conn.execute("SELECT 1 FROM users WHERE address = ?", (address,)).fetchone():
                raise AlreadyExists(f"a user has the address {address}")
            tx.conn.execute(
                "INSERT INTO lists(address, domain_id, owner, policy, bounce_address) VALUES (?, ?, ?, ?, ?)",
                (address, domain_id, owner, policy.value, bounce_address),
            )
            return MailingList(address, owner, policy, bounce_address)

        return await self._engine.write(op)

    async def get_list(self, address: str) -> MailingList | None:
        try:
            address = names.address(address)
        except Invalid:
            return None

        def q(conn: sqlite3.Connection) -> MailingList | None:
            row = conn.execute(
                "SELECT address, owner, policy, bounce_address FROM lists WHERE address = ?", (address,)
            ).fetchone()
            return None if row is None else _list(conn, row)

        return await self._engine.read(q)

    async def list_lists(self) -> list[MailingList]:
        def q(conn: sqlite3.Connection) -> list[MailingList]:
            rows = conn.execute("SELECT address, owner, policy, bounce_address FROM lists ORDER BY address")
            return [_list(conn, r) for r in rows.fetchall()]

        return await self._engine.read(q)

    async def set_list_policy(self, address: str, policy: ListPolicy) -> None:
        address = names.address(address)
        policy = ListPolicy(policy)

        def op(tx: Tx) -> None:
            cur = tx.conn.execute("UPDATE lists SET policy = ? WHERE address = ?", (policy.value, address))
            if cur.rowcount == 0:
                raise NotFound(f"no such list: {address}")

        await self._engine.write(op)

    async def add_list_member(self, address: str, member: str) -> None:
        address = names.address(address)
        member = names.address_as_given(member)

        def op(tx: Tx) -> None:
            _require_list(tx, address)
            known = _member_spelling(tx, address, member)
            if known is not None:  # invariant 5
                raise AlreadyExists(f"{known} is already a member of {address}")
            tx.conn.execute("INSERT INTO list_members(list_address, member) VALUES (?, ?)", (address, member))

        await self._engine.write(op)

    async def remove_list_member(self, address: str, member: str) -> None:
        address = names.address(address)
        member = names.address_as_given(member)

        def op(tx: Tx) -> None:
            _require_list(tx, address)
            known = _member_spelling(tx, address, member)
            if known is None:
                raise NotFound(f"{member} is not a member of {address}")
            tx.conn.execute("DELETE FROM list_members WHERE list_address = ? AND member = ?", (address, known))

        await self._engine.write(op)

    async def delete_list(self, address: str) -> None:
        address = names.address(address)

        def op(tx: Tx) -> None:
            cur = tx.conn.execute("DELETE FROM lists WHERE address = ?", (address,))
            if cur.rowcount == 0:
                raise NotFound(f"no such list: {address}")

        await self._engine.write(op)


def _member_spelling(tx: Tx, list_address: str, member: str) -> str | None:
    """The stored spelling of `member` in the list, compared by the lower-case key (invariant 5); None if absent.
    Reads the list's members: an admin write, and lists are small enough for that."""
    key = member.lower()
    for (stored,) in tx.conn.execute("SELECT member FROM list_members WHERE list_address = ?", (list_address,)):
        if str(stored).lower() == key:
            return str(stored)
    return None


def _require_list(tx: Tx, address: str) -> None:
    if tx.conn.execute("SELECT 1 FROM lists WHERE address = ?", (address,)).fetchone() is None:
        raise NotFound(f"no such list: {address}")
