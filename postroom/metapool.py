"""Where `compute_meta` runs: on the event loop for small messages, in a worker process for the rest.

Theory of operation
-------------------
Every caller that needs a message's metadata (local delivery for SMTP and `sendmail`, IMAP APPEND, FETCH and
SEARCH of a message stored without it, `postroom import`) asks this module: `meta_bytes(raw, limits)` for the
serialised form the store keeps (`meta_pair`: with the `MessageMeta` too when it was computed here, for
`AppendRequest.parsed`), `meta_of(raw, limits)` for a `MessageMeta`, `meta_of_file(path, ...)` for a
large APPEND that arrived in a staging file, `meta_bytes_of_file(prefix, path, ...)` for a large SMTP message
(its trace fields, then its staging file). One threshold decides where the work runs:

* `raw` of at most `INLINE_MAX` bytes: `compute_meta` runs right here, on the event loop. It is linear in its
  input (mime/meta.py invariant 5), so the size cap bounds the stall: at 16 KiB the worst shapes measured
  cost 10-30 ms of CPU (an address list of 4,000 addresses, 16 KiB of `<` in HTML), and up to 94 ms for
  5,000 empty digest parts (found by the attack on issue 11), so the cap is 8 KiB: under 50 ms for any shape on a
  busy 2-CPU VM, and a process hop would cost more than a typical small message's parse.
* anything larger goes to a worker process of the event loop's `MetaPool`. A process, not a thread: a thread
  holds the GIL while it parses (the loop still stalls) and cannot be stopped; a process can be killed.

A worker (`python -m postroom.metaworker`: metaworker.py, which imports the MIME code and no asyncio, so an
idle worker is ~12 MiB PSS, not ~16) reads one job at a time from its stdin and answers on its stdout:
a JSON header line (`n`: message bytes that follow, or `path`: a file to read; `depth`/`parts`: the MIME
limits; `nul`: refuse a NUL, as an APPEND literal must) then the message; the answer is one status byte
(`M` meta follows, `N` the file held a NUL, `E` an error text follows), an 8-byte big-endian length and the
payload.
A job that runs past `META_SECONDS` is abandoned: the worker is killed (SIGKILL) and a new one is
started for the next job, and the caller gets `minimal_meta` with the defect `meta-timeout`, so the message is
still stored (with its size, ENVELOPE, one text part and no search text). The same happens, with the defect
`meta-worker-failed`, when a worker dies or cannot be started.

A worker reads a message in a staging file (`meta_of_file`, `meta_bytes_of_file`) through a 1 MiB window
(`mime.staged`, metaworker invariant 3): a 50 MB staged SMTP message costs it about 1 MiB beside its own ~12,
where reading the file into one buffer cost 72 MiB peak (bench/RESULTS.md 2026-12-01 "memory9"). A message sent
down the pipe (`meta_bytes`, `meta_of`) and a `work` job (dkimpy takes bytes) are still held whole, so what the
workers of a server hold at once is bounded by one slot for large jobs (invariant 7): a job on a message of
`LARGE_MIN` bytes or more waits for it, in this process (an `asyncio.Lock`, first come first served) and, in
`postroom serve`, across the server's processes too (an flock on `data_dir/metapool.lock`, named by
`share_large_slot`, tried every `LARGE_POLL` seconds by the one waiter of each process). Measured with 20
sessions each sending 50 MB at once (bench/smtp_memory.py, bench/RESULTS.md 2026-12-01): the workers of two
server processes held up to four such messages at a time (peak 113-161 MiB PSS); with the slot, one (72).
Staged jobs, held to a window now, still take the slot: without it each server process would keep a second
worker alive (~12 MiB PSS each, idle) for no gain in memory.
A large parse takes a fraction of a second (compute_meta reads 50 MB of text in ~0.1 s), far less than
receiving the message, so the queue is short; a job that waits for the slot does not hold a worker (it takes
the slot first, then a worker), so small messages go on meanwhile.

Invariants
1. No code outside this module calls `compute_meta` on the event loop for a message that `inline` refuses
   (over `INLINE_MAX` bytes, or with more than `INLINE_PARTS` part lines or `INLINE_COMMAS` commas);
   the call sites (delivery/local.py, imap/mailboxes.py APPEND, imap/fetch.py on demand, transfer.py import)
   all come through `meta_bytes`, `meta_of`, `meta_of_file` or `meta_bytes_of_file`. A message in a staging
   file is read by the worker, never by the server process (except to make `minimal_meta` when it failed).
2. A job never runs longer than `META_SECONDS` after the worker took it (waiting for a free worker and
   starting one do not count): then its worker is killed and the caller goes on with `minimal_meta`.
3. At most `MetaPool.size` workers per event loop; more callers wait their turn (`asyncio.Semaphore`).
4. A worker never outlives the process that started it: it ends at EOF on its stdin, which the kernel closes
   when that process exits however it exits; `shutdown()` (called at `Postroom.stop` and after a CLI
   command) closes them at once. Workers run in a session of their own, so a terminal's Ctrl-C goes to the
   server, which then closes them.
5. Nothing here raises to a caller for anything a message holds: every failure ends in `minimal_meta`.
6. A worker holds a message only while it works on it: the buffer is dropped before it answers, so an idle
   worker is back to its own size (a 50 MB message's buffer is its own mmap, returned to the system at once;
   a staged one's window, 1 MiB, is dropped with it),
   rather than holding its last message until the next job replaces it (measured: bench/smtp_memory.py).
7. At most one job on a message of `LARGE_MIN` bytes or more (metadata or `work`) runs at a time per process,
   and per server once `share_large_slot` named the lock file: the slot is taken before a worker, and given
   back once the answer is read (the worker dropped the message before answering: metaworker invariant 2),
   or once a worker that timed out was killed. The kernel drops the flock of a process that dies, so a
   crashed server process cannot hold it. Waiting for the slot, like waiting for a worker, is not counted in
   `META_SECONDS` (invariant 2).

Other content work shares the workers: `work(kind, params, raw=|path=)` sends a job with a "kind" ("dkim":
inbound/dkim.py verifies signatures there, so hashing and public-key work stay off the loop; "arc": inbound/arc.py
verifies an ARC chain; "arc_seal": delivery/arc.py seals a forwarded copy) and gets its payload back, or
`WorkFailed` (an error, a dead worker, or `WORK_SECONDS` passed: the worker is killed, as in invariant 2). The
caller decides what a failure means (for DKIM: `temperror`). With both `raw` and `path`, the message is `raw`
followed by the file's bytes (a staged message: its start in memory, its rest in the staging file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import subprocess
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

from postroom.config import LimitsConfig
from postroom.metaworker import ANSWER
from postroom.mime.meta import MessageMeta, MetaFormatError, compute_meta, minimal_meta

log = logging.getLogger("postroom.metapool")

INLINE_MAX = 8 * 1024  # bytes: at most this much is parsed on the event loop (module doc)
INLINE_PARTS = 100  # lines starting "--" (possible MIME parts) a message parsed on the loop may have
INLINE_COMMAS = 1000  # commas (possible addresses) a message parsed on the loop may have


def inline(raw: bytes) -> bool:
    """May `raw`'s metadata be computed on the event loop? Small, and without the shapes whose cost grows per
    element faster than per byte: many MIME parts (an empty digest part costs ~60 us: 1,600 of them in 8 KiB
    took 98 ms) or many addresses (4,000 in 8 KiB: 36 ms). Two C-speed counts decide (invariant 1)."""
    return len(raw) <= INLINE_MAX and raw.count(b"\n--") <= INLINE_PARTS and raw.count(b",") <= INLINE_COMMAS
META_SECONDS = 2.0  # seconds a worker may spend on one message before it is killed (invariant 2)
WORK_SECONDS = 10.0  # seconds a `work` job (DKIM verification: hashing a body of up to limits.message_size) may take
LARGE_MIN = 4 * 1024 * 1024  # bytes: a job on a message this large waits for the large-job slot (invariant 7)
LARGE_POLL = 0.02  # seconds between two tries of the slot's flock while another process holds it
LOCK_NAME = "metapool.lock"  # the large-job slot's lock file in the data folder (`share_large_slot`)
WRITE_CHUNK = 1024 * 1024  # bytes handed to a worker's pipe between two drains (bounded pipe buffer)
_ANSWER = ANSWER  # status byte, payload length (metaworker.py)


class NulInLiteral(Exception):
    """The staged file of an APPEND literal (not literal8) held a NUL (RFC 9051 §4.3)."""


class _WorkerFailed(Exception):
    """A worker answered with an error, died, or could not be started."""


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], stdin: asyncio.StreamWriter,
                 stdout: asyncio.StreamReader) -> None:
        self.proc = proc
        self.stdin = stdin
        self.stdout = stdout

    @classmethod
    async def start(cls) -> _Worker:
        # Popen forks and waits for the exec in the calling thread (tens of ms on a busy machine), so it runs on
        # a worker thread; asyncio.create_subprocess_exec would do it on the event loop.
        proc = await asyncio.to_thread(
            subprocess.Popen, [sys.executable, "-m", "postroom.metaworker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=True,  # invariant 4: a terminal's SIGINT is the server's to handle
        )
        assert proc.stdin is not None and proc.stdout is not None
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, proc.stdin)
        return cls(proc, asyncio.StreamWriter(transport, protocol, None, loop), reader)

    async def call(self, header: dict[str, object], raw: bytes | tuple[bytes, ...] | None) -> tuple[bytes, bytes]:
        """Send one job (`raw`: the message, or its pieces in order, written one after the other) and read the
        answer (status, payload)."""
        stdin, stdout = self.stdin, self.stdout
        stdin.write(json.dumps(header).encode() + b"\n")
        for piece in (raw,) if isinstance(raw, bytes) else raw or ():
            view = memoryview(piece)
            for start in range(0, len(piece), WRITE_CHUNK):
                stdin.write(view[start : start + WRITE_CHUNK])
                await stdin.drain()
        await stdin.drain()
        status, length = _ANSWER.unpack(await stdout.readexactly(_ANSWER.size))
        return status, await stdout.readexactly(length)

    def kill(self) -> asyncio.Task[int] | None:
        """SIGKILL now; returns the task that reaps it (the caller keeps it referenced)."""
        self.stdin.close()
        if self.proc.poll() is not None:
            return None
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        return asyncio.ensure_future(asyncio.to_thread(self.proc.wait))

    async def close(self) -> None:
        """Ask it to end (EOF on stdin), then make sure it did."""
        self.stdin.close()
        try:
            await asyncio.to_thread(self.proc.wait, 2.0)
        except subprocess.TimeoutExpired:
            task = self.kill()
            if task is not None:
                await task


_large_lock_path: Path | None = None  # `share_large_slot`: the flock file of the server's large-job slot


def share_large_slot(path: Path | None) -> None:
    """Make the large-job slot (invariant 7) one for every process that names the same `path` (a file, made if
    missing: `postroom serve` names `data_dir/metapool.lock` in each of its processes), or, with None, one for
    this process alone. Takes effect for pools made afterwards (one per event loop)."""
    global _large_lock_path
    _large_lock_path = path


class MetaPool:
    """Worker processes computing metadata for one event loop (invariants 2-4). `size` workers at most (default:
    one per CPU, at most 4), each job limited to `seconds`."""

    def __init__(self, size: int | None = None, seconds: float = META_SECONDS) -> None:
        self.size = size or max(1, min(4, os.cpu_count() or 1))
        self.seconds = seconds
        self._idle: list[_Worker] = []
        self._slots = asyncio.Semaphore(self.size)
        self._reaping: set[asyncio.Task[int]] = set()
        self.timeouts = 0  # jobs abandoned (for tests and the log)
        self._large = asyncio.Lock()  # invariant 7, in this process
        self._large_path = _large_lock_path
        self._large_fd: int | None = None  # opened on the first large job, in the process that runs it
        self.large_waits = 0  # large jobs that found the slot taken (for tests and the log)

    @contextlib.asynccontextmanager
    async def large_slot(self) -> AsyncIterator[None]:
        """Hold the large-job slot (invariant 7): this pool's lock, then the server's flock when one is shared.
        A lock file that cannot be opened leaves the slot this process's own (logged once)."""
        if self._large.locked():
            self.large_waits += 1
        async with self._large:
            fd = self._lock_fd()
            if fd is not None:
                waited = False
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:  # another process of the server holds it
                        if not waited:
                            waited, self.large_waits = True, self.large_waits + 1
                        await asyncio.sleep(LARGE_POLL)
            try:
                yield
            finally:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)

    def _lock_fd(self) -> int | None:
        if self._large_fd is None and self._large_path is not None:
            try:  # O_CLOEXEC: the workers must not inherit it (an flock belongs to the open file, not the process)
                self._large_fd = os.open(self._large_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                log.warning("cannot open %s (%s): large metadata jobs are one at a time in this process only",
                            self._large_path, e)
                self._large_path = None
        return self._large_fd

    async def run(self, header: dict[str, object], raw: bytes | tuple[bytes, ...] | None,
                  seconds: float | None = None, size: int = 0) -> tuple[bytes, bytes]:
        """One job: (status, payload); `raw` as `_Worker.call` takes it; `size`: the message's bytes, in `raw`
        and in the file the job names (from `LARGE_MIN` on, the job waits for the large-job slot first,
        invariant 7). Raises TimeoutError past `seconds` (default: the pool's; the worker is killed),
        _WorkerFailed when the worker died or could not be started."""
        if size >= LARGE_MIN:
            async with self.large_slot():
                return await self._run(header, raw, seconds)
        return await self._run(header, raw, seconds)

    async def _run(self, header: dict[str, object], raw: bytes | tuple[bytes, ...] | None,
                   seconds: float | None) -> tuple[bytes, bytes]:
        async with self._slots:
            try:
                worker = self._idle.pop() if self._idle else await _Worker.start()
            except OSError as e:
                raise _WorkerFailed(f"cannot start a worker: {e}") from e
            done = False
            try:
                async with asyncio.timeout(seconds or self.seconds):
                    answer = await worker.call(header, raw)
                done = True
                return answer
            except TimeoutError:
                self.timeouts += 1
                raise
            except (asyncio.IncompleteReadError, ConnectionError) as e:
                raise _WorkerFailed(f"worker ended: {type(e).__name__}") from e
            finally:
                if done:
                    self._idle.append(worker)
                else:  # timed out, died, or the caller was cancelled mid-job: its state is unknown
                    task = worker.kill()
                    if task is not None:
                        self._reaping.add(task)
                        task.add_done_callback(self._reaping.discard)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        await asyncio.gather(*(w.close() for w in idle), *self._reaping, return_exceptions=True)
        if self._large_fd is not None:
            os.close(self._large_fd)
            self._large_fd = None


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, MetaPool] = weakref.WeakKeyDictionary()


