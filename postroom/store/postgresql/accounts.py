"""Domains, users, aliases and mailing lists in PostgreSQL (the SQLite engine's accounts.py, same invariants).

Concurrency: a check-then-insert ("no such user yet") is settled by the UNIQUE constraints when two nodes race:
the loser's INSERT raises UniqueViolation, answered as AlreadyExists like the check would have.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import asyncpg

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
from postroom.store.postgresql.common import Base, release_blobs
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx, rowcount
from postroom.store.postgresql.mailboxes import insert_mailbox

USER_COLUMNS = "id, address, domain_id, password_hash, scram, quota_bytes, created, quota_messages, admin"
DOMAIN_COLUMNS = ("id, name, created, dkim_selector, dkim_private_key, dkim_ed25519_selector, dkim_ed25519_key,"
                  " quota_bytes, dkim_next")


def _domain(row: asyncpg.Record) -> Domain:
    return Domain(id=row[0], name=row[1], created=row[2], dkim_selector=row[3], dkim_private_key=row[4],
                  dkim_ed25519_selector=row[5], dkim_ed25519_key=row[6], quota_bytes=row[7], dkim_next=row[8])


def _user(row: asyncpg.Record) -> User:
    return User(id=row[0], address=row[1], domain_id=row[2], password_hash=row[3], scram=row[4], quota_bytes=row[5],
                created=row[6], quota_messages=row[7], admin=bool(row[8]))


async def _domain_id(conn: Conn, name: str) -> int:
    found = await conn.fetchval("SELECT id FROM domains WHERE name = $1", name)
    if found is None:
        raise NotFound(f"no such domain: {name}")
    return int(found)


async def _list(conn: Conn, row: asyncpg.Record) -> MailingList:
    members = await conn.fetch("SELECT member FROM list_members WHERE list_address = $1 ORDER BY member", row[0])
    return MailingList(address=row[0], owner=row[1], policy=ListPolicy(row[2]), bounce_address=row[3],
                       members=tuple(m[0] for m in members))


class AccountsMixin(Base):
    # ---- domains
    async def add_domain(self, name: str) -> Domain:
        name = names.domain(name)
        now = self._clock()

        async def op(tx: Tx) -> Domain:
            try:
                new_id = await tx.conn.fetchval(
                    "INSERT INTO domains(name, created) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING RETURNING id",
                    name, now)
            except asyncpg.UniqueViolationError:
                new_id = None
            if new_id is None:
                raise AlreadyExists(f"domain exists: {name}")
            return Domain(id=int(new_id), name=name, created=now)

        return await self._engine.write(op)

    async def get_domain(self, name: str) -> Domain | None:
        name = names.domain(name)

        async def q(conn: Conn) -> Domain | None:
            row = await conn.fetchrow(f"SELECT {DOMAIN_COLUMNS} FROM domains WHERE name = $1", name)
            return None if row is None else _domain(row)

        return await self._engine.read(q)

    async def list_domains(self) -> list[Domain]:
        async def q(conn: Conn) -> list[Domain]:
            return [_domain(r) for r in await conn.fetch(f"SELECT {DOMAIN_COLUMNS} FROM domains ORDER BY name")]

        return await self._engine.read(q)

    async def remove_domain(self, name: str) -> None:
        name = names.domain(name)

        async def op(tx: Tx) -> None:
            domain_id = await tx.conn.fetchval("SELECT id FROM domains WHERE name = $1 FOR UPDATE", name)
            if domain_id is None:
                raise NotFound(f"no such domain: {name}")
            for sql, what in (
                ("users WHERE domain_id = $1 AND id NOT IN (SELECT user_id FROM shared_owners)", "users"),
                ("aliases WHERE domain_id = $1", "aliases"),
                ("lists WHERE domain_id = $1", "mailing lists"),
                ("mailboxes WHERE user_id IN (SELECT user_id FROM shared_owners WHERE domain_id = $1)",
                 "shared folders"),
            ):
                if await tx.conn.fetchval(f"SELECT 1 FROM {sql} LIMIT 1", domain_id):
                    raise Invalid(f"domain {name} still has {what}")
            await tx.conn.execute(
                "DELETE FROM users WHERE id IN (SELECT user_id FROM shared_owners WHERE domain_id = $1)", domain_id)
            await tx.conn.execute("DELETE FROM domains WHERE id = $1", domain_id)

        try:
            await self._engine.write(op)
        except asyncpg.ForeignKeyViolationError as e:  # a user or alias added by another node meanwhile
            raise Invalid(f"domain {name} is still in use") from e

    async def set_dkim(self, name: str, selector: str, private_key_pem: str, ed25519_selector: str = "",
                       ed25519_key_pem: str = "") -> None:
        name = names.domain(name)

        async def op(tx: Tx) -> None:
            status = await tx.conn.execute(
                "UPDATE domains SET dkim_selector = $1, dkim_private_key = $2, dkim_ed25519_selector = $3,"
                " dkim_ed25519_key = $4 WHERE name = $5",
                selector, private_key_pem, ed25519_selector, ed25519_key_pem, name)
            if rowcount(status) == 0:
                raise NotFound(f"no such domain: {name}")

        await self._engine.write(op)

    async def set_dkim_next(self, name: str, selector: str, private_key_pem: str, ed25519_selector: str,
                            ed25519_key_pem: str) -> bool:
        name = names.domain(name)
        kept = json.dumps({"selector": selector, "private_key": private_key_pem, "ed25519_selector": ed25519_selector,
                           "ed25519_key": ed25519_key_pem})

        async def op(tx: Tx) -> bool:
            # FOR UPDATE: of two rotations at once (two nodes, two admins) the second sees the first's keys
            waiting = await tx.conn.fetchval("SELECT dkim_next FROM domains WHERE name = $1 FOR UPDATE", name)
            if waiting is None:
                raise NotFound(f"no such domain: {name}")
            if waiting:
                return False  # an earlier rotation's keys wait for their switch (api docstring)
            await tx.conn.execute("UPDATE domains SET dkim_next = $1 WHERE name = $2", kept, name)
            return True

        return await self._engine.write(op)

    async def switch_dkim(self, name: str) -> bool:
        name = names.domain(name)

        async def op(tx: Tx) -> bool:
            # FOR UPDATE: two switches at once on two nodes cannot both read the same kept keys
            kept_text = await tx.conn.fetchval("SELECT dkim_next FROM domains WHERE name = $1 FOR UPDATE", name)
            if kept_text is None:
                raise NotFound(f"no such domain: {name}")
            if not kept_text:
                return False
            kept = json.loads(kept_text)
            await tx.conn.execute(
                "UPDATE domains SET dkim_selector = $1, dkim_private_key = $2, dkim_ed25519_selector = $3,"
                " dkim_ed25519_key = $4, dkim_next = '' WHERE name = $5",
                kept["selector"], kept["private_key"], kept["ed25519_selector"], kept["ed25519_key"], name)
            return True

        return await self._engine.write(op)

    # ---- users
    async def add_user(self, address: str, password_hash: str, scram: str = "", quota_bytes: int = 0) -> User:
        address = names.address(address)
        if quota_bytes < 0:
            raise Invalid("quota_bytes must not be negative")
        now = self._clock()

        async def op(tx: Tx) -> User:
            # FOR SHARE: the domain cannot be removed before this commits (accounts invariant 2).
            domain_id = await tx.conn.fetchval("SELECT id FROM domains WHERE name = $1 FOR SHARE",
                                               names.domain_of(address))
            if domain_id is None:
                raise NotFound(f"no such domain: {names.domain_of(address)}")
            if await tx.conn.fetchval("SELECT 1 FROM users WHERE address = $1", address):
                raise AlreadyExists(f"user exists: {address}")
            if await tx.conn.fetchval("SELECT 1 FROM lists WHERE address = $1", address):
                raise AlreadyExists(f"a mailing list has the address {address}")
            try:
                user_id = int(await tx.conn.fetchval(
                    "INSERT INTO users(address, domain_id, password_hash, scram, quota_bytes, created)"
                    " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                    address, domain_id, password_hash, scram, quota_bytes, now))
            except asyncpg.UniqueViolationError as e:
                raise AlreadyExists(f"user exists: {address}") from e
            for mailbox_name, special_use in SPECIAL_USE_DEFAULTS:
                await insert_mailbox(tx, user_id, mailbox_name, special_use, subscribe=True)
            return User(user_id, address, int(domain_id), password_hash, scram, quota_bytes, now)

        return await self._engine.write(op)

    async def get_user(self, address: str) -> User | None:
        try:
            address = names.address(address)
        except Invalid:
            return None

        async def q(conn: Conn) -> User | None:
            row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE address = $1", address)
            return None if row is None else _user(row)

        return await self._engine.read(q)

    async def get_user_by_id(self, user_id: int) -> User | None:
        async def q(conn: Conn) -> User | None:
            row = await conn.fetchrow(f"SELECT {USER_COLUMNS} FROM users WHERE id = $1", user_id)
            return None if row is None else _user(row)

        return await self._engine.read(q)

    async def list_users(self, domain: str | None = None) -> list[User]:
        dom = None if domain is None else names.domain(domain)

        async def q(conn: Conn) -> list[User]:
            real = "id NOT IN (SELECT user_id FROM shared_owners)"  # not a user to list
            if dom is None:
                found = await conn.fetch(f"SELECT {USER_COLUMNS} FROM users WHERE {real} ORDER BY address")
            else:
                found = await conn.fetch(
                    f"SELECT {USER_COLUMNS} FROM users WHERE domain_id = $1 AND {real} ORDER BY address",
                    await _domain_id(conn, dom))
            return [_user(r) for r in found]

        return await self._engine.read(q)

    async def set_password(self, address: str, password_hash: str, scram: str = "") -> None:
        address = names.address(address)

        async def op(tx: Tx) -> None:
            user_id = await tx.conn.fetchval(
                "UPDATE users SET password_hash = $1, scram = $2 WHERE address = $3 RETURNING id",
                password_hash, scram, address)
            if user_id is None:
                raise NotFound(f"no such user: {address}")
            # api docstring: a reset signs everyone out, in the same transaction
            await tx.conn.execute("DELETE FROM web_sessions WHERE user_id = $1", user_id)

        await self._engine.write(op)

    async def set_admin(self, address: str, admin: bool) -> None:
        address = names.address(address)

        async def op(tx: Tx) -> None:
            status = await tx.conn.execute("UPDATE users SET admin = $1 WHERE address = $2", bool(admin), address)
            if rowcount(status) == 0:
                raise NotFound(f"no such user: {address}")

        await self._engine.write(op)

    async def remove_user(self, address: str) -> None:
        address = names.address(address)

        async def op(tx: Tx) -> None:
            user_id = await tx.conn.fetchval("SELECT id FROM users WHERE address = $1 FOR UPDATE", address)
            if user_id is None:
                raise NotFound(f"no such user: {address}")
            boxes = await tx.conn.fetch("SELECT id, name FROM mailboxes WHERE user_id = $1 ORDER BY id FOR UPDATE",
                                        user_id)
            counts = {str(b): int(n) for b, n in await tx.conn.fetch(
                "SELECT m.blob_id, count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
                " WHERE b.user_id = $1 GROUP BY m.blob_id", user_id)}
            await tx.conn.execute(
                "DELETE FROM messages WHERE mailbox_id IN (SELECT id FROM mailboxes WHERE user_id = $1)", user_id)
            await tx.conn.execute("DELETE FROM users WHERE id = $1", user_id)  # cascades to mailboxes, expunged
            await release_blobs(tx, counts)
            tx.changes.extend(Change(ChangeKind.MAILBOX_DELETED, int(user_id), int(b[0]), name=b[1]) for b in boxes)

        await self._engine.write(op)

    # ---- aliases
    async def add_alias(self, source: str, targets: Sequence[str]) -> None:
        source = names.alias_source(source)
        if isinstance(targets, str):
            raise Invalid("targets must be a sequence of addresses, not one string")
        clean = [names.address_as_given(t) for t in targets]
        if not clean:
            raise Invalid("an alias needs at least one target")

        async def op(tx: Tx) -> None:
            domain_id = await tx.conn.fetchval("SELECT id FROM domains WHERE name = $1 FOR SHARE",
                                               names.domain_of(source))
            if domain_id is None:
                raise NotFound(f"no such domain: {names.domain_of(source)}")
            # One source's targets are decided one writer at a time (the advisory lock of its name).
            await tx.conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "alias:" + source)
            known = {str(r[0]).lower() for r in await tx.conn.fetch(
                "SELECT target FROM aliases WHERE source = $1", source)}
            new = []
            for t in clean:  # one target per key, the first spelling stays
                if t.lower() not in known:
                    known.add(t.lower())
                    new.append((source, t, domain_id))
            await tx.conn.executemany("INSERT INTO aliases(source, target, domain_id) VALUES ($1, $2, $3)", new)

        await self._engine.write(op)

    async def remove_alias(self, source: str, target: str | None = None) -> None:
        source = names.alias_source(source)
        tgt = None if target is None else names.address(target)

        async def op(tx: Tx) -> None:
            if tgt is None:
                status = await tx.conn.execute("DELETE FROM aliases WHERE source = $1", source)
            else:
                stored = [str(r[0]) for r in await tx.conn.fetch("SELECT target FROM aliases WHERE source = $1",
                                                                 source) if str(r[0]).lower() == tgt]
                status = await tx.conn.execute("DELETE FROM aliases WHERE source = $1 AND target = $2",
                                               source, stored[0] if stored else tgt)
            if rowcount(status) == 0:
                raise NotFound(f"no such alias: {source}" + ("" if tgt is None else f" -> {tgt}"))

        await self._engine.write(op)

    async def list_aliases(self, source: str | None = None) -> list[Alias]:
        src = None if source is None else names.alias_source(source)

        async def q(conn: Conn) -> list[Alias]:
            if src is None:
                found = await conn.fetch("SELECT source, target FROM aliases ORDER BY source, target")
            else:
                found = await conn.fetch("SELECT source, target FROM aliases WHERE source = $1 ORDER BY target", src)
            return [Alias(r[0], r[1]) for r in found]

        return await self._engine.read(q)

    # ---- mailing lists
    async def create_list(self, address: str, owner: str, policy: ListPolicy, bounce_address: str = "") -> MailingList:
        address = names.address(address)
        owner = names.address_as_given(owner)
        policy = ListPolicy(policy)
        if bounce_address:
            bounce_address = names.address(bounce_address)
        else:
            local, _, dom = address.rpartition("@")
            bounce_address = f"{names.quote_local(names.unquote_local(local) + '-bounces')}@{dom}"

        async def op(tx: Tx) -> MailingList:
            domain_id = await tx.conn.fetchval("SELECT id FROM domains WHERE name = $1 FOR SHARE",
                                               names.domain_of(address))
            if domain_id is None:
                raise NotFound(f"no such domain: {names.domain_of(address)}")
            if await tx.conn.fetchval("SELECT 1 FROM lists WHERE address = $1", address):
                raise AlreadyExists(f"list exists: {address}")
            if await tx.conn.fetchval("SELECT 1 FROM users WHERE address = $1", address):
                raise AlreadyExists(f"a user has the address {address}")
            try:
                await tx.conn.execute(
                    "INSERT INTO lists(address, domain_id, owner, policy, bounce_address) VALUES ($1, $2, $3, $4, $5)",
                    address, domain_id, owner, policy.value, bounce_address)
            except asyncpg.UniqueViolationError as e:
                raise AlreadyExists(f"list exists: {address}") from e
            return MailingList(address, owner, policy, bounce_address)

        return await self._engine.write(op)

    async def get_list(self, address: str) -> MailingList | None:
        try:
            address = names.address(address)
        except Invalid:
            return None

        async def q(conn: Conn) -> MailingList | None:
            row = await conn.fetchrow(
                "SELECT address, owner, policy, bounce_address FROM lists WHERE address = $1", address)
            return None if row is None else await _list(conn, row)

        return await self._engine.read(q)

    async def list_lists(self) -> list[MailingList]:
        async def q(conn: Conn) -> list[MailingList]:
            found = await conn.fetch("SELECT address, owner, policy, bounce_address FROM lists ORDER BY address")
            return [await _list(conn, r) for r in found]

        return await self._engine.read(q)

    async def set_list_policy(self, address: str, policy: ListPolicy) -> None:
        address = names.address(address)
        policy = ListPolicy(policy)

        async def op(tx: Tx) -> None:
            status = await tx.conn.execute("UPDATE lists SET policy = $1 WHERE address = $2", policy.value, address)
            if rowcount(status) == 0:
                raise NotFound(f"no such list: {address}")

        await self._engine.write(op)

    async def add_list_member(self, address: str, member: str) -> None:
        address = names.address(address)
        member = names.address_as_given(member)

        async def op(tx: Tx) -> None:
            await _require_list(tx, address)
            known = await _member_spelling(tx, address, member)
            if known is not None:
                raise AlreadyExists(f"{known} is already a member of {address}")
            await tx.conn.execute("INSERT INTO list_members(list_address, member) VALUES ($1, $2)", address, member)

        await self._engine.write(op)

    async def remove_list_member(self, address: str, member: str) -> None:
        address = names.address(address)
        member = names.address_as_given(member)

        async def op(tx: Tx) -> None:
            await _require_list(tx, address)
            known = await _member_spelling(tx, address, member)
            if known is None:
                raise NotFound(f"{member} is not a member of {address}")
            await tx.conn.execute("DELETE FROM list_members WHERE list_address = $1 AND member = $2", address, known)

        await self._engine.write(op)

    async def delete_list(self, address: str) -> None:
        address = names.address(address)

        async def op(tx: Tx) -> None:
            if rowcount(await tx.conn.execute("DELETE FROM lists WHERE address = $1", address)) == 0:
                raise NotFound(f"no such list: {address}")

        await self._engine.write(op)


async def _member_spelling(tx: Tx, list_address: str, member: str) -> str | None:
    """The stored spelling of `member` in the list, compared by the lower-case key; None if absent."""
    key = member.lower()
    for (stored,) in await tx.conn.fetch("SELECT member FROM list_members WHERE list_address = $1", list_address):
        if str(stored).lower() == key:
            return str(stored)
    return None


async def _require_list(tx: Tx, address: str) -> None:
    """NotFound unless the list exists; its row locked, so its members change one writer at a time."""
    if await tx.conn.fetchval("SELECT 1 FROM lists WHERE address = $1 FOR UPDATE", address) is None:
        raise NotFound(f"no such list: {address}")
