"""IMAP views of a scanned message: ENVELOPE, BODY, BODYSTRUCTURE, sections, BINARY (RFC 9051, RFC 3516).

Theory of operation
-------------------
Everything here works from the raw bytes and the `Part` tree of `structure.scan`; nothing is re-serialised.

* `envelope(fields)` and `bodystructure(root, extensible)` return the IMAP wire bytes of the FETCH item's value
  (what follows `ENVELOPE ` / `BODYSTRUCTURE `), computed once at delivery and stored;
  `bodystructure_and_body(root)` makes BODYSTRUCTURE and BODY in one walk (wire rule 4: BODY is BODYSTRUCTURE
  without the extension data).
* `Section` names a FETCH body section (`BODY[1.2.MIME]`, `BODY[HEADER.FIELDS (A B)]`, ...). `section_bytes`
  returns its bytes (slices of the raw message, except HEADER.FIELDS which joins the chosen field lines) or
  None for a part the message does not have. `partial` applies `<start.length>`.
* `binary_bytes` decodes a part's Content-Transfer-Encoding for `BINARY[...]` (with `cte.decode_body`, the one
  decoder); its length is BINARY.SIZE.

Wire rules (RFC 9051 §4.3, §7.5.2):
1. A string is quoted when it is 7-bit with no CR, LF or NUL; `"` and `\\` are escaped. Otherwise it is a
   literal `{n}\\r\\n` + bytes (8-bit header text and parameter values with NUL/CR/LF stay byte-exact).
2. NIL stands for an absent value; an empty header value is the empty string `""`.
3. ENVELOPE strings are the header text unfolded (RFC 5322 §2.2.3: line ends removed) and stripped; RFC 2047
   encoded words are left as they are. Sender and Reply-To default to From when absent (RFC 9051 §7.5.2).
4. BODY is the non-extensible form; BODYSTRUCTURE adds MD5, disposition, language and location for every part
   and the parameters for multiparts. Types, subtypes, parameter names and encodings are echoed as sent; an
   absent Content-Type is "text" "plain" ("charset" "us-ascii"), a text part without charset gets
   ("charset" "us-ascii") appended (RFC 2045 §5.2), an absent encoding is "7bit".
5. Lines are given for text/* and for message/rfc822 and message/global (RFC 9051 §7.5.2 treats both as
   encapsulated messages; Dovecot 2.3 does not know message/global and reports it as a basic part).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postroom.mime import headers as H
from postroom.mime.address import Address, Parsed, parse_address_list
from postroom.mime.cte import UnknownCTE as UnknownCTE  # raised by binary_bytes; re-exported for callers
from postroom.mime.cte import decode_body
from postroom.mime.structure import Part, find_part

NIL = b"NIL"
_UNFOLD = re.compile(rb"\r?\n")
# Octets searched for with `int in bytes`: `bytes in bytes` first tries its argument as an int and clears the
# TypeError (CPython 3.11), several times the cost of the search itself on short strings.
_NUL, _LF, _CR, _DQUOTE, _BACKSLASH = 0x00, 0x0A, 0x0D, 0x22, 0x5C


# --------------------------------------------------------------------------------------------------------
# Strings


def istring(value: bytes | str | None) -> bytes:
    """An IMAP nstring: NIL, a quoted string, or a literal (wire rule 1)."""
    if value is None:
        return NIL
    if value.__class__ is str:
        value = value.encode("utf-8", "surrogateescape")
    assert isinstance(value, bytes)
    if not value.isascii() or _CR in value or _LF in value or _NUL in value:
        return b"{%d}\r\n" % len(value) + value
    if _DQUOTE in value or _BACKSLASH in value:
        value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
    return b'"' + value + b'"'


def _header_text(value: bytes) -> bytes:
    return _UNFOLD.sub(b"", value).strip(b" \t")  # bytes also for a bytearray value (a worker's staged read)


# --------------------------------------------------------------------------------------------------------
# ENVELOPE


def _first(fields: list[H.Field], name: str) -> H.Field | None:
    return H.first_field(fields, name)


def _addresses(fields: list[H.Field], name: str, parsed: Parsed | None = None) -> list[Address]:
    out: list[Address] = []
    for f in fields:
        if f.name == name:
            out.extend(parse_address_list(f.value) if parsed is None else parsed.of(f.value))
    return out


def _address_list(addrs: list[Address]) -> bytes:
    if not addrs:
        return NIL
    return (
        b"("
        + b"".join(
            b"(%s %s %s %s)" % (istring(a.name), istring(a.adl), istring(a.mailbox), istring(a.host))
            for a in addrs
        )
        + b")"
    )


def envelope(fields: list[H.Field], parsed: Parsed | None = None) -> bytes:
    """ENVELOPE of the message whose header fields are given (RFC 9051 §7.5.2): date, subject, from, sender,
    reply-to, to, cc, bcc, in-reply-to, message-id. `parsed`: the message's address lists parsed so far, shared
    with its other views (`mime.meta`); the answer is the same with or without it."""
    out: list[bytes] = []
    for name in ("date", "subject"):
        f = _first(fields, name)
        out.append(NIL if f is None else istring(_header_text(f.value)))
    frm = _addresses(fields, "from", parsed)
    sender = _addresses(fields, "sender", parsed)
    reply_to = _addresses(fields, "reply-to", parsed)
    from_list = _address_list(frm)
    out.append(from_list)
    out.append(_address_list(sender) if sender else from_list)  # wire rule 3: defaults to From
    out.append(_address_list(reply_to) if reply_to else from_list)
    for name in ("to", "cc", "bcc"):
        out.append(_address_list(_addresses(fields, name, parsed)))
    for name in ("in-reply-to", "message-id"):
        f = _first(fields, name)
        out.append(NIL if f is None else istring(_header_text(f.value)))
    return b"(" + b" ".join(out) + b")"


EMPTY_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


# --------------------------------------------------------------------------------------------------------
# BODY / BODYSTRUCTURE


def _params(params: H.Params) -> bytes:
    if not params:
        return NIL
    return b"(" + b" ".join(istring(k) + b" " + istring(v) for k, v in params) + b")"


def _text_params(part: Part) -> H.Params:
    if part.type.lower() == "text" and not any(k.lower() == "charset" for k, _ in part.params):
        return part.params + (("charset", "us-ascii"),)
    return part.params


def _disposition(part: Part) -> bytes:
    if part.disposition is None:
        return NIL
    return b"(" + istring(part.disposition[0]) + b" " + _params(part.disposition[1]) + b")"


def _language(part: Part) -> bytes:
    if not part.language:
        return NIL
    return b"(" + b" ".join(istring(x) for x in part.language) + b")"


def _ext_tail(part: Part) -> bytes:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc (shared by body-ext-1part and body-ext-mpart)."""
    return _disposition(part) + b" " + _language(part) + b" " + istring(part.location)


