"""The POP3 server core, sans I/O: bytes in, events out, reply bytes back. RFC 1939, 2449, 2595, 5034.

Theory of operation
-------------------
`POP3Core` never touches a socket, the store, the clock or a password. The session (`session.py`) feeds it
what the client sent (`receive_data`) and asks for the next thing to do (`next_event`). The answer is one of:

- `NEED_DATA`: no complete line is buffered; read more and feed it.
- `Send(chunks, close)`: a reply the core decided alone (every error, STAT, LIST, UIDL, DELE, RSET, NOOP, CAPA,
  the USER acknowledgement, QUIT in AUTHORIZATION). Write it; if `close`, end the session.
- `CheckPassword(user, password)`: PASS after USER. The session checks it and answers with `login_ok` /
  `login_failed`.
- `StartSasl(mechanism, initial)`: AUTH (RFC 5034). The core is now in SASL mode: each following line becomes a
  `SaslResponse(data)` (base64 already decoded) until the session calls `login_ok` / `login_failed`; `*`
  cancels (RFC 5034 §4) and the core answers that itself. The session sends challenges with `sasl_challenge`.
- `StartTls()`: STLS (RFC 2595 §4). The session checks that no plaintext was pipelined after it, answers
  `tls_go_ahead()` (or `tls_refused()`), upgrades, and calls `tls_started()`.
- `Retrieve(number, entry, lines)`: RETR (lines None) or TOP. The session reads the body and sends
  `message_reply(...)`, or `message_gone(number)` when another session removed it meanwhile.
- `Update(uids)`: QUIT in TRANSACTION (RFC 1939 §6): remove these UIDs in one durable transaction, then send
  `update_done()` (or `update_failed()`) and close.

Replies are built only here, so every wording, response code and RFC citation lives in one file.

The maildrop (RFC 1939 §4, §5) is the list of `Entry` handed to `login_ok`: fixed for the session, numbered
from 1, each with its size and its unique-id. DELE marks, RSET unmarks, only `Update` at QUIT removes. An
entry's size is the message's octets as RETR sends them (`store.blobs.crlf_size`: bare LFs sent as CRLF, a last
line ended; byte-stuffing and the terminator not counted), so LIST, STAT and the RETR reply agree with what
arrives (RFC 1939 §11).

Lines are read by the cores' one receive buffer (`net/receivebuffer.py`): a line may end in CRLF or a bare LF; a
line longer than the limit is answered with one `-ERR` as soon as the limit is crossed and its remainder is
dropped as it arrives, so the buffer never holds more than one line's limit plus what was fed at once.

Invariants
1. `next_event` returns at most one event per complete line, in the order the lines arrived (RFC 2449 §6.6
   PIPELINING: commands are answered in order, any number may be buffered).
2. A command is checked against `ALLOWED[verb]` (through `_COMMANDS`, the table built from it) for the current
   state before its handler runs; handlers never see a command in the wrong state.
3. Only `login_ok` enters TRANSACTION and only `Update` (QUIT in TRANSACTION) enters UPDATE; nothing is ever
   removed from the store because of anything but that event, so a dropped connection deletes nothing.
4. A deleted (marked) message is invisible to STAT, LIST, UIDL, RETR, TOP and DELE until RSET.
5. A protocol error (unknown command, bad syntax, wrong state, overlong line, failed login) counts towards
   `max_errors`; reaching it closes the session with one last `-ERR`. `-ERR no such message` does not count:
   it is an ordinary answer for a client racing its own bookkeeping.
6. No password or SASL payload is ever kept past the event that carries it, nor put in a reply.
7. `quick_retr` is a shortcut, never a second meaning: what it accepts (one whole canonical RETR line of a valid
   message, nothing buffered before it) gives the very event and state the line buffer and `_command` would;
   everything else, errors included, goes the usual way.
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from postroom.mime.lineends import crlf_size
from postroom.net.receivebuffer import NEED_DATA as NEED_DATA  # the one marker of the cores, re-exported
from postroom.net.receivebuffer import TOO_LONG, ReceiveBuffer
from postroom.net.receivebuffer import NeedData as _NeedData

# ---------------------------------------------------------------------------------------------------------
# States, events, options


class State(enum.Enum):
    """The session states of RFC 1939 §3 (and §6 UPDATE)."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"




