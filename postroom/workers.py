"""Several worker processes for one `postroom serve` (`server.workers`, issue 17 item 1): both cores busy.

Theory of operation
-------------------
One Python process uses one core. With `server.workers` = N > 1 (0: one per CPU) `postroom serve` becomes a
parent and N workers:

    parent (supervise)                                  worker 0 .. N-1 (fork of the parent)
    ------------------                                  ------------------------------------
    PID lock of the data folder (process.py)            app.Postroom.start(worker=...):
    TLS certificate generated if missing                  the inherited sockets, not its own
    every listener bound (as root: ports < 1024)          its own store connections, hub and change feed
    privileges dropped; data folder handed over           sessions of every protocol, web included
    server secret created; store opened once            worker 0 (and `delivery.workers` - 1 more): an
      (schema steps run here, once), demo user,             outbound queue scheduler, its share of the
      node id, leases of a one-process run freed,           connections (delivery/queue.py invariant 10)
      closed again                                        worker 0 also: expunged-UID retention, the
                                                            full-text backlog, ACME
    shared connection counts (net/counts.py),
      wake and ready pipes, metrics folder
    fork N workers; banner once all are ready
    then: wait for signals and deaths

Each worker accepts from listening sockets of its own: the parent binds, for every listener address, one
socket per worker slot with SO_REUSEPORT, and the kernel spreads new connections over the sockets of a group by
a hash of the client's address and port. Measured first the other way, one socket (one accept queue) shared
by every worker: the worker that woke first took whole bursts (asyncio accepts up to its backlog per wake-up;
with one per wake-up still, on this loaded 2-core machine): all 20 sessions of smtp-source landed in one worker,
the other idle. With SO_REUSEPORT the split is the kernel's, at SYN time, whoever is scheduled. Every socket
listens from just before the fork (a socket joins its group when it listens: one that waited for its worker
would miss the first burst), so connections made while the workers start wait in their queues. The parent keeps
every slot's sockets open, so connections that reach a dead worker's socket wait in its queue for the
replacement (started at once after a long life). Before binding a group the parent binds the address once
without SO_REUSEPORT, so a port in use by another program (or another Postroom) is refused as in one process,
never shared; the sockets are the parent's (root's, before the privilege drop): a process of another user
cannot join their group.

What must be one across workers is one (the same list as across nodes, issue 16 item 3):
* the outbound queue: `delivery.workers` workers (worker 0 alone by default; 0: every worker) run a scheduler
  with their shares of the connection limits (delivery/queue.py invariant 10); they, and the schedulers of other
  nodes on one PostgreSQL, share the queue by leases in the store. Mail queued in a worker with a scheduler
  wakes that one; a worker without one writes one byte on the wake pipe, which worker 0 reads to start on it
  at once (as `Scheduler.wake` does in one process);
* the POP3 maildrop lock and LOGIN-DELAY: in the store (pop3/session.py; on SQLite an flock on a file per user);
* login failures (lockout, delays): the store is the authority, read before each judgement (auth/authenticator.py);
* connection limits: counted in shared memory across workers (net/counts.py);
* web sessions and held list posts: in the store; the server secret and the certificate: made by the parent before
  the fork (on PostgreSQL both come from the store, one for every node: docs/ARCHITECTURE.md "Several nodes");
* \\Recent: claimed in one write transaction of the store (one writer at a time across processes);
* ACME challenges: files in the data folder (`ChallengeFiles`), so whichever worker the CA reaches answers;
  a certificate worker 0 obtained reaches the others by a reload (worker 0 sends SIGHUP to the parent);
* IMAP IDLE and NOTIFY: each worker's change feed (store/sqlite/feed.py) reads what the others committed.
* the SMTP door's counters (smtp/door.py: rates, pregreet passes, greylisting, send limits) and the
  POP-before-SMTP login times (`Authenticator.note_login`): one shared map (net/sharedmap.py) made by the parent.

Signals: the parent blocks SIGCHLD, SIGTERM, SIGINT and SIGHUP and takes them one at a time with
`sigtimedwait`. SIGHUP is sent on to every worker (each reloads: app.py "Reload"); SIGTERM or SIGINT to every
worker as SIGTERM (each stops accepting, lets its sessions finish up to `server.shutdown_grace_seconds`, then
exits); the parent waits for all of them (SIGKILL after the grace and `STOP_MARGIN`), releases the lock and
exits. A worker that dies otherwise is logged (`worker exited ...`) and started again in its slot: at once
after a long life, else after a delay that doubles per quick death up to `BACKOFF_MAX` (a crash loop backs
off). Each worker asks the kernel for SIGKILL when the parent dies (`PR_SET_PDEATHSIG`), so a parent killed
with SIGKILL leaves no orphan serving the ports. A replacement (`Worker.replacement`) works off the full-text
index backlog once at its start, as worker 0 does at its own: bodies its predecessor had parked
(store/sqlite/engine.py invariant 10) are recorded only there, and the other workers do not know them.

Invariants
1. The parent never runs an event loop or a thread when it forks: a worker starts from a single-threaded copy.
2. Exactly one worker (slot 0) runs what must run once (retention, the index backlog, ACME); a replacement
   worker of any slot also works off the index backlog once at its start (under the same lease). The queue
   scheduler runs in worker 0, and in `delivery.workers` - 1 more when asked, one slot's share each
   (delivery/queue.py invariant 10).
3. Every worker PID the parent started is waited for; SIGTERM to the parent ends with no worker left.
4. A dead worker's connection counts are cleared before its slot gets a new worker (net/counts.py).
5. Every object the parent made before a fork is frozen (`gc.freeze()`, the gc module's advice for forking
   servers): the workers' collections never walk them, so the pages holding them (the imported modules, about
   50 MiB) are not written by a collector in each worker and stay shared copy-on-write: PSS per worker, not
   RSS, is what each adds (bench/RESULTS.md). What only some configurations use is imported, if at all,
   before the fork too: the web stack only with a web listener (app.py `import_web`).
"""

