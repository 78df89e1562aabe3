"""The connection a protocol session talks to: buffered reads with limits, writes, TLS upgrade, idle timeouts.

Theory of operation
-------------------
`Connection` is an `asyncio.Protocol`. The transport pushes bytes into one `bytearray` (`data_received`); the
session pulls from it with `read_line`, `read_exact`, `read_some` or `skip`. Reads are served from the buffer
first and wait only when it cannot satisfy them. Every wait is a single future plus one `call_at` timer (and
a second while a deadline of invariant 7 runs: an unfinished line, or data), so an idle session costs one small
object and one suspended coroutine (ARCHITECTURE: 10,000 idle IMAP sessions must fit comfortably).

Answering inline. A sans-I/O session whose replies are often ready at once (POP3 in TRANSACTION: a RETR whose
body was read ahead, STAT, LIST, DELE...; SMTP: EHLO, MAIL, RCPT, DATA's 354, the lines of a message) passes
`read_some(inline=handler)`. While that read waits, a chunk
that arrives into an empty buffer and ends with LF (whole lines, so no command deadline is running) is handed
to the handler from the transport's callback (`data_received`), which feeds its core, writes the replies and
says whether the read may go on waiting. A command then costs no future, no task step and no second trip
round the event loop (one `epoll_wait` per client round trip instead of two), and its reply leaves in the same
callback that received it. The read's idle timer is not cancelled and set again for every such command: it
stays armed, and when it fires it looks at when the handler last took bytes (`_idle_check`, invariant 4).

Line reading. `read_line` returns one line including its terminator; the protocol decides whether a bare LF is
acceptable (the reader splits on LF, so a CRLF line ends in b"\\r\\n" and an LF-only line in b"\\n"). A line whose
length, terminator included, exceeds the limit raises `LineTooLong` as soon as the limit is crossed, without
waiting for the end of the line. The connection then drops everything up to and including the next LF,
eagerly, as the bytes arrive; the next read starts with the line after it. So the session can reply
"500 line too long" and carry on (RFC 5321 §4.5.3.1.4; RFC 9051 §4 leaves the response to the server).

STARTTLS. `start_tls` refuses, raising `PlaintextAfterStartTLS`, when any plaintext is buffered after the
command line that asked for TLS: those bytes were sent before the handshake, so they must not be read as if
they came over TLS (CVE-2011-0411, "STARTTLS command injection"; RFC 3207 §4.2 / RFC 2595 §3.1 / RFC 9051
§6.2.1: the client MUST discard cached information, and so must the server). The connection is not upgraded
and the buffered bytes are kept, so the session decides: the recommended reaction is to check `pending` before
sending the "ready to start TLS" reply and answer with an error instead, and, if `start_tls` raises anyway
(the bytes arrived while the reply was being sent), to close the connection without reading them. Bytes that
arrive after the check go to the TLS layer, where they break the handshake and never reach the session.

Compression (RFC 4978 COMPRESS=DEFLATE; any protocol may use it). After `start_compression()` both directions
are raw deflate (RFC 1951, zlib `wbits` -15), a layer the session does not see: bytes from the transport (the
TLS layer's plaintext, so compression sits inside TLS: RFC 4978 §4) are inflated into the same buffer every
reader uses, and every `write`/`writelines` call is deflated and ended with a sync flush (`Z_SYNC_FLUSH`), so
one response burst of the session reaches the peer whole and at once (§4: "the server MUST flush").
Inflating is bounded (invariant 8): compressed bytes wait in `_zin` and are inflated only while the buffer is
below `high_water`, `max_length` at a time, so a decompression bomb (a few KB that inflate to gigabytes) is
only ever a buffer's worth of plaintext, which the session's own limits (line length, command size) judge.

Invariants
1. At most one read waits at a time (a second concurrent read is a programming error: RuntimeError).
2. While `_discarding` is true the buffer is empty: the tail of an overlong line never reaches a session.
3. The buffer never grows past `high_water` because of the peer alone: reading is paused above it and
   resumed when a read needs more data or the buffer drains below a quarter of it.
4. Idle time is silence: the timer restarts whenever a read wakes on new data, and counts from the last chunk
   an inline handler took (invariant 12: the timer, when due, is set again for the idle timeout after it); a
   peer that stops reading our output times out in `drain()` likewise. Trickling is not silence, so two
   deadlines bound it (invariant 7).
5. After `connection_lost`, reads serve what is still buffered, then raise `ConnectionClosed`; writes are
   dropped and `drain()` raises `ConnectionClosed`.
6. The connection logs no payload. Sessions put safe fields in `log`; passwords never go there.
7. Deadlines, like Postfix's `smtpd_per_record_deadline` and `smtpd_min_data_rate`, for every protocol. The
   connection watches the raw stream for line ends, so it knows when an unfinished line began; the session
   says when the bytes are data instead (`data_phase`: SMTP DATA/BDAT, IMAP literals). In the command phase a
   line (a command, an AUTH response, a line of an IMAP command between literals) must be complete within
   `limits.command_deadline_seconds` of its first byte. In the data phase the bytes received since it began
   must keep up with `limits.min_data_rate` bytes/s after `limits.data_rate_grace_seconds`: the deadline is
   start + grace + received / rate (Postfix adds N / rate per read likewise). Only a waiting read can expire
   (the server's own processing time never counts against the client); it raises `DeadlineExceeded` (an
   `IdleTimeout`, so every session already answers it: SMTP `421 4.4.2`, IMAP `* BYE`, POP3 `-ERR`) and puts
   the reason in `log["timeout"]` for the session's one log line. A command that spans lines and literals
   (IMAP, `command_span`) is bounded as a whole from its start: the command deadline, one data grace, and its
   literal bytes at the minimum rate.
8. With compression on, plaintext is made only while the buffer holds less than `high_water` (at most that much
   per step), and compressed input waiting in `_zin` past `high_water` pauses reading like the buffer does:
   memory per connection stays about 2 x `high_water` whatever the compression ratio. Corrupt deflate data ends
   the connection (`log["compress"] = "corrupt"`); it cannot be resynchronised.
9. An idle TLS connection holds no receive buffer of its own: on the standard library's loop, every TLS layer
   of a loop reads the socket into one shared buffer (`_share_read_buffer`), whose bytes are copied into the
   TLS object before the callback returns.
10. A read that may also be woken by something else (`read_some(wake=...)`: IMAP IDLE and its change feed)
   waits on its one future, which both may resolve: no task, no second future, no `asyncio.wait` set per
   idle session.
11. `read_some`, the read every idle IMAP and POP3 session waits in, awaits the waiter future itself
   (`_arm_read`, `_end_read`): no `_wait_for_data` coroutine frame (~300 bytes) lives under it while idle;
   nor is the `on_connection_made` callback (a closure) kept once it has been called.
12. An inline handler (`read_some(inline=...)`, module doc) is called only while its read waits (its future not
   done), only with a chunk that ends with LF and arrives into an empty buffer, never while the output is
   paused (`pause_writing`: the session drains first), while the server is stopping or for bytes of a line
   being dropped. Bytes it is given never reach the buffer: it takes them whatever it answers. True means it
   took every complete line (the wait goes on, now interruptible unless a data phase is on: the peer is
   between commands); False
   ends the read with b"", also at EOF, so a command that came with the peer's FIN is still carried out. A
   deadline timer armed for an unfinished line that the handler then completed does not fire (`_deadline`
   is None again). Every other chunk is buffered and wakes the read as before, so the order of bytes is kept.
   A handler may begin a data phase (invariant 7) while the read waits: the rate then counts from that moment,
   a deadline timer is set, and when it is due it is set again for the deadline the bytes taken since moved
   (`_deadline_expired`); a wait in a data phase is never between commands (a shutdown does not end it).
13. Every connection of an event loop reads from its transport into one receive buffer (`get_buffer`; a
   `RECEIVE_SIZE` bytearray per loop), and `buffer_updated` copies what was read out of it before returning:
   a read allocates only the bytes that arrived, not a 256 KiB object it then shrinks, and an idle connection
   holds no receive buffer of its own (as invariant 9 for the TLS layer below it).
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl
import time
import typing
import weakref
import zlib
from collections.abc import Callable
from typing import Any

from postroom.config import LimitsConfig

_INFLATE_STEPS = 4  # inflate steps (each at most high_water bytes out) per callback before yielding (invariant 8)

# ---------------------------------------------------------------------------------------------------------
# Exceptions a session sees


class NetError(Exception):
    """Base class of everything the connection raises at a session."""


class ConnectionClosed(NetError):
    """The peer closed the connection (or it was reset) and nothing usable is buffered."""


class TLSFailed(ConnectionClosed):
    """A TLS handshake failed; the connection is gone."""


class IdleTimeout(NetError):
    """No data arrived (or our output was not read) for the idle timeout."""


class DeadlineExceeded(IdleTimeout):
    """A line took longer than the command deadline, or data arrived slower than the minimum rate
    (invariant 7). `reason` is "command-deadline" or "min-data-rate"."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


