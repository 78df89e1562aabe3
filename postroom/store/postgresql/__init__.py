"""The PostgreSQL storage engine (issue 16 item 2): the same `Store` as the SQLite engine, for several nodes.

`open_store` builds it for a `postgresql://user@host:port/db` URL (`store.url`). It passes the store conformance
suite (tests/store) like the SQLite engine; a test of one engine's internals skips the other, saying why. Several
server nodes may share one database (issue 16 item 3): the outbound queue's recipients are claimed with leases
(queue.py), and the POP3 maildrop lock, held list posts, the server secret and the generated TLS certificate are
rows here (nodes.py), so nodes share nothing but the database (docs/ARCHITECTURE.md "Several nodes on one
PostgreSQL" lists what stays per node).

`PostgreSQLStore` is assembled like `SQLiteStore`, from one mixin per concern with the same module names
(accounts, mailboxes, messages, queue, acl, authfail, metadata, threads, search, websessions, quota,
structure, senders, nodes) over one
`Engine` (engine.py: the asyncpg pool, transactions, row locks and retries), with the change feed on
LISTEN/NOTIFY (feed.py) and the schema's own numbered steps (schema.py). Read engine.py first: its invariants are
the ones api.py promises (durable when awaited, commit then broadcast), kept with several writers at once instead
of SQLite's one.

Invariants:
1. `open()` and `close()` are idempotent; `close()` waits for nothing but the pool's connections to close:
   every write awaits its own transaction.
2. Message bodies live in the database (schema.py: chunk rows); `staging_dir()` is a local folder only for
   bodies on their way in (`append_file`, `deliver_file`), each read a chunk at a time into the database and
   then removed.
3. The staging folder is this machine's: every process of this machine that opens the store holds a shared
   `flock` on `<staging root>/staging.lock` until `close()`, taken as the SQLite engine takes its lock
   (sqlite/__init__.py invariant 3): a process that gets it exclusively first is alone, and removes every
   staged file a crash left; otherwise only files older than `STALE_AGE`.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from postroom.store.api import ChangeHub
from postroom.store.blobs import STALE_AGE, BlobStore
from postroom.store.hub import Hub
from postroom.store.postgresql import fts
from postroom.store.postgresql.accounts import AccountsMixin
from postroom.store.postgresql.acl import AclMixin
from postroom.store.postgresql.authfail import AuthFailuresMixin
from postroom.store.postgresql.engine import POOL_SIZE, Engine
from postroom.store.postgresql.feed import ChangeFeed
from postroom.store.postgresql.mailboxes import MailboxesMixin
from postroom.store.postgresql.messages import MessagesMixin
from postroom.store.postgresql.metadata import MetadataMixin
from postroom.store.postgresql.nodes import NodesMixin
from postroom.store.postgresql.queue import QueueMixin
from postroom.store.postgresql.quota import QuotaMixin
from postroom.store.postgresql.recipients import RecipientsMixin
from postroom.store.postgresql.search import SearchMixin
from postroom.store.postgresql.senders import SendersMixin
from postroom.store.postgresql.settings import SettingsMixin
from postroom.store.postgresql.structure import StructureMixin
from postroom.store.postgresql.threads import ThreadsMixin
from postroom.store.postgresql.websessions import WebSessionsMixin

log = logging.getLogger("postroom.store")


class PostgreSQLStore(AccountsMixin, MailboxesMixin, MessagesMixin, QueueMixin, AclMixin, AuthFailuresMixin,
                      SearchMixin, MetadataMixin, ThreadsMixin, WebSessionsMixin, QuotaMixin, StructureMixin,
                      SendersMixin, SettingsMixin, NodesMixin, RecipientsMixin):
    """`api.Store` on PostgreSQL at `dsn` ("postgresql://user@host:port/db"); `staging_dir` is a local folder
    for bodies on their way in (invariant 2)."""

    # api.Store: no. A read may open a pooled connection first, and asyncpg connects inside `asyncio.timeout`,
    # which refuses to run outside a task (after a database restart every SMTP RCPT begun from the connection's
    # callback failed so, 451, until something else reconnected the pool).
    reads_without_task = False

    def __init__(self, dsn: str, staging_root: Path, *, hub: ChangeHub | None = None,
                 clock: Callable[[], float] = time.time, pool_size: int = POOL_SIZE) -> None:
        self.dsn = dsn
        self.hub = hub if hub is not None else Hub()
        self._clock = clock
        self._staging = BlobStore(Path(staging_root))
        self.feed = ChangeFeed(self.hub)
        self._engine = Engine(dsn, self.feed, pool_size=pool_size)
        self._lock_fd = -1  # invariant 3

    async def open(self) -> None:
        if not self._engine.is_open:
            alone = await asyncio.to_thread(self._lock)
            try:
                await self._engine.start()
            except BaseException:
                self._unlock()
                raise
            await asyncio.to_thread(self._sweep, 0.0 if alone else STALE_AGE)
            if await self._engine.write(lambda tx: fts.check_version(tx.conn)):
                log.warning("full-text index made by another version: emptied, to be built again (postroom index)")

    async def close(self) -> None:
        if self._engine.is_open:
            await self._engine.stop()
        self._unlock()

    def _lock(self) -> bool:
        """Take the staging folder's lock (invariant 3); True if no other local process has the store open."""
        if self._lock_fd >= 0:
            return False
        root = self._staging.root
        try:
            root.mkdir(parents=True, exist_ok=True)
            fd = os.open(root / "staging.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            log.warning("no staging lock under %s (%s): stale files are swept after an hour only", root, e)
            return False
        alone = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                pass
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError as e:
            os.close(fd)
            log.warning("cannot lock the staging folder under %s (%s): stale files are swept after an hour only",
                        root, e)
            return False
        self._lock_fd = fd
        return alone

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)

    def _sweep(self, max_age: float) -> None:
        try:
            removed = self._staging.sweep(max_age)
        except OSError as e:  # garbage left in place costs disk only; never refuse to open for it
            log.warning("could not sweep stale files under %s: %s", self._staging.root, e)
            return
        if removed:
            log.warning("removed %d stale staging file(s) under %s", len(removed), self._staging.root)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["PostgreSQLStore"]
