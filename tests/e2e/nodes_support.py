"""Several `postroom serve` nodes on one PostgreSQL database, for the e2e tests of issue 16 item 3.

Each node is `tests/e2e/test_serve_postgresql.start_on` in a folder of its own (its own data folder, as on a
machine of its own), its standard error read by a thread as it comes (a node that logs a line per message
would otherwise fill the pipe and stall), and stopped by its PID: SIGTERM (`stop`) or SIGKILL (`kill`). The
other helpers speak to the nodes as clients do (IMAP over TLS, SMTP) or read the shared database directly.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.e2e.test_serve_postgresql import start_on

T = TypeVar("T")


@dataclass
class Node:
    """One running node: its process, its listeners' ports, its folder (data in `root/data`)."""

    proc: subprocess.Popen[str]
    ports: dict[str, int]
    root: Path
    errors: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.errors.append(line)

    def stop(self) -> str:
        """SIGTERM, wait for the exit (0 expected), return what it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        if self._reader is not None:
            self._reader.join(timeout=10)
        return "".join(self.errors)

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it (its worker processes die with it: workers.py)."""
        self.proc.kill()
        self.proc.wait()


def start_node(root: Path, url: str, extra: str = "") -> Node:
    """Start a node in `root` (made if missing) on the database at `url`."""
    root.mkdir(parents=True, exist_ok=True)
    proc, ports = start_on(root, url, extra)
    node = Node(proc, ports, root)
    node._reader = threading.Thread(target=node._drain, daemon=True)
    node._reader.start()
    return node


def password(node: Node) -> str:
    """The demo user's password as the node that set it last wrote it (each node's `--demo` sets a new one
    when its own data folder has none: the last node started knows the current one)."""
    return (node.data / "demo-password").read_text().strip()


def with_store(url: str, body: Callable[[Any], Awaitable[T]], staging: Path) -> T:
    """`await body(store)` on a PostgreSQLStore of `url` of this test process, opened and closed around it."""
    from postroom.store.postgresql import PostgreSQLStore

    async def main() -> T:
        store = PostgreSQLStore(url, staging)
        await store.open()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def insecure_context() -> ssl.SSLContext:
    """A client context that accepts any certificate: for comparing what each node presents."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def certificate_sha256(port: int) -> str:
    """The SHA-256 (hex) of the DER certificate a TLS listener on 127.0.0.1:`port` presents."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            insecure_context().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


class Imap:
    """A bare IMAP client over TLS (imaplib has no IDLE before Python 3.14): send lines, read until a tagged
    reply or until some bytes arrive."""

    def __init__(self, port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock = insecure_context().wrap_socket(raw)
        self.buf = b""
        self.read_until(b"\r\n")  # the greeting

    def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        """Read until `marker` has arrived (waiting up to `timeout` seconds: no timing assertion, a bound);
        return everything up to and including it. AssertionError if it never comes."""
        deadline = time.monotonic() + timeout
        while marker not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"waited {timeout} s for {marker!r}; got {self.buf[-500:]!r}"
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            assert chunk, f"connection closed waiting for {marker!r}; got {self.buf[-500:]!r}"
            self.buf += chunk
        end = self.buf.index(marker) + len(marker)
        got, self.buf = self.buf[:end], self.buf[end:]
        return got

    def cmd(self, tag: str, line: str, timeout: float = 10.0) -> bytes:
        """Send `tag line`; return every line up to and including the tagged reply."""
        self.sock.sendall(f"{tag} {line}\r\n".encode())
        out = b""
        while True:
            got = self.read_until(b"\r\n", timeout)
            out += got
            if got.startswith(f"{tag} ".encode()):
                return out

    def close(self) -> None:
        try:
            self.sock.sendall(b"z LOGOUT\r\n")
        except OSError:
            pass
        self.sock.close()


def scram_salt(port: int, user: str) -> bytes:
    """The salt a node's IMAP SCRAM-SHA-256 server-first-message gives `user` (RFC 5802 §5.1 `s=`): for an unknown
    user, a decoy keyed by the server secret (RFC 5802 §9), so nodes with one secret give the same one."""
    imap = Imap(port)
    try:
        first = base64.b64encode(f"n,,n={user},r=clientnonce0123456789".encode()).decode()
        imap.sock.sendall(f"a AUTHENTICATE SCRAM-SHA-256 {first}\r\n".encode())
        line = imap.read_until(b"\r\n")
        assert line.startswith(b"+ "), line
        server_first = base64.b64decode(line[2:].strip())
        attrs = dict(part.split(b"=", 1) for part in server_first.split(b","))
        imap.sock.sendall(b"*\r\n")  # cancel the exchange (RFC 9051 §6.2.2)
        imap.read_until(b"a ")
        return attrs[b"s"]
    finally:
        imap.close()