def _is_message_type(part: Part) -> bool:
    return part.type.lower() == "message" and part.subtype.lower() in ("rfc822", "global")


def bodystructure(root: Part, extensible: bool = True) -> bytes:
    """BODYSTRUCTURE (extensible=True) or BODY (False) of the message whose root part is given."""
    bs, body = bodystructure_and_body(root)
    return bs if extensible else body


def bodystructure_and_body(root: Part) -> tuple[bytes, bytes]:
    """(BODYSTRUCTURE, BODY) of the message whose root part is given, in one walk of the tree: BODY is
    BODYSTRUCTURE without the extension data (wire rule 4), so each piece both carry (media type, fields, the
    ENVELOPE of an encapsulated message) is made once and given to both."""
    bs: list[bytes] = []
    body: list[bytes] = []

    def both(piece: bytes) -> None:
        bs.append(piece)
        body.append(piece)

    # Iterative post-order over the tree so that no input depth can exhaust the Python stack.
    # Work items: (0, part) to open a part, (1, part) to close a multipart, (2, part) to close a message part.
    stack: list[tuple[int, Part]] = [(0, root)]
    while stack:
        state, part = stack.pop()
        if state == 0:
            if part.children:
                both(b"(")
                stack.append((1, part))
                for child in reversed(part.children):
                    stack.append((0, child))
                continue
            if part.opaque and not _is_message_type(part) and part.type.lower() == "multipart":
                # Past a limit: reported as opaque data; its bytes stay reachable as BODY[n].
                basic = _basic(part, b'"application" "octet-stream"', NIL, None)
                bs.append(basic + b" " + _ext1(part) + b")")
                body.append(basic + b")")
                continue
            if _is_message_type(part):
                both(b"(" + _fields(part, _text_params(part)))
                if part.message is None:
                    # An encoded message/rfc822 (RFC 2046 §5.2.1 forbids it) or one past a limit: an empty
                    # envelope and body, as Dovecot reports it.
                    empty = b" " + EMPTY_ENVELOPE + b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0'
                    fld_lines = b" %d" % part.lines
                    bs.append(empty + b" NIL NIL NIL NIL)" + fld_lines + b" " + _ext1(part) + b")")
                    body.append(empty + b")" + fld_lines + b")")
                    continue
                both(b" " + envelope(part.message.fields) + b" ")
                stack.append((2, part))
                stack.append((0, part.message))
                continue
            media = istring(part.type) + b" " + istring(part.subtype)
            lines = part.lines if part.type.lower() == "text" else None
            basic = _basic(part, media, _params(_text_params(part)), lines)
            bs.append(basic + b" " + _ext1(part) + b")")
            body.append(basic + b")")
        elif state == 1:  # close a multipart
            tail = b" " + istring(part.subtype)
            bs.append(tail + b" " + _params(part.params) + b" " + _ext_tail(part) + b")")
            body.append(tail + b")")
        else:  # close a message part
            fld_lines = b" %d" % part.lines
            bs.append(fld_lines + b" " + _ext1(part) + b")")
            body.append(fld_lines + b")")
    return b"".join(bs), b"".join(body)


