"""Quotas in SQLite: the per-user usage counters, the check every message insert makes, the limits.

Theory of operation
-------------------
`quota_usage` holds one row per user: `storage` (octets, the sum of the user's messages' `messages.size`, which
is their RFC822.SIZE), `messages` (their count) and `warned` (the last warning level sent, app.py's business).
Triggers on `messages` keep the first two in the statement that inserts or deletes a row (schema invariant 23),
so an append, a delivery, a COPY, a MOVE, an expunge, a mailbox or user removal updates them in the
transaction that makes the change, and no write path can forget to. Reading a user's usage is one row, never a
SUM over their messages; a domain's usage is a SUM over its users' rows (one per user, by the `users_domain`
index). `get_quota` always sums it (IMAP GETQUOTA, the web and the CLI show it); the router's read
(`recipient_facts`, recipients.py) only for a domain with a limit.

`check` runs inside the job that inserts messages (messages.py `insert_messages`), before the rows go in: it
reads the limits and the counters as this transaction sees them, so concurrent deliveries cannot together pass
a limit that each alone would respect (the writer thread runs jobs one after the other).

Invariants
1. No committed write takes a user with a limit past it: `storage + added <= quota_bytes` and `messages + count
   <= quota_messages` for the user, and the domain's total `<= domains.quota_bytes`, whenever the limit is not 0
   and the write was checked. Writes are checked except a delivery the caller exempted (`deliver(...,
   enforce_quota=False)`: the server's own quota warnings) and a move within one user (its usage does not
   change). A limit lowered below today's usage refuses every further insert until usage drops under it;
   nothing stored is removed.
2. `OverQuota.alone` is true only when the largest message of the write is larger than the storage limit it
   failed: that write would fail whatever the user deleted, so SMTP may refuse it permanently (5.2.2).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from postroom.store import names
from postroom.store.api import QUOTA_WARNING_LEVELS, Invalid, NotFound, OverQuota, QuotaUsage, quota_level
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.engine import Tx

_USAGE = (
    "SELECT u.id, q.storage, q.messages, u.quota_bytes, u.quota_messages, u.domain_id, d.quota_bytes, q.warned"
    " FROM users u JOIN quota_usage q ON q.user_id = u.id JOIN domains d ON d.id = u.domain_id"
)


def _domain_storage(conn: sqlite3.Connection, domain_id: int) -> int:
    row = conn.execute(
        "SELECT coalesce(sum(q.storage), 0) FROM users u JOIN quota_usage q ON q.user_id = u.id"
        " WHERE u.domain_id = ?", (domain_id,)).fetchone()
    return int(row[0])


def usage(conn: sqlite3.Connection, user_id: int) -> QuotaUsage:
    """The user's `QuotaUsage` as `conn` sees it. Raises NotFound for an unknown user id."""
    row = conn.execute(_USAGE + " WHERE u.id = ?", (user_id,)).fetchone()
    if row is None:
        raise NotFound(f"no such user id: {user_id}")
    domain_limit = int(row[6])
    return QuotaUsage(user_id=int(row[0]), storage=int(row[1]), messages=int(row[2]), storage_limit=int(row[3]),
                      message_limit=int(row[4]), domain_storage=_domain_storage(conn, int(row[5])),
                      domain_storage_limit=domain_limit, warned=int(row[7]))


def check(conn: sqlite3.Connection, user_id: int, sizes: Sequence[int]) -> None:
    """Raise OverQuota if adding messages of `sizes` (octets each) to `user_id`'s mailboxes would pass one of
    its limits (invariant 1); the exception says which resource and scope, and whether the largest message alone
    is too big (invariant 2). Nothing to add, or no limits: returns at once."""
    if not sizes:
        return
    row = conn.execute(_USAGE + " WHERE u.id = ?", (user_id,)).fetchone()
    if row is None:
        return  # not a user's mailbox row: nothing to count against
    storage, count, limit, message_limit, domain_id, domain_limit = (int(v) for v in row[1:7])
    added, largest = sum(sizes), max(sizes)
    if limit and storage + added > limit:
        raise OverQuota(f"over quota: {storage + added} octets of {limit} allowed", resource="STORAGE",
                        scope="user", alone=largest > limit)
    if message_limit and count + len(sizes) > message_limit:
        raise OverQuota(f"over quota: {count + len(sizes)} messages of {message_limit} allowed",
                        resource="MESSAGE", scope="user", alone=len(sizes) > message_limit)
    if domain_limit:
        total = _domain_storage(conn, domain_id)
        if total + added > domain_limit:
            raise OverQuota(f"domain over quota: {total + added} octets of {domain_limit} allowed",
                            resource="STORAGE", scope="domain", alone=largest > domain_limit)


def _limit(value: int | None, what: str) -> int | None:
    if value is not None and (not isinstance(value, int) or value < 0):
        raise Invalid(f"{what} must be a whole number, 0 or more")
    return value


class QuotaMixin(Base):
    async def get_quota(self, user_id: int) -> QuotaUsage:
        return await self._engine.read(lambda conn: usage(conn, user_id), quick=True)

    async def set_user_quota(self, address: str, *, storage: int | None = None,
                             messages: int | None = None) -> None:
        address = names.address(address)
        _limit(storage, "quota")
        _limit(messages, "message quota")

        def op(tx: Tx) -> None:
            row = tx.conn.execute("SELECT id FROM users WHERE address = ?", (address,)).fetchone()
            if row is None:
                raise NotFound(f"no such user: {address}")
            if storage is not None:
                tx.conn.execute("UPDATE users SET quota_bytes = ? WHERE id = ?", (storage, row[0]))
            if messages is not None:
                tx.conn.execute("UPDATE users SET quota_messages = ? WHERE id = ?", (messages, row[0]))
            q = usage(tx.conn, int(row[0]))  # a raised limit may put usage below a warned level (schema inv. 20)
            now_at = quota_level(q.storage, q.messages, q.storage_limit, q.message_limit)
            tx.conn.execute("UPDATE quota_usage SET warned = min(warned, ?) WHERE user_id = ?", (now_at, row[0]))

        await self._engine.write(op)

    async def set_domain_quota(self, name: str, storage: int) -> None:
        name = names.domain(name)
        _limit(storage, "quota")

        def op(tx: Tx) -> None:
            if tx.conn.execute("UPDATE domains SET quota_bytes = ? WHERE name = ?", (storage, name)).rowcount == 0:
                raise NotFound(f"no such domain: {name}")

        await self._engine.write(op)

    async def raise_quota_warned(self, user_id: int, percent: int) -> bool:
        if percent not in QUOTA_WARNING_LEVELS:
            raise Invalid(f"quota warning level must be one of {QUOTA_WARNING_LEVELS}")

        def op(tx: Tx) -> bool:
            cur = tx.conn.execute("UPDATE quota_usage SET warned = ? WHERE user_id = ? AND warned < ?",
                                  (percent, user_id, percent))
            return cur.rowcount == 1

        return await self._engine.write(op)
