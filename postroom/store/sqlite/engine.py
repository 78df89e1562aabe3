"""Connections, the writer thread and group commit for the SQLite engine.

Theory of operation
-------------------
SQLite allows one writer at a time and makes a commit durable with one fsync of the WAL. So one thread owns the
only write connection, and every write coroutine hands it a function instead of running SQL itself:

    coroutine                          writer thread
    ---------                          -------------
    large body only: write file +
      fsync file and dir (I/O pool)
      (append_file: hash the staged
      file, fsync, link, fsync dir)
    jobs.put((fn, future, loop))  -->  take every pending job (a batch)
    await future                       BEGIN IMMEDIATE
                                       feed: other processes' changes since the last look (feed.py)
                                       for each job: fn(tx)
                                         (one raised: ROLLBACK, BEGIN IMMEDIATE, the
                                         others again, each in a SAVEPOINT: invariant 11)
                                         (a small body is INSERTed into blob_data right here)
                                       the deferred steps of the jobs that succeeded, each once
                                         (the full-text rows of the batch's new bodies: fts.py;
                                         parked in the backlog instead while jobs wait)
                                       the Change records of the jobs that succeeded -> `changes` rows
                                       COMMIT                                      (one fsync for the batch)
                                       on_commit(seconds, ops)
                                       delete blob files whose last reference went (under the write lock)
                   <-- call_soon_threadsafe: hub.publish(others' changes, then the batch's); set each future

While one batch commits, new jobs pile up and form the next batch: N concurrent writers cost about one fsync,
not N. A batch holds at most MAX_BATCH jobs and stops growing past MAX_BATCH_BYTES of inline bodies. A job that
raises (NotFound, AlreadyExists, OverQuota...) is rolled back alone and its exception goes to its caller only;
the others still commit. The jobs first run one after the other with no SAVEPOINT between them, because a
SAVEPOINT costs more than its two statements: SQLite keeps the old content of every page changed under it in a
statement journal, which spills to a temporary file past 64 KiB (a batch of ten 5 KB deliveries wrote ~110 KiB
per message to one, beside ~80 KiB of WAL), and keeps even the pages a deletion frees (kept in memory instead,
`temp_store = MEMORY`, the journal of a 20,000-message EXPUNGE grew past 800 MiB).
Only when a job raises is the transaction rolled back and begun again, and the batch run once more, each job
in its own SAVEPOINT and without the one that raised, whose exception stands: it failed after the same jobs
before it (invariant 11).

Work that costs less once per batch than once per job is deferred (`Tx.defer`) and run after the last job,
outside every job's SAVEPOINT (when there are any), for the jobs that succeeded: the full-text rows of new
bodies. FTS5 writes what it holds in memory out as a new index segment at every SAVEPOINT and RELEASE, so rows
written inside each job made one segment per message, and merging those cost more CPU than tokenising the text
(bench/RESULTS.md, "SMTP durable ingest, the writer's side"); deferred, a batch makes one segment.

A deferred step that is not needed for the answer may wait for a quiet writer (`Deferred.park`), in a process
that works the backlog off when it starts (`Engine.parks`: `postroom serve`; a command-line tool such as
`postroom import`, which may exit before its writer is ever idle, writes every step at the batch's end): when
other jobs wait for the write lock as a batch ends (this process's, in its queue, or another process's: the batch
found the writer flock taken when it asked for it), the batch records the step's items as to-do (the full-text
index's backlog rows: a few bytes each) instead of running it, and the writer runs it later with up to
`IDLE_STEP` of them per transaction: back to back once no job has come for `IDLE_SECONDS`; between batches,
one every `PARKED_LAG` while the writer's load (the share of its time spent waiting for or holding the write
lock, averaged over about `LOAD_WINDOW`) is under `LOAD_LOW` or more than `PARKED_SOFT` items are parked, and
one every `PARKED_LAG_BUSY` however busy it is (invariant 10). Steady traffic that never leaves the writer idle
for `IDLE_SECONDS` still leaves it time, and the backlog must not grow through it (SEARCH reads backlog bodies
from their metadata, ~0.17 ms each); a burst that keeps the write lock taken leaves none, and the index of
its first `PARKED_SOFT` bodies waits until the burst is over, while the rest is indexed at up to `IDLE_STEP`
bodies per `PARKED_LAG` (bench/RESULTS.md, 2026-12-02: a 10,000-message burst stored ~20 % faster; under
sustained overload the backlog stays near `PARKED_SOFT` and SEARCH BODY takes 0.2-0.7 s instead of 0.1 s).
In a burst of deliveries the full-text rows were about a third of the writer's time per message
(bench/RESULTS.md, 2026-12-01; more for varied text: ~1 ms for 6 KB of it, two thirds of that the trigram
index of the body), and with several worker processes the writer's time is what they queue for (one write
lock); Dovecot's and Stalwart's indexers likewise index after delivery. SEARCH is exact meanwhile: it reads a
body in the backlog from its metadata.

Where bodies live, and why: a body of at most `inline_max` bytes (`Engine.inline`) is stored in the database,
in the `blob_data` table, by the job itself, so it rides the batch's one WAL fsync. A body stored as a file
costs its own fsync of the file and of its directory (and often a new `ab/cd` directory): 2N fsyncs for N
concurrent messages, however well the commit is shared. Larger bodies still go to files: a body in the
database is written twice (WAL, then the database file at checkpoint), which at about 1 MiB costs as much as
the fsyncs it saves (bench/store.py), and a batch of many large bodies would hold the write lock while it
copies them. The decision is by size only, so the same bytes
are always stored the same way by one store; a body already stored (either way, e.g. a file from schema
version 1 or from a store with another threshold) is only given one more reference, wherever it is.

Several processes writing one store (the worker processes of `server.workers`, an admin command beside the
server): SQLite lets one of them write at a time, and a writer that finds the database locked sleeps and
retries (the busy handler, up to `BUSY_TIMEOUT_MS`: sleeps of 1, 2, 5, 10 ... 100 ms), so the lock often stands
free while the next writer still sleeps. So each writer thread first takes an `fcntl.flock` of
`<database>-writer.lock` (blocking: the kernel wakes the next waiter as the holder releases it), then gathers
its batch (what queued while it waited joins it) and runs BEGIN IMMEDIATE ... COMMIT, then lets go. The flock is
an accelerator among Postroom processes only; SQLite's own lock still decides (a process without it, such as
the sqlite3 shell, meets the busy handler as before). The kernel drops the flock of a process that dies.

Reads run on a small pool of threads, each with its own connection (WAL lets them read beside the writer), each
call inside one read transaction so it sees one consistent snapshot.

Invariants
----------
1. A write future is resolved only after COMMIT returned (synchronous=FULL: the WAL is fsync'd). If BEGIN, a
   deferred step (invariant 9) or COMMIT fails, or a job's error ends the transaction by itself (SQLite rolls
   all of it back on SQLITE_FULL and some I/O errors), in either run of invariant 11, every job of the batch
   gets that exception, including those whose function succeeded.
2. Commit, then broadcast: a batch's Change records are published on the hub after its commit, on the event loop
   thread, before the writers' futures are resolved, in commit order. The same records are rows of `changes`,
   written in the batch's transaction for the jobs that succeeded, so other processes publish them too, and
   only once committed (feed.py); the changes other processes committed before this batch are published
   just before it.
3. Blob files a job references were written and fsync'd before the job was queued (by the caller). A job that
   inserts a blob row which has no file (a concurrent deletion won the race) writes the file itself first.
   Inline bodies are written by the job, in its transaction: the commit that makes the reference durable
   makes the body durable, and a job rolled back leaves no body behind.
4. A blob file is deleted only after the commit that removed its last reference, and only after re-checking,
   inside a write transaction, that no row needs it again (a row whose body came back inline does not); so a
   racing writer in this or another process (the admin CLI) never loses a body. An inline body is deleted in
   the transaction that drops its last reference.
5. The write connection is used by the writer thread only; a read connection only by the thread that made it
   (a pool thread, or the event-loop thread for quick point lookups).
6. A write or file job that fails for lack of space (ENOSPC, EDQUOT, SQLITE_FULL) reaches its caller as
   `api.InsufficientStorage`, whatever raised it (`Engine.write`, `Engine.io`): protocols answer one type.
7. A read, write or file job that fails because the database or its disk cannot be used now (`unreachable`:
   SQLITE_IOERR, SQLITE_CANTOPEN, the file moved or deleted under us, still locked by another process after
   `BUSY_TIMEOUT_MS`, or EIO from a blob file) reaches its caller as `api.StoreUnavailable`, counted in
   `outage` (one log line per interval). Anything else (a constraint, a syntax error: a bug) passes unchanged.
8. The quick reads of one turn of the event loop (`read(quick=True)`) see one snapshot, taken by the first of
   them; it ends before the next turn runs any I/O callback (a `call_soon` queued when it began runs ahead of
   them). So a read made for a command sees every commit that finished before the command's bytes were
   polled (what a client saw done before it sent it: an admin's change from the CLI, another worker's or the
   web's), and every write of this process whose future resolved before it (resolutions arrive through
   `call_soon_threadsafe`, queued behind the snapshot's end). A connection error ends the snapshot at once.
9. A deferred step (`Tx.defer`) runs once per batch, after every job and outside their SAVEPOINTs, in the batch's
   transaction, with the items deferred by the jobs that succeeded (a job rolled back defers nothing), in job
   order, before the batch's `changes` rows. A step that raises and has a fallback (`Deferred.park`, which records
   its items as to-do) does not fail the batch: the transaction is rolled back and begun again (the feed caught up
   again), the jobs run again, each in its own SAVEPOINT (a job may so run three times: invariant 11), and that
   step's items are recorded by `park` instead (the full-text index's bodies go to the backlog: fts.py invariant 1)
   and, in an engine that `parks`, kept as parked items (invariant 10), so an idle writer tries them once more: a
   running server does not leave them to its next start. So the step needs no SAVEPOINT of its own, which would
   cost a statement journal (module doc) in every batch, not only in one that fails. A step without a fallback that
   raises, one whose fallback raises in turn (the batch runs again at most once per step: another run would meet
   the same error, with the write lock held all along), or one whose error ended the transaction (SQLITE_FULL...),
   fails the batch (invariant 1).
10. A parked step's items (`Deferred.park`, chosen only in an engine that `parks`, while other jobs wait for the
    writer, of this process when the batch ends or of another when it began (the flock was held by another
    process), and at most `PARKED_MAX` items would then be parked; or as the fallback of a step that raised:
    invariant 9) are recorded durably by `park` in the batch's transaction and kept in memory only after its
    COMMIT. `run_parked` gets them, in order, at most `IDLE_STEP` per transaction, each transaction begun after
    `IDLE_SECONDS` without a job, or between batches once `PARKED_LAG` passed since the last one (or since the
    first item was parked) while the writer's load (`_load`) is under `LOAD_LOW` or more than `PARKED_SOFT` items
    are parked, or once `PARKED_LAG_BUSY` passed whatever the load; so a writer that is never idle still works them
    off at up to `IDLE_STEP` per `PARKED_LAG` while it has time for them or they are many, and at least `IDLE_STEP`
    per `PARKED_LAG_BUSY` otherwise. Items whose transaction fails are dropped from memory, not from disk (`park`
    recorded them: for the full-text index the backlog, which `postroom serve` works off at start, indexing.py, and
    so does a worker process started again in place of one that died: workers.py invariant 2). At stop, parked
    items stay recorded and unrun.
11. A job function may run more than once, so it acts only through its `Tx` (its connection, change records,
    deferred items and dead blobs; blob files it writes are content-addressed, so writing one again changes
    nothing) and changes nothing outside it. A batch first runs its jobs without SAVEPOINTs; if job k raises, the whole
    transaction is rolled back, begun again (the feed caught up again: invariant 2), and the batch run once
    more with each job in its own SAVEPOINT, except job k, which is not run again and fails with its first
    exception (it ran after the same jobs 0..k-1, which run again first). So jobs 0..k-1 run twice, k once
    (and every job but k once more if a deferred step then falls back: invariant 9).
    A job whose error ended the transaction (no SAVEPOINT is left to roll back to) fails the batch: invariant 1.
12. The WAL is copied into the database file (a checkpoint, which writes and fsyncs that file) by SQLite's
    automatic checkpoint once it holds `WAL_AUTOCHECKPOINT` pages, inside the COMMIT that reached it (so with the
    writer flock held: every process's writes wait for it), and by the writer itself, without the flock, once it
    has had no job for `IDLE_SECONDS` after at least `IDLE_CHECKPOINT_COMMITS` commits of its own since its last
    one (`_checkpoint`, PASSIVE: it waits for no reader or writer, and a process writing meanwhile appends to the
    WAL while the copy runs). What a checkpoint cannot copy yet (pages a reader's older snapshot still needs,
    another process checkpointing) waits for the next one, idle or automatic. The automatic one is the bound for
    a writer never idle: at SQLite's default of 1,000 pages a burst of deliveries (~15 pages each) checkpointed
    every ~65 messages, and a page changed by most batches (a table's last leaf, a mailbox's row) was copied each
    time. At 4,000 a burst of two workers stored ~6 % more messages a second (10,000: ~12 %) with ~12 % fewer
    bytes written, and in a burst of appends to one store the commits' p99, set by those that checkpoint, is
    ~25 ms instead of ~16 (10,000: ~35 ms; bench/RESULTS.md, 2026-12-02). The idle one keeps the WAL's content
    short in ordinary traffic, in the gaps, so a delivery rarely waits for a checkpoint; it waits for that many
    commits, as SQLite's default waits for ~65 deliveries, since checkpointing after every lone commit copied
    those same pages once a message (about twice the bytes written). The WAL file keeps the size it reached (up
    to `WAL_SIZE_LIMIT`); SQLite writes it again from the start after a complete checkpoint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import logging
import math
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from postroom.store.api import (
    Change,
    ChangeHub,
    InsufficientStorage,
    OutageLog,
    StoreError,
    StoreUnavailable,
    is_out_of_space,
)
from postroom.store.blobs import BlobStore
from postroom.store.sqlite.feed import ChangeFeed
from postroom.store.sqlite.schema import migrate

log = logging.getLogger("postroom.store")

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000
MAX_BATCH = 2000
MAX_BATCH_BYTES = 32 * 1024 * 1024  # inline body bytes per batch: bounds one commit's WAL growth and latency
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # after a checkpoint, a WAL a burst made larger is truncated to this
WAL_AUTOCHECKPOINT = 4_000  # pages (16 MiB at 4 KiB) of WAL that make a COMMIT checkpoint (invariant 12)
IDLE_CHECKPOINT_COMMITS = 64  # commits since the last checkpoint that make an idle writer checkpoint (invariant 12)
IDLE_SECONDS = 0.2  # no job for this long: the writer runs parked steps (invariant 10), or checkpoints (12)
IDLE_STEP = 256  # parked items per transaction: bounds how long a job that comes meanwhile waits
PARKED_MAX = 20_000  # parked items at most (memory: a blob id each); past it, steps run at the batch's end
PARKED_LAG = 1.0  # seconds: a writer with time to spare runs a parked step at least this often ...
PARKED_LAG_BUSY = 30.0  # ... and however busy it is, at least this often (invariant 10) ...
PARKED_SOFT = 4096  # ... unless more items than this are parked: then every PARKED_LAG, busy or not
LOAD_LOW = 0.5  # "time to spare": the writer's load (waiting for or holding the write lock) under this share ...
LOAD_WINDOW = 1.0  # ... averaged over about this many seconds (the time constant of `_note_load`)


Step = Callable[[sqlite3.Connection, list[Any]], None]


@dataclass(frozen=True)
class Deferred:
    """A deferred step (`Tx.defer`, invariant 9): `run(conn, items)` once at the end of the batch, in its
    transaction. A step that may wait for a quiet writer also has `park(conn, items) -> kept`, called instead
    while other jobs wait: it records the items durably as to-do in the batch's transaction and returns what
    to keep in memory; `run_parked(conn, kept_items)` then does the work later, in transactions of its own,
    when the writer is idle (invariant 10). `park` is also the fallback when `run` raises (invariant 9)."""

    name: str  # for the log: what the step makes
    run: Step
    park: Callable[[sqlite3.Connection, list[Any]], list[Any]] | None = None
    run_parked: Step | None = None


@dataclass
class Tx:
    """What a write job gets: the connection plus what its effects are, collected for after the commit."""

    conn: sqlite3.Connection
    blobs: BlobStore
    inline_max: int  # bodies of at most this many bytes go into blob_data (Engine.inline)
    changes: list[Change] = field(default_factory=list)
    dead_blobs: set[str] = field(default_factory=set)
    deferred: dict[Deferred, list[Any]] = field(default_factory=dict)

    def defer(self, step: Deferred, item: Any) -> None:
        """Have `step.run(conn, items)` called once for the batch, after its last job, in its transaction, with
        the `item`s the batch's succeeded jobs deferred to it, in job order (invariant 9), or parked for an idle
        writer (invariant 10). For work that costs less done once per batch than once per job (fts.py
        `index_later`)."""
        self.deferred.setdefault(step, []).append(item)


@dataclass
class _Job(Generic[T]):
    fn: Callable[[Tx], T]
    future: asyncio.Future[T]
    loop: asyncio.AbstractEventLoop
    size: int = 0  # bytes of inline bodies the job will insert


def _raise_if_out_of_space(exc: Exception) -> None:
    """Raise `InsufficientStorage` (from `exc`) if `exc` is a full disk or database (invariant 6)."""
    if is_out_of_space(exc) and not isinstance(exc, InsufficientStorage):
        raise InsufficientStorage(f"insufficient storage: {exc}") from exc


_UNREACHABLE_CODES = (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY)
_SQLITE_READONLY_DBMOVED = 1032  # SQLITE_READONLY | (4 << 8): the database file was moved or deleted


def unreachable(exc: BaseException) -> bool:
    """True when `exc` means the database or its disk cannot be used now (invariant 7), not a bad request."""
    if isinstance(exc, StoreUnavailable):
        return False  # already counted and raised as such
    if isinstance(exc, sqlite3.OperationalError):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is None:
            return "unable to open database file" in str(exc) or "disk I/O error" in str(exc)
        return (code & 0xFF) in _UNREACHABLE_CODES or code == _SQLITE_READONLY_DBMOVED
    return isinstance(exc, OSError) and exc.errno == errno.EIO


def connect(path: Path, *, writer: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    if writer:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"cannot put {path} in WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")  # invariant 12
    else:
        conn.execute("PRAGMA query_only = ON")
    return conn


class Engine:
    def __init__(
        self,
        path: Path,
        blobs: BlobStore,
        hub: ChangeHub,
        *,
        inline_max: int = 256 * 1024,
        readers: int = 4,
        io_threads: int = 64,
        feed: ChangeFeed | None = None,
    ):
        self.path = path
        self.blobs = blobs
        self.hub = hub
        self.feed = feed if feed is not None else ChangeFeed(path, hub)
        self.inline_max = inline_max
        self.on_commit: Callable[[float, int], None] | None = None
        self.on_lock_wait: Callable[[float], None] | None = None  # seconds a batch waited for the writer flock
        # Invariant 10: whether deferred steps may be parked; only in a process that works the backlog off when
        # it starts (the server), so none is left behind by one that exits meanwhile (a command-line tool).
        self.parks = False
        self.outage = OutageLog(log)
        self._n_readers = readers
        self._n_io = io_threads
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._rconns: list[sqlite3.Connection] = []
        self._rconns_lock = threading.Lock()
        self._open = False
        self._wlock = -1  # the writer flock's descriptor (module doc), while open
        self._parked: dict[Deferred, list[Any]] = {}  # invariant 10: step -> kept items; writer thread only
        self._parked_count = 0
        self._parked_total = 0  # items parked since the writer was last idle with nothing parked (for the log)
        self._parked_since = 0.0  # monotonic time of the last parked step's end (or of the first item parked)
        self._uncheckpointed = 0  # invariant 12: commits since the writer's last checkpoint
        self._load = 0.0  # share of the recent time spent waiting for or holding the write lock (`_note_load`)
        self._load_at = time.monotonic()
        self._life = threading.Lock()  # serialises start() against itself (two concurrent open() calls)

    # ---- life cycle
    def start(self) -> None:
        """Open the write connection, migrate, start the writer thread. Blocking; call it in a thread."""
        with self._life:
            if not self._open:
                self._start()

    def _start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.blobs.root.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path, writer=True)
        try:
            migrate(conn)
            self.feed.start(conn)
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        # Among Postroom processes, the next writer waits in the kernel, not in SQLite's sleeps (module doc).
        self._wlock = os.open(f"{self.path}-writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._readers = concurrent.futures.ThreadPoolExecutor(self._n_readers, thread_name_prefix="postroom-read")
        self._io = concurrent.futures.ThreadPoolExecutor(self._n_io, thread_name_prefix="postroom-blob")
        self._writer = threading.Thread(target=self._writer_main, name="postroom-writer", daemon=True)
        self._open = True
        self._writer.start()

    def begin_stop(self) -> bool:
        """Refuse new work and tell the writer to stop after what is queued. Call it on the event loop thread,
        so no write can slip in behind the stop mark. False if it was not open."""
        if not self._open:
            return False
        self._open = False
        self._jobs.put(None)
        return True

    def stop(self) -> None:
        """Wait for every queued write, then close everything. Blocking; call it in a thread after begin_stop()."""
        self.begin_stop()
        if self._writer is None:
            return
        self._writer.join()
        self._writer = None
        for pool in (self._readers, self._io):
            if pool is not None:
                pool.shutdown(wait=True)
        with self._rconns_lock:
            for conn in self._rconns:
                conn.close()
            self._rconns.clear()
        self._local = threading.local()
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None
        if self._wlock >= 0:
            os.close(self._wlock)
            self._wlock = -1

    @property
    def is_open(self) -> bool:
        return self._open

    def inline(self, size: int) -> bool:
        """True if a new body of `size` bytes is stored in the database, False if as a file."""
        return size <= self.inline_max

    # ---- the async face
    async def write(self, fn: Callable[[Tx], T], *, size: int = 0) -> T:
        """Run `fn(tx)` in the next group commit; return its result once the commit is durable. `size`: the
        bytes of inline bodies `fn` stores, so a batch stops growing at MAX_BATCH_BYTES."""
        if not self._open:
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Job(fn, future, loop, size))
        try:
            result = await future
        except Exception as exc:
            _raise_if_out_of_space(exc)
            self._raise_if_unreachable(exc)
            raise
        self.outage.succeeded()
        return result

    async def read(self, fn: Callable[[sqlite3.Connection], T], *, quick: bool = False) -> T:
        """Run `fn(conn)` inside one read transaction on a reader thread.

        `quick=True` is for point lookups by key (a domain, a user, an alias, a mailbox, one message row, one
        inline body of at most `inline_max` bytes): a few pages, microseconds when cached. Those run right here on
        the calling (event-loop) thread with a connection of its own, because the hop to a reader thread and back
        costs several times the read itself: profiling SMTP delivery showed the hops as a fifth of the server's
        CPU. Anything that scans (listings, searches) keeps using the reader threads so it never stalls the
        loop. The quick reads of one turn of the event loop share one read transaction (invariant 8)."""
        if not self._open or self._readers is None:
            raise StoreError("store is not open")
        try:
            if quick:
                result = self._run_quick(fn)
            else:
                result = await asyncio.get_running_loop().run_in_executor(self._readers, self._run_read, fn)
        except Exception as exc:
            self._raise_if_unreachable(exc)
            raise
        self.outage.succeeded()
        return result

    def _raise_if_unreachable(self, exc: Exception) -> None:
        """Raise `StoreUnavailable` (from `exc`), counted in `outage`, if `exc` is one (invariant 7)."""
        if unreachable(exc):
            self.outage.failed(exc)
            raise StoreUnavailable(f"the database cannot be used now: {exc}") from exc

    async def feed_catch_up(self) -> None:
        """Publish what other processes committed since the last look (feed.py), read on a reader thread."""
        if self._open and self._readers is not None:
            await asyncio.get_running_loop().run_in_executor(self._readers, self._feed_read)

    def _feed_read(self) -> None:
        feed = self.feed
        with feed.lock:  # feed invariant 2: read, move the cursor and schedule the publication as one step
            lost, changes = self._run_read(feed.catch_up)
            if (lost or changes) and feed.loop is not None:
                try:
                    feed.loop.call_soon_threadsafe(feed.publish, lost, changes)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    pass

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking file work (blob writes and reads) on the I/O pool."""
        if not self._open or self._io is None:
            raise StoreError("store is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._io, fn, *args)
        except Exception as exc:
            _raise_if_out_of_space(exc)
            self._raise_if_unreachable(exc)
            raise

    async def write_blobs(self, items: Mapping[str, tuple[bytes, bytes]]) -> None:
        """Write and fsync every blob, blob id -> (prefix, data) stored as prefix + data (in parallel), before
        the job referencing them is queued (invariant 3). Only for bodies stored as files (`inline()` is
        False); inline bodies are written by the job."""
        if len(items) == 1:
            ((blob_id, (prefix, data)),) = items.items()
            await self.io(self.blobs.write, blob_id, data, prefix)
        elif items:
            await asyncio.gather(*(self.io(self.blobs.write, b, d, p) for b, (p, d) in items.items()))

    async def forget_blobs(self, blob_ids: set[str]) -> None:
        """After a failed write: delete the files just written if no row references them (invariant 4)."""

        def op(tx: Tx) -> None:
            tx.dead_blobs.update(blob_ids)

        try:
            await self.write(op)
        except StoreError:
            pass

    # ---- reader threads
    def _conn(self) -> sqlite3.Connection:
        """This thread's read connection (invariant 5), made on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path, writer=False)
            self._local.conn = conn
            with self._rconns_lock:
                self._rconns.append(conn)
        return conn

    def _run_read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            return fn(conn)
        finally:
            conn.execute("ROLLBACK")

    def _run_quick(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """`fn(conn)` on the event loop thread, inside the read transaction of this turn of the loop: the first
        quick read of a turn begins it, a callback queued then (`call_soon`: it runs early in the next turn,
        before the callbacks of any I/O that turn polls) ends it (invariant 8). Beginning a read after other
        connections committed costs more than a point lookup itself (SQLite takes a new WAL snapshot and drops
        the connection's page cache): the lookups of one SMTP command share that cost."""
        conn = self._conn()
        local = self._local
        loop = asyncio.get_running_loop()
        if getattr(local, "snapshot", None) is not loop:  # `local.snapshot`: the loop whose turn holds it
            if getattr(local, "snapshot", None) is not None:
                self._end_snapshot(conn, local)  # left by a loop that stopped before its turn ended
            conn.execute("BEGIN")
            local.snapshot = loop
            loop.call_soon(self._end_snapshot, conn, local)
        try:
            return fn(conn)
        except sqlite3.Error:  # the connection's trouble (busy, I/O), not the caller's: a fresh snapshot next
            self._end_snapshot(conn, local)
            raise

    @staticmethod
    def _end_snapshot(conn: sqlite3.Connection, local: threading.local) -> None:
        """End this thread's quick-read transaction if one is open (ending one early only makes the next read
        fresher)."""
        if getattr(local, "snapshot", None) is not None:
            local.snapshot = None
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:  # closed with the store meanwhile, or no transaction left to end
                pass

    # ---- the writer thread
    def _writer_main(self) -> None:
        stopping = False
        idle = False  # the last thing done was a parked step, and no job came since
        while not stopping:
            if self._parked and self._parked_step_due():
                self._run_parked()  # invariant 10: a steady stream of jobs must not keep them parked for ever
                continue
            if self._parked:
                try:  # invariant 10: parked steps once IDLE_SECONDS passed without a job, then back to back
                    job = self._jobs.get_nowait() if idle else self._jobs.get(timeout=IDLE_SECONDS)
                except queue.Empty:
                    self._run_parked()
                    idle = True
                    continue
            elif self._uncheckpointed >= IDLE_CHECKPOINT_COMMITS:
                try:  # invariant 12: the WAL into the database file once IDLE_SECONDS passed without a job
                    job = self._jobs.get(timeout=IDLE_SECONDS)
                except queue.Empty:
                    self._checkpoint()
                    continue
            else:
                job = self._jobs.get()
            idle = False
            if job is None:
                break
            began = time.monotonic()
            try:
                fcntl.flock(self._wlock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                contended = False
            except BlockingIOError:  # another process writes: its jobs and ours queue for one lock (invariant 10)
                fcntl.flock(self._wlock, fcntl.LOCK_EX)  # module doc: the next writer of any process waits here
                contended = True
            self._lock_waited(time.monotonic() - began)
            batch: list[_Job[Any]] = [job]
            size = job.size
            while len(batch) < MAX_BATCH and size < MAX_BATCH_BYTES:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
                size += more.size
            try:
                self._run_batch(batch, contended)
            except BaseException:  # never let the writer die: the store would hang
                log.exception("store writer: unexpected failure")
            finally:
                fcntl.flock(self._wlock, fcntl.LOCK_UN)
                self._note_load(began)
        leftovers: list[_Job[Any]] = []
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                leftovers.append(job)
        if leftovers:
            self._hand_back([(j, False, StoreError("store is closed"), None) for j in leftovers])

    def _checkpoint(self) -> None:
        """Invariant 12, on the writer thread once idle after `IDLE_CHECKPOINT_COMMITS` commits: a PASSIVE
        checkpoint, outside the writer flock and any transaction. It copies what no reader still needs and waits
        for nobody; the rest waits for the next checkpoint. Never raises: the writer must not die."""
        self._uncheckpointed = 0
        conn = self._wconn
        if conn is None:
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as exc:  # e.g. a full disk: the writes that come next will say so to their callers
            log.warning("store writer: checkpoint failed: %s", exc)
        except Exception:  # noqa: BLE001 - never let the writer die: the store would hang
            log.exception("store writer: checkpoint failed")

    def _parked_step_due(self) -> bool:
        """Invariant 10, between batches: whether a parked step runs now, before the next batch."""
        lag = PARKED_LAG if self._load < LOAD_LOW or self._parked_count > PARKED_SOFT else PARKED_LAG_BUSY
        return time.monotonic() - self._parked_since >= lag

    def _note_load(self, began: float) -> None:
        """The writer was busy (waiting for or holding the write lock) from `began` (monotonic) until now: fold
        the share of the time since the last call that this took into `_load`, an exponential moving average
        with time constant `LOAD_WINDOW` (invariant 10)."""
        now = time.monotonic()
        span = now - self._load_at
        if span <= 0:
            return
        busy = min(1.0, (now - began) / span)
        keep = math.exp(-span / LOAD_WINDOW)
        self._load = self._load * keep + busy * (1.0 - keep)
        self._load_at = now

    def _run_batch(self, batch: list[_Job[Any]], contended: bool = False) -> None:
        """Run `batch` in one transaction (module doc); `contended`: another process held the writer flock when
        this batch asked for it, so that process's writes queue behind this one's (invariant 10)."""
        conn = self._wconn
        assert conn is not None
        feed = self.feed
        started = time.perf_counter()
        outcomes: list[tuple[_Job[Any], bool, Any, Tx | None]] = []
        locked = False
        lost, foreign = 0, list[tuple[int, Change]]()
        parked: list[tuple[Deferred, list[Any]]] = []

        def again() -> None:  # invariants 9 and 11: rolled back and begun again, the feed caught up again
            nonlocal lost, foreign
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            more_lost, more = feed.catch_up(conn)
            lost, foreign = max(lost, more_lost), foreign + more
            outcomes.clear()
            parked.clear()

        try:
            try:
                conn.execute("BEGIN IMMEDIATE")
                feed.lock.acquire()  # held until the batch is handed back (feed invariant 2)
                locked = True
                lost, foreign = feed.catch_up(conn)
                failed = self._run_jobs(conn, batch, outcomes)
                first_failure: tuple[_Job[Any], BaseException] | None = None
                if failed is not None:  # invariant 11: again, each job in a SAVEPOINT, without the one that raised
                    if not conn.in_transaction:  # its error ended the transaction (SQLITE_FULL...): invariant 1
                        raise outcomes[failed][2]
                    first_failure = (outcomes[failed][0], outcomes[failed][2])
                    again()
                    self._run_jobs(conn, batch, outcomes, failed=first_failure)
                # invariant 9: each deferred step once, with the items of the jobs that succeeded; invariant
                # 10: parked instead while other jobs wait for the writer (ours now, or another process's)
                busy = self.parks and (contended or not self._jobs.empty())
                recorded_only: set[Deferred] = set()
                while (failing := self._run_steps(conn, outcomes, busy, parked, recorded_only)) is not None:
                    step, exc = failing  # invariant 9: the batch again, that step's items recorded (park)
                    if step.park is None or step in recorded_only or not conn.in_transaction:
                        raise exc  # no fallback, the fallback itself failed, or the error ended it all
                    log.warning("store writer: %s failed (%s); the batch runs again with it left to do", step.name,
                                exc, exc_info=exc)
                    recorded_only.add(step)
                    again()
                    self._run_jobs(conn, batch, outcomes, failed=first_failure, guarded=True)
                # feed invariant 1: the changes of the jobs that succeeded, in this transaction (one statement:
                # a row costs ~1.6 us this way, ~4 us with a statement per job); if it fails, the batch does
                recorded = feed.record(conn, [c for _, ok, _, tx in outcomes if ok and tx is not None
                                              for c in tx.changes])
                if feed.due_for_pruning():
                    self._prune_changes(conn)
                top = feed.cursor + recorded  # under the write lock: see feed.committed
                conn.execute("COMMIT")
                self._uncheckpointed += 1
                feed.committed(top)
                for step, kept in parked:  # invariant 10: in memory once recorded
                    if kept:
                        if not self._parked:
                            self._parked_since = time.monotonic()
                        self._parked.setdefault(step, []).extend(kept)
                        self._parked_count += len(kept)
                        self._parked_total += len(kept)
            except Exception as exc:  # noqa: BLE001 - BEGIN/COMMIT failed: every job of the batch hears it
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                log.error("store writer: batch of %d failed: %s", len(batch), exc)
                self._hand_back([(job, False, exc, None) for job in batch], lost, foreign)
                return
            self._after_commit(batch, outcomes, started, lost, foreign)
        finally:
            if locked:
                feed.lock.release()

    def _run_steps(self, conn: sqlite3.Connection, outcomes: list[tuple[_Job[Any], bool, Any, Tx | None]],
                   busy: bool, parked: list[tuple[Deferred, list[Any]]],
                   recorded_only: set[Deferred]) -> tuple[Deferred, Exception] | None:
        """Run the deferred steps of the jobs that succeeded in `outcomes`, each once with its items in job order
        (invariant 9), or park it (`busy`: other jobs wait; appended to `parked`, invariant 10). A step in
        `recorded_only` (its run raised: invariant 9) has its items recorded by `park`, and kept for an idle writer
        as parked ones in an engine that `parks` (within `PARKED_MAX`). Returns the first step that raised and its
        exception (the transaction then holds part of the steps' work: the caller rolls it back), else None."""
        steps: dict[Deferred, list[Any]] = {}
        for _, ok, _, done in outcomes:
            if ok and done is not None:
                for step, items in done.deferred.items():
                    steps.setdefault(step, []).extend(items)
        for step, items in steps.items():
            try:
                if step.park is not None and step in recorded_only:  # the fallback (invariant 9)
                    kept = step.park(conn, items)
                    if self.parks and self._parked_count + len(items) <= PARKED_MAX:
                        parked.append((step, kept))  # tried once more by an idle writer (invariant 10)
                elif busy and step.park is not None and self._parked_count + len(items) <= PARKED_MAX:
                    parked.append((step, step.park(conn, items)))
                else:
                    step.run(conn, items)
            except Exception as exc:  # noqa: BLE001 - the caller decides: the batch again, or failed
                return step, exc
        return None

    def _run_jobs(self, conn: sqlite3.Connection, batch: list[_Job[Any]],
                  outcomes: list[tuple[_Job[Any], bool, Any, Tx | None]],
                  failed: tuple[_Job[Any], BaseException] | None = None, *, guarded: bool = False) -> int | None:
        """Run the jobs of `batch` in order, appending (job, ok, result or exception, tx) to `outcomes`
        (invariant 11). Without `failed` or `guarded`, no SAVEPOINTs: at the first job that raises, stop and
        return its index (the transaction then holds part of its work: the caller rolls it back). With `failed`
        (a job and the exception it raised in that first run) or `guarded` (the batch runs again because a
        deferred step raised: invariant 9), each job in its own SAVEPOINT, `failed`'s job not run but failed
        with its exception; returns None. Either way, an exception that ended the transaction by itself (SQLite
        rolls it all back on SQLITE_FULL and some I/O errors) is raised when the first run left the rest to the
        caller and, in the second, raised here: the whole batch fails with it (invariant 1)."""
        guarded = guarded or failed is not None
        for i, job in enumerate(batch):
            if failed is not None and job is failed[0]:
                outcomes.append((job, False, failed[1], None))
                continue
            tx = Tx(conn, self.blobs, self.inline_max)
            if not guarded:
                try:
                    result = job.fn(tx)
                except Exception as exc:  # noqa: BLE001 - it belongs to that job's caller only
                    outcomes.append((job, False, exc, None))
                    return i
                outcomes.append((job, True, result, tx))
                continue
            conn.execute("SAVEPOINT job")
            try:
                result = job.fn(tx)
            except Exception as exc:  # noqa: BLE001 - any failure belongs to that job's caller only
                if not conn.in_transaction:  # its error ended the transaction (SQLITE_FULL...): invariant 1,
                    raise  # the whole batch fails with it (ROLLBACK TO would only say "no such savepoint")
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                outcomes.append((job, False, exc, None))
            else:
                conn.execute("RELEASE job")
                outcomes.append((job, True, result, tx))
        return None

    def _lock_waited(self, seconds: float) -> None:
        """Tell `on_lock_wait` how long a batch waited for the writer flock (another process held it)."""
        if self.on_lock_wait is not None:
            try:
                self.on_lock_wait(seconds)
            except Exception:
                log.exception("store on_lock_wait callback failed")

    def _run_parked(self) -> None:
        """On the writer thread, after `IDLE_SECONDS` without a job or between batches when one is due
        (`_parked_step_due`): up to `IDLE_STEP` parked items of the first parked step, in one transaction of
        their own under the write lock (invariant 10). Its time counts in the writer's load."""
        conn = self._wconn
        assert conn is not None
        step, items = next(iter(self._parked.items()))
        chunk = items[:IDLE_STEP]
        if len(chunk) == len(items):
            del self._parked[step]
        else:
            del items[:IDLE_STEP]
        self._parked_count -= len(chunk)
        began = self._parked_since = time.monotonic()  # set first: nothing below can make the writer spin
        assert step.run_parked is not None
        try:
            fcntl.flock(self._wlock, fcntl.LOCK_EX)
        except OSError:  # the writer must not die (the store would hang): the items stay recorded on disk
            log.exception("store writer: %s: %d parked items left as recorded", step.name, len(chunk))
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            step.run_parked(conn, chunk)
            conn.execute("COMMIT")
            self._uncheckpointed += 1  # invariant 12
        except Exception:  # noqa: BLE001 - recorded by park: found again from disk (invariant 10)
            log.exception("store writer: %s: %d parked items left as recorded", step.name, len(chunk))
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except Exception:  # noqa: BLE001 - the next batch's BEGIN meets the same trouble and says so
                log.exception("store writer: rollback failed")
        finally:
            fcntl.flock(self._wlock, fcntl.LOCK_UN)
            self._note_load(began)
        self._parked_since = time.monotonic()  # the lag counts from the end of this step
        if not self._parked:  # a line per burst that parked at least one idle step's worth
            log.log(logging.INFO if self._parked_total >= IDLE_STEP else logging.DEBUG,
                    "store writer: %s caught up, %d parked items done", step.name, self._parked_total)
            self._parked_total = 0

    def _prune_changes(self, conn: sqlite3.Connection) -> None:
        """Bound the `changes` table (feed.py); a failure costs this batch nothing (its own SAVEPOINT), unless it
        ended the transaction (SQLITE_FULL): then it is raised, and the batch fails with it (invariant 1)."""
        conn.execute("SAVEPOINT prune")
        try:
            self.feed.prune(conn)
        except Exception:
            if not conn.in_transaction:  # the error ended it (SQLITE_FULL...): the batch fails with it (invariant 1)
                raise
            conn.execute("ROLLBACK TO prune")
            log.exception("store writer: pruning the change feed failed")
        conn.execute("RELEASE prune")

    def _after_commit(self, batch: list[_Job[Any]], outcomes: list[tuple[_Job[Any], bool, Any, Tx | None]],
                      started: float, lost: int, foreign: list[tuple[int, Change]]) -> None:
        seconds = time.perf_counter() - started
        if self.on_commit is not None:
            try:
                self.on_commit(seconds, len(batch))
            except Exception:
                log.exception("store on_commit callback failed")
        dead: set[str] = set()
        for _, ok, _, done in outcomes:
            if ok and done is not None:
                dead |= done.dead_blobs
        if dead:  # before answering: once a removal returns, its bodies are gone
            self._delete_dead_blobs(dead)
        self._hand_back(outcomes, lost, foreign)

    def _hand_back(self, outcomes: list[tuple[_Job[Any], bool, Any, Tx | None]], lost: int = 0,
                   foreign: list[tuple[int, Change]] | None = None) -> None:
        """Schedule `_resolve` on each caller's loop; other processes' changes (`lost`, `foreign`) go first, on
        the feed's loop (the store's), in the same callback as that loop's own changes (feed invariant 3)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job[Any], bool, Any, Tx | None]]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        target = self.feed.loop or next(iter(by_loop), None)
        if (lost or foreign) and target is not None:
            by_loop.setdefault(target, [])
        for loop, items in by_loop.items():
            try:
                if loop is target:
                    loop.call_soon_threadsafe(self._resolve, items, lost, foreign or [])
                else:
                    loop.call_soon_threadsafe(self._resolve, items, 0, [])
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _resolve(self, items: list[tuple[_Job[Any], bool, Any, Tx | None]], lost: int = 0,
                 foreign: list[tuple[int, Change]] | None = None) -> None:
        """On the event loop thread: broadcast other processes' changes, then the batch's, then answer each
        writer."""
        if lost or foreign:
            self.feed.publish(lost, foreign or [])
        changes = [c for _, ok, _, tx in items if ok and tx is not None for c in tx.changes]
        if changes:
            try:
                self.hub.publish(changes)
            except Exception:
                log.exception("change hub publish failed")
        for job, ok, value, _ in items:
            if job.future.done():
                continue
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _delete_dead_blobs(self, candidates: set[str]) -> None:
        conn = self._wconn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for blob_id in sorted(candidates):
                    # The file is garbage unless a row needs it: none does if the id is gone, or if it came
                    # back meanwhile as an inline body (a file is only ever read when blob_data has no row).
                    needed = conn.execute(
                        "SELECT 1 FROM blobs WHERE id = ?"
                        " AND NOT EXISTS (SELECT 1 FROM blob_data WHERE blob_data.id = blobs.id)",
                        (blob_id,),
                    ).fetchone()
                    if needed is None:
                        self.blobs.delete(blob_id)
            finally:
                conn.execute("COMMIT")
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            log.exception("store writer: deleting unreferenced message files failed")
