"""The sans-I/O SMTP server core: bytes in, events and reply bytes out (RFC 5321 with ESMTP extensions).

Theory of operation
-------------------
`ServerCore` never touches a socket, the store or the clock (STYLE habit 1; h11 is the model). The session
feeds it whatever arrived (`receive_data`) and pulls events (`next_event`) until `NEED_DATA`; then it writes
`data_to_send()` and reads again. Writing only when the core needs more input is exactly what RFC 2920 §3.1
asks of a pipelining server: replies go out in order, and a whole pipelined batch read at once is answered with
one write.

The core has four modes, switched only by the core itself (STYLE habit 2):

    COMMAND  lines up to `line_length` (RFC 5321 §4.5.3.1.4); bare LF is accepted as a command terminator
    DATA     after `354`: the message up to CRLF.CRLF, found with bytes.find, unstuffed (RFC 5321 §4.5.2) and
             checked a piece of whole lines (`DATA_PIECE`) at a time; a bare CR or LF or a NUL anywhere refuses
             the message (SMTP smuggling; `mime.lineends`)
    BDAT     exactly n octets, no unstuffing (RFC 3030 §2), the same checks across chunks (BINARYMIME is not
             offered, so BDAT carries 7bit or 8bit lines, RFC 3030 §3)
    SASL     one base64 line per step of an AUTH exchange, "*" cancels (RFC 4954 §4)

What needs no knowledge of the world is answered by the core itself: syntax errors (500/501/555), bad sequence
(503), HELO/EHLO, NOOP, RSET, HELP, QUIT, the 354 that starts DATA, BDAT chunk acknowledgements, limits
(recipients 452 4.5.3, size 552 5.3.4). What needs the world becomes an event the session must answer before it
asks for the next one: `MailFrom` -> `accept_mail()` or `send(error)`; `RcptTo` -> `accept_rcpt()` or
`send(error)`; `Message` -> `message_done(reply)`; `BodyData` and `BodyDiscarded` need no answer (write the piece
to the staging file / drop the file); `StartTLS` -> `tls_started()` (after its own 220 via
`send`); `AuthStart`/`AuthResponse` -> `auth_challenge()` or `auth_done()`; `Verify`/`Expand` -> `send()`.

State rules are data (`ALLOWED`): the session state is INIT (no HELO yet), READY, MAIL (sender given) or RCPT
(at least one recipient accepted). A command outside its states gets the 503 named in `SEQUENCE_ERRORS`.

Invariants
1. Replies are emitted in the order of the commands that caused them, one reply per command (RFC 2920 §3.1),
   including a BDAT whose chunk is refused: the chunk is read and dropped, then the error is sent (RFC 3030 §2).
   Any chunk-size of ASCII digits is taken (leading zeros too); only a BDAT line with no readable size (501,
   or past `line_length`: 500) leaves its chunk to be read as commands, and no conforming client sends one.
2. The core never buffers more than `line_length` bytes of a command line, `12288` of a SASL line (RFC 4954 §4),
   about `DATA_PIECE` plus what one `receive_data` brought of unread DATA, and `spill_at` of a body: past it the
   body goes out as `BodyData` events (the session writes them to a staging file). Past `max_size` a body is
   counted and dropped as it arrives, never kept, and answered 552 5.3.4 at its end (RFC 1870 §6). A body
   that fails after some of it went out is followed by one `BodyDiscarded`.
3. A DATA message ends only at CRLF "." CRLF. Any CR not followed by LF, LF not preceded by CR, or NUL, in
   DATA or BDAT, refuses the whole message (550 5.6.0): a message cannot hide a second, smuggled one
   (CVE-2023-51766 family) nor carry one onwards (`mime.lineends`).
4. Every error reply (4xx/5xx) counts towards `max_errors`; reaching it sends 421 4.7.0 and the core closes.
5. After `tls_started()` the core forgets everything the client said before (RFC 3207 §4.2): back to INIT.
6. While an event awaits its answer, `next_event` refuses to run (RuntimeError): replies cannot be reordered.
"""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, field