from __future__ import annotations

import ctypes
import errno
import gc
import logging
import os
import re
import select
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from postroom.net.counts import SharedCounts
from postroom.net.sharedmap import SharedMap

log = logging.getLogger("postroom.workers")

BACKOFF_FIRST = 1.0  # seconds before restarting a worker that died young
BACKOFF_MAX = 60.0
YOUNG_SECONDS = 30.0  # a worker that lived shorter than this died "young": the next restart waits longer
STOP_MARGIN = 15.0  # after the grace period, how long the parent waits for workers before SIGKILL
LISTEN_BACKLOG = 512  # as NetServer's
DOOR_ENTRIES = 1 << 19  # the SMTP door's shared tables: 20 MiB of address space, touched as keys arrive
SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1


def worker_count(setting: int) -> int:
    """The number of worker processes for `server.workers` = `setting` (0: one per CPU this process may use)."""
    if setting > 0:
        return setting
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def bind_per_worker(listeners: dict[str, tuple[str, int]], count: int) -> list[dict[str, list[socket.socket]]]:
    """For each of `count` worker slots, its own bound (not listening) sockets for every listener (name ->
    (host, port); host "" is every address: one socket per address family, as in one process, except with
    port 0), one SO_REUSEPORT group per address (module doc). Raises OSError naming the listener."""
    slots: list[dict[str, list[socket.socket]]] = [{} for _ in range(count)]
    try:
        for name, (host, port) in listeners.items():
            try:
                infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
                if host or port == 0:
                    infos = infos[:1]
                for family, _, proto, _, addr in infos:
                    with socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP) as probe:
                        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio binds
                        if family == socket.AF_INET6:
                            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        probe.bind(addr)  # in use by anyone: refused here, not joined (module doc)
                        addr = probe.getsockname()  # port 0: the port the kernel chose, for the whole group
                    for slot in slots:
                        sock = socket.socket(family, socket.SOCK_STREAM, proto or socket.IPPROTO_TCP)
                        slot.setdefault(name, []).append(sock)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                        if family == socket.AF_INET6:
                            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                        sock.bind(addr)
                        sock.setblocking(False)
            except OSError as exc:
                raise OSError(exc.errno, f"listener {name}: cannot listen on {host}:{port}: "
                                         f"{exc.strerror or exc}") from exc
    except BaseException:
        for sock in (s for slot in slots for socks in slot.values() for s in socks):
            sock.close()
        raise
    return slots


