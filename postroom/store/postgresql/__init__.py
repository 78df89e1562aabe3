"""The PostgreSQL storage engine (issue 16 item 2): the same `Store` as the SQLite engine, for several nodes.

Work in progress, not offered yet: `open_store` and `config check` still refuse `postgresql://` URLs until the
whole conformance suite (tests/store) passes on this engine. What is here passes the test modules listed in
tests/store/conftest.py `POSTGRESQL_READY`; the concerns not ported yet (the outbound queue, the full-text
index, IMAP METADATA, sort and thread keys, quotas) raise
`StoreError("... not available on PostgreSQL yet")` rather than pretend.

`PostgreSQLStore` is assembled like `SQLiteStore`, from one mixin per concern with the same module names
(accounts, mailboxes, messages, acl, authfail, websessions) over one `Engine` (engine.py: the asyncpg pool, transactions, row locks
and retries), with the change feed on LISTEN/NOTIFY (feed.py) and the schema's own numbered steps
(schema.py). Read engine.py first: its invariants are the ones api.py promises (durable when awaited, commit
then broadcast), kept with several writers at once instead of SQLite's one.

Invariants:
1. `open()` and `close()` are idempotent; `close()` waits for nothing but the pool's connections to close:
   every write awaits its own transaction.
2. Message bodies live in the database (schema.py: chunk rows); `staging_dir()` is a local folder only for
   bodies on their way in (`append_file`, `deliver_file`), each read a chunk at a time into the database and
   then removed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from postroom.store.api import ChangeHub, StoreError
from postroom.store.blobs import BlobStore
from postroom.store.hub import Hub
from postroom.store.postgresql.accounts import AccountsMixin
from postroom.store.postgresql.acl import AclMixin
from postroom.store.postgresql.authfail import AuthFailuresMixin
from postroom.store.postgresql.engine import POOL_SIZE, Engine
from postroom.store.postgresql.feed import ChangeFeed
from postroom.store.postgresql.mailboxes import MailboxesMixin
from postroom.store.postgresql.messages import MessagesMixin
from postroom.store.postgresql.websessions import WebSessionsMixin

NOT_PORTED = (
    # queue
    "enqueue", "enqueue_file", "queue_get", "queue_list", "queue_due", "queue_update", "queue_delete",
    "queue_length",
    # full-text index and search
    "search_text", "scan_texts", "index_backlog",
    # IMAP METADATA
    "get_metadata", "set_metadata",
    # sort and thread keys
    "list_sort_rows", "sort_uids", "thread_rows", "content_version", "thread_ids",
    # quotas
    "get_quota", "set_user_quota", "set_domain_quota", "raise_quota_warned",
)


class PostgreSQLStore(AccountsMixin, MailboxesMixin, MessagesMixin, AclMixin, AuthFailuresMixin, WebSessionsMixin):
    """`api.Store` on PostgreSQL at `dsn` ("postgresql://user@host:port/db"); `staging_dir` is a local folder
    for bodies on their way in (invariant 2)."""

    def __init__(self, dsn: str, staging_root: Path, *, hub: ChangeHub | None = None,
                 clock: Callable[[], float] = time.time, pool_size: int = POOL_SIZE) -> None:
        self.dsn = dsn
        self.hub = hub if hub is not None else Hub()
        self._clock = clock
        self._staging = BlobStore(Path(staging_root))
        self.feed = ChangeFeed(self.hub)
        self._engine = Engine(dsn, self.feed, pool_size=pool_size)

    async def open(self) -> None:
        if not self._engine.is_open:
            await self._engine.start()

    async def close(self) -> None:
        if self._engine.is_open:
            await self._engine.stop()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __getattr__(self, name: str) -> Any:
        if name in NOT_PORTED:
            async def missing(*args: object, **kwargs: object) -> Any:
                raise StoreError(f"{name} is not available on PostgreSQL yet (issue 16)")
            return missing
        raise AttributeError(name)


__all__ = ["PostgreSQLStore"]
