"""The embedded storage engine: SQLite (WAL) for metadata, the queue and small bodies; files for large bodies.

Bodies of at most `inline_max` bytes (default 256 KiB) live in the database (`blob_data`), written in the same
group commit as the rows that reference them, so N concurrent deliveries cost one WAL fsync. Larger bodies are
content-addressed files under `blob_dir` (blobs.py), each written and fsync'd before its commit; copying them
through the WAL would cost more than their fsyncs save. engine.py says more.

`SQLiteStore` is assembled from one mixin per concern (accounts, mailboxes, messages, queue, failed logins in
`authfail.py`, access control lists in `acl.py`, the full-text index in `search.py` over `fts.py`, IMAP
METADATA in `metadata.py`, sort keys and thread ids in `threads.py`, webmail sessions in `websessions.py`,
quotas in `quota.py`, sender rules and spam training signals in `senders.py`, the POP3 maildrop lock, held
list posts and shared values in `nodes.py`) over one `Engine` (engine.py: the
writer thread and group commit, reader threads). Read
engine.py first: its invariants are the ones api.py promises (durable when awaited, commit then broadcast).

Invariants:
1. Every write goes through `Engine.write` (one writer thread, group commit); nothing else writes the database.
2. `open()` and `close()` are idempotent; `close()` lets every queued write finish before it returns.
3. Every process that opens the store holds a shared `flock` on `<database>.lock` until `close()`. `open()`
   first tries that lock exclusively without waiting: if it gets it, no other process (server or admin
   command) has the store open, so every staging and ".tmp." file is a crash's leftover and all are removed
   at once (four APPENDs killed mid-literal no longer leave 120 MB for an hour); then it keeps the lock
   shared. Otherwise it waits for the shared lock and removes only files older than an hour
   (`BlobStore.sweep`, `STALE_AGE`), never a younger one another process may be writing. Where `flock` is not
   available the hour rule alone applies.
4. Every change any process commits to the store reaches `hub`: this process's own from its writer right after
   the commit, other processes' from the `changes` table (feed.py), polled while the store is open by one task
   on the loop that opened it (started by `open()`, stopped by `close()` before the engine stops; parked while
   the hub has no subscriber), in commit order, within about 50 ms; a process that fell behind the table's
   pruning gets `hub.publish_lost()`. A subscriber gets what is committed after its `subscribe()`.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from postroom.store.sqlite import fts
from postroom.store.sqlite.accounts import AccountsMixin
from postroom.store.sqlite.acl import AclMixin
from postroom.store.sqlite.authfail import AuthFailuresMixin
from postroom.store.sqlite.engine import Engine
from postroom.store.sqlite.feed import KEEP_ROWS, KEEP_SECONDS, ChangeFeed
from postroom.store.sqlite.mailboxes import MailboxesMixin
from postroom.store.sqlite.messages import MessagesMixin
from postroom.store.sqlite.metadata import MetadataMixin
from postroom.store.sqlite.nodes import NodesMixin
from postroom.store.sqlite.queue import QueueMixin
from postroom.store.sqlite.quota import QuotaMixin
from postroom.store.sqlite.recipients import RecipientsMixin
from postroom.store.sqlite.search import SearchMixin
from postroom.store.sqlite.senders import SendersMixin
from postroom.store.sqlite.settings import SettingsMixin
from postroom.store.sqlite.structure import StructureMixin
from postroom.store.sqlite.threads import ThreadsMixin
from postroom.store.sqlite.websessions import WebSessionsMixin

log = logging.getLogger("postroom.store")

INLINE_MAX = 256 * 1024
"""Default largest body kept in the database. Measured with bench/store.py (--size 64K/256K/1M, --inline-max
above vs -1): bodies in the database were ~3x faster than files at 64 KiB and 1.2-2x at 256 KiB, with 1 and 50
writers; at 1 MiB they were level, so there the WAL copy and checkpoint are not worth the database growth."""


class SQLiteStore(
    AccountsMixin, MailboxesMixin, MessagesMixin, QueueMixin, AuthFailuresMixin, AclMixin, SearchMixin, MetadataMixin,
    ThreadsMixin, WebSessionsMixin, QuotaMixin, StructureMixin, SendersMixin, SettingsMixin, NodesMixin,
    RecipientsMixin,
):
    """`api.Store` on SQLite. `path` is the database file; bodies larger than `inline_max` bytes are files under
    `blob_dir` (a negative `inline_max` makes every body a file). Changing `inline_max` between runs is safe:
    it only decides where new bodies go."""

    reads_without_task = True  # api.Store: point lookups are synchronous calls on the loop's thread

    def __init__(
        self,
        path: Path,
        blob_dir: Path,
        *,
        hub: ChangeHub | None = None,
        clock: Callable[[], float] = time.time,
        readers: int = 4,
        inline_max: int = INLINE_MAX,
        keep_changes: int = KEEP_ROWS,
        keep_changes_seconds: float = KEEP_SECONDS,
    ) -> None:
        self.path = Path(path)
        self.hub = hub if hub is not None else Hub()
        self._clock = clock
        self._blobs = BlobStore(Path(blob_dir))
        self.feed = ChangeFeed(self.path, self.hub, keep_rows=keep_changes, keep_seconds=keep_changes_seconds,
                               clock=clock)
        self._engine = Engine(self.path, self._blobs, self.hub, inline_max=inline_max, readers=readers,
                              feed=self.feed)
        self._lock_fd = -1  # invariant 3
        self._poller: asyncio.Task[None] | None = None  # invariant 4

    @property
    def on_commit(self) -> Callable[[float, int], None] | None:
        """Called from the writer thread after each group commit with (seconds, operations in the batch)."""
        return self._engine.on_commit

    @on_commit.setter
    def on_commit(self, callback: Callable[[float, int], None] | None) -> None:
        self._engine.on_commit = callback

    @property
    def parks(self) -> bool:
        """Whether the writer may leave the full-text rows of a busy batch for later (engine.py invariant 10):
        True only in a process that works the index backlog off when it starts (`postroom serve`: a worker
        that is stopped or dies leaves its parked bodies recorded for the next); False (the default) in one
        that may exit before its writer is idle (the command-line tools), which writes them with each batch."""
        return self._engine.parks

    @parks.setter
    def parks(self, value: bool) -> None:
        self._engine.parks = value

    @property
    def on_lock_wait(self) -> Callable[[float], None] | None:
        """Called from the writer thread before each group commit with the seconds its batch waited for the
        write lock, which another process (another worker, an admin command) held: with several worker
        processes the writers take turns on it, and this is where their wait shows."""
        return self._engine.on_lock_wait

    @on_lock_wait.setter
    def on_lock_wait(self, callback: Callable[[float], None] | None) -> None:
        self._engine.on_lock_wait = callback

    @property
    def blobs(self) -> BlobStore:
        return self._blobs

    async def open(self) -> None:
        if not self._engine.is_open:
            alone = await asyncio.to_thread(self._lock)
            await asyncio.to_thread(self._engine.start)
            await asyncio.to_thread(self._sweep, 0.0 if alone else STALE_AGE)
            if await self._engine.write(lambda tx: fts.check_version(tx.conn)):
                log.warning("full-text index made by another version: emptied, to be built again (postroom index)")
            self.feed.loop = asyncio.get_running_loop()
            self._poller = asyncio.create_task(self.feed.poll_forever(self._engine.feed_catch_up),
                                               name="postroom-change-feed")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _lock(self) -> bool:
        """Take the store's lock (invariant 3); True if this process is the only one with the store open."""
        if self._lock_fd >= 0:
            return False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            log.warning("no lock file %s (%s): stale files are swept after an hour only", self.lock_path, e)
            return False
        alone = False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                alone = True
            except BlockingIOError:
                pass
            fcntl.flock(fd, fcntl.LOCK_SH)  # from exclusive: a conversion; else waits out another's sweep
        except OSError as e:
            os.close(fd)
            log.warning("cannot lock %s (%s): stale files are swept after an hour only", self.lock_path, e)
            return False
        self._lock_fd = fd
        return alone

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, -1
        if fd >= 0:
            os.close(fd)  # releases the flock

    def _sweep(self, max_age: float = STALE_AGE) -> None:
        """Remove what a crash left in the blob directory (blobs.py invariants 5 and 6): everything when no other
        process has the store open, else only files older than `STALE_AGE` (invariant 3)."""
        try:
            removed = self._blobs.sweep(max_age)
        except OSError as e:  # garbage left in place costs disk only; never refuse to open for it
            log.warning("could not sweep stale files under %s: %s", self._blobs.root, e)
            return
        for path in removed:
            log.info("removed stale blob temporary file %s", path)
        if removed:
            log.warning("removed %d stale staging/temporary file(s) under %s", len(removed), self._blobs.root)

    async def close(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            if poller.get_loop() is asyncio.get_running_loop():
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            else:
                poller.get_loop().call_soon_threadsafe(poller.cancel)
        if self._engine.begin_stop():
            await asyncio.to_thread(self._engine.stop)
            await asyncio.sleep(0)  # let the last batch's callbacks (answers, broadcasts) run
        self.drop_maildrop_locks()
        self._unlock()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["INLINE_MAX", "SQLiteStore"]
