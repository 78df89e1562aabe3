"""The webmail's message writing, with no I/O of its own: what the compose form becomes on the wire, and what a reply
or a forward starts from.

Theory of operation
-------------------
`Draft` is the form: sender, recipients, subject, text, the threading fields. `write_message(out, draft, ...)`
writes the message into a binary file (the route gives a file in the store's staging directory, so the router
and the store take it from there without another copy): the header by `email` under the SMTP policy (RFC 2047
for non-ASCII names and subjects, RFC 5322 §2.2.3 folding), the text as `text/plain; charset=utf-8;
format=flowed` (RFC 3676, mime/flowed.py) in 7bit when it can be, else quoted-printable, and each attachment
as a part of a `multipart/mixed` (RFC 2046 §5.1.3): files in base64 (RFC 2045 §6.8), read and encoded in
pieces, with their names in RFC 2231 parameters; a forwarded message as `message/rfc822` (RFC 2046 §5.2.1:
no base64 there; 7bit or 8bit, its bytes exact). Bcc is written only into drafts (`with_bcc`): a sent
message's header never carries it (RFC 5322 §3.6.3 lets the sender choose; the envelope carries those
recipients). In the rich-text mode (`Draft.rich`) the text is sent as a multipart/alternative (RFC 2046 §5.1.4)
of the flowed text and its HTML twin made by `rich_html` from a small safe subset: the text is escaped, then
paragraphs, line breaks, `**strong**`, `*emphasis*`, "- " lists, ">" quotes and links become markup, and
nothing else can.

A reply (RFC 5322 §3.6.4): `In-Reply-To` is the parent's Message-ID, `References` the parent's References (or,
without them, its one In-Reply-To id) followed by its Message-ID; the subject gets one "Re: " (§3.6.5: "Re: "
once, earlier ones taken off). It goes to the parent's Reply-To, else its From (§3.6.2); reply-all adds the
parent's To and Cc, leaving out the user's own addresses. The body quotes the parent's text (format=flowed
quoting, RFC 3676 §4.5) under an attribution line. `Original.parse` reads a stored message for that in a worker
thread (its work grows with the message).

Invariants
1. The written message has CRLF line ends only, ASCII headers (RFC 2047/2231), a Date and a Message-ID.
2. The multipart boundary occurs in no part: it starts with "=_", which neither quoted-printable nor base64 can
   produce, and is checked against the 7bit/8bit parts (the text, a forwarded message).
3. An attachment is read in `CHUNK` pieces, never whole: memory does not grow with it.
4. An address that is not `local@domain` (a Dot-string local part, RFC 5321 §4.1.2; a domain name that IDNA
   can write, or an address literal, §4.1.3) is refused with `BadAddress` naming the field, never passed on.
5. No control character typed (CR, LF, NUL...) reaches a header field (`one_line`): a subject or a file name
   cannot add a field, and the message never holds a stray CR, LF or NUL (mime/lineends.py).
"""

from __future__ import annotations

import base64
import email.headerregistry
import email.policy
import email.utils
import html
import ipaddress
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from typing import BinaryIO

from postroom.mime import flowed
from postroom.mime.address import MISSING_DOMAIN, MISSING_MAILBOX, parse_address_list
from postroom.mime.compose import msg_ids, rfc5322_date
from postroom.mime.headers import field_text
from postroom.mime.text import charset_decode, html_to_text

POLICY = email.policy.SMTP
CHUNK = 57 * 1024  # bytes of an attachment read at a time: a multiple of 57, so base64 lines are whole (76 chars)
MAX_RECIPIENTS = 100  # per field
_RE = re.compile(r"(?i)^\s*(?:(?:re|aw|sv)\s*(?:\[\d+\])?\s*:\s*)+")
_FWD = re.compile(r"(?i)^\s*(?:fwd?|wg)\s*:")
_MSGID = re.compile(r"<[^<>\s]+>")
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")  # RFC 5322 §3.2.3
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.?")


class BadAddress(ValueError):
    """A recipient or sender that cannot be sent to; the message names it for the user."""


@dataclass(frozen=True)
class Attachment:
    """One part to attach: `source` is a file object at its start (an upload) or bytes (a part kept from a stored
    draft or message). `rfc822`: a whole message forwarded as message/rfc822, its bytes written as they are."""

    filename: str
    mime_type: str
    source: BinaryIO | bytes
    rfc822: bool = False


