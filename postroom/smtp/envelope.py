"""MAIL FROM and RCPT TO: their arguments read into the envelope, with the ESMTP parameters Postroom offers.

Theory of operation
-------------------
The core's dispatcher (protocol.py) calls `mail_from` for MAIL and `rcpt_to` for RCPT once the state allows
them; each returns the event the session answers, or raises `SMTPError` with the reply (STYLE habit 4). The
grammar (paths, `KEY=value`, xtext) is `syntax.py`'s; what each keyword may hold is decided here:

    MAIL   SIZE (RFC 1870), BODY=7BIT|8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531), RET and ENVID (RFC 3461),
           AUTH= (RFC 4954 §5, kept, not trusted)
    RCPT   NOTIFY and ORCPT (RFC 3461)

Invariants
1. A parameter Postroom does not advertise is 555 5.5.4 (RFC 5321 §4.1.1.11), never ignored.
2. Numbers are ASCII digits of at most `MAX_RECEIVED_DIGITS` (no int() of another script's digits, no bignum).
3. A non-ASCII address needs SMTPUTF8 on MAIL (RFC 6531 §3.5): 553 5.6.7.
"""

from __future__ import annotations

from . import replies as R
from .events import MailFrom, MailParams, RcptTo, Recipient
from .replies import SMTPError
from .states import Transaction
from .syntax import PathError, parse_params, parse_path, valid_xtext

MAX_RECEIVED_DIGITS = 20  # BDAT / SIZE numbers longer than this are nonsense (invariant 2)


def mail_from(arg: str, max_size: int) -> MailFrom:
    """The argument of MAIL (`FROM:<path> params`) as a `MailFrom` (RFC 5321 §4.1.1.2). Raises SMTPError: 501
    (syntax, bad address), 552 (SIZE over `max_size`, RFC 1870 §6), 553 (UTF-8 address without SMTPUTF8,
    RFC 6531 §3.5), 504 (BODY=BINARYMIME), 555 (a parameter not offered, RFC 5321 §4.1.1.11)."""
    if arg[:5].upper() != "FROM:":
        raise SMTPError(R.R501_SYNTAX)
    path = arg[5:].lstrip(" ")  # a space after the colon is common and harmless
    try:
        address, rest = parse_path(path, allow_null=True, utf8=True)
        params = parse_params(rest)
    except PathError:
        raise SMTPError(R.R501_BAD_ADDRESS) from None
    mp = _mail_params(params, max_size)
    if not address.isascii() and not mp.smtputf8:
        raise SMTPError(R.R553_UTF8_ADDRESS)
    return MailFrom(address, mp)


def _mail_params(params: dict[str, str | None], max_size: int) -> MailParams:
    size: int | None = None
    body = ret = envid = auth = ""
    smtputf8 = False
    for key, value in params.items():
        if key == "SIZE":  # RFC 1870 §6
            # RFC 1870 §3: size-value is 1*20DIGIT, ASCII digits (str.isdigit takes any script's, and "²")
            if value is None or not (value.isascii() and value.isdigit()) or len(value) > MAX_RECEIVED_DIGITS:
                raise SMTPError(R.R501_SYNTAX)
            size = int(value)
            if size > max_size:
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


def rcpt_to(arg: str, txn: Transaction, max_recipients: int) -> RcptTo:
    """The argument of RCPT (`TO:<path> params`) as a `RcptTo` for transaction `txn` (RFC 5321 §4.1.1.3).
    Raises SMTPError: 501 (syntax, bad address, no domain but for Postmaster), 553 (UTF-8 address in a
    transaction without SMTPUTF8, RFC 6531 §3.5), 452 (past `max_recipients`, RFC 5321 §4.5.3.1.10), 555."""
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
    if not address.isascii() and not txn.params.smtputf8:
        raise SMTPError(R.R553_UTF8_ADDRESS)  # RFC 6531 §3.5
    if len(txn.recipients) >= max_recipients:
        raise SMTPError(R.R452_TOO_MANY_RCPTS)  # RFC 5321 §4.5.3.1.10
    return RcptTo(Recipient(address, orcpt, notify))
