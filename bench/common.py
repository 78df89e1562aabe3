"""Pieces the benchmarks share: ports, processes, progress and a private `postroom serve`.

    from common import free_port, wait_port, stop_process, progress, Server, servers_stopped, PrivatePostroom

    pr = PrivatePostroom(work / "postroom", "imap", '[auth]\\nallow_plaintext = true\\n')
    pr.create(user=USER, password=PASSWORD, messages=messages)   # a fresh data directory, filled through the store
    port = pr.start(greeting=b"* OK")                            # `postroom serve`, waits for the greeting
    ...
    pr.stop()                                                    # SIGTERM by PID, SIGKILL if it lingers

`Server` is the base of PrivatePostroom and dovecot.PrivateDovecot (`proc`, `pid`, `stop()` by PID);
`with servers_stopped(work) as started:` stops every server appended to `started`, then removes `work`.

The benches import this module as a sibling: Python puts the script's directory (bench/) on sys.path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from postroom.auth.passwords import make_credentials
from postroom.mime.meta import compute_meta
from postroom.store import open_store
from postroom.store.api import AppendRequest

LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")


def progress(text: str = "", end: str = "\n") -> None:
    """Progress goes to stderr (the tables go to stdout)."""
    sys.stderr.write(text + end)
    sys.stderr.flush()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, seconds) used so far by `pid`, its live descendants, and the children they
    reaped (from /proc). Unlike wall time it hardly moves with other load on the machine, so it compares two
    runs of one server (e.g. two event loops) on a busy machine."""
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # after "pid (comm)": state ppid ... utime(12) stime(13) cutime(14) cstime(15), 0-based from state
        children.setdefault(int(fields[1]), []).append(int(entry))
        used[int(entry)] = sum(int(f) for f in fields[11:15]) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += used.get(p, 0.0)
        todo.extend(children.get(p, []))
    return total


def thread_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time (user + system, seconds) used so far by one thread `tid` of process `pid` (default: its main
    thread, the one running a `postroom serve` event loop), from /proc/PID/task/TID/stat; 0.0 if it is gone.
    Beside `cpu_seconds` of the whole tree it splits the event loop's share from the store's writer thread."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        fields = Path(f"/proc/{pid}/task/{pid if tid is None else tid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / tick


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant of it (from /proc), `pid` first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def loop_cpu_seconds(pid: int) -> float:
    """CPU time (user + system, seconds) of the main threads of `pid` and of its live descendants that are
    server processes (the supervisor and its workers: each runs its event loop on its main thread), leaving out
    the metadata workers (`postroom.metaworker`, whose main thread parses messages). With one process this is
    `thread_cpu_seconds(pid)`."""
    total = 0.0
    for p in process_tree(pid):
        try:
            if b"postroom.metaworker" in Path(f"/proc/{p}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        total += thread_cpu_seconds(p)
    return total


def written_bytes(pid: int) -> int:
    """Bytes written so far (`wchar` of /proc/PID/io: every write and pwrite, to files and sockets alike, cached
    or not) by `pid` and its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/io").read_text().splitlines():
                if line.startswith("wchar:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def memory_of(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in bytes, from /proc/PID/smaps_rollup; (0, 0) if it is gone.

    RSS counts every page the process maps, shared or not: summed over forked processes (a parent and its
    workers, Dovecot's processes) it counts a shared page once per process. PSS (proportional set size)
    charges a page shared by n processes 1/n to each, so the PSS of a tree summed is the memory the tree
    really holds: the honest total (the kernel's Documentation/filesystems/proc.rst, "smaps_rollup").
    """
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0, 0
    rss = pss = 0
    for line in text.splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1]) * 1024
        elif line.startswith("Pss:"):
            pss = int(line.split()[1]) * 1024
    return rss, pss


def memory_tree(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over `pid` and its descendants (`process_tree`, `memory_of`)."""
    rss = pss = 0
    for p in process_tree(pid):
        r, s = memory_of(p)
        rss += r
        pss += s
    return rss, pss


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, what: str = "server",
              greeting: bytes | None = None, timeout: float = 60.0) -> None:
    """Until 127.0.0.1:port accepts a connection (and, with `greeting`, its first bytes start with it).

    Without `greeting` nothing is read: the probe is a bare connect and close. With `proc`, its exit ends the wait.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if greeting is None or s.recv(100).startswith(greeting):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer on port {port}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM by its PID, wait up to `timeout`, then SIGKILL; also on Ctrl-C while waiting (then re-raised)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except BaseException:  # too slow, or a second Ctrl-C while waiting: still leave nothing behind
            proc.kill()
            proc.wait()
            if not isinstance(sys.exc_info()[1], subprocess.TimeoutExpired):
                raise


class Server:
    """A server started as one process (`proc`), stopped by its PID: SIGTERM, SIGKILL after `stop_timeout`."""

    proc: subprocess.Popen[bytes] | None = None
    stop_timeout = 30.0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float | None = None) -> None:
        if self.proc is not None:
            stop_process(self.proc, self.stop_timeout if timeout is None else timeout)
            self.proc = None