@dataclass
class Draft:
    """What the compose form holds. Address fields are the text typed (comma-separated)."""

    from_: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    text: str = ""
    in_reply_to: str = ""
    references: str = ""
    rich: bool = False  # also an HTML twin of the text (`rich_html`), as multipart/alternative
    attachments: list[Attachment] = field(default_factory=list)


def parse_addresses(value: str, what: str) -> list[tuple[str, str]]:
    """The (display name, address) pairs of a To/Cc/Bcc field as typed ("Ann <ann@x.org>, bob@y.org"); raises
    BadAddress naming the field for anything that is not an address (invariant 4). IDNA domains are written in
    their ASCII form."""
    value = value.replace("\r", " ").replace("\n", " ").strip()
    if not value:
        return []
    out: list[tuple[str, str]] = []
    for a in parse_address_list(value.encode("utf-8", "surrogateescape")):
        if a.host is None:
            continue  # a group's start or end (RFC 5322 §3.4): its members are the addresses
        if a.mailbox in (None, MISSING_MAILBOX) or a.host == MISSING_DOMAIN:
            shown = a.mailbox if a.mailbox not in (None, MISSING_MAILBOX) else a.host
            raise BadAddress(f"{what}: “{str(shown)[:80]}” is not an email address (it should look like "
                             "name@example.org).")
        out.append((a.name or "", check_address(f"{a.mailbox}@{a.host}", what)))
    if not out:
        raise BadAddress(f"{what}: “{value[:80]}” is not an email address.")
    if len(out) > MAX_RECIPIENTS:
        raise BadAddress(f"{what}: at most {MAX_RECIPIENTS} addresses.")
    return out


def check_address(addr: str, what: str) -> str:
    """`addr` as `local@domain` with the domain in ASCII (IDNA), or BadAddress (invariant 4)."""
    local, at, domain = addr.strip().rpartition("@")
    shown = addr[:80] or "(empty)"
    if not at or not local or not domain or any(c in addr for c in " <>,;\"\\\x00\t"):
        raise BadAddress(f"{what}: “{shown}” is not an email address (it should look like name@example.org).")
    if not _DOT_ATOM.fullmatch(local):  # RFC 5321 §4.1.2 Dot-string (a quoted local part is not offered)
        raise BadAddress(f"{what}: “{shown}” has characters this server cannot send in the part before @.")
    if domain.startswith("["):  # an address literal, RFC 5321 §4.1.3
        literal = domain[1:-1] if domain.endswith("]") else ""
        try:
            ipaddress.ip_address(literal[5:] if literal.lower().startswith("ipv6:") else literal)
        except ValueError:
            raise BadAddress(f"{what}: “{shown}” has a domain that is not a valid name.") from None
        return f"{local}@{domain}"
    try:
        ascii_domain = domain.encode("idna").decode("ascii").lower()
    except (UnicodeError, ValueError):
        raise BadAddress(f"{what}: “{shown}” has a domain that is not a valid name.") from None
    if not _DOMAIN.fullmatch(ascii_domain):
        raise BadAddress(f"{what}: “{shown}” has a domain that is not a valid name.")
    return f"{local}@{ascii_domain}"


def one_line(text: str) -> str:
    """`text` fit for a header field or a display name: `mime.headers.field_text` (one line of printable
    characters, RFC 5322 §2.2, and no RFC 2047 word for the header registry to decode a second time)."""
    return field_text(text, limit=1 << 20)


def formatted(pairs: Sequence[tuple[str, str]]) -> str:
    """Address pairs as one header value (names RFC 2047-encoded later by the policy)."""
    return ", ".join(email.utils.formataddr((one_line(name), addr)) if one_line(name) else addr
                     for name, addr in pairs)


def reply_subject(subject: str) -> str:
    """RFC 5322 §3.6.5: "Re: " once, the earlier "Re:", "RE[2]:", "AW:", "SV:" prefixes taken off."""
    return "Re: " + _RE.sub("", subject).strip()


def forward_subject(subject: str) -> str:
    """"Fwd: " before the subject, unless it is a forward's already."""
    s = subject.strip()
    return s if _FWD.match(s) else "Fwd: " + s


def reply_threading(message_id: str, references: str, in_reply_to: str) -> tuple[str, str]:
    """(In-Reply-To, References) of a reply to a message with those fields (RFC 5322 §3.6.4): the parent's id;
    its References (or its In-Reply-To when it holds exactly one id) followed by its id. Empty without an id."""
    ids = _MSGID.findall(message_id)
    if not ids:
        return "", ""
    parent = ids[0]
    chain = _MSGID.findall(references)
    if not chain:
        earlier = _MSGID.findall(in_reply_to)
        chain = earlier if len(earlier) == 1 else []
    return parent, " ".join([*chain, parent])