def _fields(part: Part, params: H.Params) -> bytes:
    """media SP body-fields for a message part."""
    return (
        istring(part.type)
        + b" "
        + istring(part.subtype)
        + b" "
        + _params(params)
        + b" "
        + istring(part.id)
        + b" "
        + istring(part.description)
        + b" "
        + istring(part.encoding or "7bit")
        + b" %d" % part.size
    )


def _ext1(part: Part) -> bytes:
    return istring(part.md5) + b" " + _ext_tail(part)


def _basic(part: Part, media: bytes, params: bytes, lines: int | None) -> bytes:
    """"(" media SP body-fields [SP body-fld-lines] of a basic or text part: its BODY form without the closing
    parenthesis, which BODYSTRUCTURE extends with body-ext-1part."""
    s = (
        b"("
        + media
        + b" "
        + params
        + b" "
        + istring(part.id)
        + b" "
        + istring(part.description)
        + b" "
        + istring(part.encoding or "7bit")
        + b" %d" % part.size
    )
    if lines is not None:
        s += b" %d" % lines
    return s


# --------------------------------------------------------------------------------------------------------
# Sections (RFC 9051 §6.4.5)

_SECTION = re.compile(
    r"^(?P<part>\d+(?:\.\d+)*)?(?:(?:^|\.)(?P<spec>HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME))?"
    r"(?:\s*\((?P<fields>[^)]*)\))?$",
    re.IGNORECASE,
)


class BadSection(ValueError):
    """The section text does not follow RFC 9051 §6.4.5 (the IMAP layer answers BAD)."""