@dataclass
class Worker:
    """What a worker process gets from its parent (module doc): its `slot` (0-based; slot 0 runs the
    singletons), its own listening sockets by listener name, the shared connection counts, the metrics folder,
    and the pipes to wake the queue (`wake_queue`/`on_wake`) and to say it is accepting (`ready`)."""

    slot: int
    count: int
    sockets: dict[str, list[socket.socket]]
    counts: SharedCounts
    door: SharedMap  # the SMTP door's tables (smtp/door.py)
    metrics_dir: Path
    challenges_dir: Path
    parent: int
    _wake_r: int
    _wake_w: int
    _ready_w: int
    replacement: bool = False  # started again in its slot after a worker died (module doc)

    def wake_queue(self) -> None:
        """Mail was queued here: have worker 0's scheduler look at the queue now (one byte on the wake pipe; a
        full pipe already says so)."""
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass

    def on_wake(self, callback: Callable[[], None]) -> None:
        """Worker 0: call `callback` (the scheduler's wake) in the running loop when another worker queued mail."""
        import asyncio

        def readable() -> None:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            callback()

        asyncio.get_running_loop().add_reader(self._wake_r, readable)

    def ready(self) -> None:
        """This worker accepts connections now (the parent prints the banner once every worker said so)."""
        os.write(self._ready_w, self.slot.to_bytes(1, "big"))

    def reload_all(self) -> None:
        """Have every worker reload (SIGHUP to the parent, which sends it on): after worker 0 obtained a new
        ACME certificate, the others load it from the files."""
        os.kill(self.parent, signal.SIGHUP)


class ChallengeFiles(MutableMapping[str, str]):
    """ACME HTTP-01 challenges (token -> key authorization, acme.py) as files in `directory`, so that every
    worker answers the CA, not only the one that placed the order. Tokens are base64url (RFC 8555 §8.3);
    anything else is not a key here."""

    _TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, token: str) -> Path | None:
        return self.directory / token if self._TOKEN.fullmatch(token) else None

    def __getitem__(self, token: str) -> str:
        path = self._path(token)
        if path is None:
            raise KeyError(token)
        try:
            return path.read_text()
        except FileNotFoundError:
            raise KeyError(token) from None

    def __setitem__(self, token: str, value: str) -> None:
        path = self._path(token)
        if path is None:
            raise KeyError(token)
        self.directory.mkdir(parents=True, mode=0o700, exist_ok=True)
        tmp = path.with_name(f".{token}.tmp")
        tmp.write_text(value)
        tmp.replace(path)

    def __delitem__(self, token: str) -> None:
        path = self._path(token)
        if path is None:
            raise KeyError(token)
        try:
            path.unlink()
        except FileNotFoundError:
            raise KeyError(token) from None

    def __iter__(self) -> Iterator[str]:
        try:
            return iter(sorted(p.name for p in self.directory.iterdir() if not p.name.startswith(".")))
        except FileNotFoundError:
            return iter(())

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class _Slot:
    pid: int = 0
    started: float = 0.0
    delay: float = 0.0  # the wait before the next restart after a young death
    restart_at: float | None = None