class Entry(NamedTuple):
    """One message of the maildrop, as fixed at login (a tuple: made once per message at every login)."""

    uid: int
    size: int
    blob_id: str
    uidl: str  # RFC 1939 §7: 1-70 characters 0x21-0x7E, never reused for another message


@dataclass(frozen=True)
class Send:
    """Reply bytes the core decided alone (module doc); `close`: end the session after writing them."""

    chunks: tuple[bytes, ...]
    close: bool = False


@dataclass(frozen=True)
class CheckPassword:
    """USER and PASS were given (RFC 1939 §7): check them, then `login_ok` or `login_failed`."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class StartSasl:
    """AUTH (RFC 5034 §4) began: run the mechanism; `sasl_challenge`, then `login_ok` or `login_failed`."""

    mechanism: str  # upper case, one the core allowed
    initial: bytes | None = field(repr=False)  # RFC 5034 §4: None when the client sent no initial response


@dataclass(frozen=True)
class SaslResponse:
    """A client response of the running AUTH exchange, base64 already decoded (RFC 5034 §4)."""

    data: bytes = field(repr=False)


@dataclass(frozen=True)
class StartTls:
    """STLS (RFC 2595 §4): check for pipelined plaintext, then `tls_go_ahead` or `tls_refused`."""


class Retrieve(NamedTuple):
    """RETR or TOP (RFC 1939 §7) of message `number`: `message_reply`, or `message_gone` if it was removed meanwhile.
    (A tuple: one is made per message retrieved.)"""

    number: int
    entry: Entry
    lines: int | None  # None: RETR; else TOP with this many body lines


@dataclass(frozen=True)
class Update:
    """QUIT in TRANSACTION (RFC 1939 §6): remove these UIDs in one durable transaction, then `update_done` or
    `update_failed`."""

    uids: tuple[int, ...]


Event = _NeedData | Send | CheckPassword | StartSasl | SaslResponse | StartTls | Retrieve | Update


@dataclass(frozen=True)
class Options:
    """What this connection may offer. Built by the session from the config and the Authenticator."""

    user_without_tls: bool = False  # USER/PASS before TLS (auth.allow_plaintext)
    mechanisms_without_tls: tuple[str, ...] = ("SCRAM-SHA-256",)
    mechanisms_with_tls: tuple[str, ...] = ("PLAIN", "LOGIN", "SCRAM-SHA-256")
    stls: bool = True  # a TLS context exists for this listener
    tls: bool = False  # the connection is TLS already (implicit TLS listener)
    expire: str = ""  # RFC 2449 §6.7: "", "NEVER" or "0"
    login_delay: int = 0  # RFC 2449 §6.8: 0 = not advertised
    implementation: str = "Postroom"
    line_limit: int = 8192
    max_errors: int = 20
    hostname: str = "localhost"


# Commands and the states they are allowed in: RFC 1939 §4-§7, RFC 2449 §5 (CAPA in both), RFC 2595 §4 (STLS),
# RFC 5034 §4 (AUTH).
_A, _T = State.AUTHORIZATION, State.TRANSACTION
ALLOWED: dict[str, frozenset[State]] = {
    "CAPA": frozenset({_A, _T}),
    "QUIT": frozenset({_A, _T}),
    "USER": frozenset({_A}),
    "PASS": frozenset({_A}),
    "AUTH": frozenset({_A}),
    "STLS": frozenset({_A}),
    "STAT": frozenset({_T}),
    "LIST": frozenset({_T}),
    "RETR": frozenset({_T}),
    "DELE": frozenset({_T}),
    "NOOP": frozenset({_T}),
    "RSET": frozenset({_T}),
    "TOP": frozenset({_T}),
    "UIDL": frozenset({_T}),
}

OK = b"+OK"
TERMINATOR = b".\r\n"


def _line(text: str) -> bytes:
    return text.encode("utf-8") + b"\r\n"


def ok(text: str) -> bytes:
    """A `+OK text` status line (RFC 1939 §3), UTF-8, CRLF-ended."""
    return _line(f"+OK {text}" if text else "+OK")


def err(text: str) -> bytes:
    """An `-ERR text` status line (RFC 1939 §3), UTF-8, CRLF-ended."""
    return _line(f"-ERR {text}")


class _Error(Exception):
    """A handler's refusal: becomes one `-ERR` line. `counts`: a protocol error (invariant 5)."""

    def __init__(self, text: str, counts: bool = True) -> None:
        super().__init__(text)
        self.text = text
        self.counts = counts