class ShuttingDown(NetError):
    """The server is stopping and this session was waiting between commands. Say goodbye and return
    (SMTP 421 4.3.2, IMAP `* BYE`, POP3 -ERR)."""


class LineTooLong(NetError):
    """A line exceeded the limit. Its remainder is being discarded; the next read gets the next line."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"line longer than {limit} bytes")
        self.limit = limit


class LiteralTooLarge(NetError):
    """`read_exact` was asked for more than the allowed size. Nothing was read."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes requested, limit is {limit}")
        self.size = size
        self.limit = limit


class PlaintextAfterStartTLS(NetError):
    """Plaintext was pipelined after the STARTTLS/STLS command (CVE-2011-0411). Not upgraded; see module doc."""

    def __init__(self, pending: int) -> None:
        super().__init__(f"{pending} bytes of plaintext pipelined after the TLS upgrade command")
        self.pending = pending


# ---------------------------------------------------------------------------------------------------------


def _address(info: Any) -> tuple[str, int]:
    """A socket address as (ip, port); IPv4-mapped IPv6 addresses are shown as IPv4."""
    if isinstance(info, tuple) and len(info) >= 2:
        host = str(info[0])
        if host.startswith("::ffff:") and "." in host:
            host = host[7:]
        return host, int(info[1])
    return (str(info) if info else "", 0)