def pool() -> MetaPool:
    """The running event loop's pool (made on first use; workers start on first job)."""
    loop = asyncio.get_running_loop()
    p = _POOLS.get(loop)
    if p is None:
        p = _POOLS[loop] = MetaPool()
    return p


async def shutdown() -> None:
    """Close the running loop's workers (invariant 4): at `Postroom.stop` and at the end of a CLI command."""
    p = _POOLS.pop(asyncio.get_running_loop(), None)
    if p is not None:
        await p.close()


def _header(limits: LimitsConfig) -> dict[str, object]:
    return {"depth": limits.mime_depth, "parts": limits.mime_parts}


async def _remote(raw: bytes, limits: LimitsConfig, prefix: bytes = b"") -> bytes:
    """meta bytes of `prefix` + `raw` from a worker (the pieces written to its pipe one after the other), or
    `minimal_meta` bytes with the defect saying why (invariant 5)."""
    size = len(prefix) + len(raw)
    try:
        status, payload = await pool().run({**_header(limits), "n": size}, (prefix, raw) if prefix else raw,
                                           size=size)
        if status == b"M":
            return payload
        raise _WorkerFailed(payload.decode("utf-8", "replace"))
    except TimeoutError:
        log.warning("metadata of a %d-byte message took over %g s: worker killed, stored with minimal "
                    "metadata", size, pool().seconds)
        return minimal_meta(prefix + raw, "meta-timeout").to_bytes()
    except _WorkerFailed as e:
        log.error("metadata worker failed (%s): message stored with minimal metadata", e)
        return minimal_meta(prefix + raw, "meta-worker-failed").to_bytes()