# ---------------------------------------------------------------------------------------------------------
# Message formatting (pure functions: the hot path of RETR)

# A line that starts with "." (RFC 1939 §3 byte-stuffing), found by its LF: the regular expression engine looks
# for the LF with a plain byte loop and checks the byte after it, about twice as fast on mail text as
# `b"\n." in raw` (bytes' two-byte search: 0.4-0.9 against 1.0-1.2 ns a byte here, bench/RESULTS.md 2026-12-01),
# which is most of what RETR costs the core for a message that needs no stuffing.
_DOT_LINE = re.compile(rb"\n\.")


def dot_stuff(raw: bytes, canonical: bool = False) -> list[bytes]:
    """The stored bytes as a multi-line response body plus the terminator (RFC 1939 §3: a line starting with
    "." gets one more "."; the response ends with CRLF "." CRLF).

    Messages are stored with CRLF line ends; one with a bare LF (an IMAP APPEND may carry one) is sent with
    CRLF line ends so that no client mistakes one of its lines for the terminator. C-speed passes, no per-line
    Python loop: one search when the caller knows `raw` is `canonical` (its `crlf_size` is its length: no bare
    LF, and it ends with CRLF) and no line starts with "."; more only for a body that needs them.
    """
    if not canonical and raw.count(b"\n") != raw.count(b"\r\n"):
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    # Every LF is now preceded by CR, so LF "." finds the same lines as CRLF ".". Most messages have no such line,
    # so the search is the cost: see `_DOT_LINE`.
    body = raw.replace(b"\r\n.", b"\r\n..") if _DOT_LINE.search(raw) is not None else raw
    chunks = [b".", body] if body.startswith(b".") else [body]
    if body and not body.endswith(b"\r\n"):
        chunks.append(b"\r\n")
    chunks.append(TERMINATOR)
    return chunks


def top(raw: bytes, lines: int) -> bytes:
    """RFC 1939 §7 TOP: the header, the blank line after it, and the first `lines` lines of the body."""
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if raw.startswith(b"\r\n"):  # an empty header: the message starts with the blank line
        body_start = 2
    else:
        end = raw.find(b"\r\n\r\n")
        if end < 0:  # no body at all: the whole message is header
            return raw
        body_start = end + 4
    pos = body_start
    for _ in range(lines):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            return raw
        pos = nl + 1
    return raw[:pos]


def parse_number(arg: str) -> int | None:
    """A message number or TOP line count: decimal digits only, at most 9 (RFC 1939 §3 arguments are short;
    this also keeps int() away from 4300-digit strings)."""
    if not arg or len(arg) > 9 or not arg.isascii() or not arg.isdigit():
        return None
    return int(arg)


def make_uidl(uidvalidity: int, uid: int) -> str:
    """RFC 1939 §7 unique-id, stable forever: UIDVALIDITY and UID never name another message (store/api.py
    invariant 3), and INBOX keeps its UIDVALIDITY for its lifetime."""
    return f"{uidvalidity}.{uid}"


# ---------------------------------------------------------------------------------------------------------