@dataclass
class Supervisor:
    """The parent of the workers (module doc). `sockets`: each slot's bound sockets by listener
    (`bind_per_worker`); `main(worker)` runs a worker to its end and returns its exit status (app.py); `grace`:
    `server.shutdown_grace_seconds`."""

    count: int
    sockets: list[dict[str, list[socket.socket]]]
    data_dir: Path
    main: Callable[[Worker], int]
    grace: float
    lock_fd: int = -1  # the parent's PID lock: closed in each worker, so the lock dies with the parent alone
    slots_per_worker: int = 4096
    slots: list[_Slot] = field(default_factory=list)
    stopping: bool = False

    def prepare(self) -> None:
        """The shared pieces, made before any fork: counts, pipes, the metrics and challenge folders."""
        self.counts = SharedCounts(self.count, self.slots_per_worker, self.data_dir / "connections.lock")
        self.door = SharedMap(DOOR_ENTRIES, self.data_dir / "door.lock")
        self.metrics_dir = self.data_dir / "metrics"
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # the counts of a previous run are not this run's
        self.metrics_dir.mkdir(mode=0o700)
        self.challenges_dir = self.data_dir / "acme" / "challenges"
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ready_r, self._ready_w = os.pipe2(os.O_CLOEXEC)
        self.slots = [_Slot() for _ in range(self.count)]

    def _spawn(self, slot: int) -> None:
        from postroom.logsetup import pause_all

        self.counts.reset(slot)  # invariant 4
        pause_all()  # invariant 1: no log writer thread (logsetup.py) across the fork, a respawn's included
        gc.freeze()  # invariant 5
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                _become_worker(parent)
                if self.lock_fd >= 0:
                    os.close(self.lock_fd)  # the flock stays the parent's (its own descriptor holds it)
                for other, socks in enumerate(self.sockets):  # the other slots' sockets are not this one's
                    if other != slot:
                        for sock in (s for group in socks.values() for s in group):
                            sock.close()
                self.counts.bind(slot)
                status = self.main(Worker(slot, self.count, self.sockets[slot], self.counts, self.door,
                                          self.metrics_dir, self.challenges_dir, parent, self._wake_r, self._wake_w,
                                          self._ready_w, replacement=self.slots[slot].started > 0))
            except BaseException:  # noqa: BLE001 - nothing may unwind into the parent's code in the child
                logging.getLogger("postroom").exception("worker %d failed", slot)
            finally:
                from postroom.logsetup import flush_all

                flush_all()  # the log writer thread's lines (logsetup.py): os._exit skips logging's own
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self.slots[slot] = _Slot(pid, time.monotonic(), self.slots[slot].delay)
        log.info("worker started slot=%d pid=%d", slot, pid)

    def start(self, timeout: float = 120.0) -> bool:
        """Fork every worker and wait until each is accepting. False (every worker stopped again) when one
        exits first: its own error is on stderr already."""
        from postroom.logsetup import pause_all

        pause_all()  # the log writer thread (logsetup.py) ends: invariant 1
        if threading.active_count() > 1:  # invariant 1
            raise RuntimeError(f"cannot fork workers: {threading.active_count() - 1} other thread(s) running")
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        for sock in (s for slot in self.sockets for group in slot.values() for s in group):
            # Every slot's socket joins its SO_REUSEPORT group now, before any worker runs: a socket only
            # listening once its worker started would miss the connections of the first seconds (measured:
            # smtp-source's 20 sessions all in the worker that listened first). They wait in their queues.
            sock.listen(LISTEN_BACKLOG)
        for slot in range(self.count):
            self._spawn(slot)
        ready: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(ready) < self.count and time.monotonic() < deadline:
            readable, _, _ = select.select([self._ready_r], [], [], 0.2)
            if readable:
                ready.update(os.read(self._ready_r, 256))
            if self._reap(restart=False):
                self.stop(quiet=True)
                return False
            if signal.sigpending() & {signal.SIGTERM, signal.SIGINT}:
                self.stop()
                return False
        if len(ready) < self.count:
            log.error("workers not ready after %.0f s: stopping", timeout)
            self.stop(quiet=True)
            return False
        return True

    def run(self) -> None:
        """Supervise until SIGTERM/SIGINT (module doc); returns once every worker is gone (invariant 3)."""
        while not self.stopping:
            now = time.monotonic()
            waits = [s.restart_at - now for s in self.slots if s.restart_at is not None]
            timeout = max(0.05, min([1.0, *waits]))
            info = signal.sigtimedwait(SIGNALS, timeout)
            if info is not None and info.si_signo in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping workers=%d signal=%s", self.count, signal.Signals(info.si_signo).name)
                self.stop()
                return
            if info is not None and info.si_signo == signal.SIGHUP:
                log.info("reload: sent to workers=%s", ",".join(str(s.pid) for s in self.slots if s.pid))
                self._signal_all(signal.SIGHUP)
            self._drain_ready()
            self._reap(restart=True)
            now = time.monotonic()
            for slot, state in enumerate(self.slots):
                if state.pid == 0 and state.restart_at is not None and state.restart_at <= now:
                    state.restart_at = None
                    self._spawn(slot)

    def _drain_ready(self) -> None:
        while select.select([self._ready_r], [], [], 0)[0]:
            os.read(self._ready_r, 256)

    def _signal_all(self, sig: int) -> None:
        for state in self.slots:
            if state.pid:
                try:
                    os.kill(state.pid, sig)
                except ProcessLookupError:
                    pass

    def _reap(self, restart: bool) -> bool:
        """Wait for every worker that ended; with `restart`, schedule its slot's next worker. True if any ended."""
        ended = False
        for slot, state in enumerate(self.slots):
            if not state.pid:
                continue
            try:
                pid, status = os.waitpid(state.pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = state.pid, 0
            if pid == 0:
                continue
            ended = True
            lived = time.monotonic() - state.started
            state.pid = 0
            self.counts.reset(slot)  # invariant 4
            _metrics_dead(self.metrics_dir, pid)
            if not restart:
                log.warning("worker exited slot=%d pid=%d status=%s", slot, pid, _describe(status))
                continue
            state.delay = 0.0 if lived >= YOUNG_SECONDS else min(BACKOFF_MAX, max(BACKOFF_FIRST, state.delay * 2))
            state.restart_at = time.monotonic() + state.delay
            log.warning("worker exited slot=%d pid=%d status=%s lived=%.1fs restart_in=%.1fs", slot, pid,
                        _describe(status), lived, state.delay)
        return ended

    def stop(self, quiet: bool = False) -> None:
        """SIGTERM to every worker; wait up to the grace period and `STOP_MARGIN`; SIGKILL what is left; wait
        for every one of them (invariant 3)."""
        self.stopping = True
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + STOP_MARGIN
        while any(s.pid for s in self.slots):
            if time.monotonic() > deadline:
                log.warning("workers still running %.0f s after SIGTERM: killing pids=%s", self.grace + STOP_MARGIN,
                            ",".join(str(s.pid) for s in self.slots if s.pid))
                self._signal_all(signal.SIGKILL)
                deadline = float("inf")
            for state in self.slots:
                if state.pid:
                    try:
                        pid, status = os.waitpid(state.pid, os.WNOHANG)
                    except ChildProcessError:
                        pid, status = state.pid, 0
                    if pid:
                        if not quiet and status != 0:
                            log.warning("worker exited slot=%d pid=%d status=%s", self.slots.index(state), pid,
                                        _describe(status))
                        state.pid = 0
            signal.sigtimedwait([signal.SIGCHLD], 0.1)


def _become_worker(parent: int) -> None:
    """In the child just forked: die with the parent, take signals again as a normal process would."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: SIGTERM to the parent still stops every worker
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _metrics_dead(directory: Path, pid: int) -> None:
    """prometheus-client's bookkeeping for a dead process: drop its live gauges (metrics.py)."""
    try:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("metrics: cannot drop the gauges of worker pid=%d: %s", pid, exc)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}" if os.WIFEXITED(status) else str(status)
