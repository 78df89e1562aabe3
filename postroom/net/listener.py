"""Listeners: bind sockets, admit or refuse connections, run one session task per connection, stop gracefully.

Theory of operation
-------------------
`NetServer` binds one asyncio server per `ListenerSpec`. Each accepted socket becomes a `Connection`; in its
`connection_made` the server decides, synchronously, whether it is admitted (per-IP and total limits). An
admitted connection gets one task that (for implicit TLS, RFC 8314 §3) performs the handshake, then awaits the
spec's handler, then closes the socket and writes the session log line. A refused connection never reaches a
handler: it gets the spec's one-line `refuse` text (over TLS for implicit-TLS listeners) and is closed.

A worker process (workers.py) gets its listening sockets from its parent (`sockets`): `bind()` makes an asyncio
server on each instead of binding its own.

Binding and accepting are two steps: `bind()` binds every socket without listening (a connection attempt is
refused by the kernel meanwhile), `start()` listens and accepts. `app.py` binds while it may still be root and
accepts once it has dropped privileges and opened the store. `reconfigure()` swaps the TLS context and limits
that connections accepted from then on get (a reload); a connection keeps those it was accepted with.

Stopping: `stop(grace)` closes the listening sockets at once, tells every connection that the server is
stopping (a session waiting between commands gets `ShuttingDown` so it can say goodbye), waits up to `grace`
seconds for the session tasks, then cancels what is left and aborts those sockets.

The session log line (logger `postroom.net.session`, INFO), one per connection, in logfmt:

    session protocol=imap listener=imaps id=k3b9x02 peer=127.0.0.1:5555 tls=TLSv1.3 duration=1.234
            bytes_in=120 bytes_out=4410 end=quit user=alice@example.org

`end` is how the session ended: quit (the handler returned), eof (peer closed / reset), timeout, shutdown,
error (handler raised: traceback logged once on `postroom.net`), tls (handshake failed), refused (over a
connection limit), or what the session put in `conn.end`. Fields from `conn.log` follow; a key that collides with
a built-in field is dropped.

Invariants
1. A handler is called only for an admitted connection; admission and the counters change synchronously in
   the event loop, so the limits cannot be overshot by a burst of connections. With `shared` (the worker
   processes of `server.workers`) the limits are checked against, and counted in, every worker's counts in one
   locked step (net/counts.py), so a burst spread over the workers cannot overshoot them either.
2. Whatever a handler does (raise, hang, never read), it affects only its own connection: exceptions stop at
   the session task, and the socket is closed in all cases.
3. Exactly one session log line per admitted or refused connection, with no payload (no passwords, no
   message text).
4. The per-IP count of an address is removed when it reaches zero, so the table does not grow with the
   number of distinct peers ever seen.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from postroom.config import LimitsConfig
from postroom.metrics import Metrics
from postroom.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    ShuttingDown,
    TLSFailed,
    describe_exception,
)
from postroom.net.counts import SharedCounts

log = logging.getLogger("postroom.net")
session_log = logging.getLogger("postroom.net.session")
refusal_log = logging.getLogger("postroom.refusal")

Handler = Callable[[Connection], Awaitable[None]]


@dataclass(frozen=True)
class ListenerSpec:
    """One listening socket and the session that serves it.

    `protocol` ("smtp", "imap", "pop3") labels logs and metrics; empty means the listener name. `refuse` is
    the one line sent to a connection refused over a limit (see `refusal()`); empty: just close.
    """

    name: str
    host: str
    port: int
    handler: Handler
    implicit_tls: bool = False
    idle_timeout: float | None = 300.0
    protocol: str = ""
    refuse: bytes = b""

    @property
    def label(self) -> str:
        return self.protocol or self.name


def refusal(protocol: str, hostname: str) -> bytes:
    """The conventional one-line 'too many connections' refusal of each protocol."""
    if protocol == "smtp":
        # RFC 5321 §3.8 / §4.2.5: 421 and close; RFC 3463 X.7.0 (other security/policy status).
        return f"421 4.7.0 {hostname} too many connections, try again later\r\n".encode()
    if protocol == "imap":
        return b"* BYE [UNAVAILABLE] too many connections, try again later\r\n"  # RFC 9051 §7.1.5, §7.1
    if protocol == "pop3":
        return b"-ERR [SYS/TEMP] too many connections, try again later\r\n"  # RFC 3206 §4
    return b""


# ---------------------------------------------------------------------------------------------------------
# logfmt


_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@+[],;*!?%#~^&()<>{}|$'")


def logfmt_value(value: Any) -> str:
    """A logfmt value: bare when safe, else double-quoted with \\, ", and control characters escaped."""
    if isinstance(value, float):
        text = f"{value:.3f}"
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    else:
        text = str(value)
    if text and all(c in _SAFE for c in text):
        return text
    out = []
    for c in text:
        if c == "\\" or c == '"':
            out.append("\\" + c)
        elif c == "\n":
            out.append("\\n")
        elif c == "\r":
            out.append("\\r")
        elif c == "\t":
            out.append("\\t")
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def logfmt_key(key: str) -> str:
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in key)
    return cleaned or "_"