class POP3Core:
    """One POP3 conversation's state and reply logic. See the module docstring."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.state = State.AUTHORIZATION
        self.tls = options.tls
        self.errors = 0
        self.closed = False
        self.quit = False  # the client said QUIT (for the session log)
        self.entries: list[Entry] = []
        self.deleted: set[int] = set()  # message numbers marked by DELE (1-based)
        self.retrieved: set[int] = set()  # message numbers sent whole by RETR
        self.username = ""
        self._in = ReceiveBuffer()  # net/receivebuffer.py
        self._pending_user: str | None = None  # set by USER, consumed by the very next command (RFC 1939 §7)
        self._sasl = False  # SASL mode: lines are responses, not commands
        self._waiting = False  # an event is with the session; no new command until it answers

    # --- greeting -------------------------------------------------------------------------------------
    def greeting(self) -> bytes:
        """The `+OK` greeting (RFC 1939 §4)."""
        # RFC 1939 §4: +OK greeting. No APOP timestamp: APOP needs the plaintext password kept on the server.
        return ok(f"{self.options.hostname} Postroom POP3 server ready")

    # --- input ----------------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Append bytes from the client (any split); never raises. Lines come out through `next_event`."""
        self._in.feed(data)

    @property
    def buffered(self) -> int:
        """Bytes fed and not consumed as lines yet (the session checks this before answering STLS)."""
        return len(self._in) + (1 if self._in.discarding else 0)

    @property
    def between_commands(self) -> bool:
        """Nothing of a next line has arrived and no exchange is in progress: a shutdown may interrupt."""
        return not self._in.data and not self._sasl and not self._in.discarding

    def next_event(self) -> Event:
        """The next thing to do (module doc), `NEED_DATA` when no complete line is buffered. Raises RuntimeError
        only for misuse: called again before the previous event was answered."""
        if self.closed:
            return Send((), close=True)
        if self._waiting:
            raise RuntimeError("the session has not answered the previous event")
        line = self._in.take_line(self.options.line_limit)
        if line is NEED_DATA:
            return NEED_DATA
        if line is TOO_LONG:
            self._sasl = False
            # RFC 2449 §4: commands are at most 255 octets; we allow `line_limit` and refuse longer ones.
            return self._error(_Error("line too long"))
        assert isinstance(line, bytes)
        line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if self._sasl:
            return self._sasl_line(line)
        try:
            return self._command(line)
        except _Error as exc:
            return self._error(exc)

    def quick_retr(self, data: bytes) -> Retrieve | None:
        """The `Retrieve` that `receive_data(data)` then `next_event()` would give, with the same effect on the
        core, when `data` is exactly one line "RETR n" CRLF (RFC 1939 §7; the verb in upper or lower case, n of
        1-9 ASCII digits naming a message that is not deleted) arriving in TRANSACTION with nothing buffered
        before it; else None, and nothing changed: the caller feeds `data` as usual. One RETR at a time is most
        of what a POP3 client sends: this answers it without the line buffer and the command table
        (invariant 7). Never raises."""
        # "RETR " + at most 9 digits (parse_number's bound) + CRLF: at most 16 bytes
        if (len(data) > 16 or not data.startswith((b"RETR ", b"retr ")) or not data.endswith(b"\r\n")
                or self.state is not State.TRANSACTION or self._in.data or self._in.discarding or self._sasl
                or self._waiting or self.closed or len(data) > self.options.line_limit):
            return None
        arg = data[5:-2]
        if not arg.isdigit():  # bytes.isdigit: ASCII digits only, and False for b"" (as parse_number)
            return None
        n = int(arg)
        if n < 1 or n > len(self.entries) or n in self.deleted:
            return None  # the usual path words the -ERR
        self._pending_user = None  # as `_command` (None already in TRANSACTION: USER is not allowed there)
        self._waiting = True
        return Retrieve(n, self.entries[n - 1], None)

    def _error(self, exc: _Error) -> Send:
        if exc.counts:
            self.errors += 1
            if self.errors >= self.options.max_errors:
                self.closed = True
                return Send((err("too many errors, closing connection"),), close=True)
        return Send((err(exc.text),))

    # --- commands -------------------------------------------------------------------------------------
    def _command(self, line: bytes) -> Event:
        verb_b, _, rest_b = line.partition(b" ")
        pending_user, self._pending_user = self._pending_user, None
        # Commands are case-insensitive (RFC 1939 §3); `_COMMANDS` is keyed by the upper-case verb, and only
        # ASCII letters change case, so a verb with any other byte is no key.
        known = _COMMANDS.get(verb_b) or _COMMANDS.get(verb_b.upper())
        if known is None:
            if verb_b.upper() == b"APOP":
                raise _Error("APOP is not offered; use USER/PASS or AUTH")
            raise _Error("unknown command")
        verb, allowed, handler = known
        if self.state not in allowed:  # invariant 2
            raise _Error(f"{verb} is not allowed in the {self.state.value.upper()} state")
        try:
            rest = rest_b.decode("utf-8")
        except UnicodeDecodeError:
            raise _Error("arguments are not valid UTF-8") from None
        if handler is None:  # PASS
            # RFC 1939 §7: PASS takes the rest of the line, spaces included; only valid right after USER.
            if pending_user is None:
                raise _Error("USER first")
            if not rest:
                raise _Error("PASS needs a password")
            self._waiting = True
            return CheckPassword(pending_user, rest)
        return handler(self, rest.split())

    def _no_args(self, verb: str, args: list[str]) -> None:
        if args:
            raise _Error(f"{verb} takes no arguments")

    def _message(self, arg: str) -> tuple[int, Entry]:
        n = parse_number(arg)
        if n is None or n < 1 or n > len(self.entries):
            raise _Error("no such message", counts=n is None)
        if n in self.deleted:
            raise _Error(f"message {n} is deleted", counts=False)
        return n, self.entries[n - 1]

    def _stat(self) -> tuple[int, int]:
        count = size = 0
        for i, e in enumerate(self.entries, 1):
            if i not in self.deleted:
                count += 1
                size += e.size
        return count, size

    def _cmd_capa(self, args: list[str]) -> Send:
        self._no_args("CAPA", args)
        return Send((ok("Capability list follows"), *(_line(c) for c in self.capabilities()), TERMINATOR))

    def capabilities(self) -> list[str]:
        """RFC 2449 §5/§6: only what works on this connection, in this state."""
        o = self.options
        caps = ["TOP", "UIDL"]
        if self.tls or o.user_without_tls:
            caps.append("USER")  # RFC 2449 §6.3; RFC 2595 §4: may be withheld until TLS
        mechs = self._mechanisms()
        if mechs:
            caps.append("SASL " + " ".join(mechs))  # RFC 2449 §6.3 / RFC 5034 §3
        if o.stls and not self.tls and self.state is State.AUTHORIZATION:
            caps.append("STLS")  # RFC 2595 §4
        caps += ["RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]  # RFC 2449 §6.4, RFC 3206 §6, RFC 2449 §6.6
        if o.expire:
            caps.append(f"EXPIRE {o.expire}")  # RFC 2449 §6.7
        if o.login_delay:
            caps.append(f"LOGIN-DELAY {o.login_delay}")  # RFC 2449 §6.8
        caps.append(f"IMPLEMENTATION {o.implementation}")  # RFC 2449 §6.9
        return caps

    def _mechanisms(self) -> tuple[str, ...]:
        return self.options.mechanisms_with_tls if self.tls else self.options.mechanisms_without_tls

    def _cmd_quit(self, args: list[str]) -> Event:
        self._no_args("QUIT", args)
        self.quit = True
        if self.state is State.AUTHORIZATION:
            self.closed = True  # RFC 1939 §4: QUIT in AUTHORIZATION does not enter UPDATE
            return Send((ok(f"{self.options.hostname} POP3 server signing off"),), close=True)
        self.state = State.UPDATE  # RFC 1939 §6
        self._waiting = True
        uids = {self.entries[n - 1].uid for n in self.deleted}
        if self.options.expire == "0":
            uids |= {self.entries[n - 1].uid for n in self.retrieved}  # RFC 2449 §6.7: EXPIRE 0
        return Update(tuple(sorted(uids)))

    def _cmd_user(self, args: list[str]) -> Send:
        if not (self.tls or self.options.user_without_tls):
            # RFC 2595 §4 lets a server refuse plaintext logins until STLS; RFC 3206 [AUTH] tells the client
            # that retrying the same way will not help.
            raise _Error("[AUTH] Plaintext authentication is not allowed without TLS (use STLS or port 995)")
        if len(args) != 1:
            raise _Error("USER needs one argument: the mailbox name")
        self._pending_user = args[0]
        return Send((ok("send PASS"),))

    def _cmd_auth(self, args: list[str]) -> Event:
        if not args:
            # Not in RFC 5034, but what RFC 1734-era clients (Outlook) send to list the mechanisms; harmless.
            return Send((ok("mechanisms follow"), *(_line(m) for m in self._mechanisms()), TERMINATOR))
        if len(args) > 2:
            raise _Error("AUTH takes a mechanism and an optional initial response")
        mech = args[0].upper()
        if mech not in self._mechanisms():
            if mech in self.options.mechanisms_with_tls and not self.tls:
                raise _Error(f"[AUTH] {mech} is not allowed without TLS (use STLS or port 995)")
            raise _Error(f"unsupported mechanism {args[0][:40]}")
        initial: bytes | None = None
        if len(args) == 2:
            # RFC 5034 §4: "=" is an empty initial response.
            initial = b"" if args[1] == "=" else _b64(args[1])
            if initial is None:
                raise _Error("initial response is not valid base64")
        self._sasl = True
        self._waiting = True
        return StartSasl(mech, initial)

    def _cmd_stls(self, args: list[str]) -> Event:
        self._no_args("STLS", args)
        if self.tls:
            raise _Error("TLS is already active")  # RFC 2595 §4
        if not self.options.stls:
            raise _Error("STLS is not available here")
        self._waiting = True
        return StartTls()

    def _cmd_stat(self, args: list[str]) -> Send:
        self._no_args("STAT", args)
        count, size = self._stat()
        return Send((ok(f"{count} {size}"),))  # RFC 1939 §5: drop listing "nn mm"

    def _cmd_list(self, args: list[str]) -> Send:
        if len(args) > 1:
            raise _Error("LIST takes at most one argument")
        if args:
            n, e = self._message(args[0])
            return Send((ok(f"{n} {e.size}"),))
        count, size = self._stat()
        lines = [f"{i} {e.size}\r\n".encode() for i, e in enumerate(self.entries, 1) if i not in self.deleted]
        return Send((ok(f"{count} messages ({size} octets)"), b"".join(lines), TERMINATOR))

    def _cmd_uidl(self, args: list[str]) -> Send:
        if len(args) > 1:
            raise _Error("UIDL takes at most one argument")
        if args:
            n, e = self._message(args[0])
            return Send((ok(f"{n} {e.uidl}"),))
        lines = [f"{i} {e.uidl}\r\n".encode() for i, e in enumerate(self.entries, 1) if i not in self.deleted]
        return Send((ok("unique-id listing follows"), b"".join(lines), TERMINATOR))

    def _cmd_retr(self, args: list[str]) -> Event:
        if len(args) != 1:
            raise _Error("RETR needs one argument: a message number")
        n, e = self._message(args[0])
        self._waiting = True
        return Retrieve(n, e, None)

    def _cmd_top(self, args: list[str]) -> Event:
        if len(args) != 2:
            raise _Error("TOP needs two arguments: a message number and a number of lines")
        lines = parse_number(args[1])
        if lines is None:
            raise _Error("TOP needs a non-negative number of lines")
        n, e = self._message(args[0])
        self._waiting = True
        return Retrieve(n, e, lines)

    def _cmd_dele(self, args: list[str]) -> Send:
        if len(args) != 1:
            raise _Error("DELE needs one argument: a message number")
        n = parse_number(args[0])
        if n is not None and n in self.deleted and n <= len(self.entries):
            raise _Error(f"message {n} already deleted", counts=False)  # RFC 1939 §5 example
        n, _ = self._message(args[0])
        self.deleted.add(n)
        return Send((ok(f"message {n} deleted"),))

    def _cmd_noop(self, args: list[str]) -> Send:
        self._no_args("NOOP", args)
        return Send((ok(""),))

    def _cmd_rset(self, args: list[str]) -> Send:
        self._no_args("RSET", args)
        self.deleted.clear()  # RFC 1939 §5: unmark every message marked as deleted
        count, size = self._stat()
        return Send((ok(f"maildrop has {count} messages ({size} octets)"),))

    def read_ahead(self, number: int, max_count: int, max_octets: int, sequential: bool = False) -> list[Entry]:
        """The messages worth reading together with message `number` that a RETR/TOP is about to send, in order,
        without consuming anything (the session reads their bodies in one store call, RFC 2449 §6.6
        PIPELINING): first those that complete RETR/TOP lines already buffered will ask for (at most
        4 x `max_count` lines are looked at), then, if `sequential` (the client has been going through the
        maildrop in order), the messages after the last of them. Deleted messages, numbers out of range, lines
        that will fail and repeats are left out; at most `max_count` entries of at most `max_octets` in all
        (sizes from the listing). The work is bounded by `max_count`, not by the maildrop or the buffer. The
        replies are still produced by `next_event` alone."""
        if self.state is not State.TRANSACTION or self._sasl or max_count <= 0:
            return []
        entries, deleted = self.entries, self.deleted
        out: list[Entry] = []
        seen = {number}
        octets = 0
        last = number
        buf = self._in.data
        pos = 0
        for _ in range(4 * max_count):
            nl = buf.find(b"\n", pos, pos + 64)
            if nl < 0:
                break
            words = bytes(buf[pos:nl]).split()
            pos = nl + 1
            if len(words) >= 2 and words[0].upper() in (b"RETR", b"TOP"):
                n = parse_number(words[1].decode("ascii", "replace"))
                if n is None or not 1 <= n <= len(entries) or n in deleted or n in seen:
                    continue
                octets += entries[n - 1].size
                if octets > max_octets:
                    return out
                out.append(entries[n - 1])
                seen.add(n)
                last = n
                if len(out) >= max_count:
                    return out
        if sequential:
            for n in range(last + 1, min(len(entries), last + 4 * max_count) + 1):  # bounded, deleted or not
                if len(out) >= max_count:
                    break
                if n in deleted or n in seen:
                    continue
                octets += entries[n - 1].size
                if octets > max_octets:
                    break
                out.append(entries[n - 1])
        return out

    # --- SASL -----------------------------------------------------------------------------------------
    def _sasl_line(self, line: bytes) -> Event:
        if line == b"*":  # RFC 5034 §4: the client cancels; the server MUST reject the AUTH command
            self._end_sasl()
            return Send((err("authentication cancelled"),))
        data = b"" if not line else _b64(line.decode("ascii", "replace"))
        if data is None:
            self._end_sasl()
            return self._error(_Error("response is not valid base64; authentication aborted"))
        self._waiting = True
        return SaslResponse(data)

    def _end_sasl(self) -> None:
        self._sasl = False
        self._waiting = False

    def sasl_challenge(self, data: bytes) -> bytes:
        """RFC 5034 §4: "+" SP base64 challenge. Also carries SCRAM's server-final-message ("additional data
        with success" is sent as a challenge, answered by an empty response)."""
        self._waiting = False
        return b"+ " + base64.b64encode(data) + b"\r\n"

    # --- answers from the session ---------------------------------------------------------------------
    def login_ok(self, username: str, entries: Sequence[Entry]) -> bytes:
        """The user is authenticated, the maildrop locked and listed: enter TRANSACTION (RFC 1939 §4)."""
        self._end_sasl()
        self._waiting = False
        self.state = State.TRANSACTION
        self.username = username
        self.entries = list(entries)
        self.deleted.clear()
        self.retrieved.clear()
        count, size = self._stat()
        return ok(f"{username} has {count} messages ({size} octets)")

    def login_failed(self, code: str = "AUTH", text: str = "Authentication failed") -> bytes:
        """Stay in AUTHORIZATION. `code`: a RFC 2449 §8 / RFC 3206 response code (AUTH, IN-USE, LOGIN-DELAY,
        SYS/TEMP); only credential failures ([AUTH]) count as protocol errors."""
        self._end_sasl()
        self._waiting = False
        reply = err(f"[{code}] {text}" if code else text)
        if code == "AUTH":
            self.errors += 1
            if self.errors >= self.options.max_errors:
                self.closed = True  # invariant 5: this -ERR is the last reply
        return reply

    def tls_go_ahead(self) -> bytes:
        """The `+OK` that lets the client start the TLS handshake (RFC 2595 §4); `tls_started` follows it."""
        return ok("Begin TLS negotiation")

    def tls_refused(self, text: str = "plaintext sent after STLS; TLS not started") -> bytes:
        """The `-ERR` for an STLS refused (pipelined plaintext, CVE-2011-0411); counts as an error (invariant 5)."""
        self._waiting = False
        return self._error(_Error(text)).chunks[0]

    def tls_started(self) -> None:
        """RFC 2595 §4: TLS is on; the client must ask CAPA again and we answer with the TLS capabilities."""
        self._waiting = False
        self.tls = True
        self._in.clear()  # nothing read before the handshake is trusted (CVE-2011-0411)

    def message_reply(self, number: int, raw: bytes, lines: int | None) -> list[bytes]:
        """RETR (lines None) or TOP: "+OK", the dot-stuffed bytes, the terminator (RFC 1939 §5, §7)."""
        self._waiting = False
        if lines is None:
            self.retrieved.add(number)
            # RFC 1939 §11: the count is of the message as sent (CRLF line ends), the same number LIST gave:
            # the listing's, counted when the body was stored. When it equals the length, the body is already
            # canonical and needs no line-end pass (`dot_stuff`); any other count is made again from the bytes.
            listed = self.entries[number - 1].size if 0 < number <= len(self.entries) else -1
            if (listed == len(raw) and raw.endswith(b"\r\n") and raw[:1] != b"."
                    and _DOT_LINE.search(raw) is None):
                # canonical and no line to stuff: `dot_stuff`'s answer without its steps. The last line end is
                # checked, not trusted to the listing, so the terminator stays a line of its own whatever the
                # listing says (tests/fuzz: a listed size that matches a body with bare LFs).
                return [b"+OK %d octets\r\n" % listed, raw, TERMINATOR]  # = ok(...)
            octets = listed if listed == len(raw) else crlf_size(raw)
            return [b"+OK %d octets\r\n" % octets, *dot_stuff(raw, canonical=octets == len(raw))]  # = ok(...)
        return [ok("top of message follows"), *dot_stuff(top(raw, lines))]

    def message_gone(self, number: int) -> bytes:
        """The message was removed by another session (IMAP EXPUNGE) after our listing was made."""
        self._waiting = False
        return err(f"message {number} was removed by another session")

    def update_done(self, removed: int) -> bytes:
        """The `+OK` sign-off after the UPDATE removed `removed` messages (RFC 1939 §6); the session closes."""
        self._waiting = False
        self.closed = True
        count = len(self.entries) - removed
        return ok(f"{self.options.hostname} POP3 server signing off ({count} messages left)")

    def update_failed(self) -> bytes:
        """The `-ERR [SYS/TEMP]` sign-off when the removal failed (RFC 1939 §6, RFC 3206 §4); the session closes."""
        self._waiting = False
        self.closed = True
        # RFC 1939 §6: "-ERR some deleted messages not removed"; RFC 3206 §4 [SYS/TEMP].
        return err("[SYS/TEMP] some deleted messages not removed")

    def unavailable(self) -> bytes:
        """The store cannot be reached now (`StoreUnavailable`): `-ERR [SYS/TEMP]` (RFC 3206 §4: "a temporary
        system error"; the client may try again), the session stays in its state, as for `internal_error`."""
        self._end_sasl()
        return err("[SYS/TEMP] the mail store is unavailable, try again later")

    def internal_error(self) -> bytes:
        """The session's handler failed unexpectedly: answer, stay in the same state (STYLE habit 4)."""
        self._end_sasl()
        return err("[SYS/TEMP] internal error, try again")


_Handler = Callable[[POP3Core, list[str]], Event]

# The upper-case verb -> (its name, the states it is allowed in, its handler; None: PASS, which takes the rest
# of the line): `ALLOWED` and the `_cmd_` methods, looked up once here instead of at every command. The states
# are a tuple: `in` finds a member by identity, without calling `Enum.__hash__` (a Python function) as a
# frozenset's lookup does.
_COMMANDS: dict[bytes, tuple[str, tuple[State, ...], _Handler | None]] = {
    verb.encode("ascii"): (verb, tuple(sorted(states, key=lambda st: st.value)),
                           None if verb == "PASS" else getattr(POP3Core, "_cmd_" + verb.lower()))
    for verb, states in ALLOWED.items()
}


def _b64(text: str | bytes) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