from postroom.mime.lineends import NUL, Checker
from postroom.net.receivebuffer import NEED_DATA as NEED_DATA  # the one marker of the cores, re-exported
from postroom.net.receivebuffer import TOO_LONG, ReceiveBuffer
from postroom.net.receivebuffer import NeedData as _NeedData

from . import replies as R
from .replies import SMTPError
from .syntax import PathError, Reply, dot_unstuff, parse_params, parse_path, valid_xtext

# ---------------------------------------------------------------------------------------------------------
# Events




@dataclass(frozen=True)
class MailParams:
    size: int | None = None  # RFC 1870 SIZE=
    body: str = ""  # RFC 6152 BODY=7BIT|8BITMIME
    smtputf8: bool = False  # RFC 6531 §3.4
    ret: str = ""  # RFC 3461 §4.3 RET=FULL|HDRS
    envid: str = ""  # RFC 3461 §4.4 ENVID=, xtext as given
    auth: str = ""  # RFC 4954 §5 AUTH=, as given (not trusted)


@dataclass(frozen=True)
class Recipient:
    address: str
    orcpt: str = ""  # RFC 3461 §4.2 ORCPT=, "addr-type;xtext" as given
    notify: str = ""  # RFC 3461 §4.1 NOTIFY=, upper-case


@dataclass(frozen=True)
class MailFrom:
    address: str  # "" for the null reverse-path
    params: MailParams


@dataclass(frozen=True)
class RcptTo:
    recipient: Recipient


@dataclass(frozen=True)
class Message:
    """A complete message: its (unstuffed) bytes and the envelope of the transaction."""

    raw: bytes
    mail_from: str
    params: MailParams
    recipients: tuple[Recipient, ...]
    chunked: bool  # arrived with BDAT
    spilled: bool = False  # the body's first bytes went out as BodyData events; `raw` is only the rest
    size: int = -1  # octets of the whole message (BodyData pieces and raw); -1: len(raw)


@dataclass(frozen=True)
class BodyData:
    """The next piece of the message being received (unstuffed), once it is past the core's `spill_at`: the
    session appends it to its staging file. No answer is expected. The `Message` that ends the body carries
    only the bytes after the last `BodyData` (`Message.spilled` tells the session to use its file)."""

    data: bytes | bytearray  # handed over, not copied: the core never touches it again


@dataclass(frozen=True)
class BodyDiscarded:
    """The body whose pieces went out as `BodyData` will not become a message (too big, stray CR/LF/NUL,
    RSET, EHLO, an error in a BDAT chunk): the session drops its staging file. No answer is expected."""


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class AuthStart:
    mechanism: str  # upper-case
    initial: bytes | None  # decoded initial response; None if the client sent none


@dataclass(frozen=True)
class AuthResponse:
    data: bytes


@dataclass(frozen=True)
class AuthAborted:
    """The client cancelled ("*") or sent bad base64; the core has already replied 501."""


@dataclass(frozen=True)
class Verify:
    argument: str


@dataclass(frozen=True)
class Expand:
    argument: str


@dataclass(frozen=True)
class Closed:
    """The session is over: the core has queued its last reply (221 or 421). Flush and close."""

    reason: str  # "quit" | "errors"


Event = (MailFrom | RcptTo | Message | BodyData | BodyDiscarded | StartTLS | AuthStart | AuthResponse
         | AuthAborted | Verify | Expand | Closed)


# ---------------------------------------------------------------------------------------------------------
# States and their rules (STYLE habit 3)


class State(enum.Enum):
    INIT = "init"  # greeted, no HELO/EHLO yet
    READY = "ready"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted


class Mode(enum.Enum):
    COMMAND = "command"
    DATA = "data"
    BDAT = "bdat"
    SASL = "sasl"


