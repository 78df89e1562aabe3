"""SMTP session states, reader modes, and which command may come when (STYLE habit 3: state rules are data).

Theory of operation
-------------------
The session state is INIT (no HELO yet), READY, MAIL (sender given) or RCPT (at least one recipient
accepted); `protocol.ServerCore` checks `ALLOWED[verb]` once in its dispatcher, and a command outside its states
gets the reply `SEQUENCE_ERRORS` names (RFC 5321 §4.1.4, §3.3). The reader mode is what the next bytes are:
command lines, DATA, a BDAT chunk or a SASL line; only the core switches it (STYLE habit 2).

Invariants
1. Every (verb, state) pair outside `ALLOWED` has its reply in `SEQUENCE_ERRORS` (tests/unit/test_smtp_protocol.py
   sends every command in every state).
2. A `Transaction` exists exactly in states MAIL and RCPT.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from . import replies as R
from .events import MailParams, Recipient
from .syntax import Reply


class State(enum.Enum):
    """Where the session is in RFC 5321's command sequence (§4.1.4)."""

    INIT = "init"  # greeted, no HELO/EHLO yet
    READY = "ready"  # HELO/EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted
    RCPT = "rcpt"  # at least one RCPT accepted


class Mode(enum.Enum):
    """What the core reads the next bytes as."""

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


@dataclass
class Transaction:
    """The mail transaction between an accepted MAIL and its end (message answered, RSET, HELO/EHLO)."""

    mail_from: str
    params: MailParams
    recipients: list[Recipient] = field(default_factory=list)
    chunked: bool = False