@dataclass(frozen=True)
class Original:
    """What a reply or forward needs of a stored message (decoded header values; the text to quote)."""

    from_: str
    to: str
    cc: str
    reply_to: str
    subject: str
    date: str
    message_id: str
    references: str
    in_reply_to: str
    text: str

    @classmethod
    def parse(cls, raw: bytes) -> Original:
        """Read `raw` (a whole message; in a worker thread: work grows with it). Never raises for content."""
        msg = BytesParser(policy=email.policy.default).parsebytes(raw)

        def header(name: str) -> str:
            try:
                value = msg.get(name)
            except Exception:  # a header the parser cannot decode: as if absent
                return ""
            return " ".join(str(value).split()) if value is not None else ""

        return cls(header("from"), header("to"), header("cc"), header("reply-to"), header("subject"),
                   header("date"), header("message-id"), header("references"), header("in-reply-to"),
                   _body_text(msg))


def _body_text(msg: EmailMessage) -> str:
    """The text a reply quotes: the text/plain body (format=flowed read back), else the HTML body's text."""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except Exception:
        return ""
    if part is None or not isinstance(part, EmailMessage):
        return ""
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a transfer encoding the parser cannot undo: nothing to quote
        return ""
    # every charset Python knows; none or an unknown one: UTF-8, else Windows-1252 (mime/text.py)
    text = charset_decode(payload, part.get_content_charset()) if isinstance(payload, bytes) else ""
    if part.get_content_subtype() == "html":
        text = html_to_text(text)  # the search text's reader: script and style dropped, blocks as line ends
    elif str(part.get_param("format", "")).lower() == "flowed":
        text = flowed.decode(text)
    return text.replace("\r\n", "\n").strip("\n")


def attribution(original: Original) -> str:
    """The line above a quoted reply: "On <date>, <from> wrote:"."""
    who = original.from_ or "someone"
    return f"On {original.date}, {who} wrote:" if original.date else f"{who} wrote:"


def reply_text(original: Original) -> str:
    """A reply's starting text: two empty lines to write in, the attribution, the quoted text."""
    return "\n\n" + attribution(original) + "\n" + flowed.quote(original.text)


def forward_text(original: Original) -> str:
    """An inline forward's starting text: the original's header fields and text, quoted."""
    head = [f"From: {original.from_}", f"Date: {original.date}", f"Subject: {original.subject}"]
    if original.to:
        head.append(f"To: {original.to}")
    if original.cc:
        head.append(f"Cc: {original.cc}")
    return "\n\n---------- Forwarded message ----------\n" + flowed.quote("\n".join(head) + "\n\n" + original.text)


def reply_recipients(original: Original, own: Sequence[str], reply_all: bool) -> tuple[str, str]:
    """(To, Cc) of a reply: Reply-To, else From (RFC 5322 §3.6.2); with `reply_all` the original's To and Cc
    besides; never an address of `own` (the user's identities, compared without case), each once. A reply to the
    user's own message goes to its To."""
    mine = {a.lower() for a in own}
    seen: set[str] = set()

    def keep(value: str) -> list[str]:
        out = []
        for name, addr in email.utils.getaddresses([value]):
            if "@" not in addr or addr.lower() in mine or addr.lower() in seen:
                continue
            seen.add(addr.lower())
            out.append(email.utils.formataddr((name, addr)) if name else addr)
        return out

    to = keep(original.reply_to or original.from_)
    if not to:  # a reply to one's own message (in Sent): to its recipients
        to = keep(original.to)
    if not reply_all:
        return ", ".join(to), ""
    to += keep(original.to)
    cc = keep(original.cc)
    if not to and cc:
        to, cc = cc, []
    return ", ".join(to), ", ".join(cc)


def with_signature(text: str, signature: str) -> str:
    """`text` with the user's `signature` below it after the signature separator line "-- " (RFC 3676 §4.3;
    `flowed.encode` writes that line as it is, never as a soft break); `text` unchanged without a signature. An
    empty text leaves room to write above the separator."""
    sig = signature.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    if not sig.strip():
        return text
    body = text.rstrip("\n")
    return f"{body}\n\n{flowed.SIGNATURE}\n{sig}" if body else f"\n\n{flowed.SIGNATURE}\n{sig}"


def mailbox(name: str, address: str) -> str:
    """A From value: `address` with the display `name` (quoted as RFC 5322 §3.4 needs; non-ASCII names are encoded
    by the header policy, RFC 2047), or the bare address without one."""
    name = one_line(name)
    if not name:
        return address
    try:
        return str(email.headerregistry.Address(display_name=name, addr_spec=address))
    except (ValueError, IndexError):  # an address the header registry cannot take: sent without the name
        return address