async def meta_bytes(raw: bytes, limits: LimitsConfig, prefix: bytes = b"") -> bytes:
    """`compute_meta(prefix + raw, limits).to_bytes()`, on the loop up to `INLINE_MAX` bytes, else in a worker
    (module doc). The pieces are joined only for a message parsed here (at most `INLINE_MAX` bytes); a larger
    one crosses the pipe in its pieces (issue 17 item 5: trace fields carried as a prefix, the body never
    copied). Never raises for anything in the message."""
    return (await meta_pair(raw, limits, prefix))[0]


async def meta_pair(raw: bytes, limits: LimitsConfig, prefix: bytes = b"") -> tuple[bytes, MessageMeta | None]:
    """`meta_bytes`, and the `MessageMeta` it serialises when it was computed here on the loop (None when a
    worker computed it: only its bytes crossed the pipe). For `AppendRequest.parsed`: the store's writer then
    does not decode the bytes again (mime/meta.py invariant 2: `from_bytes(m.to_bytes()) == m`)."""
    if prefix and len(prefix) + len(raw) <= INLINE_MAX:
        raw, prefix = prefix + raw, b""
    if not prefix and inline(raw):
        meta = compute_meta(raw, limits)
        return meta.to_bytes(), meta
    return await _remote(raw, limits, prefix), None


