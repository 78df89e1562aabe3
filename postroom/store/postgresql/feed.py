"""The change feed on PostgreSQL: LISTEN/NOTIFY carrying who wrote and which `changes` rows, rows read back.

Theory of operation
-------------------
Every write transaction that made Change records inserts them into `changes` (seq from a sequence) and, in the
same transaction, `pg_notify(CHANNEL, "<origin> <token> <count>")`; the rows carry the same origin and token.
PostgreSQL delivers a notification only once its transaction committed, to every listening connection, in commit
order. Each open store has one connection of its own that LISTENs; its notifications go into one queue worked off
by one task on the store's event loop, so they are handled one at a time, in commit order:

    own (origin is ours)     the write that made it registered (token -> its changes) before COMMIT: they are
                             published from memory, and the waiting write is released (engine invariant 2)
    another process's        its rows (origin, token) are read from `changes` and published in seq order

So the hub sees every process's changes in commit order, its own included, and a write returns after its
changes were published. `origin` is a random 63-bit number per open store.

Bounds: rows older than KEEP_SECONDS are deleted by the writers every PRUNE_EVERY records. A notification
whose rows were pruned before they were read, or a lost listening connection, is reported as
`hub.publish_lost()`: every subscriber resyncs from the store. A lost listening connection is made again (every
RECONNECT_SECONDS until it works, then `publish_lost()` once more for what was missed meanwhile); until then
each write publishes its own changes right after its commit, so no write waits for a notification that cannot
come.

Invariants:
1. A `changes` row and its notification commit with the write or not at all.
2. Notifications are handled one at a time in arrival (commit) order; each change is published once.
3. A write waits for its own notification at most PUBLISH_WAIT seconds; past that (the listening connection
   is gone) it publishes its changes itself and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections.abc import Sequence

import asyncpg

from postroom.store.api import Change, ChangeHub, ChangeKind, OutageLog
from postroom.store.postgresql.dbtypes import Conn

log = logging.getLogger("postroom.store")

CHANNEL = "postroom_changes"
KEEP_SECONDS = 600.0
PRUNE_EVERY = 1000
PUBLISH_WAIT = 5.0
RECONNECT_SECONDS = 1.0


class ChangeFeed:
    """Records changes in the write's transaction and publishes every process's on `hub` (module doc)."""

    def __init__(self, hub: ChangeHub) -> None:
        self.hub = hub
        self.origin = str(random.getrandbits(63))
        self._tokens = itertools.count(1)
        self._pending: dict[int, tuple[Sequence[Change], asyncio.Future[None]]] = {}
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._listener: Conn | None = None
        self._pool: asyncpg.Pool | None = None
        self._task: asyncio.Task[None] | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._direct: set[int] = set()  # tokens of writes that publish their own changes (module doc)
        self._dsn = ""
        self._recorded = 0
        self._retries = OutageLog(log, what="store: the change feed cannot listen again yet", back=None)

    async def start(self, dsn: str, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._dsn = dsn
        self._queue = asyncio.Queue()
        await self._listen()
        self._task = asyncio.create_task(self._work(), name="postroom-change-feed")

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self._dsn)
        await conn.add_listener(CHANNEL, self._on_notify)
        conn.add_termination_listener(self._on_lost)
        self._listener = conn

    async def _listen_again(self) -> None:
        while True:
            await asyncio.sleep(RECONNECT_SECONDS)
            try:
                await self._listen()
            except (OSError, asyncpg.PostgresError) as e:
                self._retries.failed(e)  # one line per interval, not one per attempt
                continue
            self._retries.succeeded()
            log.info("store: the change feed listens again")
            self.hub.publish_lost()  # what was committed while nobody listened
            return

    async def stop(self) -> None:
        for task in (self._reconnect, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reconnect = self._task = None
        conn, self._listener = self._listener, None
        if conn is not None:
            conn.remove_termination_listener(self._on_lost)
            with contextlib.suppress(Exception):
                await conn.close()
        for _, future in self._pending.values():
            if not future.done():
                future.set_result(None)
        self._pending.clear()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._queue.put_nowait(str(payload))

    def _on_lost(self, conn: object) -> None:
        log.error("store: the change feed's PostgreSQL connection was lost; subscribers resync")
        self._listener = None
        self.hub.publish_lost()
        for token, (changes, future) in list(self._pending.items()):  # their notifications may never come
            del self._pending[token]
            self.hub.publish(changes)
            if not future.done():
                future.set_result(None)
        if self._task is not None and (self._reconnect is None or self._reconnect.done()):
            self._reconnect = asyncio.get_running_loop().create_task(self._listen_again())

    async def record(self, conn: Conn, changes: Sequence[Change]) -> int | None:
        """In the write's transaction: the rows and the notification of `changes` (invariant 1); the token the
        write then waits on with `published`, None when there is nothing to publish."""
        if not changes:
            return None
        now = time.time()
        token = next(self._tokens)
        await conn.execute(
            "INSERT INTO changes(origin, token, created, user_id, mailbox_id, kind, uid, modseq, flags,"
            " keywords, name, old_name) SELECT $1, $12, $2, * FROM unnest($3::bigint[], $4::bigint[], $5::text[],"
            " $6::bigint[], $7::bigint[], $8::int[], $9::text[], $10::text[], $11::text[])",
            self.origin, now, [c.user_id for c in changes], [c.mailbox_id for c in changes],
            [c.kind.value for c in changes], [c.uid for c in changes], [c.modseq for c in changes],
            [c.flags for c in changes], [" ".join(sorted(c.keywords, key=str.lower)) for c in changes],
            [c.name for c in changes], [c.old_name for c in changes], token,
        )
        await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, f"{self.origin} {token} {len(changes)}")
        if self._listener is None:  # nobody listens (module doc): the write publishes its changes itself
            self._direct.add(token)
        else:
            self._pending[token] = (changes, asyncio.get_running_loop().create_future())
        self._recorded += len(changes)
        if self._recorded >= PRUNE_EVERY:
            self._recorded = 0
            await conn.execute("DELETE FROM changes WHERE created < $1", now - KEEP_SECONDS)
        return token

    def forget(self, token: int) -> None:
        """The write's transaction did not commit: nothing to wait for."""
        self._pending.pop(token, None)
        self._direct.discard(token)

    async def published(self, token: int, changes: Sequence[Change]) -> None:
        """After COMMIT: wait until the feed published this write's changes (invariant 3)."""
        if token in self._direct:
            self._direct.discard(token)
            self.hub.publish(changes)
            return
        entry = self._pending.get(token)
        if entry is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(entry[1]), PUBLISH_WAIT)
        except TimeoutError:
            if self._pending.pop(token, None) is not None:
                log.warning("store: no notification for a committed write within %.0f s; published directly",
                            PUBLISH_WAIT)
                self.hub.publish(changes)

    async def _work(self) -> None:
        while True:
            payload = await self._queue.get()
            if payload is None:
                return
            try:
                await self._handle(payload)
            except Exception:  # never let the feed die: subscribers would wait forever
                log.exception("store: change feed notification %r failed", payload)
                self.hub.publish_lost()

    async def _handle(self, payload: str) -> None:
        origin, token_text, count_text = payload.split()
        if origin == self.origin:
            entry = self._pending.pop(int(token_text), None)
            if entry is not None:
                changes, future = entry
                try:
                    self.hub.publish(changes)
                finally:
                    if not future.done():
                        future.set_result(None)
            return
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT user_id, mailbox_id, kind, uid, modseq, flags, keywords, name, old_name FROM changes"
                " WHERE origin = $1 AND token = $2 ORDER BY seq", origin, int(token_text))
        if len(rows) != int(count_text):
            self.hub.publish_lost()  # pruned before we read them (module doc)
            return
        self.hub.publish([Change(ChangeKind(r[2]), int(r[0]), int(r[1]), int(r[3]), int(r[4]), int(r[5]),
                                 frozenset(str(r[6]).split()), str(r[7]), str(r[8])) for r in rows])


__all__ = ["CHANNEL", "ChangeFeed"]