def header_bytes(draft: Draft, *, from_: str, to: Sequence[tuple[str, str]], cc: Sequence[tuple[str, str]],
                 bcc: Sequence[tuple[str, str]], date: float, message_id: str, with_bcc: bool,
                 extra: Sequence[tuple[str, str]] = ()) -> bytes:
    """The top header block (without the Content-* fields), CRLF, ASCII (invariant 1)."""
    msg = EmailMessage(policy=POLICY)
    msg["From"] = from_
    if to:
        msg["To"] = formatted(to)
    if cc:
        msg["Cc"] = formatted(cc)
    if bcc and with_bcc:
        msg["Bcc"] = formatted(bcc)
    msg["Subject"] = one_line(draft.subject)
    msg["Date"] = rfc5322_date(date)
    msg["Message-ID"] = message_id
    in_reply_to = msg_ids(draft.in_reply_to, limit=1 << 10)  # no id holding "=?" (decoded twice otherwise)
    references = msg_ids(draft.references, limit=1 << 10)
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    for name, value in extra:
        msg[name] = one_line(value)
    msg["MIME-Version"] = "1.0"
    return b"".join(POLICY.fold_binary(name, value) for name, value in msg.raw_items())


def bcc_field(bcc: Sequence[tuple[str, str]]) -> bytes:
    """The Bcc field of the sender's own copy (RFC 5322 §3.6.3: the copies sent carry none; the sender's copy may,
    as mail clients keep it), folded, CRLF, ASCII (invariant 1); b"" without Bcc recipients."""
    if not bcc:
        return b""
    msg = EmailMessage(policy=POLICY)
    msg["Bcc"] = formatted(bcc)
    return b"".join(POLICY.fold_binary(name, value) for name, value in msg.raw_items())


def text_part(text: str) -> bytes:
    """The text as a whole MIME part (its Content-* fields, a blank line, the body): format=flowed UTF-8, 7bit
    when ASCII, else quoted-printable (RFC 2045 §6.7)."""
    body = flowed.encode(text).replace("\r\n", "\n")
    part = MIMEPart(policy=POLICY)
    cte = "7bit" if body.isascii() else "quoted-printable"
    part.set_content(body, subtype="plain", charset="utf-8", cte=cte, params={"format": "flowed"})
    return part.as_bytes(policy=POLICY)


_LINK = re.compile(r"(?i)\b(?:https?://|mailto:)[^\s<>\"']+")
_STRONG = re.compile(r"\*\*(?=\S)([^*]+?)(?<=\S)\*\*")
_EM = re.compile(r"(?<![*\w])[*_](?=\S)([^*_]+?)(?<=\S)[*_](?![*\w])")
_LIST_ITEM = re.compile(r"^\s*[-*] ")


def _inline(text: str) -> str:
    """One line's text as HTML: escaped; links (http, https, mailto) made `<a>`; `**strong**`, `*em*`/`_em_`."""
    out = []
    pos = 0
    for m in _LINK.finditer(text):
        url = m.group(0).rstrip(".,;:!?)]}")
        out.append(_emphasis(html.escape(text[pos:m.start()], quote=False)))
        out.append(f'<a href="{html.escape(url)}">{html.escape(url, quote=False)}</a>')
        pos = m.start() + len(url)
    out.append(_emphasis(html.escape(text[pos:], quote=False)))
    return "".join(out)


def _emphasis(escaped: str) -> str:
    return _EM.sub(r"<em>\1</em>", _STRONG.sub(r"<strong>\1</strong>", escaped))