@contextlib.contextmanager
def servers_stopped(work: Path) -> Iterator[list[Server]]:
    """Yields a list to append started servers to; on the way out they are stopped and `work` is removed."""
    started: list[Server] = []
    try:
        yield started
    finally:
        for server in started:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


async def fill_store(data: Path, domain: str, user: str | None, password: str, messages: Sequence[bytes],
                     with_meta: bool, url: str | None = None) -> None:
    """Domain, user and the user's INBOX messages, through the store (as delivery would).

    url: the store URL (a PostgreSQL database, which must exist and be empty); None: data/postroom.db.
    """
    store = open_store(url or f"sqlite:///{data / 'postroom.db'}", data)
    await store.open()
    try:
        await store.add_domain(domain)
        if user is None:
            return
        h, scram = await asyncio.to_thread(make_credentials, password)
        account = await store.add_user(user, h, scram)
        if not messages:
            return
        inbox = await store.get_mailbox(account.id, "INBOX")
        assert inbox is not None
        for i in range(0, len(messages), 500):
            batch = [AppendRequest(raw=m, meta=compute_meta(m).to_bytes()) if with_meta else AppendRequest(raw=m)
                     for m in messages[i:i + 500]]
            await store.append_many(inbox.id, batch)
            progress(f"\r  filling Postroom store {min(i + 500, len(messages)):>6}/{len(messages)}", end="")
        progress()
    finally:
        await store.close()


class PrivatePostroom(Server):
    """`postroom serve` as its own process: base/data, base/postroom.toml, stderr in base/postroom.log.

    One listener (`listener`, e.g. "imap") on a free 127.0.0.1 port (`port`), and those named in `more` (e.g.
    "imaps") on theirs (`ports`: listener name -> port), every other one off; `settings` is more
    TOML appended to the configuration (it may be replaced on each start). `server.event_loop` is taken from
    the environment variable POSTROOM_EVENT_LOOP when it is set ("asyncio", "uvloop", "auto"), so any bench
    can be run once per loop: `POSTROOM_EVENT_LOOP=uvloop .venv/bin/python bench/smtp.py ...`. `workers` is
    `server.workers` (None: the environment variable POSTROOM_WORKERS when set, else the server's default, one
    worker process per CPU). `store_url` is `store.url` (None: the SQLite file data/postroom.db); several
    PrivatePostroom on one PostgreSQL `store_url` are several nodes of one server: the first is `create`d, the
    others `join` it (a data directory of their own, the store shared).
    """

    def __init__(self, base: Path, listener: str, settings: str = "", log_level: str | None = None,
                 workers: int | None = None, store_url: str | None = None, more: Sequence[str] = ()) -> None:
        self.base = base
        self.data = base / "data"
        self.conf = base / "postroom.toml"
        self.log = base / "postroom.log"
        self.listener = listener
        self.settings = settings
        self.log_level = log_level
        self.workers = workers
        self.store_url = store_url
        self.port = free_port()
        self.ports = {listener: self.port, **{name: free_port() for name in more}}

    def create(self, domain: str = "example.org", user: str | None = None, password: str = "",
               messages: Sequence[bytes] = (), with_meta: bool = False) -> None:
        """A fresh data directory with `domain`, and `user` (if given) holding `messages` in INBOX.

        with_meta: store each message's metadata computed as delivery does (else the store's default).
        """
        shutil.rmtree(self.base, ignore_errors=True)
        self.data.mkdir(parents=True)
        asyncio.run(fill_store(self.data, domain, user, password, messages, with_meta, self.store_url))

    def join(self) -> None:
        """A fresh, empty data directory for another node on the store an earlier node `create`d (store_url)."""
        shutil.rmtree(self.base, ignore_errors=True)
        self.data.mkdir(parents=True)

    def start(self, settings: str | None = None, greeting: bytes | None = None, timeout: float = 60.0,
              wait: bool = True) -> int:
        """Write the configuration and start serving; with `wait`, until the port answers. Returns the port."""
        if settings is not None:
            self.settings = settings
        off = "\n".join(f'{n} = ""' for n in LISTENERS if n not in self.ports)
        on = "\n".join(f'{n} = "127.0.0.1:{p}"' for n, p in self.ports.items())
        loop = os.environ.get("POSTROOM_EVENT_LOOP", "")
        loop_line = f'event_loop = "{loop}"\n' if loop else ""
        workers = self.workers if self.workers is not None else os.environ.get("POSTROOM_WORKERS", "")
        loop_line += f"workers = {workers}\n" if workers != "" else ""
        store = f'[store]\nurl = "{self.store_url}"\n' if self.store_url else ""
        self.conf.write_text(f'[server]\ndata_dir = "{self.data}"\n{loop_line}{store}'
                             f'[listeners]\n{on}\n{off}\n{self.settings}')
        exe = Path(sys.executable).with_name("postroom")
        cmd = [str(exe), "--config", str(self.conf), "serve"]
        if self.log_level:
            cmd += ["--log-level", self.log_level]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        if wait:
            try:
                wait_port(self.port, self.proc, "postroom", greeting, timeout)
            except BaseException:
                self.stop()
                raise
        return self.port
