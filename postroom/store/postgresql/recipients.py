"""What delivery reads of a local recipient, in PostgreSQL: the SQLite engine's recipients.py, same invariants.

One REPEATABLE READ transaction (one snapshot) of two statements: the user's row with their counters, their
domain's limit (and its total, a correlated SUM that only a domain with a limit evaluates), their INBOX's id and
their settings; then their rules and their domain's, in the order `sender_rules` gives them. Four reads made
one saves three pool acquisitions and transactions (each one round trip or more to the server).
"""

from __future__ import annotations

from postroom.store.api import QuotaUsage, RecipientFacts, SenderRule, UserSettings
from postroom.store.postgresql.common import Base
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.sqlite.recipients import SETTINGS
from postroom.store.sqlite.settings import settings_of

FACTS = (
    "SELECT u.id, q.storage, q.messages, u.quota_bytes, u.quota_messages, u.domain_id, d.quota_bytes, q.warned,"
    " u.address, d.name, (SELECT b.id FROM mailboxes b WHERE b.user_id = u.id AND b.name = 'INBOX'),"
    " CASE WHEN d.quota_bytes > 0 THEN (SELECT coalesce(sum(q2.storage), 0) FROM users u2"
    "  JOIN quota_usage q2 ON q2.user_id = u2.id WHERE u2.domain_id = u.domain_id) ELSE 0 END,"
    f" s.user_id IS NOT NULL, {SETTINGS}"
    " FROM users u JOIN quota_usage q ON q.user_id = u.id JOIN domains d ON d.id = u.domain_id"
    " LEFT JOIN user_settings s ON s.user_id = u.id WHERE u.id = $1"
)
# The user's rules, then the domain's, each by pattern as senders.py `_rules` orders them.
RULES = (
    "SELECT id, kind, pattern, created, user_id, domain_id FROM sender_rules WHERE user_id = $1 OR domain_id = $2"
    " ORDER BY user_id IS NULL, pattern COLLATE \"C\""
)


async def facts(conn: Conn, user_id: int) -> RecipientFacts | None:
    """The user's `RecipientFacts` as `conn` sees it (SQLite recipients.py invariants 1, 2); None for an unknown
    user id."""
    row = await conn.fetchrow(FACTS, user_id)
    if row is None:
        return None
    domain_id = int(row[5])
    quota = QuotaUsage(user_id=int(row[0]), storage=int(row[1]), messages=int(row[2]), storage_limit=int(row[3]),
                       message_limit=int(row[4]), domain_storage=int(row[11]), domain_storage_limit=int(row[6]),
                       warned=int(row[7]))
    address, domain = str(row[8]), str(row[9])
    rules = tuple(SenderRule(int(r[0]), address if r[4] is not None else domain, str(r[1]), str(r[2]), float(r[3]),
                             None if r[4] is None else int(r[4]), None if r[5] is None else int(r[5]))
                  for r in await conn.fetch(RULES, user_id, domain_id))
    return RecipientFacts(quota=quota, sender_rules=rules, inbox_id=None if row[10] is None else int(row[10]),
                          settings=settings_of(tuple(row)[13:]) if row[12] else UserSettings())


class RecipientsMixin(Base):
    async def recipient_facts(self, user_id: int) -> RecipientFacts | None:
        return await self._engine.read(lambda conn: facts(conn, user_id))
