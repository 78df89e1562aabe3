"""The sans-I/O SMTP server core: bytes in, events and reply bytes out (RFC 5321 with ESMTP extensions).

Theory of operation
-------------------
`ServerCore` never touches a socket, the store or the clock (STYLE habit 1; h11 is the model). The session
feeds it whatever arrived (`receive_data`) and pulls events (`next_event`) until `NEED_DATA`; then it writes
`data_to_send()` and reads again. Writing only when the core needs more input is exactly what RFC 2920 §3.1
asks of a pipelining server: replies go out in order, and a whole pipelined batch read at once is answered with
one write.

The core has four modes, switched only by the core itself (STYLE habit 2; `states.Mode`):

    COMMAND  lines up to `line_length` (RFC 5321 §4.5.3.1.4); bare LF is accepted as a command terminator
    DATA     after `354`: the message up to CRLF.CRLF, read by `data.BodyReader` (unstuffed and checked a piece of
             whole lines at a time; a bare CR or LF or a NUL anywhere refuses the message)
    BDAT     exactly n octets, no unstuffing (RFC 3030 §2), the same reader and checks across chunks
    SASL     one base64 line per step of an AUTH exchange, "*" cancels (RFC 4954 §4)

The package, by concern (a command is found by its wire name):

    protocol.py   this core: the I/O surface, the reader, the dispatcher, HELO/EHLO, NOOP, RSET, QUIT, HELP,
                  VRFY, EXPN, STARTTLS, AUTH and its SASL lines, and the DATA/BDAT command lines
    envelope.py   MAIL FROM and RCPT TO arguments and their ESMTP parameters
    data.py       DATA and BDAT: the body received, unstuffed, checked, held or handed out
    states.py     State, Mode, `ALLOWED` / `SEQUENCE_ERRORS`, the Transaction
    events.py     what the core tells the session
    syntax.py     the grammar shared with the outbound client (replies, paths, parameters, dot-stuffing)
    replies.py    every reply the server sends, by name

What needs no knowledge of the world is answered by the core itself: syntax errors (500/501/555), bad sequence
(503), HELO/EHLO, NOOP, RSET, HELP, QUIT, the 354 that starts DATA, BDAT chunk acknowledgements, limits
(recipients 452 4.5.3, size 552 5.3.4). What needs the world becomes an event (events.py) the session must
answer before it asks for the next one.

Invariants
1. Replies are emitted in the order of the commands that caused them, one reply per command (RFC 2920 §3.1),
   including a BDAT whose chunk is refused: the chunk is read and dropped, then the error is sent (RFC 3030 §2).
   Any chunk-size of ASCII digits is taken (leading zeros too); only a BDAT line with no readable size (501,
   or past `line_length`: 500) leaves its chunk to be read as commands, and no conforming client sends one.
2. The core never buffers more than `line_length` bytes of a command line, `12288` of a SASL line (RFC 4954 §4),
   and of a body what `data.BodyReader` holds (its invariant 1: about `DATA_PIECE` plus one `receive_data` of
   unread DATA and `spill_at` of body; past `max_size` nothing, answered 552 5.3.4 at the end, RFC 1870 §6). A
   body that fails after some of it went out as `BodyData` is followed by one `BodyDiscarded`.
3. A DATA message ends only at CRLF "." CRLF. Any CR not followed by LF, LF not preceded by CR, or NUL, in
   DATA or BDAT, refuses the whole message (550 5.6.0; data.py invariants 2 and 3): a message cannot hide a
   second, smuggled one (CVE-2023-51766 family) nor carry one onwards (`mime.lineends`).
4. Every error reply (4xx/5xx) counts towards `max_errors`; reaching it sends 421 4.7.0 and the core closes.
5. After `tls_started()` the core forgets everything the client said before (RFC 3207 §4.2): back to INIT.
6. While an event awaits its answer, `next_event` refuses to run (RuntimeError): replies cannot be reordered.
"""

from __future__ import annotations

import base64
import binascii

from postroom.net.receivebuffer import NEED_DATA as NEED_DATA  # the one marker of the cores, re-exported
from postroom.net.receivebuffer import TOO_LONG, ReceiveBuffer
from postroom.net.receivebuffer import NeedData as _NeedData

from . import replies as R
from .data import BodyReader, End
from .envelope import MAX_RECEIVED_DIGITS, mail_from, rcpt_to
from .events import (
    AuthAborted,
    AuthResponse,
    AuthStart,
    BodyData,
    BodyDiscarded,
    Closed,
    Event,
    Expand,
    MailFrom,
    Message,
    RcptTo,
    Recipient,
    StartTLS,
    Verify,
)
from .replies import SMTPError
from .states import ALLOWED, SEQUENCE_ERRORS, Mode, State, Transaction
from .syntax import Reply

