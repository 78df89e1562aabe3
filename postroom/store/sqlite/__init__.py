"""The embedded storage engine: SQLite (WAL) for metadata, the queue and small bodies; files for large bodies.

Bodies of at most `inline_max` bytes (default 256 KiB) live in the database (`blob_data`), written in the same
group commit as the rows that reference them, so N concurrent deliveries cost one WAL fsync. Larger bodies are
content-addressed files under `blob_dir` (blobs.py), each written and fsync'd before its commit; copying them
through the WAL would cost more than their fsyncs save. engine.py says more.

`SQLiteStore` is assembled from one mixin per concern (accounts, mailboxes, messages, queue, failed logins in
`authfail.py`) over one `Engine` (engine.py: the writer thread and group commit, reader threads). Read engine.py
first: its invariants are the ones api.py promises (durable when awaited, commit then broadcast).

Invariants:
1. Every write goes through `Engine.write` (one writer thread, group commit); nothing else writes the database.
2. `open()` and `close()` are idempotent; `close()` lets every queued write finish before it returns.
3. `open()` removes staging and ".tmp." files older than an hour (`BlobStore.sweep`), nothing younger.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from postroom.store.api import ChangeHub
from postroom.store.blobs import BlobStore
from postroom.store.hub import Hub
from postroom.store.sqlite.accounts import AccountsMixin
from postroom.store.sqlite.authfail import AuthFailuresMixin
from postroom.store.sqlite.engine import Engine
from postroom.store.sqlite.mailboxes import MailboxesMixin
from postroom.store.sqlite.messages import MessagesMixin
from postroom.store.sqlite.queue import QueueMixin

log = logging.getLogger("postroom.store")

INLINE_MAX = 256 * 1024
"""Default largest body kept in the database. Measured with bench/store.py (--size 64K/256K/1M, --inline-max
above vs -1): bodies in the database were ~3x faster than files at 64 KiB and 1.2-2x at 256 KiB, with 1 and 50
writers; at 1 MiB they were level, so there the WAL copy and checkpoint are not worth the database growth."""


class SQLiteStore(AccountsMixin, MailboxesMixin, MessagesMixin, QueueMixin, AuthFailuresMixin):
    """`api.Store` on SQLite. `path` is the database file; bodies larger than `inline_max` bytes are files under
    `blob_dir` (a negative `inline_max` makes every body a file). Changing `inline_max` between runs is safe:
    it only decides where new bodies go."""

    def __init__(
        self,
        path: Path,
        blob_dir: Path,
        *,
        hub: ChangeHub | None = None,
        clock: Callable[[], float] = time.time,
        readers: int = 4,
        inline_max: int = INLINE_MAX,
    ) -> None:
        self.path = Path(path)
        self.hub = hub if hub is not None else Hub()
        self._clock = clock
        self._blobs = BlobStore(Path(blob_dir))
        self._engine = Engine(self.path, self._blobs, self.hub, inline_max=inline_max, readers=readers)

    @property
    def on_commit(self) -> Callable[[float, int], None] | None:
        """Called from the writer thread after each group commit with (seconds, operations in the batch)."""
        return self._engine.on_commit

    @on_commit.setter
    def on_commit(self, callback: Callable[[float, int], None] | None) -> None:
        self._engine.on_commit = callback

    @property
    def blobs(self) -> BlobStore:
        return self._blobs

    async def open(self) -> None:
        if not self._engine.is_open:
            await asyncio.to_thread(self._engine.start)
            await asyncio.to_thread(self._sweep)

    def _sweep(self) -> None:
        """Remove what a crash left in the blob directory (blobs.py invariants 5 and 6). Only files older than
        `STALE_AGE`, so another process sharing the store never loses a file it is writing."""
        try:
            removed = self._blobs.sweep()
        except OSError as e:  # garbage left in place costs disk only; never refuse to open for it
            log.warning("could not sweep stale files under %s: %s", self._blobs.root, e)
            return
        for path in removed:
            log.info("removed stale blob temporary file %s", path)
        if removed:
            log.warning("removed %d stale staging/temporary file(s) under %s", len(removed), self._blobs.root)

    async def close(self) -> None:
        if self._engine.begin_stop():
            await asyncio.to_thread(self._engine.stop)
            await asyncio.sleep(0)  # let the last batch's callbacks (answers, broadcasts) run

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["INLINE_MAX", "SQLiteStore"]