async def meta_of(raw: bytes, limits: LimitsConfig) -> MessageMeta:
    """`compute_meta(raw, limits)`, placed as `meta_bytes` places it."""
    if inline(raw):
        return compute_meta(raw, limits)
    data = await _remote(raw, limits)
    try:
        return MessageMeta.from_bytes(data)
    except MetaFormatError:  # cannot happen with this module's own workers; never raise for a message
        return minimal_meta(raw, "meta-worker-failed")


async def meta_of_file(path: Path, size: int, limits: LimitsConfig, *, allow_nul: bool) -> MessageMeta:
    """The metadata of a message in a file (a staged APPEND literal of `size` bytes), read by the worker itself
    so the message never crosses a pipe. Raises NulInLiteral if the file holds a NUL and `allow_nul` is False
    (a literal8 may hold one, RFC 3516 §4.2)."""
    if size <= INLINE_MAX:
        raw = await asyncio.to_thread(path.read_bytes)
        if not allow_nul and b"\x00" in raw:
            raise NulInLiteral()
        return await meta_of(raw, limits)
    why = "meta-worker-failed"
    try:
        status, payload = await pool().run({**_header(limits), "path": str(path), "nul": not allow_nul}, None,
                                           size=size)
        if status == b"N":
            raise NulInLiteral()
        if status == b"M":
            return MessageMeta.from_bytes(payload)
        log.error("metadata worker failed (%s): message stored with minimal metadata",
                  payload.decode("utf-8", "replace"))
    except TimeoutError:
        why = "meta-timeout"
        log.warning("metadata of a %d-byte message took over %g s: worker killed, stored with minimal "
                    "metadata", size, pool().seconds)
    except (_WorkerFailed, MetaFormatError) as e:
        log.error("metadata worker failed (%s): message stored with minimal metadata", e)
    raw = await asyncio.to_thread(path.read_bytes)
    if not allow_nul and b"\x00" in raw:
        raise NulInLiteral()
    return minimal_meta(raw, why)


