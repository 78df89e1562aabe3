"""What delivery reads of a local recipient, in SQLite: `recipient_facts` (store api `RecipientFacts`).

Theory of operation
-------------------
The router asks, for each local user a message goes to, for the quota, the sender rules, the INBOX and the
settings (router invariant 19). Asked as four quick reads, each paid its own Python round and, after a commit
(every message is one), re-fetched the pages of the tables it shares with the others (`users`, `domains`):
a SQLite read transaction that begins after another connection committed drops the connection's page cache.
Here they are one read: one row for the user, their counters, their domain's limit, their INBOX's id and their
settings (`users` by its primary key, `quota_usage` and `user_settings` by theirs, `domains` by its primary key,
`mailboxes` by the unique `(user_id, name)`), then the two index ranges of `sender_rules` (senders.py
invariant 1). The domain's total, a SUM over its users' counters, is read only when the domain has a limit:
the router's check is all it is wanted for here, and the store's `quota.check` decides in the inserting
transaction anyway (quota.py invariant 1).

Invariants
1. `recipient_facts` is one read transaction (one snapshot) of point lookups and index ranges; it scans the
   domain's users only when the domain has a storage limit.
2. Its parts equal what `get_quota` (but `domain_storage`: 0 without a domain limit), `sender_rules`,
   `get_mailbox(user_id, "INBOX")` and `get_user_settings` return in the same snapshot.
"""

from __future__ import annotations

import sqlite3

from postroom.store.api import QuotaUsage, RecipientFacts, UserSettings
from postroom.store.sqlite.common import Base
from postroom.store.sqlite.quota import _domain_storage
from postroom.store.sqlite.senders import _rules
from postroom.store.sqlite.settings import COLUMNS, settings_of

SETTINGS = ", ".join(f"s.{c.strip()}" for c in COLUMNS.split(","))
# users, their counters, their domain, their INBOX, their settings (`names.mailbox` spells INBOX so): one row.
FACTS = (
    "SELECT u.id, q.storage, q.messages, u.quota_bytes, u.quota_messages, u.domain_id, d.quota_bytes, q.warned,"
    " u.address, d.name, (SELECT b.id FROM mailboxes b WHERE b.user_id = u.id AND b.name = 'INBOX'),"
    f" s.user_id IS NOT NULL, {SETTINGS}"
    " FROM users u JOIN quota_usage q ON q.user_id = u.id JOIN domains d ON d.id = u.domain_id"
    " LEFT JOIN user_settings s ON s.user_id = u.id WHERE u.id = ?"
)


def facts(conn: sqlite3.Connection, user_id: int) -> RecipientFacts | None:
    """The user's `RecipientFacts` as `conn` sees it (invariants 1, 2); None for an unknown user id."""
    row = conn.execute(FACTS, (user_id,)).fetchone()
    if row is None:
        return None
    domain_id, domain_limit = int(row[5]), int(row[6])
    quota = QuotaUsage(user_id=int(row[0]), storage=int(row[1]), messages=int(row[2]), storage_limit=int(row[3]),
                       message_limit=int(row[4]),
                       domain_storage=_domain_storage(conn, domain_id) if domain_limit else 0,
                       domain_storage_limit=domain_limit, warned=int(row[7]))
    rules = _rules(conn, str(row[8]), user_id, None) + _rules(conn, str(row[9]), None, domain_id)
    return RecipientFacts(quota=quota, sender_rules=tuple(rules), inbox_id=None if row[10] is None else int(row[10]),
                          settings=settings_of(row[12:]) if row[11] else UserSettings())


class RecipientsMixin(Base):
    async def recipient_facts(self, user_id: int) -> RecipientFacts | None:
        return await self._engine.read(lambda conn: facts(conn, user_id), quick=True)