@dataclass(frozen=True, slots=True)
class Section:
    """A FETCH section: numeric part path, specifier ("" for the part itself, HEADER, HEADER.FIELDS,
    HEADER.FIELDS.NOT, TEXT, MIME) and the field names for HEADER.FIELDS[.NOT] (upper-cased)."""

    part: tuple[int, ...] = ()
    specifier: str = ""
    fields: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Section:
        """Parse what is between the brackets of BODY[...]: "", "1.2", "HEADER", "1.2.MIME",
        "HEADER.FIELDS (DATE FROM)", ..."""
        m = _SECTION.match(text.strip())
        if not m:
            raise BadSection(text)
        nums = tuple(int(x) for x in m.group("part").split(".")) if m.group("part") else ()
        if any(n == 0 for n in nums):
            raise BadSection(text)
        spec = (m.group("spec") or "").upper()
        fields_text = m.group("fields")
        if spec.startswith("HEADER.FIELDS"):
            if fields_text is None:
                raise BadSection(text)
            names = tuple(_unquote_astring(x).upper() for x in _ASTRING.findall(fields_text))
            if not names:
                raise BadSection(text)
            return cls(nums, spec, names)
        if fields_text is not None:
            raise BadSection(text)
        if spec == "MIME" and not nums:
            raise BadSection(text)  # RFC 9051 §6.4.5: MIME must be prefixed by a part number
        return cls(nums, spec)


_ASTRING = re.compile(r'"(?:[^"\\]|\\.)*"|[^\s()"]+')


def _unquote_astring(s: str) -> str:
    if s.startswith('"'):
        return re.sub(r"\\(.)", r"\1", s[1:-1])
    return s


def section_bytes(raw: bytes, root: Part, section: Section) -> bytes | None:
    """The bytes of a section, or None when the message has no such part."""
    part = find_part(root, section.part)
    if part is None:
        return None
    spec = section.specifier
    if spec == "":
        if not section.part:
            return raw
        return raw[part.body_start : part.end]
    if spec == "MIME":
        return raw[part.header_start : part.body_start]
    # HEADER / TEXT / HEADER.FIELDS[.NOT] of a message/rfc822 part address its encapsulated message
    # (RFC 9051 §6.4.5). On other parts they read the part's own header and body, leniently.
    msg = part.message if (section.part and part.message is not None) else part
    if spec == "TEXT":
        return raw[msg.body_start : msg.end]
    if spec == "HEADER":
        return raw[msg.header_start : msg.body_start]
    return header_fields(raw, msg.header_start, msg.body_start, section)


def header_fields(raw: bytes, start: int, end: int, section: Section) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT over the header block raw[start:end]: the chosen fields' lines as sent,
    in message order, then the blank line when the header has one (Dovecot does the same)."""
    fields, _ = H.split_fields(raw, start, end)
    wanted = {n.lower() for n in section.fields}
    keep = section.specifier == "HEADER.FIELDS"
    # A field cut off without its line end (header-only message) still ends its line here.
    chunks = [raw[f.start : f.end] for f in fields if (f.name in wanted) == keep]
    chunks = [c if c.endswith(b"\n") else c + b"\r\n" for c in chunks]
    if raw.endswith(b"\n\r\n", start, end) or raw.startswith(b"\r\n", start, end):
        chunks.append(b"\r\n")
    elif raw.endswith(b"\n\n", start, end):
        chunks.append(b"\n")
    return b"".join(chunks)


def literal_safe(data: bytes) -> bytes:
    """BODY[...] answers are IMAP literals, which cannot carry NUL (RFC 9051 §4.3 CHAR8); like Dovecot, send
    each NUL as 0x80. BINARY[...] answers use literal8 and send the bytes as they are (RFC 3516 §4.2)."""
    return data.replace(b"\x00", b"\x80") if b"\x00" in data else data


def partial(data: bytes, start: int, length: int | None) -> bytes:
    """BODY[...]<start.length> (RFC 9051 §6.4.5): an empty string when start is past the end."""
    if start >= len(data):
        return b""
    return data[start:] if length is None else data[start : start + length]


# --------------------------------------------------------------------------------------------------------
# BINARY (RFC 3516)

def binary_bytes(raw: bytes, root: Part, part_path: tuple[int, ...]) -> bytes | None:
    """BINARY[part] content (RFC 3516 §4.2): the part body with its transfer encoding removed; BINARY[] is the
    whole message. None for a missing part; UnknownCTE for an encoding that cannot be undone."""
    if not part_path:
        return raw
    part = find_part(root, part_path)
    if part is None:
        return None
    body = raw[part.body_start : part.end]
    if part.children or part.message is not None:
        return body
    return decode_body(body, part.encoding)