async def meta_bytes_of_file(prefix: bytes, path: Path, limits: LimitsConfig) -> bytes:
    """`meta_bytes` of the message `prefix` + the bytes of the file `path` (a staged SMTP body with its trace
    fields), read by the worker itself: the message never crosses a pipe and is never whole in this process
    (issue 17 item 5). A message of at most `INLINE_MAX` bytes is read here and parsed on the loop, as
    `meta_bytes` would. Never raises for anything in the message; an unreadable file is OSError."""
    size = (await asyncio.to_thread(path.stat)).st_size
    if len(prefix) + size <= INLINE_MAX:
        return await meta_bytes(prefix + await asyncio.to_thread(path.read_bytes), limits)
    why = "meta-worker-failed"
    try:
        status, payload = await pool().run({**_header(limits), "path": str(path), "n": len(prefix)}, prefix,
                                           size=len(prefix) + size)
        if status == b"M":
            return payload
        log.error("metadata worker failed (%s): message stored with minimal metadata",
                  payload.decode("utf-8", "replace"))
    except TimeoutError:
        why = "meta-timeout"
        log.warning("metadata of a %d-byte message took over %g s: worker killed, stored with minimal "
                    "metadata", len(prefix) + size, pool().seconds)
    except _WorkerFailed as e:
        log.error("metadata worker failed (%s): message stored with minimal metadata", e)
    # Rare: the worker failed. `minimal_meta` needs the bytes; read once, in a thread, then dropped.
    raw = await asyncio.to_thread(lambda: prefix + path.read_bytes())
    return minimal_meta(raw, why).to_bytes()


