"""How long the store remembers the UIDs of expunged messages: the pruning task of `postroom serve`.

Theory of operation
-------------------
QRESYNC (RFC 7162 §3.2.5, §3.2.6) tells a returning client which of its messages were expunged since the
MODSEQ it saved, from the store's record of removals (`Store.vanished`). Kept forever, that record grows with
every expunge; `ExpungedRetention` forgets what is older than `imap.expunged_retention_days`
(`Store.prune_expunged`, in bounded write batches) when the server starts and then every `interval` seconds.
A client that comes back later than that is answered by the RFC's fallback (imap/mailboxes.py, imap/fetch.py).
With several nodes on one store, a round runs on the node that holds the cluster-wide lease
`expunged-retention` (jobs.py); running it on two would be harmless (the same DELETE of old rows), only twice the
work.

Invariants
1. A failed pruning round is logged and retried at the next interval; it never stops the server.
2. `stop()` cancels the task and waits for it: nothing prunes once the store is closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from postroom.jobs import ClusterJob
from postroom.store.api import Store

log = logging.getLogger("postroom.store")

DAY = 86400.0


class ExpungedRetention:
    """Prunes the expunged-UID record of `store` to the last `days` days, now and every `interval` seconds; with
    `job`, only while this node holds that cluster-wide lease."""

    def __init__(self, store: Store, days: int, interval: float = 3600.0,
                 clock: Callable[[], float] = time.time, job: ClusterJob | None = None) -> None:
        self.store = store
        self.job = job
        self.days = days
        self.interval = interval
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """One pruning round; returns how many records were forgotten."""
        return await self.store.prune_expunged(self.clock() - self.days * DAY)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="expunged-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.job is not None:
            await self.job.release()

    async def _loop(self) -> None:
        while True:
            try:
                n = await (self.job.run(self.run_once) if self.job is not None else self.run_once())
                if n:
                    log.info("retention forgot expunged records count=%d older_than_days=%d", n, self.days)
            except Exception:  # invariant 1
                log.exception("retention: pruning expunged records failed")
            await asyncio.sleep(self.interval)