_ALL = frozenset(State)
ALLOWED: dict[str, frozenset[State]] = {
    "HELO": _ALL, "EHLO": _ALL, "NOOP": _ALL, "RSET": _ALL, "QUIT": _ALL, "HELP": _ALL, "VRFY": _ALL,
    "EXPN": _ALL,
    "MAIL": frozenset({State.READY}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.RCPT}),
    "BDAT": frozenset({State.RCPT}),
    "STARTTLS": frozenset({State.READY}),
    "AUTH": frozenset({State.READY}),
}
SEQUENCE_ERRORS: dict[tuple[str, State], Reply] = {
    ("MAIL", State.INIT): R.R503_HELO_FIRST,
    ("MAIL", State.MAIL): R.R503_NESTED_MAIL,
    ("MAIL", State.RCPT): R.R503_NESTED_MAIL,
    ("RCPT", State.INIT): R.R503_MAIL_FIRST,
    ("RCPT", State.READY): R.R503_MAIL_FIRST,
    ("DATA", State.INIT): R.R503_MAIL_FIRST,
    ("DATA", State.READY): R.R503_MAIL_FIRST,
    ("DATA", State.MAIL): R.R554_NO_VALID_RCPTS,  # RFC 5321 §3.3: 503 or 554 when no RCPT succeeded
    ("BDAT", State.INIT): R.R503_MAIL_FIRST,
    ("BDAT", State.READY): R.R503_MAIL_FIRST,
    ("BDAT", State.MAIL): R.R554_NO_VALID_RCPTS,
    ("STARTTLS", State.INIT): R.R503_EHLO_FIRST,
    ("STARTTLS", State.MAIL): R.R503_IN_TRANSACTION,
    ("STARTTLS", State.RCPT): R.R503_IN_TRANSACTION,
    ("AUTH", State.INIT): R.R503_EHLO_FIRST,
    ("AUTH", State.MAIL): R.R503_IN_TRANSACTION,  # RFC 4954 §4: not during a mail transaction
    ("AUTH", State.RCPT): R.R503_IN_TRANSACTION,
}

SASL_LINE_LIMIT = 12288  # RFC 4954 §4: at least 12288 octets for an AUTH line
MAX_RECEIVED_DIGITS = 20  # BDAT / SIZE numbers longer than this are nonsense
DATA_PIECE = 64 * 1024  # DATA is unstuffed and checked in pieces of about this many bytes (invariant 2)


@dataclass
class Transaction:
    mail_from: str
    params: MailParams
    recipients: list[Recipient] = field(default_factory=list)
    chunked: bool = False
    failed: Reply | None = None  # a BDAT chunk failed: later chunks get this until LAST / RSET


# ---------------------------------------------------------------------------------------------------------