def _blocks(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith(">"):  # a quote: its lines without one ">" (and a stuffing space), read again
            inner = []
            while i < len(lines) and lines[i].startswith(">"):
                rest = lines[i][1:]
                inner.append(rest[1:] if rest.startswith(" ") else rest)
                i += 1
            out.append("<blockquote>" + "".join(_blocks(inner)) + "</blockquote>")
        elif _LIST_ITEM.match(line):
            items = []
            while i < len(lines) and _LIST_ITEM.match(lines[i]):
                items.append("<li>" + _inline(_LIST_ITEM.sub("", lines[i], count=1)) + "</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif not line.strip():
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(">") \
                    and not _LIST_ITEM.match(lines[i]):
                para.append(_inline(lines[i]))
                i += 1
            out.append("<p>" + "<br>\n".join(para) + "</p>")
    return out


def rich_html(text: str) -> str:
    """The rich-text mode's HTML twin of the typed text, from a small safe subset (nothing of the text is ever
    markup: it is escaped first): paragraphs (blank lines) and line breaks, `**strong**`, `*emphasis*`,
    lists of lines starting "- " or "* ", quotes of lines starting ">", and http(s)/mailto links."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "\n".join(_blocks(lines))
    return f'<!doctype html>\n<html><head><meta charset="utf-8"></head><body>\n{body}\n</body></html>\n'


def html_part(text: str) -> bytes:
    """`rich_html(text)` as a whole text/html MIME part, 7bit when ASCII, else quoted-printable."""
    doc = rich_html(text)
    part = MIMEPart(policy=POLICY)
    part.set_content(doc, subtype="html", charset="utf-8", cte="7bit" if doc.isascii() and
                     all(len(line) <= 998 for line in doc.split("\n")) else "quoted-printable")
    return part.as_bytes(policy=POLICY)


def _boundary(verbatim: Sequence[bytes]) -> tuple[str, bytes]:
    """A boundary and its delimiter line (invariant 2)."""
    while True:
        boundary = f"=_postroom_{uuid.uuid4().hex}"
        marker = b"--" + boundary.encode()
        if not any(marker in v for v in verbatim):
            return boundary, marker


def body_part(draft: Draft) -> bytes:
    """The text (`text_part`), or with `draft.rich` a multipart/alternative of the text and its HTML twin (RFC 2046
    §5.1.4: the plainest first), as a whole MIME part."""
    text = text_part(draft.text)
    if not draft.rich:
        return text
    html_bytes = html_part(draft.text)
    boundary, marker = _boundary([text, html_bytes])
    return (f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'.encode()
            + marker + b"\r\n" + text + b"\r\n" + marker + b"\r\n" + html_bytes + b"\r\n" + marker + b"--\r\n")


def attachment_head(a: Attachment, cte: str) -> bytes:
    """The Content-* fields of an attachment part (RFC 2231 names) and the blank line."""
    part = MIMEPart(policy=POLICY)
    mime_type = a.mime_type if re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", a.mime_type.lower()) \
        else "application/octet-stream"
    part["Content-Type"] = mime_type.lower()
    name = one_line(a.filename)[:200] or "attachment"
    if not a.rfc822:
        part.set_param("name", name)
    part["Content-Disposition"] = "attachment"
    part.set_param("filename", name, header="Content-Disposition")
    part["Content-Transfer-Encoding"] = cte
    return b"".join(POLICY.fold_binary(k, v) for k, v in part.raw_items()) + b"\r\n"


def _rfc822_cte(data: bytes) -> str:
    return "7bit" if data.isascii() else "8bit"


def write_message(out: BinaryIO, draft: Draft, head: bytes) -> int:
    """Write the whole message (module essay) into `out`: `head` (from `header_bytes`), then the body with the
    draft's text and attachments. Returns the octets written. Runs in a worker thread (invariant 3)."""
    text = body_part(draft)
    written = 0

    def put(data: bytes) -> None:
        nonlocal written
        out.write(data)
        written += len(data)

    if not draft.attachments:
        put(head + text)
        return written
    boundary, marker = _boundary([text] + [a.source for a in draft.attachments
                                           if a.rfc822 and isinstance(a.source, bytes)])
    put(head + f'Content-Type: multipart/mixed;\r\n boundary="{boundary}"\r\n\r\n'.encode())  # folded: < 78
    put(b"This is a message in MIME format.\r\n")
    put(b"\r\n" + marker + b"\r\n" + text)
    for a in draft.attachments:
        put(b"\r\n" + marker + b"\r\n")
        if a.rfc822:
            data = a.source if isinstance(a.source, bytes) else a.source.read()
            put(attachment_head(a, _rfc822_cte(data)))
            put(data if data.endswith(b"\r\n") else data + b"\r\n")
            continue
        put(attachment_head(a, "base64"))
        if isinstance(a.source, bytes):
            for i in range(0, len(a.source), CHUNK):
                put(base64.encodebytes(a.source[i:i + CHUNK]).replace(b"\n", b"\r\n"))
        else:
            while chunk := a.source.read(CHUNK):
                while len(chunk) % 57 and (more := a.source.read(57 - len(chunk) % 57)):
                    chunk += more  # short reads: whole base64 lines only, until the end
                put(base64.encodebytes(chunk).replace(b"\n", b"\r\n"))
    put(b"\r\n" + marker + b"--\r\n")
    return written
