"""What the SMTP core tells its session: one event per thing that needs the world (STYLE habit 1).

Theory of operation
-------------------
`protocol.ServerCore.next_event` returns one of these or `NEED_DATA`. Most events wait for an answer before the
core reads on (protocol invariant 6): `MailFrom` -> `accept_mail()` or `send(error)`; `RcptTo` ->
`accept_rcpt()` or `send(error)`; `Message` -> `message_done(reply)`; `StartTLS` -> `tls_started()`;
`AuthStart` / `AuthResponse` -> `auth_challenge()` or `auth_done()`; `Verify` / `Expand` -> `send()`.
`BodyData`, `BodyDiscarded`, `AuthAborted` and `Closed` need no answer.

Invariants
1. Events are frozen values: the session cannot change what the core decided; `BodyData.data` is handed over
   (the core never touches it again), so the session may keep it without a copy.
2. Addresses in events are in the one spelling `syntax.parse_path` gives (store/names.py invariant 5).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MailParams:
    """The ESMTP parameters of MAIL that Postroom offers, checked (envelope.py)."""

    size: int | None = None  # RFC 1870 SIZE=
    body: str = ""  # RFC 6152 BODY=7BIT|8BITMIME
    smtputf8: bool = False  # RFC 6531 §3.4
    ret: str = ""  # RFC 3461 §4.3 RET=FULL|HDRS
    envid: str = ""  # RFC 3461 §4.4 ENVID=, xtext as given
    auth: str = ""  # RFC 4954 §5 AUTH=, as given (not trusted)


@dataclass(frozen=True)
class Recipient:
    """One RCPT TO address with its DSN parameters (RFC 3461), as given."""

    address: str
    orcpt: str = ""  # RFC 3461 §4.2 ORCPT=, "addr-type;xtext" as given
    notify: str = ""  # RFC 3461 §4.1 NOTIFY=, upper-case


@dataclass(frozen=True)
class MailFrom:
    """MAIL FROM: answer `accept_mail()` or `send(error)`."""

    address: str  # "" for the null reverse-path
    params: MailParams


@dataclass(frozen=True)
class RcptTo:
    """RCPT TO: answer `accept_rcpt(recipient)` or `send(error)`."""

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
    """STARTTLS was accepted by the core: send 220, start TLS, then `tls_started()` (RFC 3207)."""

    pass


@dataclass(frozen=True)
class AuthStart:
    """AUTH with an offered mechanism (RFC 4954 §4): answer `auth_challenge()` or `auth_done()`."""

    mechanism: str  # upper-case
    initial: bytes | None  # decoded initial response; None if the client sent none


@dataclass(frozen=True)
class AuthResponse:
    """The client's next SASL response, decoded: answer `auth_challenge()` or `auth_done()`."""

    data: bytes


@dataclass(frozen=True)
class AuthAborted:
    """The client cancelled ("*") or sent bad base64; the core has already replied 501."""


@dataclass(frozen=True)
class Verify:
    """VRFY (RFC 5321 §3.5.1): answer `send(reply)`."""

    argument: str


@dataclass(frozen=True)
class Expand:
    """EXPN (RFC 5321 §3.5.2): answer `send(reply)`."""

    argument: str


@dataclass(frozen=True)
class Closed:
    """The session is over: the core has queued its last reply (221 or 421). Flush and close."""

    reason: str  # "quit" | "errors"


Event = (MailFrom | RcptTo | Message | BodyData | BodyDiscarded | StartTLS | AuthStart | AuthResponse
         | AuthAborted | Verify | Expand | Closed)