class ServerCore:
    """One SMTP server session's protocol state. See the module doc for the contract."""

    def __init__(self, hostname: str, *, max_size: int, max_recipients: int, line_length: int = 8192,
                 max_errors: int = 20, spill_at: int = 0) -> None:
        self.hostname = hostname
        self.max_size = max_size
        self.spill_at = spill_at  # body bytes held before they go out as BodyData events; 0: never (invariant 2)
        self.max_recipients = max_recipients
        self.line_length = line_length
        self.max_errors = max_errors
        # Set by the session (policy): what EHLO advertises and what AUTH may use.
        self.starttls_available = False
        self.auth_mechanisms: tuple[str, ...] = ()
        self.auth_refusal: Reply = R.R502_NOT_IMPLEMENTED  # AUTH answer when no mechanism is offered

        self.state = State.INIT
        self.mode = Mode.COMMAND
        self.helo = ""
        self.esmtp = False
        self.tls = False
        self.authenticated = ""  # the user's address once AUTH succeeded
        self.txn: Transaction | None = None
        self.errors = 0
        self.closed = False
        self._close_reason = "closed"
        self.messages = 0

        self._in = ReceiveBuffer()  # net/receivebuffer.py: lines, BDAT chunks; DATA is scanned in `_in.data`
        self._out: list[bytes] = []
        self._awaiting: type | None = None  # invariant 6
        self._pending_mail: MailFrom | None = None
        # The body of the transaction (DATA or BDAT chunks), unstuffed
        self._body = bytearray()  # bytes not yet handed out as BodyData
        self._body_size = 0  # octets so far, handed out or not
        self._spilled = False  # some went out as BodyData
        self._discard_pending = False  # a BodyDiscarded event is due
        self._body_fault: Reply | None = None  # too big or stray CR/LF/NUL: the rest is counted, not kept
        self._lines = Checker()
        # DATA mode
        self._line_start = True  # the unread data starts a line (so "." CRLF there ends the data)
        # BDAT mode
        self._bdat_left = 0
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_error: Reply | None = None

    # --- I/O surface -------------------------------------------------------------------------------------
    def greet(self) -> None:
        self._emit(R.greeting(self.hostname))

    def receive_data(self, data: bytes) -> None:
        self._in.feed(data)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def pending_input(self) -> int:
        """Bytes received and not consumed (plaintext after STARTTLS shows up here: see the session)."""
        return len(self._in)

    @property
    def held_bytes(self) -> int:
        """Bytes of client input the core holds: unread input plus the body not yet handed out (invariant 2)."""
        return len(self._in) + len(self._body)

    def send(self, reply: Reply) -> None:
        """Queue a reply (the answer to an event, or an error the session decided). Counts errors (inv. 4)."""
        self._awaiting = None
        if self.mode is Mode.SASL:
            self.mode = Mode.COMMAND
        self._emit(reply)

    def _emit(self, reply: Reply) -> None:
        if self.closed:
            return
        self._out.append(reply.to_bytes())
        if reply.is_error and reply.code != 421:
            self.errors += 1
            if self.errors >= self.max_errors:
                self._out.append(R.R421_TOO_MANY_ERRORS.to_bytes())
                self.closed = True
                self._close_reason = "errors"

    def close_with(self, reply: Reply) -> None:
        """End the session with this reply (idle timeout, shutdown)."""
        self._awaiting = None
        self._out.append(reply.to_bytes())
        self.closed = True

    # --- answers to events -----------------------------------------------------------------------------------
    def accept_mail(self) -> None:
        assert self._pending_mail is not None
        self.txn = Transaction(self._pending_mail.address, self._pending_mail.params)
        self._pending_mail = None
        self.state = State.MAIL
        self.send(R.R250_SENDER_OK)

    def accept_rcpt(self, recipient: Recipient) -> None:
        assert self.txn is not None
        self.txn.recipients.append(recipient)
        self.state = State.RCPT
        self.send(R.R250_RCPT_OK)

    def message_done(self, reply: Reply) -> None:
        """The answer to a `Message`: 250 once durable, or the error. The transaction ends either way."""
        if reply.code < 400:
            self.messages += 1
        self._end_transaction()
        self.send(reply)

    def auth_challenge(self, challenge: bytes) -> None:
        # RFC 4954 §4: "334" SP base64 challenge; an intermediate reply with no enhanced code.
        self._awaiting = None
        self.mode = Mode.SASL
        self._out.append(b"334 " + base64.b64encode(challenge) + b"\r\n")

    def auth_done(self, reply: Reply, user: str = "") -> None:
        self.mode = Mode.COMMAND
        if user and reply.code == 235:
            self.authenticated = user
        self.send(reply)

    def tls_started(self) -> None:
        """TLS is up: forget the pre-TLS dialogue (invariant 5, RFC 3207 §4.2)."""
        self._awaiting = None
        self.tls = True
        self.starttls_available = False
        self.state = State.INIT
        self.helo = ""
        self.esmtp = False
        self.txn = None
        self._drop_body()
        self._in.clear()

    # --- the reader ------------------------------------------------------------------------------------------
    def next_event(self) -> Event | _NeedData:
        if self._awaiting is not None:
            raise RuntimeError(f"the session must answer the pending {self._awaiting.__name__} first")
        while True:
            if self._discard_pending:
                self._discard_pending = False
                return BodyDiscarded()
            if self.closed:
                return Closed(self._close_reason)
            if self.mode is Mode.DATA:
                ev = self._data()
            elif self.mode is Mode.BDAT:
                ev = self._bdat()
            else:
                limit = SASL_LINE_LIMIT if self.mode is Mode.SASL else self.line_length
                line = self._line(limit)
                if line is None:
                    return NEED_DATA
                if isinstance(line, Reply):
                    if self.mode is Mode.SASL:
                        self.mode = Mode.COMMAND
                        self._emit(R.R500_AUTH_LINE_TOO_LONG)
                        ev = AuthAborted()
                    else:
                        self._emit(line)
                        continue
                elif self.mode is Mode.SASL:
                    ev = self._sasl(line)
                else:
                    ev = self._command(line)
            if ev is NEED_DATA:
                return NEED_DATA
            if ev is not None:
                assert not isinstance(ev, _NeedData)
                if not isinstance(ev, (AuthAborted, Closed, BodyData, BodyDiscarded)):
                    self._awaiting = type(ev)
                return ev

    def _line(self, limit: int) -> bytes | Reply | None:
        line = self._in.take_line(limit)
        if line is NEED_DATA:
            return None
        if line is TOO_LONG:
            return R.R500_LINE_TOO_LONG  # RFC 5321 §4.5.3.1.4: 500 for the overlong line, dropped up to its LF
        assert isinstance(line, bytes)
        return line.rstrip(b"\n").removesuffix(b"\r")

    # --- commands --------------------------------------------------------------------------------------------
    def _command(self, line: bytes) -> Event | _NeedData | None:
        try:
            return self._dispatch(line)
        except SMTPError as exc:
            self._emit(exc.reply)
            return None

    def _dispatch(self, line: bytes) -> Event | _NeedData | None:
        if b"\x00" in line:
            raise SMTPError(R.R500_NUL)
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise SMTPError(R.R500_UNKNOWN) from None
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if verb not in ALLOWED:
            raise SMTPError(R.R500_UNKNOWN)
        if self.state not in ALLOWED[verb]:
            if verb == "BDAT":
                return self._bdat_start(arg, SEQUENCE_ERRORS[(verb, self.state)])
            raise SMTPError(SEQUENCE_ERRORS[(verb, self.state)])
        handler = getattr(self, "_cmd_" + verb.lower())
        result: Event | None = handler(arg)
        return result

    def _cmd_helo(self, arg: str) -> None:
        self._hello(arg, esmtp=False)

    def _cmd_ehlo(self, arg: str) -> None:
        self._hello(arg, esmtp=True)

    def _hello(self, arg: str, esmtp: bool) -> None:
        domain = arg.strip()
        if not domain or " " in domain or any(ord(c) < 33 or ord(c) == 127 for c in domain):
            raise SMTPError(R.R501_HELO_DOMAIN)
        # RFC 5321 §4.1.4: EHLO/HELO in mid-transaction resets it, as RSET would.
        self._end_transaction()
        self.state = State.READY
        self.helo = domain
        self.esmtp = esmtp
        first = f"{self.hostname} Hello {domain}"
        if not esmtp:
            self._emit(Reply(250, "", (first,)))
            return
        lines = [first, "PIPELINING", f"SIZE {self.max_size}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                 "CHUNKING", "DSN"]
        if self.starttls_available and not self.tls:
            lines.append("STARTTLS")
        if self.auth_mechanisms and not self.authenticated:
            lines.append("AUTH " + " ".join(self.auth_mechanisms))
        lines.append("HELP")
        self._emit(Reply(250, "", tuple(lines)))

    def _cmd_noop(self, arg: str) -> None:
        self._emit(R.R250_OK)  # RFC 5321 §4.1.1.9: a parameter may be given and is ignored

    def _cmd_rset(self, arg: str) -> None:
        if arg.strip():
            raise SMTPError(R.R501_NO_ARGS)
        self._end_transaction()
        self._emit(R.R250_RESET)

    def _cmd_quit(self, arg: str) -> Closed:
        self._emit(R.R221_BYE)  # RFC 5321 §4.1.1.10
        self.closed = True
        self._close_reason = "quit"
        return Closed("quit")

    def _cmd_help(self, arg: str) -> None:
        self._emit(R.R214_HELP)

    def _cmd_vrfy(self, arg: str) -> Verify:
        if not arg.strip():
            raise SMTPError(R.R501_SYNTAX)
        return Verify(arg.strip())

    def _cmd_expn(self, arg: str) -> Expand:
        if not arg.strip():
            raise SMTPError(R.R501_SYNTAX)
        return Expand(arg.strip())

    def _cmd_starttls(self, arg: str) -> StartTLS:
        if self.tls:
            raise SMTPError(R.R503_ALREADY_TLS)
        if not self.starttls_available or not self.esmtp:
            raise SMTPError(R.R502_NOT_IMPLEMENTED if not self.starttls_available else R.R503_EHLO_FIRST)
        if arg.strip():
            raise SMTPError(R.R501_NO_ARGS)
        return StartTLS()

    def _cmd_auth(self, arg: str) -> AuthStart:
        if not self.esmtp:
            raise SMTPError(R.R503_EHLO_FIRST)
        if self.authenticated:
            raise SMTPError(R.R503_ALREADY_AUTH)  # RFC 4954 §4
        if not self.auth_mechanisms:
            raise SMTPError(self.auth_refusal)
        words = arg.split()
        if not words or len(words) > 2:
            raise SMTPError(R.R501_SYNTAX)
        mech = words[0].upper()
        if mech not in self.auth_mechanisms:
            raise SMTPError(R.R504_AUTH_MECHANISM)
        initial: bytes | None = None
        if len(words) == 2:
            if words[1] == "=":  # RFC 4954 §4: "=" is an empty initial response
                initial = b""
            else:
                try:
                    initial = base64.b64decode(words[1], validate=True)
                except (binascii.Error, ValueError):
                    raise SMTPError(R.R501_AUTH_BASE64) from None
        return AuthStart(mech, initial)

    def _sasl(self, line: bytes) -> AuthResponse | AuthAborted:
        self.mode = Mode.COMMAND
        if line == b"*":
            self._emit(R.R501_AUTH_CANCELLED)
            return AuthAborted()
        try:
            data = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            self._emit(R.R501_AUTH_BASE64)
            return AuthAborted()
        self.mode = Mode.SASL
        return AuthResponse(data)

    def _cmd_mail(self, arg: str) -> MailFrom:
        if arg[:5].upper() != "FROM:":
            raise SMTPError(R.R501_SYNTAX)
        path = arg[5:].lstrip(" ")  # a space after the colon is common and harmless
        try:
            address, rest = parse_path(path, allow_null=True, utf8=True)
            params = parse_params(rest)
        except PathError:
            raise SMTPError(R.R501_BAD_ADDRESS) from None
        mp = self._mail_params(params)
        if not address.isascii() and not mp.smtputf8:
            raise SMTPError(R.R553_UTF8_ADDRESS)
        self._pending_mail = MailFrom(address, mp)
        return self._pending_mail

    def _mail_params(self, params: dict[str, str | None]) -> MailParams:
        size: int | None = None
        body = ret = envid = auth = ""
        smtputf8 = False
        for key, value in params.items():
            if key == "SIZE":  # RFC 1870 §6
                # RFC 1870 §3: size-value is 1*20DIGIT, ASCII digits (str.isdigit takes any script's, and "²")
                if value is None or not (value.isascii() and value.isdigit()) or len(value) > MAX_RECEIVED_DIGITS:
                    raise SMTPError(R.R501_SYNTAX)
                size = int(value)
                if size > self.max_size:
                    raise SMTPError(R.R552_TOO_BIG)
            elif key == "BODY":  # RFC 6152 §3; BINARYMIME (RFC 3030) is not advertised
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    raise SMTPError(R.R504_BODY if value and value.upper() == "BINARYMIME" else R.R501_SYNTAX)
                body = value.upper()
            elif key == "SMTPUTF8":  # RFC 6531 §3.4: no value
                if value is not None:
                    raise SMTPError(R.R501_SYNTAX)
                smtputf8 = True
            elif key == "RET":  # RFC 3461 §4.3
                if value is None or value.upper() not in ("FULL", "HDRS"):
                    raise SMTPError(R.R501_SYNTAX)
                ret = value.upper()
            elif key == "ENVID":  # RFC 3461 §4.4: xtext, at most 100 characters
                if value is None or len(value) > 100 or not valid_xtext(value):
                    raise SMTPError(R.R501_SYNTAX)
                envid = value
            elif key == "AUTH":  # RFC 4954 §5: accepted; not trusted (the identity comes from our own AUTH)
                if value is None or (value != "<>" and not valid_xtext(value)):
                    raise SMTPError(R.R501_SYNTAX)
                auth = value
            else:
                raise SMTPError(R.R555_PARAM)
        return MailParams(size, body, smtputf8, ret, envid, auth)

    def _cmd_rcpt(self, arg: str) -> RcptTo:
        assert self.txn is not None
        if arg[:3].upper() != "TO:":
            raise SMTPError(R.R501_SYNTAX)
        path = arg[3:].lstrip(" ")
        try:
            address, rest = parse_path(path, allow_null=False, utf8=True)
            params = parse_params(rest)
        except PathError:
            raise SMTPError(R.R501_BAD_RCPT) from None
        if "@" not in address and address.lower() != "postmaster":
            raise SMTPError(R.R501_BAD_RCPT)  # RFC 5321 §4.1.1.3: only <Postmaster> may omit the domain
        notify = orcpt = ""
        for key, value in params.items():
            if key == "NOTIFY":  # RFC 3461 §4.1
                words = (value or "").upper().split(",")
                if not value or (("NEVER" in words) and len(words) > 1) \
                        or any(w not in ("NEVER", "SUCCESS", "FAILURE", "DELAY") for w in words) \
                        or len(set(words)) != len(words):
                    raise SMTPError(R.R501_SYNTAX)
                notify = ",".join(words)
            elif key == "ORCPT":  # RFC 3461 §4.2: addr-type ";" xtext
                atype, semi, xt = (value or "").partition(";")
                if not semi or not atype or not xt or not valid_xtext(xt) or len(value or "") > 500:
                    raise SMTPError(R.R501_SYNTAX)
                orcpt = value or ""
            else:
                raise SMTPError(R.R555_PARAM)
        if not address.isascii() and not self.txn.params.smtputf8:
            raise SMTPError(R.R553_UTF8_ADDRESS)  # RFC 6531 §3.5
        if len(self.txn.recipients) >= self.max_recipients:
            raise SMTPError(R.R452_TOO_MANY_RCPTS)  # RFC 5321 §4.5.3.1.10
        return RcptTo(Recipient(address, orcpt, notify))

    # --- DATA --------------------------------------------------------------------------------------------------
    def _cmd_data(self, arg: str) -> None:
        assert self.txn is not None
        if arg.strip():
            raise SMTPError(R.R501_NO_ARGS)
        if self.txn.chunked:
            raise SMTPError(R.R503_BDAT_THEN_DATA)
        self.mode = Mode.DATA
        self._line_start = True  # the CRLF that ended the DATA line counts before a final "." (RFC 5321 §4.1.1.4)
        self._in.scanned = 0
        self._emit(R.R354_DATA)

    def _data(self) -> Event | _NeedData | None:
        rb = self._in
        buf = rb.data
        while True:
            if self._line_start:
                if buf[:3] == b".\r\n":
                    rb.drop(3)
                    return self._data_end()
                if len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
                    return NEED_DATA
            i = buf.find(b"\r\n.\r\n", max(0, rb.scanned - 4))
            if i >= 0:
                cut = i + 2  # the rest starts with "." CRLF at a line start: the end, next time round
            elif len(buf) < DATA_PIECE:
                rb.scanned = len(buf)
                return NEED_DATA
            else:
                # Invariant 2: hand on whole lines; one longer than a piece is cut, never between CR and LF.
                j = buf.rfind(b"\r\n")
                cut = j + 2 if j >= 0 else len(buf) - (buf[-1] == 0x0D)
            ev = self._data_piece(cut)
            if ev is not None:
                return ev

    def _data_piece(self, n: int) -> BodyData | None:
        """Unstuff and keep the next `n` bytes of DATA; they never end between CR and LF."""
        piece = self._in.take(n)
        start = self._line_start
        self._line_start = piece.endswith(b"\r\n")
        if self._body_fault is not None:
            return None  # counted as read, not kept (invariant 2)
        return self._keep(dot_unstuff(piece, start))  # RFC 5321 §4.5.2

    def _data_end(self) -> Message | None:
        self.mode = Mode.COMMAND
        return self._body_end(chunked=False)

    def _keep(self, raw: bytes | bytearray) -> BodyData | None:
        """Account for the next bytes of the body: past `max_size` or at a stray CR/LF/NUL the body fails and
        the rest is only counted (invariants 2 and 3); past `spill_at` they go out as `BodyData`."""
        if self._body_fault is not None:
            return None
        self._body_size += len(raw)
        if self._body_size > self.max_size:
            self._fail_body(R.R552_TOO_BIG)  # RFC 1870 §6 / RFC 5321 §4.5.3.1.10
            return None
        fault = self._lines.feed(raw)
        if fault is not None:
            self._fail_body(R.R550_NUL if fault == NUL else R.R550_BARE_LINE_ENDING)
            return None
        self._body += raw
        if self.spill_at and (self._spilled or len(self._body) >= self.spill_at):
            data, self._body = self._body, bytearray()
            self._spilled = True
            return BodyData(data)
        return None

    def _fail_body(self, reply: Reply) -> None:
        self._body_fault = reply
        self._body.clear()
        if self._spilled:
            self._spilled = False
            self._discard_pending = True

    def _drop_body(self) -> None:
        """Forget the body (end of transaction); the session hears of a spilled one (BodyDiscarded)."""
        if self._spilled:
            self._discard_pending = True
        self._body = bytearray()
        self._body_size = 0
        self._spilled = False
        self._body_fault = None
        self._lines = Checker()

    def _body_end(self, chunked: bool) -> Message | None:
        """The body is complete: the Message, or the failure's reply (and the transaction ends)."""
        if self._body_fault is None and self._lines.finish() is not None:
            self._fail_body(R.R550_BARE_LINE_ENDING)
        fault = self._body_fault
        txn = self.txn
        assert txn is not None
        if fault is not None:
            self._end_transaction()
            self._emit(fault)
            return None
        msg = Message(bytes(self._body), txn.mail_from, txn.params, tuple(txn.recipients), chunked,
                      spilled=self._spilled, size=self._body_size)
        self._spilled = False  # the session has the file now
        self._body = bytearray()
        return msg

    # --- BDAT (RFC 3030) --------------------------------------------------------------------------------------
    def _cmd_bdat(self, arg: str) -> Event | _NeedData | None:
        return self._bdat_start(arg, None)

    def _bdat_start(self, arg: str, error: Reply | None) -> Event | _NeedData | None:
        words = arg.split()
        # RFC 3030 §2: chunk-size is 1*DIGIT (ASCII), leading zeros allowed: a valid size must be taken, or
        # the chunk the client sends without waiting would be read as commands.
        if not words or len(words) > 2 or not (words[0].isascii() and words[0].isdigit()) \
                or len(words[0].lstrip("0")) > MAX_RECEIVED_DIGITS or (len(words) == 2 and words[1].upper() != "LAST"):
            # The size is unknown, so the chunk cannot be skipped; the client's bytes will read as commands.
            raise SMTPError(R.R501_SYNTAX)
        size = int(words[0])
        last = len(words) == 2
        txn = self.txn
        if error is None and txn is not None:
            if self._body_fault is None and self._body_size + size > self.max_size:
                self._fail_body(R.R552_TOO_BIG)  # known before the chunk arrives: it is skipped
            txn.chunked = True
        self.mode = Mode.BDAT
        self._bdat_left = size
        self._bdat_size = size
        self._bdat_last = last
        self._bdat_error = error
        return self._bdat()

    def _bdat(self) -> Event | _NeedData | None:
        take = min(self._bdat_left, len(self._in))
        ev: BodyData | None = None
        if take:
            if self._bdat_error is None and self.txn is not None:
                ev = self._keep(self._in.take(take))
            else:
                self._in.drop(take)
            self._bdat_left -= take
        if ev is not None:
            return ev
        if self._bdat_left:
            return NEED_DATA
        self.mode = Mode.COMMAND
        error = self._bdat_error
        if error is not None:  # out of sequence: no transaction to end
            self._emit(error)
            return None
        assert self.txn is not None
        if self._bdat_last:
            return self._body_end(chunked=True)
        if self._body_fault is not None:
            self._emit(self._body_fault)  # RFC 3030 §2: each chunk is answered; a failed body fails them all
            return None
        self._emit(R.bdat_received(self._bdat_size))
        return None

    # --- helpers -------------------------------------------------------------------------------------------------
    def _end_transaction(self) -> None:
        self.txn = None
        self._pending_mail = None
        self._drop_body()
        if self.state in (State.MAIL, State.RCPT):
            self.state = State.READY
