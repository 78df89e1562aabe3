"""`postroom sendmail`: the classic sendmail entry point, so Unix programs (cron, scripts, MUAs) can send mail.

Theory of operation
-------------------
Like Postfix's `sendmail` and `postdrop`, it does not speak SMTP: it reads the message on standard input,
completes it (`prepare`) and hands it to the router (`delivery.Router.accept`), the same door SMTP uses, with
relaying allowed (whoever can run it with access to the data folder is the administrator). The router stores
local copies and queues the rest; the running server's queue delivers them at its next look (within
`delivery.poll_seconds`). Flags, as in sendmail(8):

    -t            take recipients from To, Cc and Bcc (added to any given as arguments); Bcc is removed
    -f SENDER     the envelope sender ("<>" or "" for the null sender); default: USER@server.hostname
    -i, -oi       a line with a single "." does not end the message
    -F NAME       the full name for a From header that has to be added

Sender identity. Whoever runs it is trusted as Postfix trusts its `sendmail`: any envelope sender (`-f`) and any
From, no check against an account, and the queue may DKIM-sign it with the From domain (dkim.py invariant 3).
That is sound only because running it needs write access to the data folder, which already means control of
the server; it is not a door for users without it. Submission (SMTP AUTH) is the door for users, and there the
sender must be theirs (`Router.may_send_as`).

Invariants
1. The message that is stored has CRLF line ends, a Received field naming the local user, and From, Date and
   Message-ID fields (added only when missing; present ones are kept byte for byte).
2. Input is read up to `limits.message_size` bytes; a larger message is refused, never cut.
3. Without recipients nothing is stored (exit status 2, like sendmail's usage error).
4. Lines end at LF (a CR before it is dropped, as sendmail(8) reads them); a CR anywhere else and every NUL
   become a space (`mime.lineends.normalise`, like Postfix's `cleanup_replace_stray_cr_lf`), so a program
   cannot smuggle a second message into a receiver that ends DATA on a bare CR: `hello\r.\r\nMAIL FROM:...`
   is stored as `hello .` CRLF `MAIL FROM:...`, one message. (Present header fields are byte for byte but
   for such characters; RFC 5322 §2.3 forbids them anyway.)
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from postroom.mime.address import MISSING_DOMAIN, MISSING_MAILBOX, parse_address_list
from postroom.mime.compose import make_message_id, rfc5322_date
from postroom.mime.lineends import normalise
from postroom.store.names import quote_local


class SendmailError(Exception):
    pass


@dataclass(frozen=True)
class Prepared:
    sender: str
    recipients: tuple[str, ...]
    raw: bytes


def _lines(data: bytes, ignore_dots: bool) -> list[bytes]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out: list[bytes] = []
    for line in lines:
        line = line[:-1] if line.endswith(b"\r") else line
        if not ignore_dots and line == b".":
            break  # sendmail(8): without -i a lone dot ends the input
        out.append(line)
    return out


def _unfolded(header_lines: list[bytes]) -> list[tuple[str, bytes, int, int]]:
    """(lower-case name, value, first line index, last line index + 1) of each header field."""
    fields: list[tuple[str, bytes, int, int]] = []
    for i, line in enumerate(header_lines):
        if line[:1] in (b" ", b"\t") and fields:
            name, value, start, _ = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line, start, i + 1)
        elif b":" in line:
            raw_name, _, value = line.partition(b":")
            fields.append((raw_name.strip().decode("ascii", "replace").lower(), value, i, i + 1))
    return fields


def prepare(
    data: bytes,
    *,
    recipients: Sequence[str],
    sender: str | None,
    extract: bool,
    ignore_dots: bool,
    hostname: str,
    user: str,
    full_name: str = "",
    uid: int | None = None,
    now: Callable[[], float] = time.time,
    make_id: Callable[[str], str] = make_message_id,
) -> Prepared:
    lines = _lines(data, ignore_dots)
    try:
        blank = lines.index(b"")
    except ValueError:
        blank = len(lines)
    head, body = lines[:blank], lines[blank + 1:]
    if head and b":" not in head[0] and not head[0][:1].isspace():
        head, body = [], lines  # no header at all: the whole input is the body
    fields = _unfolded(head)
    names = {f[0] for f in fields}
    rcpts = [r.strip() for r in recipients if r.strip()]
    if extract:
        for name, value, _, _ in fields:
            if name in ("to", "cc", "bcc"):
                # the header parser unquotes the local part; the envelope needs it quoted where it must be
                rcpts += [f"{quote_local(a.mailbox)}@{a.host}" for a in parse_address_list(value)
                          if a.mailbox and a.host and MISSING_DOMAIN not in (a.mailbox, a.host)
                          and MISSING_MAILBOX not in (a.mailbox, a.host)]
        drop = {i for name, _, start, end in fields if name == "bcc" for i in range(start, end)}
        head = [line for i, line in enumerate(head) if i not in drop]
    rcpts = list(dict.fromkeys(rcpts))
    if not rcpts:
        raise SendmailError("no recipients: give them as arguments, or use -t to take them from To/Cc/Bcc")
    if sender is None:
        sender = f"{user}@{hostname}"
    sender = "" if sender in ("<>", "") else sender.strip("<>")
    t = now()
    added: list[bytes] = []
    if "from" not in names:
        addr = sender or f"{user}@{hostname}"
        added.append(("From: " + (email.utils.formataddr((full_name, addr)) if full_name else addr)).encode())
    if "date" not in names:
        added.append(f"Date: {rfc5322_date(t)}".encode())  # RFC 6409 §8.3: local zone, real offset
    if "message-id" not in names:
        added.append(f"Message-ID: {make_id(hostname)}".encode())
    who = f"{user}" + (f" (uid {uid})" if uid is not None else "")
    received = f"Received: by {hostname} (Postroom sendmail) id local from {who};\r\n\t" \
               f"{rfc5322_date(t)}".encode()
    raw = b"\r\n".join([received, *head, *added, b"", *body]) + b"\r\n"
    # Invariant 4: a stray CR (or NUL) inside a line becomes a space, as Postfix's cleanup does.
    return Prepared(sender, tuple(rcpts), normalise(raw))