def logfmt(message: str, fields: Iterable[tuple[str, Any]]) -> str:
    return " ".join([message] + [f"{logfmt_key(k)}={logfmt_value(v)}" for k, v in fields])


def log_refusal(conn: Any, what: str, reason: str, fields: Iterable[tuple[str, Any]] = ()) -> None:
    """One logfmt line for a request a session refused, at INFO on the "postroom.refusal" logger:

        refused protocol=smtp listener=smtp id=k3xa1 ip=203.0.113.7 what=rcpt code=550 esc=5.7.1
            from=a@far.test to=x@other.test reason="Relaying denied"

    `conn` is the session's Connection (protocol, listener, session id, peer); `what` names the request
    ("login", "mail", "rcpt", "data"); `fields` come before `reason`, which is always last. `ip` is the bare
    client address (no port, no brackets) so that a fail2ban `failregex` can take it as <HOST>
    (docs/ARCHITECTURE.md, "Log lines"). Never raises for odd values (logfmt quotes them)."""
    refusal_log.info("%s", logfmt("refused", [
        ("protocol", conn.protocol), ("listener", conn.listener), ("id", conn.session_id), ("ip", conn.peer[0]),
        ("what", what), *fields, ("reason", reason)]))


def format_peer(peer: tuple[str, int]) -> str:
    host, port = peer
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------------------------------------
# Session ids


def default_id_factory() -> Callable[[], str]:
    """Short ids, unique within a process and unlikely to repeat across restarts: 4 random base32 characters
    then a counter (base32, growing as needed)."""
    prefix = base64.b32encode(os.urandom(5)).decode().lower()[:4]
    counter = itertools.count(1)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"

    def next_id() -> str:
        n = next(counter)
        digits = []
        while True:
            n, r = divmod(n, 32)
            digits.append(alphabet[r])
            if not n:
                break
        return prefix + "".join(reversed(digits)).rjust(4, "a")

    return next_id


# ---------------------------------------------------------------------------------------------------------