def describe_exception(exc: BaseException) -> str:
    """A one-line description of a (TLS) error for logs: no payload, no traceback."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return f"{type(exc).__name__}:{exc.reason}"
    text = str(exc).strip()
    return f"{type(exc).__name__}:{text}" if text else type(exc).__name__


class Wake(typing.Protocol):
    """Something besides the client that may end a read's wait (`Connection.read_some(wake=...)`): it resolves
    the future it is given (with None) when it has something, at once if it has already; None: forget it."""

    def wake_on(self, fut: asyncio.Future[None] | None) -> None: ...


class Connection(asyncio.BufferedProtocol):
    """One client connection, as seen by a protocol session. Created by `NetServer`, one per accepted socket.
    The transport reads into the loop's one receive buffer (`get_buffer`, invariant 13); what it read is passed
    on as `data_received`, which a transport that is not buffered calls itself."""

    # Slots, not a __dict__: about 1.2 KiB less per connection, which every idle session holds (module doc).
    __slots__ = (
        "bytes_in", "bytes_out", "end", "ended_by", "idle_timeout", "limits", "listener", "local", "log", "peer",
        "protocol", "session_id", "started", "tls_context",
        "_buffer", "_closed", "_closing", "_data_bytes", "_data_phase", "_data_since", "_deflater", "_discarding",
        "_drain_waiter", "_eof", "_high_water", "_implicit_tls", "_inflate_full", "_inflate_scheduled", "_inflater",
        "_loop", "_lost", "_on_made", "_partial_since", "_paused_at", "_paused_reading", "_paused_writing",
        "_scanned", "_span_bytes", "_span_since", "_stopping", "_tls", "_tls_cipher", "_tls_version", "_transport",
        "_waiter", "_waiter_interruptible", "_zin", "_inline", "_quiet_since", "_idle_timer", "_dl_timer", "_received",
    )

    def __init__(self, *, listener: str, protocol: str, limits: LimitsConfig, idle_timeout: float | None,
                 session_id: str, tls_context: ssl.SSLContext | None = None, implicit_tls: bool = False,
                 on_connection_made: Callable[[Connection], None] | None = None,
                 high_water: int = 1 << 20) -> None:
        self.listener = listener
        self.protocol = protocol
        self.limits = limits
        self.idle_timeout = idle_timeout  # sessions may change it (e.g. IMAP before/after login)
        self.session_id = session_id
        self.tls_context = tls_context  # the server's context, used by start_tls() when given none
        self.log: dict[str, Any] = {}  # fields for the session log line (invariant 6)
        self.end: str | None = None  # a session may name how it ended ("quit", ...) for the log line
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.bytes_in = 0
        self.bytes_out = 0
        self.started = time.monotonic()
        self.ended_by: str | None = None  # "eof" / "timeout" / "shutdown" when a read or drain raised so

        self._implicit_tls = implicit_tls
        self._on_made = on_connection_made
        self._high_water = max(high_water, limits.line_length * 2)
        self._loop = asyncio.get_running_loop()
        self._received = _receive_buffer(self._loop)  # invariant 13: the loop's, not this connection's
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._scanned = 0  # bytes at the start of the buffer known to hold no LF
        self._discarding = False  # invariant 2
        self._eof = False
        self._lost = False
        self._closing = False
        self._stopping = False
        self._waiter: asyncio.Future[None] | None = None
        self._waiter_interruptible = False
        self._inline: Callable[[bytes], bool] | None = None  # invariant 12: set while a read_some(inline=) waits
        self._quiet_since = 0.0  # loop time of the last bytes an inline handler took (invariant 4)
        self._idle_timer: asyncio.TimerHandle | None = None  # the idle timer of the waiting read
        self._dl_timer: asyncio.TimerHandle | None = None  # its deadline timer (invariant 7), when one is due
        self._paused_reading = False
        self._paused_writing = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._tls = False
        self._tls_version: str | None = None
        self._tls_cipher: str | None = None
        # invariant 7
        self._data_phase = False
        self._partial_since: float | None = None  # loop time the unfinished line of the stream began
        self._data_since = 0.0
        self._data_bytes = 0
        self._span_since: float | None = None  # loop time a command spanning lines and literals began
        self._span_bytes = 0  # its literal bytes so far
        self._paused_at = 0.0
        # compression (invariant 8)
        self._inflater: Any = None  # zlib decompressobj once start_compression() ran
        self._deflater: Any = None
        self._zin = bytearray()  # compressed bytes received and not inflated yet
        self._inflate_full = False  # the last inflate step filled its room: zlib may hold more output
        self._inflate_scheduled = False

    # --- properties ----------------------------------------------------------------------------------------
    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def tls_version(self) -> str | None:
        return self._tls_version

    @property
    def tls_cipher(self) -> str | None:
        return self._tls_cipher

    @property
    def pending(self) -> int:
        """Bytes received and not read yet (check before answering STARTTLS or COMPRESS: see the module doc);
        compressed bytes not inflated yet count too."""
        return len(self._buffer) + len(self._zin)

    @property
    def tls_compression(self) -> str | None:
        """The compression TLS itself negotiated (None: none; Python's default contexts never enable it)."""
        sslobj = self._transport.get_extra_info("ssl_object") if self._tls and self._transport else None
        return sslobj.compression() if sslobj is not None else None

    @property
    def compressed(self) -> bool:
        """COMPRESS=DEFLATE is on (module doc)."""
        return self._deflater is not None

    @property
    def closed(self) -> bool:
        return self._lost or self._closing

    @property
    def timed_out(self) -> bool:
        return self.ended_by == "timeout"

    @property
    def shutting_down(self) -> bool:
        """The server is stopping; a long-running session should wind up at its next convenient point."""
        return self._stopping

    # --- asyncio.Protocol ----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Not an isinstance assertion: uvloop's transports implement asyncio.Transport without subclassing it.
        transport = typing.cast(asyncio.Transport, transport)
        if self._transport is not None:  # an SSL layer announcing itself; the session already knows us
            self._transport = transport
            return
        self._transport = transport
        self.peer = _address(transport.get_extra_info("peername"))
        self.local = _address(transport.get_extra_info("sockname"))
        if self._implicit_tls:
            # The ClientHello must reach the TLS layer, not our plaintext buffer: hold reading until
            # loop.start_tls() takes over the transport (it resumes reading itself).
            transport.pause_reading()
        if self._on_made is not None:
            on_made, self._on_made = self._on_made, None  # called once: its closure is not kept (invariant 11)
            on_made(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        """Where the transport reads the next bytes (asyncio.BufferedProtocol): the loop's one receive buffer
        (invariant 13), whatever `sizehint` asks (the transport reads at most its length)."""
        return self._received

    def buffer_updated(self, nbytes: int) -> None:
        """The transport read `nbytes` into `get_buffer`'s buffer: copied out at once, before any other
        connection's read can use it (invariant 13)."""
        self.data_received(bytes(self._received[:nbytes]))

    def data_received(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self._data_phase:  # invariant 7: the rate is judged on the bytes the peer sends
            self._data_bytes += len(data)
            self._span_bytes += len(data)
        if self._inflater is not None:
            self._zin += data
            self._inflate()
            if len(self._zin) > self._high_water and not self._paused_reading and self._transport is not None:
                self._paused_reading = True  # invariant 8: compressed input waits for the reader too
                self._paused_at = self._loop.time()
                self._transport.pause_reading()
            return
        self._plain(data)

    def _plain(self, data: bytes) -> None:
        """Plaintext into the buffer (straight from the transport, or inflated)."""
        # invariant 7: where the stream's unfinished line began (one C-speed rfind per chunk)
        i = data.rfind(b"\n")
        if i == len(data) - 1:
            self._partial_since = None
        elif i >= 0 or self._partial_since is None:
            self._partial_since = self._loop.time()
        if self._discarding:  # invariant 2
            i = data.find(b"\n")
            if i < 0:
                return
            self._discarding = False
            data = data[i + 1:]
            if not data:
                return
        inline = self._inline
        if (inline is not None and self._partial_since is None and not self._buffer and not self._paused_writing
                and not self._stopping and self._waiter is not None and not self._waiter.done()):
            # invariant 12: whole lines while a read waits, nothing before them: the session answers them here,
            # without waking its task; the idle timer then counts from now (invariant 4)
            if inline(data):
                self._quiet_since = self._loop.time()
                # every line answered: between commands, a shutdown may end the wait; not in a message's data
                self._waiter_interruptible = not self._data_phase
            else:
                self._wake()  # it took the bytes and has more to do than it may here: the read returns b""
            return
        self._buffer += data
        if len(self._buffer) > self._high_water and not self._paused_reading and self._transport is not None:
            self._paused_reading = True
            self._paused_at = self._loop.time()
            self._transport.pause_reading()  # invariant 3
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Plain TCP: keep the write side open so replies to a pipelined QUIT still reach a half-closed peer.
        # Over TLS returning True has no effect (asyncio warns), so do not.
        return not self._tls

    def connection_lost(self, exc: Exception | None) -> None:
        self._mark_lost()

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # --- internals -----------------------------------------------------------------------------------------
    def _mark_lost(self) -> None:
        self._lost = True
        self._eof = True
        self._wake()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)
        if not self._closed.done():
            self._closed.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _idle_expired(self, fut: asyncio.Future[None]) -> None:
        if not fut.done():
            self.ended_by = "timeout"
            self.log.setdefault("timeout", "idle")
            fut.set_exception(IdleTimeout(f"no activity for {self.idle_timeout:g} s"))

    def _idle_check(self, fut: asyncio.Future[None]) -> None:
        """The idle timer of a waiting read (`_arm_read`) is due. An inline handler may have taken bytes since it
        was armed (invariant 12) without ending the wait: then the timer is set again for the idle timeout after
        those (one timer per wait, moved only when it fires, not at every command); else the read times out."""
        self._idle_timer = None
        if fut.done() or not self.idle_timeout:
            return
        due = self._quiet_since + self.idle_timeout
        if due > self._loop.time():
            self._idle_timer = self._loop.call_at(due, self._idle_check, fut)
            return
        self._idle_expired(fut)

    def data_phase(self, on: bool) -> None:
        """The bytes the session reads next are message data (True: SMTP DATA/BDAT, an IMAP literal; judged by
        the minimum data rate) or lines (False, the default: judged by the command deadline). Invariant 7."""
        if on == self._data_phase:
            return
        self._data_phase = on
        if on:
            self._data_since = self._loop.time()
            self._data_bytes = 0
            w = self._waiter
            if w is not None and not w.done() and self._dl_timer is None:
                # an inline handler began the data while the read waits (invariant 12): the rate counts now
                deadline = self._deadline()
                if deadline is not None:
                    self._dl_timer = self._loop.call_at(deadline[0], self._deadline_expired, w)
        elif self._partial_since is not None:
            self._partial_since = self._loop.time()  # the line after the data starts now

    def command_span(self, on: bool) -> None:
        """The bytes read next continue one command that goes on across lines and literals (IMAP, RFC 9051
        §4.3: a literal's end does not end the command). Its whole time is then bounded from its start: the
        command deadline, one data grace, and its literal bytes at the minimum rate, however many lines and
        literals it is cut into. Without this each line after a literal had a deadline of its own, and a command
        of tiny LITERAL+ literals could last days (attack on issue 11). Invariant 7."""
        if on and self._span_since is None:
            self._span_since = self._partial_since if self._partial_since is not None else self._loop.time()
            self._span_bytes = 0
        elif not on:
            self._span_since = None

    def _deadline(self) -> tuple[float, str] | None:
        """(loop time, reason) at which the current wait expires under invariant 7, or None."""
        lim = self.limits
        found: tuple[float, str] | None = None
        if self._data_phase:
            if lim.min_data_rate > 0:
                found = (self._data_since + lim.data_rate_grace_seconds + self._data_bytes / lim.min_data_rate,
                         "min-data-rate")
        elif self._partial_since is not None and lim.command_deadline_seconds > 0:
            found = (self._partial_since + lim.command_deadline_seconds, "command-deadline")
        if self._span_since is not None and lim.command_deadline_seconds > 0:
            rate = self._span_bytes / lim.min_data_rate if lim.min_data_rate > 0 else float("inf")
            span = (self._span_since + lim.command_deadline_seconds + lim.data_rate_grace_seconds + rate,
                    "command-deadline")
            if found is None or span[0] < found[0]:
                found = span
        return found

    def _deadline_error(self, reason: str) -> DeadlineExceeded:
        self.ended_by = "timeout"
        self.log["timeout"] = reason
        if reason == "min-data-rate":
            text = f"data arriving slower than {self.limits.min_data_rate:g} bytes/s"
        else:
            text = f"command line not complete within {self.limits.command_deadline_seconds:g} s"
        return DeadlineExceeded(reason, text)

    def _deadline_expired(self, fut: asyncio.Future[None]) -> None:
        """The deadline timer of a waiting read is due. An inline handler may have taken bytes since it was armed
        (invariant 12): a line it completed has no deadline any more, and data it took moved the minimum-rate
        deadline later (then the timer is set again for that: one timer per wait, moved only when it fires)."""
        self._dl_timer = None
        if fut.done():
            return
        deadline = self._deadline()
        if deadline is None:
            return  # the unfinished line was completed and answered inline since the wait began (invariant 12)
        if deadline[0] > self._loop.time():
            self._dl_timer = self._loop.call_at(deadline[0], self._deadline_expired, fut)
            return
        fut.set_exception(self._deadline_error(deadline[1]))

    def request_shutdown(self) -> None:
        """The server is stopping: a read waiting between commands raises ShuttingDown now, later ones at once."""
        self._stopping = True
        w = self._waiter
        if w is not None and self._waiter_interruptible and not self._buffer and not w.done():
            self.ended_by = "shutdown"
            w.set_exception(ShuttingDown("server shutting down"))

    async def _wait_for_data(self, interruptible: bool, wake: Wake | None = None,
                             quiet_since: float | None = None) -> None:
        """Wait until new bytes are buffered. Raises ConnectionClosed / IdleTimeout / ShuttingDown."""
        fut = self._arm_read(interruptible, wake, quiet_since, None)
        try:
            await fut
        finally:
            self._end_read(wake)

    def _arm_read(self, interruptible: bool, wake: Wake | None, quiet_since: float | None,
                  inline: Callable[[bytes], bool] | None) -> asyncio.Future[None]:
        """The start of a wait for new bytes (`_wait_for_data`, or `read_some` itself: invariant 11): the
        waiter future, resolved by new bytes, EOF, the idle timer (`_idle_timer`), the deadline timer
        (`_dl_timer`, when invariant 7 sets one), `wake`, or `inline` handing over (invariant 12). Raises at once
        what `_wait_for_data` would (ConnectionClosed, ShuttingDown, a deadline passed). The caller awaits the
        future and then calls `_end_read` with `wake`, whatever happened."""
        if self._eof:
            self.ended_by = self.ended_by or "eof"
            raise ConnectionClosed("connection closed by peer")
        if interruptible and self._stopping:
            self.ended_by = "shutdown"
            raise ShuttingDown("server shutting down")
        if self._waiter is not None:  # invariant 1
            raise RuntimeError("another read is already waiting on this connection")
        if self._paused_reading and self._transport is not None:
            self._resume_reading()
        deadline = self._deadline()
        if deadline is not None and deadline[0] <= self._loop.time():
            raise self._deadline_error(deadline[1])
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiter = fut
        self._waiter_interruptible = interruptible
        if self.idle_timeout:
            start = self._loop.time() if quiet_since is None else quiet_since
            self._idle_timer = self._loop.call_at(start + self.idle_timeout, self._idle_check, fut)
        if deadline is not None:
            self._dl_timer = self._loop.call_at(deadline[0], self._deadline_expired, fut)
        if wake is not None:
            wake.wake_on(fut)
        self._inline = inline
        return fut

    def _end_read(self, wake: Wake | None) -> None:
        """The end of a wait `_arm_read` began, however it ended: no waiter, no wake, no inline handler, no
        timers."""
        self._waiter = None
        self._inline = None
        if wake is not None:
            wake.wake_on(None)
        timer = self._idle_timer
        if timer is not None:
            self._idle_timer = None
            timer.cancel()
        timer = self._dl_timer
        if timer is not None:
            self._dl_timer = None
            timer.cancel()

    def _consumed(self) -> None:
        self._scanned = 0
        if self._inflater is not None and self._zin_more:
            self._inflate()  # invariant 8: refill from the compressed input as the reader makes room
        if (self._paused_reading and len(self._buffer) <= self._high_water // 4
                and len(self._zin) <= self._high_water // 4 and self._transport is not None):
            self._resume_reading()

    # --- compression (module doc, invariant 8) -------------------------------------------------------------
    @property
    def _zin_more(self) -> bool:
        return bool(self._zin) or self._inflate_full

    def start_compression(self) -> None:
        """Deflate both directions from now on (RFC 4978): the session has just written (and the caller will
        flush) its last uncompressed response, and checked that nothing is buffered (`pending` is 0: bytes
        that came before this point were sent uncompressed, so they would be misread). RuntimeError if already
        on. Works the same over TLS (the layer sits inside it, RFC 4978 §4)."""
        if self._deflater is not None:
            raise RuntimeError("compression is already active")
        self._inflater = zlib.decompressobj(-15)  # raw deflate, no zlib header (RFC 4978 §3)
        self._deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self._inflate_full = False

    def _inflate(self) -> None:
        """Inflate waiting compressed input into the buffer while it is below high_water (invariant 8); at most
        `_INFLATE_STEPS` steps per call, then again from the loop, so a bomb never holds the loop for long."""
        d = self._inflater
        if d is None or self._lost:
            return
        for _ in range(_INFLATE_STEPS):
            room = self._high_water - len(self._buffer)
            if room <= 0 or not (self._zin or self._inflate_full):
                return
            data = bytes(self._zin)
            try:
                out = d.decompress(data, room)
            except zlib.error:
                self.log["compress"] = "corrupt"  # cannot be resynchronised: end the connection
                self._zin.clear()
                self._inflate_full = False
                if self._transport is not None:
                    self._transport.abort()
                self._mark_lost()
                return
            self._zin[:] = d.unconsumed_tail
            self._inflate_full = len(out) == room
            if out:
                self._plain(out)
            elif not self._zin:
                return
        if not self._inflate_scheduled and (self._zin or self._inflate_full):
            self._inflate_scheduled = True
            self._loop.call_soon(self._inflate_later)

    def _inflate_later(self) -> None:
        self._inflate_scheduled = False
        self._inflate()
        if (self._paused_reading and len(self._buffer) <= self._high_water // 4
                and len(self._zin) <= self._high_water // 4 and self._transport is not None):
            self._resume_reading()

    def _deflate(self, chunks: list[bytes]) -> bytes:
        d = self._deflater
        out = [d.compress(c) for c in chunks]
        out.append(d.flush(zlib.Z_SYNC_FLUSH))  # RFC 4978 §4: the peer gets each burst whole, at once
        return b"".join(out)

    def _resume_reading(self) -> None:
        """Resume the transport. While it was paused the peer could not send: that time does not count against
        its deadlines (invariant 7)."""
        assert self._transport is not None
        self._paused_reading = False
        paused = self._loop.time() - self._paused_at
        self._data_since += paused
        if self._partial_since is not None:
            self._partial_since += paused
        if self._span_since is not None:
            self._span_since += paused
        self._transport.resume_reading()

    # --- reading -------------------------------------------------------------------------------------------
    async def read_line(self, limit: int | None = None, *, interruptible: bool = True) -> bytes:
        """One line including its LF (or CRLF). Raises LineTooLong, ConnectionClosed, IdleTimeout, ShuttingDown.

        `limit` (default `limits.line_length`) counts the terminator. `interruptible`: a server shutdown may
        interrupt this read while nothing of the next line has arrived.
        """
        limit = self.limits.line_length if limit is None else limit
        buf = self._buffer
        while True:
            end = min(len(buf), limit)
            i = buf.find(b"\n", self._scanned, end)
            if i >= 0:
                line = bytes(buf[:i + 1])
                del buf[:i + 1]
                self._consumed()
                return line
            if len(buf) >= limit:
                # RFC 5321 §4.5.3.1.4: reject the overlong line but keep the session (invariant 2).
                j = buf.find(b"\n", limit)
                if j >= 0:
                    del buf[:j + 1]
                else:
                    buf.clear()
                    self._discarding = True
                self._consumed()
                raise LineTooLong(limit)
            self._scanned = end
            await self._wait_for_data(interruptible and not buf)

    async def read_some(self, max_bytes: int | None = None, *, interruptible: bool = False,
                        wake: Wake | None = None, quiet_since: float | None = None,
                        inline: Callable[[bytes], bool] | None = None) -> bytes:
        """Whatever is buffered (at most `max_bytes`), waiting for the next chunk if nothing is.

        For sans-I/O cores that do their own framing. Pass `interruptible=True` when the core is between
        commands, so a server shutdown can end the wait. With `wake` (e.g. a change feed subscription) the wait
        also ends when `wake` resolves the read's future: then b"" is returned if nothing is buffered, and the
        caller looks at what woke it (one future for both, no task per source: invariant 10). `quiet_since`
        (loop time) is when the client was last heard from, for a caller that calls again after such a wake:
        the idle timeout counts from it instead of from this call (invariant 4).

        `inline(data) -> bool` (invariant 12): while this read waits, a chunk that arrives into an empty buffer
        and ends a line is given to it from the transport's callback instead of being buffered. It takes the
        bytes in every case; True: it answered everything (with `write`/`writelines`) and the wait goes on; False:
        it holds something the caller must do, and the read returns b"" (also at EOF, so a command that came
        with the peer's FIN is not lost). The caller must expect b"" whenever it passes `inline`.
        """
        buf = self._buffer
        while not buf:
            # invariant 11: `_wait_for_data` spelt out, so an idle session holds no coroutine frame for it
            fut = self._arm_read(interruptible, wake, quiet_since, inline)
            try:
                await fut
            finally:
                self._end_read(wake)
            if not buf and (inline is not None or (wake is not None and not self._eof)):
                return b""
        if max_bytes is None or max_bytes >= len(buf):
            data = bytes(buf)
            buf.clear()
        else:
            with memoryview(buf) as view:
                data = bytes(view[:max_bytes])
            del buf[:max_bytes]
        self._consumed()
        return data

    async def read_exact(self, n: int, max_size: int | None = None) -> bytes:
        """Exactly `n` bytes (IMAP literal, BDAT chunk). LiteralTooLarge if n > max_size (default
        `limits.literal_size`), before anything is read."""
        limit = self.limits.literal_size if max_size is None else max_size
        if n < 0:
            raise ValueError("negative length")
        if n > limit:
            raise LiteralTooLarge(n, limit)
        buf = self._buffer
        if len(buf) >= n:
            data = bytes(buf[:n])
            del buf[:n]
            self._consumed()
            return data
        out = bytearray()
        while True:
            need = n - len(out)
            if len(buf) >= need:
                with memoryview(buf) as view:
                    out += view[:need]
                del buf[:need]
                self._consumed()
                return bytes(out)
            out += buf
            buf.clear()
            self._consumed()
            await self._wait_for_data(False)

    async def skip(self, n: int) -> None:
        """Read and drop exactly `n` bytes (a literal the session refused but the client sends anyway,
        RFC 7888 §4), without holding them in memory."""
        buf = self._buffer
        while n > 0:
            take = min(n, len(buf))
            del buf[:take]
            n -= take
            self._consumed()
            if n:
                await self._wait_for_data(False)

    # --- writing -------------------------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue `data` for sending (invariant 5: dropped once the connection is closed)."""
        if self._transport is None or self._lost or self._closing:
            return
        if self._deflater is not None:
            data = self._deflate([data])
        self.bytes_out += len(data)
        self._transport.write(data)

    def writelines(self, chunks: list[bytes]) -> None:
        """Queue `chunks` for sending, in order, as one write (one deflate burst with compression on)."""
        if self._transport is None or self._lost or self._closing:
            return
        if self._deflater is not None:
            data = self._deflate(chunks)
            self.bytes_out += len(data)
            self._transport.write(data)
            return
        self.bytes_out += sum(map(len, chunks))  # no generator frame per call: POP3 writes once per RETR
        self._transport.writelines(chunks)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark (invariant 4)."""
        if self._lost:
            self.ended_by = self.ended_by or "eof"
            raise ConnectionClosed("connection lost")
        if not self._paused_writing:
            return
        fut: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiter = fut
        timer = (self._loop.call_later(self.idle_timeout, self._idle_expired, fut)
                 if self.idle_timeout else None)
        try:
            await fut
        finally:
            self._drain_waiter = None
            if timer is not None:
                timer.cancel()
        if self._lost:
            self.ended_by = self.ended_by or "eof"
            raise ConnectionClosed("connection lost")

    # --- TLS -----------------------------------------------------------------------------------------------
    async def start_tls(self, ssl_context: ssl.SSLContext | None = None, *,
                        handshake_timeout: float = 30.0) -> None:
        """Upgrade to TLS in place (STARTTLS, STLS). Send the "go ahead" reply first; this drains it.

        Raises PlaintextAfterStartTLS (not upgraded; see the module doc), TLSFailed (connection gone).
        """
        ctx = ssl_context or self.tls_context
        if ctx is None:
            raise RuntimeError("no TLS context configured for this listener")
        if self._tls:
            raise RuntimeError("TLS is already active")
        await self.drain()
        # No await between this check and loop.start_tls() taking the transport over: nothing can slip in.
        if self._buffer or self._discarding:
            raise PlaintextAfterStartTLS(len(self._buffer) + (1 if self._discarding else 0))
        await self._upgrade(ctx, handshake_timeout)

    async def _upgrade(self, ctx: ssl.SSLContext, handshake_timeout: float) -> None:
        transport = self._transport
        if transport is None or self._lost:
            raise ConnectionClosed("connection lost before the TLS handshake")
        self._paused_reading = False  # loop.start_tls resumes the raw transport itself
        if self._implicit_tls and self._buffer:
            # Implicit TLS: the bytes are the start of the handshake (the ClientHello). uvloop starts reading
            # right after connection_made whatever the protocol asked there, so they may already be here; they
            # go to the TLS layer first. The callback is queued before start_tls queues the TLS protocol's
            # connection_made and the transport's resume_reading, so the layer holds them in its incoming
            # buffer before the handshake starts and before any later byte (both loops' SSLProtocol keep bytes
            # that arrive before connection_made). STARTTLS never gets here with bytes: start_tls refused.
            early, self._buffer = bytes(self._buffer), bytearray()
            self._partial_since = None
            self._loop.call_soon(_replay, transport, early)
        try:
            new = await self._loop.start_tls(transport, self, ctx, server_side=True,
                                             ssl_handshake_timeout=handshake_timeout)
        except asyncio.CancelledError:
            transport.abort()
            self._mark_lost()
            raise
        except Exception as exc:  # ssl.SSLError, ConnectionResetError, handshake timeout, ...
            transport.abort()
            self._mark_lost()
            raise TLSFailed(describe_exception(exc)) from exc
        if new is None:
            self._mark_lost()
            raise TLSFailed("handshake did not complete")
        self._transport = new
        self._tls = True
        _share_read_buffer(transport.get_protocol())
        sslobj = new.get_extra_info("ssl_object")
        if sslobj is not None:
            self._tls_version = sslobj.version()
            cipher = sslobj.cipher()
            self._tls_cipher = cipher[0] if cipher else None

    # --- closing -------------------------------------------------------------------------------------------
    def abort(self) -> None:
        """Close at once, dropping unsent output."""
        self._closing = True
        if self._transport is not None and not self._lost:
            self._transport.abort()

    def close_soon(self) -> None:
        """Flush what was written, then close, without waiting."""
        if self._transport is not None and not self._closing and not self._lost:
            self._transport.close()
        self._closing = True

    async def close(self, timeout: float = 2.0) -> None:
        """Flush what was written and close; abort if that takes longer than `timeout` (a peer not reading,
        or not answering the TLS close_notify)."""
        if self._transport is None:
            return
        if not self._closing:
            self._closing = True
            if not self._lost:
                self._transport.close()
        if self._lost:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        except TimeoutError:
            self.abort()

    def __repr__(self) -> str:
        return (f"<Connection {self.session_id} {self.listener} peer={self.peer[0]}:{self.peer[1]}"
                f" tls={self._tls_version or 'no'}>")


_READ_BUFFERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, bytearray] = weakref.WeakKeyDictionary()
RECEIVE_SIZE = 256 * 1024  # bytes one read of a connection's transport takes at most (asyncio's own default)
_RECEIVE_BUFFERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, memoryview] = weakref.WeakKeyDictionary()


def _receive_buffer(loop: asyncio.AbstractEventLoop) -> memoryview:
    """The one receive buffer of every `Connection` of `loop` (invariant 13), made on first use.

    A transport that is not buffered reads with `sock.recv(256 KiB)`: a new 256 KiB bytes object for every read,
    shrunk to what arrived. glibc maps an allocation that large afresh (mmap, a page fault, mremap to shrink,
    munmap) until a free raises its threshold, and the reads of an SMTP session are a command line each:
    measured 1.6 of those triples per message during ingest (strace), and a read costing 24 us of CPU instead of
    4 (thread CPU, a 28-byte command over a socketpair). The loop runs one callback at a time and
    `buffer_updated` copies the bytes out before it returns, so every connection of a loop reads into one."""
    view = _RECEIVE_BUFFERS.get(loop)
    if view is None:
        view = _RECEIVE_BUFFERS[loop] = memoryview(bytearray(RECEIVE_SIZE))
    return view


def _share_read_buffer(proto: object) -> None:
    """Give the standard library's TLS layer (`asyncio.sslproto.SSLProtocol`, the protocol under the TLS
    transport) one read buffer per event loop instead of its own (invariant 9).

    Each SSLProtocol allocates (and zero-fills, so it is resident) a `max_size` (256 KiB) bytearray that the
    socket transport receives ciphertext into (`get_buffer`), and `buffer_updated` copies it into the TLS
    object's incoming BIO at once: the buffer holds nothing between two reads of the socket, and the loop runs
    one callback at a time, so every connection of a loop can share one. Measured: 279 KiB of PSS per idle
    IMAP session over implicit TLS before, bench/RESULTS.md. uvloop's layer (or another loop's) is left alone:
    it mallocs its buffer, and pages never written are not resident."""
    if not isinstance(proto, asyncio.sslproto.SSLProtocol):
        return
    own = getattr(proto, "_ssl_buffer", None)
    if not isinstance(own, bytearray) or not hasattr(proto, "_ssl_buffer_view"):
        return  # a Python whose layer changed shape: keep its own buffer
    loop = asyncio.get_running_loop()
    shared = _READ_BUFFERS.get(loop)
    if shared is None or len(shared) < len(own):
        shared = _READ_BUFFERS[loop] = bytearray(len(own))
    layer: Any = proto  # private attributes of the standard library's class (typeshed does not declare them)
    layer._ssl_buffer = shared
    layer._ssl_buffer_view = memoryview(shared)


def _replay(transport: asyncio.Transport, data: bytes) -> None:
    """Hand `data` to the protocol `transport` now feeds (the TLS layer start_tls put there), as the transport
    would have: through the BufferedProtocol calls, or data_received."""
    if transport.is_closing():
        return
    proto: typing.Any = transport.get_protocol()  # uvloop's SSLProtocol has the methods, not the base class
    if hasattr(proto, "buffer_updated"):
        view = memoryview(data)
        while view:
            buf = memoryview(proto.get_buffer(len(view)))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            proto.buffer_updated(n)
            view = view[n:]
    else:
        proto.data_received(data)
