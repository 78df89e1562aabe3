"""Connections and transactions for the PostgreSQL engine.

Theory of operation
-------------------
PostgreSQL takes many writers at once and shares one WAL flush among the transactions that commit together
(its own group commit), so there is no writer thread here: every write coroutine takes a connection from an
asyncpg pool and runs its job, an `async def op(tx)`, inside one transaction:

    coroutine                                 PostgreSQL
    ---------                                 ----------
    conn = pool.acquire()
    BEGIN (READ COMMITTED)
    await op(tx)                              row locks: the mailbox row (SELECT ... FOR UPDATE, or the
                                                UPDATE ... RETURNING that hands out UIDs and MODSEQs), blob
                                                rows (INSERT ... ON CONFLICT DO UPDATE), the counters row
    INSERT INTO changes (...)  (feed.py)
    SELECT pg_notify(channel, origin token first last)
    COMMIT                                    the WAL flush (fsync) for the commit; NOTIFY goes out after it
    wait for our own notification             feed.py publishes the batch's changes on the hub in commit order
    return the op's result

Serialisation: the SQLite engine runs one write at a time. Here writes run concurrently, so every job locks
what it reads to decide what it writes, in one order (the user's or mailbox's row first, then blob rows by
id): `mailboxes` rows are locked by `load_mailbox(..., lock=True)` before any message of the mailbox is
read for writing, and UIDs and MODSEQs come from `UPDATE mailboxes SET uidnext = uidnext + n ... RETURNING`,
so two nodes appending to one mailbox never share a UID or a MODSEQ. A job that still meets a deadlock or a
serialisation failure is run again from the start with a fresh `Tx` (at most `RETRIES` times): jobs only
collect their effects in `tx`, so a rolled back attempt leaves nothing behind.

Reads run in a REPEATABLE READ, READ ONLY transaction: one snapshot for the whole read.

Invariants
----------
1. A write returns only after COMMIT returned (PostgreSQL with fsync=on and synchronous_commit=on: durable).
2. Commit, then broadcast: a write's Change records are rows of `changes` inserted in its transaction, and are
   published on the hub (feed.py) only after the commit, in commit order, before the write returns.
3. Every write runs `op` in a transaction of its own; an exception from `op` rolls back everything it did and
   reaches its caller only.
4. A write that fails for lack of space (PostgreSQL's disk_full / 53100) reaches its caller as
   `api.InsufficientStorage`.
5. A read or write that fails because the server cannot be reached (`unreachable`: no connection can be made,
   the server is starting or shutting down, out of connection slots, or the connection was lost mid-way)
   reaches its caller as `api.StoreUnavailable`, and is counted in `outage` (one log line per interval, none
   per failure). Only at `pool.acquire()` is any `OSError` taken for it: inside a job an `OSError` is the
   job's own (a blob file) and passes unchanged. A write whose COMMIT was cut off may have committed: the
   caller's retry may store it twice (SMTP's sender does the same after a lost `250`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from postroom.store.api import Change, InsufficientStorage, OutageLog, StoreError, StoreUnavailable
from postroom.store.postgresql.dbtypes import Conn
from postroom.store.postgresql.feed import ChangeFeed
from postroom.store.postgresql.schema import migrate

log = logging.getLogger("postroom.store")

T = TypeVar("T")
RETRIES = 20
POOL_SIZE = 10

_LOST = (asyncpg.PostgresConnectionError,  # class 08: connection exception (incl. ConnectionDoesNotExistError)
         asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,  # 57P03, 57P01-02
         asyncpg.TooManyConnectionsError,  # 53300: no slot free now
         ConnectionError)  # the socket reset under asyncpg


def unreachable(exc: BaseException, *, connecting: bool) -> bool:
    """True when `exc` means the server cannot be reached now (invariant 5), not that the request is wrong.
    `connecting`: raised by `pool.acquire()`, where any `OSError` (refused, unreachable, no such socket file,
    a timeout) is the connection's."""
    if isinstance(exc, asyncpg.InternalClientError):
        # A pooled idle connection that received the server's FATAL (57P01 at a fast shutdown) just before it was
        # handed out is still consuming that error (asyncpg's protocol state 2, PROTOCOL_ERROR_CONSUME) when the
        # job's first query is sent: asyncpg 0.32 raises "cannot switch to state N; another operation (2) is in
        # progress" (measured with the database stopped under IMAP IDLE). Any other InternalClientError is a bug.
        return "another operation (2)" in str(exc)
    return isinstance(exc, _LOST) or (connecting and isinstance(exc, OSError))


