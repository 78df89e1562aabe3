"""Building well-formed messages for the rest of Postroom (webmail, bounces, list mail) over stdlib `email`.

Theory of operation
-------------------
`compose()` builds an `email.message.EmailMessage` under `email.policy.SMTP` (CRLF line ends, RFC 2047 for
non-ASCII header text, RFC 2231 for non-ASCII file names, lines folded at 78) and returns its bytes:

    text only                     -> text/plain
    text + html                   -> multipart/alternative (text/plain, text/html)
    html + inline images          -> the html part becomes multipart/related (text/html, image/*; Content-ID)
    any of those + attachments    -> multipart/mixed (body, attachment, ...)

Text parts use 7bit when they are ASCII with short lines, else quoted-printable (readable in any client and
safe through 7-bit relays); attachments and inline images use base64.

Invariants:
1. The result uses CRLF line ends only and every header line is ASCII (RFC 5322 §2.1, RFC 2047, RFC 2231),
   so it passes any SMTP relay without SMTPUTF8.
2. Message-ID and Date are always present; both come from injectable sources (`make_id`, `now`) so tests can
   pin them.
3. A message built here scans without defects (`structure.scan`), and its text reads back with `text`.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage

from postroom.mime.headers import field_text

POLICY = email.policy.SMTP


@dataclass(frozen=True)
class Attachment:
    """A file to attach. `inline=True` with a `content_id` makes it an inline image of the HTML part (the HTML
    refers to it as `cid:<content_id>`); otherwise it is a `Content-Disposition: attachment`."""

    filename: str
    content: bytes
    mime_type: str = "application/octet-stream"
    inline: bool = False
    content_id: str | None = None


def make_message_id(domain: str) -> str:
    """`<random@domain>` (RFC 5322 §3.6.4)."""
    return f"<{uuid.uuid4().hex}@{domain}>"


def rfc5322_date(t: float) -> str:
    """`t` (seconds since the epoch) as an RFC 5322 §3.3 date-time in the server's local zone with its real
    offset, e.g. `Mon, 01 Jan 2024 18:30:00 +0530`. Never `-0000`: §3.3 gives that the meaning "the time is
    UTC but the local zone is unknown", which is not true of this server (UTC itself is `+0000`). Every date
    Postroom writes into a message goes through here."""
    return email.utils.formatdate(t, localtime=True)


def complete_submission(raw: bytes, domain: str, *, now: Callable[[], float] = time.time,
                        make_id: Callable[[str], str] = make_message_id, sender: str = "") -> bytes:
    """RFC 6409 §8.3, §8.4: a submitted message without a Date or Message-ID field gets it (`rfc5322_date`,
    `make_message_id(domain)`), written before the existing header so no byte of the message changes. With
    `sender` (the envelope sender, already checked to be the user's), a message without From gets
    `From: <sender>` too: RFC 5322 §3.6 requires one, and receivers refuse mail without it (Postfix's cleanup
    adds the same for its local submissions).
    `raw` is CRLF text as SMTP carries it; a message that starts with no header at all (its first line is not
    a field) gets the new fields and a blank line before it, so its text stays the body."""
    have: set[bytes] = set()
    starts_with_field = False
    pos = 0
    first = True
    while pos < len(raw):
        end = raw.find(b"\n", pos)
        line = raw[pos:(len(raw) if end < 0 else end)].rstrip(b"\r")
        if not line:
            break  # the blank line: the header ends
        if line[:1] not in (b" ", b"\t"):
            name, colon, _ = line.partition(b":")
            is_field = bool(colon) and bool(name) and all(33 <= c <= 126 for c in name)  # RFC 5322 §2.2
            if first:
                starts_with_field = is_field
            if not is_field:
                break
            have.add(name.lower())
        elif first:
            break
        first = False
        if end < 0:
            break
        pos = end + 1
    added = []
    if b"date" not in have:
        added.append(f"Date: {rfc5322_date(now())}\r\n".encode())
    if b"message-id" not in have:
        added.append(f"Message-ID: {make_id(domain)}\r\n".encode())
    if sender and b"from" not in have:
        added.append(f"From: <{sender}>\r\n".encode())
    if not added:
        return raw
    if not starts_with_field and raw:
        added.append(b"\r\n")  # no header: what the client sent is the body
    return b"".join(added) + raw


def _text_cte(text: str) -> str:
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return "7bit"
    return "quoted-printable"


_MSG_ID = re.compile(r"<[^<>\s]+>")


def msg_ids(text: str, limit: int = 20) -> str:
    """The msg-ids of an In-Reply-To or References value (RFC 5322 §3.6.4), the last `limit`, space-separated;
    an id holding "=?" is left out: it is no RFC 5322 msg-id, and the header registry would decode it as an RFC
    2047 word (into CR LF and new fields: a sender's Message-ID must not write our reply's header)."""
    return " ".join([m for m in _MSG_ID.findall(text) if "=?" not in m][-limit:])


def compose(
    *,
    from_: str,
    to: Sequence[str] = (),
    subject: str = "",
    text: str | None = None,
    html: str | None = None,
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    reply_to: str | None = None,
    attachments: Sequence[Attachment] = (),
    headers: Sequence[tuple[str, str]] = (),
    in_reply_to: str | None = None,
    references: str | None = None,
    domain: str = "localhost",
    message_id: str | None = None,
    date: float | None = None,
    now: Callable[[], float] = time.time,
    make_id: Callable[[str], str] = make_message_id,
) -> bytes:
    """The bytes of a new message. Addresses are "Name <user@host>" or "user@host" strings (non-ASCII names
    are fine). `bcc` is written as a header: pass it only for a copy kept by the sender (the SMTP envelope,
    not this header, decides who receives). Extra `headers` are added after the standard ones."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = from_
    if to:
        msg["To"] = ", ".join(to)
    if cc:
        msg["Cc"] = ", ".join(cc)
    if bcc:
        msg["Bcc"] = ", ".join(bcc)
    if reply_to:
        msg["Reply-To"] = reply_to
    msg["Subject"] = field_text(subject)  # text from a message may hold RFC 2047 words: never decoded twice
    msg["Date"] = rfc5322_date(now() if date is None else date)
    msg["Message-ID"] = message_id or make_id(domain)
    if in_reply_to and msg_ids(in_reply_to):
        msg["In-Reply-To"] = msg_ids(in_reply_to)
    if references and msg_ids(references):
        msg["References"] = msg_ids(references)
    msg["MIME-Version"] = "1.0"
    for name, value in headers:
        msg[name] = field_text(value)

    body_text = text if text is not None else ("" if html is None else None)
    if body_text is not None:
        msg.set_content(body_text, subtype="plain", charset="utf-8", cte=_text_cte(body_text))
        if html is not None:
            msg.add_alternative(html, subtype="html", charset="utf-8", cte=_text_cte(html))
    else:
        assert html is not None
        msg.set_content(html, subtype="html", charset="utf-8", cte=_text_cte(html))

    inline = [a for a in attachments if a.inline and a.content_id]
    if inline:
        html_part = msg.get_body(("html",))
        target = html_part if html_part is not None else msg
        for a in inline:
            maintype, _, subtype = a.mime_type.partition("/")
            target.add_related(
                a.content,
                maintype=maintype,
                subtype=subtype or "octet-stream",
                cid=f"<{a.content_id.strip('<>')}>",  # type: ignore[union-attr]
                filename=a.filename,
                disposition="inline",
            )
    for a in attachments:
        if a.inline and a.content_id:
            continue
        maintype, _, subtype = a.mime_type.partition("/")
        msg.add_attachment(
            a.content,
            maintype=maintype,
            subtype=subtype or "octet-stream",
            filename=a.filename,
            disposition="inline" if a.inline else "attachment",
        )
    for part in msg.walk():
        if part is not msg:
            del part["MIME-Version"]  # `email` adds one to every part it creates; only the top belongs
    return msg.as_bytes(policy=POLICY)


@dataclass(frozen=True)
class RawPart:
    """One body part given as exact bytes: `content_type` is the whole Content-Type value, `body` is written
    unchanged (it must already be CRLF text in the given `cte`)."""

    content_type: str
    body: bytes
    cte: str = "7bit"


def compose_report(
    *,
    from_: str,
    to: Sequence[str],
    subject: str,
    report_type: str,
    parts: Sequence[RawPart],
    headers: Sequence[tuple[str, str]] = (),
    domain: str = "localhost",
    message_id: str | None = None,
    date: float | None = None,
    now: Callable[[], float] = time.time,
    make_id: Callable[[str], str] = make_message_id,
) -> bytes:
    """A multipart/report (RFC 6522) whose parts are exact bytes: DSNs (RFC 3464) and the like. The header is
    written by `email` under the SMTP policy (RFC 2047 for non-ASCII text); the parts are never re-serialised,
    so a returned original message keeps its bytes. The boundary is chosen so that it occurs in no part."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = from_
    if to:
        msg["To"] = ", ".join(to)
    msg["Subject"] = field_text(subject)
    msg["Date"] = rfc5322_date(now() if date is None else date)
    msg["Message-ID"] = message_id or make_id(domain)
    msg["MIME-Version"] = "1.0"
    for name, value in headers:
        msg[name] = field_text(value)
    while True:
        boundary = f"=_report_{uuid.uuid4().hex}"
        marker = b"--" + boundary.encode()
        if not any(marker in p.body for p in parts):
            break
    msg["Content-Type"] = f'multipart/report; report-type={report_type}; boundary="{boundary}"'
    out = [POLICY.fold_binary(name, value) for name, value in msg.raw_items()]
    out.append(b"\r\nThis is a MIME-encapsulated message.\r\n")
    for p in parts:
        out.append(b"\r\n" + marker + b"\r\nContent-Type: " + p.content_type.encode("ascii") + b"\r\n")
        if p.cte != "7bit":
            out.append(b"Content-Transfer-Encoding: " + p.cte.encode("ascii") + b"\r\n")
        out.append(b"\r\n")
        out.append(p.body if p.body.endswith(b"\r\n") or not p.body else p.body + b"\r\n")
    out.append(b"\r\n" + marker + b"--\r\n")
    return b"".join(out)