class NetServer:
    """Every protocol listener of the process, sharing limits, TLS context and metrics."""

    def __init__(self, specs: Iterable[ListenerSpec], tls_context: ssl.SSLContext | None, limits: LimitsConfig,
                 metrics: Metrics | None = None, *, tls_handshake_timeout: float = 30.0,
                 id_factory: Callable[[], str] | None = None, max_tls_refusals: int = 64,
                 backlog: int = 512, sockets: dict[str, list[socket.socket]] | None = None,
                 shared: SharedCounts | None = None) -> None:
        self.specs = list(specs)
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"listener names must be unique: {names}")
        self.tls_context = tls_context
        self.limits = limits
        self.metrics = metrics
        self.tls_handshake_timeout = tls_handshake_timeout
        self.addresses: dict[str, tuple[str, int]] = {}
        self._new_id = id_factory or default_id_factory()
        self._max_tls_refusals = max_tls_refusals
        self._backlog = backlog
        self._prebound = sockets  # listener -> sockets bound by the parent process (workers.py), or None
        self._shared = shared  # the counts of every worker (net/counts.py), or None: this process's alone
        self._servers: dict[str, list[asyncio.Server]] = {}
        self._sessions: dict[Connection, asyncio.Task[None]] = {}
        self._refusals: dict[Connection, asyncio.Task[None]] = {}
        self._per_ip: dict[str, int] = {}
        self._stopping = False
        self._cutting = False  # past the grace deadline: abort instead of closing politely

    # --- introspection -------------------------------------------------------------------------------------
    @property
    def connection_count(self) -> int:
        return len(self._sessions)

    def connections_from(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    # --- lifecycle -----------------------------------------------------------------------------------------
    async def bind(self) -> None:
        """Bind every listener's socket without accepting yet (connections are refused by the kernel until
        `start()`): `app.py` binds while it may still be root, then drops privileges, then opens the store.
        On failure nothing stays bound and the OSError names the listener."""
        if self._servers or self._stopping:
            raise RuntimeError("NetServer.bind() may be called once")
        loop = asyncio.get_running_loop()
        for spec in self.specs:
            if spec.implicit_tls and self.tls_context is None:
                await self._close_servers()
                raise ValueError(f"listener {spec.name}: implicit TLS needs a TLS context")
            try:
                if self._prebound is not None:  # a worker: the parent bound them (workers.py); one server each
                    def factory(spec: ListenerSpec = spec) -> Connection:
                        return self._make_connection(spec)

                    servers = [await loop.create_server(factory, sock=sock, backlog=self._backlog,
                                                        start_serving=False)
                               for sock in self._prebound[spec.name]]
                else:
                    servers = [await loop.create_server(lambda spec=spec: self._make_connection(spec),
                                                        spec.host or None, spec.port, backlog=self._backlog,
                                                        reuse_address=True, start_serving=False)]
            except OSError as exc:
                await self._close_servers()
                raise OSError(exc.errno, f"listener {spec.name}: cannot listen on "
                                         f"{format_peer((spec.host, spec.port))}: {exc.strerror or exc}") from exc
            self._servers[spec.name] = servers
            sockname = servers[0].sockets[0].getsockname()
            self.addresses[spec.name] = (str(sockname[0]), int(sockname[1]))

    async def start(self) -> None:
        """Bind every listener (unless `bind()` did) and start accepting. On failure nothing stays bound and the
        OSError names the listener."""
        if not self._servers:
            await self.bind()
        for spec in self.specs:
            servers = self._servers[spec.name]
            if all(server.is_serving() for server in servers):
                continue
            for server in servers:
                await server.start_serving()
            log.info("listening %s", logfmt("", [("listener", spec.name), ("protocol", spec.label),
                                                   ("address", format_peer(self.addresses[spec.name])),
                                                   ("tls", "implicit" if spec.implicit_tls else "no")]).strip())

    async def stop(self, grace: float) -> None:
        """Stop accepting now; let sessions finish for up to `grace` seconds; then cut the rest."""
        self._stopping = True
        for server in (s for servers in self._servers.values() for s in servers):
            server.close()
        for conn in list(self._refusals):
            conn.abort()
        for conn in list(self._sessions):
            conn.request_shutdown()
        tasks = list(self._sessions.values())
        pending: set[asyncio.Task[None]] = set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(grace, 0.0))
        if pending:
            log.info("shutdown: cutting %d session(s) still running after %.1f s", len(pending), grace)
            self._cutting = True
            for task in pending:
                task.cancel()
            _, stuck = await asyncio.wait(pending, timeout=5.0)
            if stuck:
                log.warning("shutdown: %d session task(s) ignored cancellation", len(stuck))
        for conn in list(self._sessions) + list(self._refusals):
            conn.abort()
        await self._close_servers()

    async def _close_servers(self) -> None:
        servers = [s for servers in self._servers.values() for s in servers]
        self._servers.clear()
        for server in servers:
            server.close()
        for server in servers:
            try:
                # Python 3.12+ waits here for every connection to be released; never let that hang stop().
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                pass

    def reconfigure(self, tls_context: ssl.SSLContext | None, limits: LimitsConfig) -> None:
        """Use this TLS context and these limits for connections accepted from now on (`Postroom.reload`).
        Open connections keep what they were accepted with (their STARTTLS uses the context of their start).
        The connection counters carry over: a lower `connections_total` refuses new connections until enough
        of the open ones have ended."""
        self.tls_context = tls_context
        self.limits = limits

    # --- admission -----------------------------------------------------------------------------------------
    def _make_connection(self, spec: ListenerSpec) -> Connection:
        idle = spec.idle_timeout if spec.idle_timeout and spec.idle_timeout > 0 else None
        return Connection(listener=spec.name, protocol=spec.label, limits=self.limits, idle_timeout=idle,
                          session_id=self._new_id(), tls_context=self.tls_context,
                          implicit_tls=spec.implicit_tls,
                          on_connection_made=lambda conn: self._admit(spec, conn))

    def _admit(self, spec: ListenerSpec, conn: Connection) -> None:
        """Called from connection_made: admit (start a session task) or refuse (invariant 1)."""
        if self._stopping:
            conn.abort()
            return
        ip = conn.peer[0]
        reason = None
        if self._shared is not None:  # every worker's connections count (net/counts.py)
            reason = self._shared.admit(ip, self.limits.connections_total, self.limits.connections_per_ip)
        elif len(self._sessions) >= self.limits.connections_total:
            reason = "total"
        elif self._per_ip.get(ip, 0) >= self.limits.connections_per_ip:
            reason = "per-ip"
        if reason is not None:
            self._refuse(spec, conn, reason)
            return
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        if self.metrics is not None:
            self.metrics.session_started(spec.label)
        self._sessions[conn] = asyncio.get_running_loop().create_task(self._run(spec, conn),
                                                                      name=f"session-{conn.session_id}")

    def _refuse(self, spec: ListenerSpec, conn: Connection, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.connection_refused(spec.label)
        if not spec.refuse:
            conn.abort()
            self._log_session(spec, conn, "refused", [("reason", reason)])
            return
        if not spec.implicit_tls:
            conn.write(spec.refuse)
            conn.close_soon()  # one short line: it fits the socket buffer, so this cannot hang
            self._log_session(spec, conn, "refused", [("reason", reason)])
            return
        # Implicit TLS: the refusal must travel over TLS to be readable. Handshakes cost CPU, so only a few
        # refusals run at once; beyond that the socket is simply closed.
        if len(self._refusals) >= self._max_tls_refusals:
            conn.abort()
            self._log_session(spec, conn, "refused", [("reason", reason)])
            return
        self._refusals[conn] = asyncio.get_running_loop().create_task(self._refuse_tls(spec, conn, reason))

    async def _refuse_tls(self, spec: ListenerSpec, conn: Connection, reason: str) -> None:
        try:
            assert self.tls_context is not None
            await conn._upgrade(self.tls_context, min(self.tls_handshake_timeout, 10.0))
            conn.write(spec.refuse)
            await conn.close()
        except (ConnectionClosed, OSError):
            conn.abort()
        except asyncio.CancelledError:
            conn.abort()
        finally:
            self._refusals.pop(conn, None)
            self._log_session(spec, conn, "refused", [("reason", reason)])

    # --- the session ---------------------------------------------------------------------------------------
    async def _run(self, spec: ListenerSpec, conn: Connection) -> None:
        end = "error"
        extra: Sequence[tuple[str, Any]] = ()  # no list held by every idle session for a rare error field
        try:
            if spec.implicit_tls:
                assert self.tls_context is not None
                await conn._upgrade(self.tls_context, self.tls_handshake_timeout)  # RFC 8314 §3.2
            await spec.handler(conn)
            end = conn.end or conn.ended_by or "quit"
        except TLSFailed as exc:
            end = "tls"
            extra = [("error", str(exc))]
        except ShuttingDown:
            end = conn.end or "shutdown"
        except IdleTimeout:
            end = conn.end or "timeout"
        except (ConnectionClosed, ConnectionError):
            end = conn.end or "eof"
        except asyncio.CancelledError:
            end = "shutdown"
            if not self._stopping:
                self._finish(spec, conn, end, extra)
                conn.abort()
                raise
        except Exception as exc:
            end = "error"
            extra = [("error", describe_exception(exc))]
            log.exception("session %s (%s, peer %s): handler failed", conn.session_id, spec.name,
                          format_peer(conn.peer))
        self._finish(spec, conn, end, extra)
        if self._cutting:
            conn.abort()
        else:
            try:
                await conn.close()
            except asyncio.CancelledError:
                conn.abort()

    def _finish(self, spec: ListenerSpec, conn: Connection, end: str, extra: Sequence[tuple[str, Any]]) -> None:
        if self._sessions.pop(conn, None) is None:
            return
        ip = conn.peer[0]
        if self._shared is not None:
            self._shared.release(ip)
        left = self._per_ip.get(ip, 0) - 1
        if left > 0:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)  # invariant 4
        if self.metrics is not None:
            self.metrics.session_ended(spec.label)
        self._log_session(spec, conn, end, extra)

    def _log_session(self, spec: ListenerSpec, conn: Connection, end: str,
                     extra: Sequence[tuple[str, Any]]) -> None:
        fields: list[tuple[str, Any]] = [
            ("protocol", spec.label),
            ("listener", spec.name),
            ("id", conn.session_id),
            ("peer", format_peer(conn.peer)),
            ("tls", conn.tls_version or "no"),
            ("duration", time.monotonic() - conn.started),
            ("bytes_in", conn.bytes_in),
            ("bytes_out", conn.bytes_out),
            ("end", end),
        ]
        fields.extend(extra)
        taken = {k for k, _ in fields}
        for key, value in conn.log.items():
            if key not in taken:
                fields.append((key, value))
        session_log.info("%s", logfmt("session", fields))