@dataclass
class Tx:
    """What a write job gets: the connection, inside its transaction, and the Change records it made."""

    conn: Conn
    changes: list[Change] = field(default_factory=list)


class Engine:
    """The asyncpg pool, write and read transactions, and the change feed of one open store."""

    def __init__(self, dsn: str, feed: ChangeFeed, *, pool_size: int = POOL_SIZE) -> None:
        self.dsn = dsn
        self.feed = feed
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self.outage = OutageLog(log)

    @property
    def is_open(self) -> bool:
        return self._pool is not None

    async def start(self) -> None:
        """Connect, migrate the schema, start listening for other processes' changes."""
        try:
            # min_size=0: no background task of asyncpg's keeps a floor of connections. During an outage that
            # task logged a traceback per attempt, and its reconnection raced with acquire() on a connection
            # holder (asyncpg 0.32: "InternalClientError: connect() called while another connection already
            # exists", measured with the database restarted). Idle connections still stay in the pool for
            # asyncpg's max_inactive_connection_lifetime (300 s); start() connects at once to migrate.
            pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=self.pool_size)
        except (OSError, asyncpg.PostgresError) as e:
            raise StoreError(f"cannot connect to PostgreSQL: {e}") from e
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
            await self.feed.start(self.dsn, pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        await self.feed.stop()
        if pool is not None:
            await pool.close()

    def _need_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def write(self, op: Callable[[Tx], Awaitable[T]]) -> T:
        """Run `await op(tx)` in a transaction of its own; return its result once committed and broadcast."""
        pool = self._need_pool()
        for attempt in range(RETRIES):
            token: int | None = None
            try:
                async with self._acquire(pool) as conn:
                    tx = Tx(conn)
                    try:
                        async with conn.transaction():
                            result = await op(tx)
                            token = await self.feed.record(conn, tx.changes)
                    except BaseException:
                        if token is not None:
                            self.feed.forget(token)
                        raise
                break
            except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                if attempt == RETRIES - 1:
                    raise StoreError("the write kept conflicting with others; try again") from None
                await asyncio.sleep(0.001 * (attempt + 1))
            except asyncpg.DiskFullError as e:
                raise InsufficientStorage(f"insufficient storage: {e}") from e
        if token is not None:
            await self.feed.published(token, tx.changes)
        return result

    async def read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `await fn(conn)` in one REPEATABLE READ, READ ONLY transaction (one snapshot)."""
        pool = self._need_pool()
        async with self._acquire(pool) as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            return await fn(conn)

    @contextlib.asynccontextmanager
    async def _acquire(self, pool: asyncpg.Pool) -> AsyncIterator[Conn]:
        """`pool.acquire()` for one job; what it and the job raise for an unreachable server becomes
        `StoreUnavailable` (invariant 5), counted in `outage`; a job that ends otherwise ends an outage."""
        try:
            conn = await pool.acquire()
        except Exception as exc:
            if unreachable(exc, connecting=True):
                self.outage.failed(exc)
                raise StoreUnavailable(f"PostgreSQL unreachable: {_describe(exc)}") from exc
            raise
        try:
            yield conn
        except Exception as exc:
            if unreachable(exc, connecting=False):
                self.outage.failed(exc)
                raise StoreUnavailable(f"PostgreSQL unreachable: {_describe(exc)}") from exc
            raise
        else:
            self.outage.succeeded()
        finally:
            with contextlib.suppress(Exception):  # a lost connection is closed by the pool, not reused
                await pool.release(conn)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def rowcount(status: str) -> int:
    """The row count of a command status string ("UPDATE 3" -> 3, "INSERT 0 1" -> 1)."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


__all__ = ["Engine", "Tx", "rowcount"]
