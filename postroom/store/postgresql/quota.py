"""Quotas in PostgreSQL (schema step 4): the SQLite engine's quota.py, same invariants.

`quota_usage` is kept by row triggers on `messages` (schema step 4), as SQLite's are. What differs is the check
with several writers: `check` locks the user's `quota_usage` row (and, when the domain has a limit, the domain
row) before it reads the counters, so two deliveries on two nodes cannot together pass a limit each alone would
respect (invariant 1); the triggers then update the locked row.
"""

from __future__ import annotations

from collections.abc import Sequence

from postroom.store import names
from postroom.store.api import QUOTA_WARNING_LEVELS, NotFound, OverQuota, QuotaUsage, quota_level
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.engine import Tx, rowcount
from postroom.store.sqlite.quota import _limit

_USAGE = (
    "SELECT u.id, q.storage, q.messages, u.quota_bytes, u.quota_messages, u.domain_id, d.quota_bytes, q.warned"
    " FROM users u JOIN quota_usage q ON q.user_id = u.id JOIN domains d ON d.id = u.domain_id"
)


async def _domain_storage(conn: Conn, domain_id: int) -> int:
    return int(await conn.fetchval(
        "SELECT coalesce(sum(q.storage), 0) FROM users u JOIN quota_usage q ON q.user_id = u.id"
        " WHERE u.domain_id = $1", domain_id))


async def usage(conn: Conn, user_id: int) -> QuotaUsage:
    """The user's `QuotaUsage` as `conn` sees it. NotFound for an unknown user id."""
    row = await conn.fetchrow(_USAGE + " WHERE u.id = $1", user_id)
    if row is None:
        raise NotFound(f"no such user id: {user_id}")
    return QuotaUsage(user_id=int(row[0]), storage=int(row[1]), messages=int(row[2]), storage_limit=int(row[3]),
                      message_limit=int(row[4]), domain_storage=await _domain_storage(conn, int(row[5])),
                      domain_storage_limit=int(row[6]), warned=int(row[7]))


async def check(conn: Conn, user_id: int, sizes: Sequence[int]) -> None:
    """OverQuota if adding messages of `sizes` octets to `user_id`'s mailboxes would pass a limit (module doc)."""
    if not sizes:
        return
    row = await conn.fetchrow(_USAGE + " WHERE u.id = $1 FOR UPDATE OF q", user_id)
    if row is None:
        return
    storage, count, limit, message_limit, domain_id, domain_limit = (int(v) for v in row[1:7])
    added, largest = sum(sizes), max(sizes)
    if limit and storage + added > limit:
        raise OverQuota(f"over quota: {storage + added} octets of {limit} allowed", resource="STORAGE",
                        scope="user", alone=largest > limit)
    if message_limit and count + len(sizes) > message_limit:
        raise OverQuota(f"over quota: {count + len(sizes)} messages of {message_limit} allowed",
                        resource="MESSAGE", scope="user", alone=len(sizes) > message_limit)
    if domain_limit:
        await conn.execute("SELECT 1 FROM domains WHERE id = $1 FOR UPDATE", domain_id)
        total = await _domain_storage(conn, domain_id)
        if total + added > domain_limit:
            raise OverQuota(f"domain over quota: {total + added} octets of {domain_limit} allowed",
                            resource="STORAGE", scope="domain", alone=largest > domain_limit)


class QuotaMixin(Base):
    async def get_quota(self, user_id: int) -> QuotaUsage:
        return await self._engine.read(lambda conn: usage(conn, user_id))

    async def set_user_quota(self, address: str, *, storage: int | None = None,
                             messages: int | None = None) -> None:
        address = names.address(address)
        _limit(storage, "quota")
        _limit(messages, "message quota")

        async def op(tx: Tx) -> None:
            user_id = await tx.conn.fetchval("SELECT id FROM users WHERE address = $1 FOR UPDATE", address)
            if user_id is None:
                raise NotFound(f"no such user: {address}")
            if storage is not None:
                await tx.conn.execute("UPDATE users SET quota_bytes = $1 WHERE id = $2", storage, user_id)
            if messages is not None:
                await tx.conn.execute("UPDATE users SET quota_messages = $1 WHERE id = $2", messages, user_id)
            q = await usage(tx.conn, int(user_id))  # a raised limit may put usage below a warned level
            now_at = quota_level(q.storage, q.messages, q.storage_limit, q.message_limit)
            await tx.conn.execute("UPDATE quota_usage SET warned = least(warned, $1) WHERE user_id = $2",
                                  now_at, user_id)

        await self._engine.write(op)

    async def set_domain_quota(self, name: str, storage: int) -> None:
        name = names.domain(name)
        _limit(storage, "quota")

        async def op(tx: Tx) -> None:
            if rowcount(await tx.conn.execute("UPDATE domains SET quota_bytes = $1 WHERE name = $2",
                                              storage, name)) == 0:
                raise NotFound(f"no such domain: {name}")

        await self._engine.write(op)

    async def raise_quota_warned(self, user_id: int, percent: int) -> bool:
        from postroom.store.api import Invalid

        if percent not in QUOTA_WARNING_LEVELS:
            raise Invalid(f"quota warning level must be one of {QUOTA_WARNING_LEVELS}")

        async def op(tx: Tx) -> bool:
            return rowcount(await tx.conn.execute(
                "UPDATE quota_usage SET warned = $1 WHERE user_id = $2 AND warned < $1", percent, user_id)) == 1

        return await self._engine.write(op)
