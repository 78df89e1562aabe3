"""A real PostgreSQL server for the tests: Debian's `postgresql`, started once per test session.

Theory of operation
-------------------
`Cluster.start()` runs Debian's `initdb` (found under /usr/lib/postgresql/<version>/bin, where Debian keeps the
server programs off PATH) into a fresh temporary folder, then the `postgres` server itself on a free loopback
port, its Unix socket in the same folder, with `fsync=on` (the durability tests kill writers and check what a
commit promised). PostgreSQL refuses to run as root, so when the tests run as root (CI does) the folder is
given to the `postgres` system user the package creates (or `nobody`) and the server runs as that user: the
child process switches user itself before it execs, so the PID we hold is the postmaster's. Authentication is
`trust` on loopback only: the server never listens anywhere else. `create_database()` gives each test an
empty database: a new one (CREATE DATABASE copies ~7 MB and fsyncs it: ~0.4 s on a loaded machine) or one a
finished test gave back with `release_database()`, emptied by dropping and re-creating its `public` schema
(milliseconds); `stop()` stops the postmaster by its PID (SIGQUIT: PostgreSQL's immediate shutdown, no final
checkpoint: the folder is removed right after) and removes the folder. `halt()` and `resume()` stop the server
(a fast shutdown, or a crash: SIGKILL of the postmaster) and start it again on the same folder and port, for the
tests of what a running node does when its database goes away and comes back (tests/e2e/test_pg_restart.py).

Invariants:
1. Only the process this object started is ever signalled, by its PID.
2. The server listens on 127.0.0.1 only, on a port chosen free just before it starts.
3. `available()` says why not (naming the Debian package) when there is no PostgreSQL to run.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

PACKAGE = "postgresql"
START_TIMEOUT = 30.0


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` to completion in a thread of its own: the caller's thread may have an event loop running
    already (Playwright's sync API runs one in the test's thread), where `asyncio.run` refuses."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


def server_bin() -> Path | None:
    """The folder holding Debian's `initdb` and `postgres` (newest version first), or None."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
                        reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found else None


def available() -> str | None:
    """None if a test PostgreSQL can be run here, else the reason (invariant 3)."""
    if server_bin() is None:
        return f"PostgreSQL is not installed (apt-get install {PACKAGE})"
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return "the asyncpg module is not installed"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> str | None:
    """The unprivileged user to run the server as when we are root; None when we are not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


class Cluster:
    """One PostgreSQL server in a temporary folder. `url(db)` is the store URL of database `db`."""

    USER = "postroom"

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._names = itertools.count(1)
        self._free: list[str] = []

    def start(self) -> None:
        bindir = server_bin()
        if bindir is None:
            raise RuntimeError(f"PostgreSQL is not installed (apt-get install {PACKAGE})")
        user = _run_as()
        self.root = Path(tempfile.mkdtemp(prefix="postroom-pg-"))
        data = self.root / "data"
        if user is not None:  # the folder and everything in it belongs to the server's user
            entry = pwd.getpwnam(user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", self.USER, "--auth=trust", "-E", "UTF8",
             "--locale=C", "--no-sync"],
            check=True, capture_output=True, user=user, cwd=self.root,
        )
        self.port = _free_port()
        self.log = self.root / "server.log"
        self._spawn()

    def _spawn(self) -> None:
        """Start `postgres` on the folder and port `start` chose; back when it answers a query."""
        bindir = server_bin()
        assert bindir is not None and self.root is not None
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                 "-c", "fsync=on", "-c", "max_connections=200", "-c", "shared_buffers=32MB"],
                stdout=out, stderr=subprocess.STDOUT, user=_run_as(), cwd=self.root,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"PostgreSQL exited at start: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                _run(self._execute("postgres", "SELECT 1"))
                break
            except (OSError, ConnectionError, Exception):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("PostgreSQL did not start in time") from None
                time.sleep(0.05)

    def halt(self, crash: bool = False) -> None:
        """Stop the server by its PID (invariant 1), keeping its folder, so that `resume` starts it again on
        the same data and port: a database restart under running clients. `crash`: SIGKILL of the postmaster
        (its backends end when they notice, the next start runs crash recovery); else SIGINT, PostgreSQL's
        "fast" shutdown (every session's connection is closed, a final checkpoint is written)."""
        process, self.process = self.process, None
        assert process is not None
        process.send_signal(signal.SIGKILL if crash else signal.SIGINT)
        process.wait(60)
        if crash:  # the orphaned backends notice their postmaster is gone and exit; wait for the port
            deadline = time.monotonic() + START_TIMEOUT
            while time.monotonic() < deadline:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", self.port)) != 0:
                        break
                time.sleep(0.05)

    def resume(self) -> None:
        """Start the server again after `halt`, on the same folder and port."""
        assert self.process is None
        self._spawn()

    def url(self, database: str) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{database}"

    async def _execute(self, database: str, sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url(database), timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create_database(self) -> str:
        """An empty database of its own for the caller, until it calls `release_database`; returns its store
        URL."""
        while self._free:
            name = self._free.pop()
            try:
                _run(self._execute(name, "DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
                return self.url(name)
            except Exception:  # noqa: BLE001 - still in use (a test's child process): use another one
                continue
        name = f"t{os.getpid()}_{next(self._names)}"
        _run(self._execute("postgres", f'CREATE DATABASE "{name}"'))
        return self.url(name)

    def release_database(self, url: str) -> None:
        """The database at `url` (from `create_database`) may be emptied and given to another test."""
        self._free.append(url.rpartition("/")[2])

    def stop(self) -> None:
        """Stop the server by its PID (invariant 1) and remove its folder."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGQUIT)  # "immediate shutdown": the data is thrown away next
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