class WorkFailed(Exception):
    """A `work` job failed: the worker answered with an error, died, could not be started or timed out."""


async def work(kind: str, params: dict[str, object], *, raw: bytes | None = None, path: Path | None = None,
               seconds: float = WORK_SECONDS) -> bytes:
    """Run a content job other than metadata in a worker (invariants 2-4): `kind` names it ("dkim":
    `inbound.dkim.verify_in_worker`, "arc": `inbound.arc.verify_in_worker`, "arc_seal":
    `delivery.arc.seal_in_worker`), `params` are its JSON parameters, the message is `raw`, the file `path`, or
    `raw` followed by the file (module doc). Returns the job's payload. Raises WorkFailed (past `seconds` too), so
    callers decide what a failure means."""
    header: dict[str, object] = {"kind": kind, "params": params, "depth": 0, "parts": 0}
    size = len(raw or b"")
    if path is not None:
        header["path"] = str(path)
        try:
            size += (await asyncio.to_thread(path.stat)).st_size
        except OSError as e:
            raise WorkFailed(f"cannot read {path}: {e}") from None
    if raw is not None or path is None:
        header["n"] = len(raw or b"")
    try:
        status, payload = await pool().run(header, raw, seconds, size=size)
    except TimeoutError:
        raise WorkFailed(f"{kind} job took over {seconds:g} s") from None
    except _WorkerFailed as e:
        raise WorkFailed(str(e)) from None
    if status != b"M":
        raise WorkFailed(payload.decode("utf-8", "replace"))
    return payload