SASL_LINE_LIMIT = 12288  # RFC 4954 §4: at least 12288 octets for an AUTH line


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
        self._body = BodyReader(max_size, spill_at)  # DATA or BDAT chunks, unstuffed (data.py)
        # BDAT mode: the chunk being read
        self._bdat_size = 0
        self._bdat_last = False
        self._bdat_error: Reply | None = None

    # --- I/O surface -------------------------------------------------------------------------------------
    def greet(self) -> None:
        """Queue the 220 greeting (RFC 5321 §4.2; replies.py invariant 1: no enhanced code)."""
        self._emit(R.greeting(self.hostname))

    def receive_data(self, data: bytes) -> None:
        """Append what arrived from the client (any split: a byte, a pipelined batch, part of DATA)."""
        self._in.feed(data)

    def data_to_send(self) -> bytes:
        """The replies queued since the last call, in order (invariant 1), as one string of bytes to write."""
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
        return len(self._in) + len(self._body.buf)

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
        """The answer to `MailFrom`: the transaction starts (state MAIL), 250 2.1.0."""
        assert self._pending_mail is not None
        self.txn = Transaction(self._pending_mail.address, self._pending_mail.params)
        self._pending_mail = None
        self.state = State.MAIL
        self.send(R.R250_SENDER_OK)

    def accept_rcpt(self, recipient: Recipient) -> None:
        """The answer to `RcptTo`: `recipient` joins the transaction (state RCPT), 250 2.1.5."""
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
        """The answer to `AuthStart` / `AuthResponse` when the exchange goes on: `challenge` (raw bytes) is sent
        base64 in a 334, and the next line is read as a SASL response."""
        # RFC 4954 §4: "334" SP base64 challenge; an intermediate reply with no enhanced code.
        self._awaiting = None
        self.mode = Mode.SASL
        self._out.append(b"334 " + base64.b64encode(challenge) + b"\r\n")

    def auth_done(self, reply: Reply, user: str = "") -> None:
        """The end of an AUTH exchange: `reply` (235 with `user`, the address logged in, else the error)."""
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
        self._body.reset()
        self._in.clear()

    # --- the reader ------------------------------------------------------------------------------------------
    def next_event(self) -> Event | _NeedData:
        """The next event (events.py) or `NEED_DATA`. Raises RuntimeError while the previous event that needs an
        answer has none (invariant 6); never raises for anything the client sent."""
        if self._awaiting is not None:
            raise RuntimeError(f"the session must answer the pending {self._awaiting.__name__} first")
        while True:
            if self._body.discard_pending:
                self._body.discard_pending = False
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

    # --- MAIL / RCPT (envelope.py) ---------------------------------------------------------------------------
    def _cmd_mail(self, arg: str) -> MailFrom:
        self._pending_mail = mail_from(arg, self.max_size)
        return self._pending_mail

    def _cmd_rcpt(self, arg: str) -> RcptTo:
        assert self.txn is not None
        return rcpt_to(arg, self.txn, self.max_recipients)

    # --- DATA (data.py) ----------------------------------------------------------------------------------------
    def _cmd_data(self, arg: str) -> None:
        assert self.txn is not None
        if arg.strip():
            raise SMTPError(R.R501_NO_ARGS)
        if self.txn.chunked:
            raise SMTPError(R.R503_BDAT_THEN_DATA)
        self.mode = Mode.DATA
        self._body.start_data(self._in)
        self._emit(R.R354_DATA)

    def _data(self) -> Event | _NeedData | None:
        ev = self._body.read_data(self._in)
        if not isinstance(ev, End):
            return ev
        self.mode = Mode.COMMAND
        return self._body_end(chunked=False)

    def _body_end(self, chunked: bool) -> Message | None:
        """The body is complete: the Message, or the failure's reply (and the transaction ends)."""
        fault = self._body.finish()
        txn = self.txn
        assert txn is not None
        if fault is not None:
            self._end_transaction()
            self._emit(fault)
            return None
        size, spilled = self._body.size, self._body.spilled
        return Message(self._body.take(), txn.mail_from, txn.params, tuple(txn.recipients), chunked,
                       spilled=spilled, size=size)

    # --- BDAT (RFC 3030; data.py) ------------------------------------------------------------------------------
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
        keep = error is None and self.txn is not None
        self._body.start_chunk(size, keep)  # a body the chunk takes past max_size fails now: it is skipped
        if keep and self.txn is not None:
            self.txn.chunked = True
        self.mode = Mode.BDAT
        self._bdat_size = size
        self._bdat_last = len(words) == 2
        self._bdat_error = error
        return self._bdat()

    def _bdat(self) -> Event | _NeedData | None:
        ev = self._body.read_chunk(self._in)
        if not isinstance(ev, End):
            return ev
        self.mode = Mode.COMMAND
        error = self._bdat_error
        if error is not None:  # out of sequence: no transaction to end
            self._emit(error)
            return None
        assert self.txn is not None
        if self._bdat_last:
            return self._body_end(chunked=True)
        if self._body.fault is not None:
            self._emit(self._body.fault)  # RFC 3030 §2: each chunk is answered; a failed body fails them all
            return None
        self._emit(R.bdat_received(self._bdat_size))
        return None

    # --- helpers -------------------------------------------------------------------------------------------------
    def _end_transaction(self) -> None:
        self.txn = None
        self._pending_mail = None
        self._body.reset()
        if self.state in (State.MAIL, State.RCPT):
            self.state = State.READY
