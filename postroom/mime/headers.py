"""Header fields and MIME parameters, read from raw bytes without re-serialising anything.

Theory of operation
-------------------
A header block is the bytes from a part's header start up to (not including) the empty line that ends it.
`split_fields` cuts it into fields: a field starts at a line whose first byte is not SP/HTAB and runs over the
folded continuation lines that follow (RFC 5322 §2.2.3). Each field keeps its raw value (folding included), so
callers that must echo bytes (IMAP ENVELOPE, HEADER.FIELDS) can, and callers that want a value can unfold it.

Content-Type, Content-Disposition and their parameters are read by a small tokenizer over the value decoded as
UTF-8 with `surrogateescape`, so every original byte survives a round trip (`to_bytes`) even when a peer put
8-bit or invalid UTF-8 in a header. RFC 2231 continuations (`name*0`, `name*1*`, ...) are merged into one
parameter; an extended value keeps its `name*` form and `charset'lang'%XX` text the way Dovecot returns it in
BODYSTRUCTURE, and `param_value` decodes it for callers that want text. An extended value with raw 8-bit
bytes (RFC 2231 §7 allows only %-encoded octets; old mailers write them) is decoded with those octets taken as
themselves, and `parse_params` reports it as not ok (a defect for the caller). Charset names from any header
go through `charset_codec`, which only ever answers a text codec that is a real charset.

Invariants:
1. Nothing here raises on any input; malformed syntax gives the best reading plus `False` from the `ok` flag
   where a caller records a defect.
2. `to_bytes(to_str(b)) == b` for every byte string (surrogateescape).
3. Parameter names and values keep their case as sent (IMAP echoes them; boundaries are case-sensitive,
   RFC 2046 §5.1.1); names compare case-insensitively.
"""

from __future__ import annotations

import codecs
import functools
import re
import urllib.parse
from dataclasses import dataclass

Params = tuple[tuple[str, str], ...]

_UNFOLD = re.compile(rb"\r?\n(?=[ \t])")
# A field line's name and its colon (RFC 5322 §2.2: printable US-ASCII but ":"; blanks before the colon are
# obs-hdr, §4.5.8). The name cannot hold ":" or a line end, so the colon matched is the line's first.
_FIELD_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+)[ \t]*:")
_CONT = re.compile(r"^(.*?)\*(\d{1,9})(\*?)$")  # RFC 2231 §3 section numbers; 9 digits keep int() cheap and bounded
_EXT_VALUE = re.compile(r"[!-~]*")  # RFC 2231 §7 extended-value: attribute-char, "%" hex, "'" (all 7-bit)


def to_str(value: bytes) -> str:
    """Header bytes as text: UTF-8, undecodable bytes kept as surrogates (`to_bytes` gives them back exactly)."""
    return value.decode("utf-8", "surrogateescape")


def to_bytes(value: str) -> bytes:
    """The inverse of `to_str`: the original bytes, surrogates included."""
    return value.encode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class Field:
    """One header field: its lower-cased name, the raw value (after the colon, folding kept, no final line end),
    and where the field starts and ends (end includes its line end) in the message."""

    name: str
    value: bytes
    start: int
    end: int

    def unfolded(self) -> bytes:
        """The value with folding line ends removed (RFC 5322 §2.2.3) and surrounding blanks stripped."""
        return _UNFOLD.sub(b"", self.value).strip(b" \t\r\n")


def field_text(text: str, limit: int = 998) -> str:
    """Decoded or typed `text` made safe as the value of an unstructured header field or a display name that
    Python's `email` header registry will parse: control characters (CR, LF, NUL...) as spaces and blanks
    collapsed (RFC 5322 §2.2: a field body is printable characters and blanks), at most `limit` characters, and
    every encoded-word opener "=?" broken by a zero-width space, since the registry decodes RFC 2047 words in a
    value it is given (RFC 2047 §2): text that was already decoded once, from a word encoded twice, would
    otherwise be decoded again into new lines, new fields and a new body."""
    one = " ".join("".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).split())[:limit]
    return one.replace("=?", "=\u200b?")


def split_fields(raw: bytes, start: int, end: int) -> tuple[list[Field], bool]:
    """Cut raw[start:end] (a header block) into fields. Returns (fields, ok); ok is False when a line was neither
    a field nor a continuation (it is skipped: RFC 5322 has no place for it)."""
    fields: list[Field] = []
    ok = True
    block = raw[start:end]
    pos = 0
    n = len(block)
    cur_name: str | None = None
    cur_start = 0
    cur_vstart = 0
    cur_end = 0
    while pos < n:
        nl = block.find(b"\n", pos)
        line_end = n if nl < 0 else nl + 1
        first = block[pos : pos + 1]
        if first in (b" ", b"\t"):
            if cur_name is not None:
                cur_end = line_end
            else:
                ok = False
        else:
            if cur_name is not None:
                fields.append(_make_field(block, start, cur_name, cur_start, cur_vstart, cur_end))
                cur_name = None
            m = _FIELD_NAME.match(block, pos)
            if m is not None:
                cur_name = m.group(1).decode("ascii").lower()
                cur_start = pos
                cur_vstart = m.end()
                cur_end = line_end
            elif block[pos:line_end].strip(b"\r\n"):
                ok = False
        pos = line_end
    if cur_name is not None:
        fields.append(_make_field(block, start, cur_name, cur_start, cur_vstart, cur_end))
    return fields, ok


def _make_field(block: bytes, base: int, name: str, start: int, vstart: int, end: int) -> Field:
    vend = end  # the value ends before the line end, LF or CRLF (block[vstart - 1] is the colon)
    if block[vend - 1] == 0x0A:
        vend -= 1
        if block[vend - 1] == 0x0D:
            vend -= 1
    return Field(name, block[vstart:vend], base + start, base + end)


def first_field(fields: list[Field], name: str) -> Field | None:
    """The first field named `name` (lower case), or None."""
    for f in fields:
        if f.name == name:
            return f
    return None


# --------------------------------------------------------------------------------------------------------
# A small RFC 822 / RFC 2045 tokenizer over str (surrogateescaped bytes).

_TSPECIALS = set('()<>@,;:\\"/[]?=')
_TOKEN = re.compile(r'[^\x00-\x20\x7f()<>@,;:\\"/\[\]?=]*')  # RFC 2045 §5.1 token: not tspecials, blanks, CTLs


def skip_cfws(s: str, i: int) -> int:
    """Skip blanks, line ends and (nested) comments from i."""
    n = len(s)
    if i < n and s[i] not in " \t\r\n(":
        return i
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            i += 1
        elif c == "(":
            depth = 0
            while i < n:
                c = s[i]
                if c == "\\":
                    i += 2
                    continue
                if c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        i += 1
                        break
                i += 1
        else:
            break
    return min(i, n)


def read_quoted(s: str, i: int) -> tuple[str, int]:
    """s[i] is '"'. Returns the unquoted content (backslash escapes removed, folding removed) and the index after
    the closing quote (or the end of s for an unterminated string)."""
    close = s.find('"', i + 1)
    if close >= 0:
        inner = s[i + 1 : close]
        if "\\" not in inner and "\r" not in inner and "\n" not in inner:
            return inner, close + 1  # no escape and no folding: the text up to the next quote, as it is
    out: list[str] = []
    i += 1
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n:
            out.append(s[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        if c not in "\r\n":
            out.append(c)
        i += 1
    return "".join(out), n


def read_token(s: str, i: int, stop: str = "") -> tuple[str, int]:
    """An RFC 2045 token from i (stops at blanks, controls, tspecials, and the extra `stop` characters)."""
    if not stop and i <= len(s):
        m = _TOKEN.match(s, i)
        assert m is not None  # the pattern matches the empty string
        return m.group(), m.end()
    j = i
    n = len(s)
    while j < n:
        c = s[j]
        if c in _TSPECIALS or c in stop or c <= " " or c == "\x7f":
            break
        j += 1
    return s[i:j], j


def parse_params(s: str, i: int) -> tuple[Params, bool]:
    """Parameters `; name=value` from i to the end of s (RFC 2045 §5.1), RFC 2231 continuations merged.

    Lenient where the Internet is: an unquoted value runs to the next ';' (boundaries like `----=_Part` are
    common though '=' is a tspecial), a parameter without '=' is skipped, duplicate names keep the first."""
    ok = True
    raw: list[tuple[str, str]] = []
    n = len(s)
    while True:
        i = skip_cfws(s, i)
        if i >= n:
            break
        if s[i] != ";":
            ok = False
            semi = s.find(";", i)
            if semi < 0:
                break
            i = semi
        i = skip_cfws(s, i + 1)
        if i >= n:
            break
        name, j = read_token(s, i)
        j = skip_cfws(s, j)
        if not name or j >= n or s[j] != "=":
            ok = False
            semi = s.find(";", j)
            if semi < 0:
                break
            i = semi
            continue
        j = skip_cfws(s, j + 1)
        if j < n and s[j] == '"':
            value, j = read_quoted(s, j)
        else:
            semi = s.find(";", j)
            end = n if semi < 0 else semi
            value = s[j:end]
            # A trailing comment after an unquoted value is not part of it.
            paren = value.find("(")
            if paren >= 0:
                value = value[:paren]
            value = value.strip(" \t\r\n")
            j = end
        if name.endswith("*") and not _EXT_VALUE.fullmatch(value):
            ok = False  # RFC 2231 §7: an extended value is %-encoded US-ASCII; raw 8-bit is kept, but a defect
        raw.append((name, value))
        i = j
    return _merge_2231(raw), ok


def _merge_2231(raw: list[tuple[str, str]]) -> Params:
    """RFC 2231 §3: `name*0`, `name*1`, ... are one value, joined in numeric order at the place of the first
    section. If any section is extended (`*N*`) the merged parameter is `name*` and its value stays encoded
    (`charset'lang'%XX...`), the plain sections appended as they are; Dovecot returns the same. A name seen twice
    keeps its first value."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    conts: dict[str, list[tuple[int, bool, str]]] = {}
    for name, value in raw:
        m = _CONT.match(name)
        if m:
            base = m.group(1)
            key = base.lower()
            if key not in conts:
                conts[key] = []
                out.append(("\0" + base, ""))
            conts[key].append((int(m.group(2)), bool(m.group(3)), value))
            continue
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        out.append((name, value))
    if not conts:
        return tuple(out)
    result: list[tuple[str, str]] = []
    for name, value in out:
        if name.startswith("\0"):
            base = name[1:]
            sections = sorted(conts[base.lower()], key=lambda t: t[0])
            extended = any(ext for _, ext, _ in sections)
            name = base + "*" if extended else base
            value = "".join(v for _, _, v in sections)
            if name.lower() in seen:
                continue
            seen.add(name.lower())
        result.append((name, value))
    return tuple(result)


def param_value(params: Params, name: str) -> str | None:
    """The value of parameter `name` as text: a plain value as is; an RFC 2231 extended value (`name*`) decoded
    with its charset (unknown charsets: UTF-8 with replacement). None if absent."""
    name = name.lower()
    for k, v in params:
        if k.lower() == name:
            return v
    for k, v in params:
        if k.lower() == name + "*":
            return decode_2231(v)
    return None


def decode_2231(value: str) -> str:
    """An RFC 2231 extended value `charset'language'%XX...` as text (never raises, invariant 1). Octets that
    arrived raw instead of %-encoded (8-bit bytes old mailers write) count as themselves; an unknown charset,
    or a name that is no charset (`charset_codec`), reads as UTF-8 with replacement."""
    parts = value.split("'", 2)
    if len(parts) != 3:
        return urllib.parse.unquote(value, errors="replace")
    # to_bytes: the value is surrogate-escaped bytes; unquote_to_bytes would encode a str as strict UTF-8.
    data = urllib.parse.unquote_to_bytes(to_bytes(parts[2]))
    codec = charset_codec(parts[0] or "us-ascii") or "utf-8"
    try:
        return data.decode(codec, "replace")
    except (LookupError, UnicodeError, ValueError):  # a codec that fails anyway must not stop delivery
        return data.decode("utf-8", "replace")


# Codecs Python knows that are not character sets a message may declare: host-name and escape codecs, the
# codec that always fails, and UTF-7 (RFC 2152), which the WHATWG Encoding Standard forbids supporting because
# its shifted base64 turns harmless-looking bytes into markup. They read as an undeclared charset instead.
_NOT_CHARSETS = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined", "utf-7",
                           "mbcs", "oem"})
_CHARSET_NAME = re.compile(r"[!-~]{1,40}")  # RFC 2978 §2.3: at most 40 printable US-ASCII characters


@functools.lru_cache(maxsize=256)
def charset_codec(name: str) -> str | None:
    """The Python codec for a MIME charset name (RFC 2045 §5.1 `charset`, RFC 2047 / RFC 2231 charset), or
    None when the name is not a charset: unknown, longer than 40 characters, with a NUL, blank or 8-bit byte in
    it, a codec that is not a text encoding (`rot13`, `base64`, `zlib`: bytes-to-bytes), or one of
    `_NOT_CHARSETS`. Never raises; cached, since a mailbox uses few names."""
    name = name.strip().strip('"')
    if not _CHARSET_NAME.fullmatch(name):
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, UnicodeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_CHARSETS:
        return None
    return info.name


def parse_content_type(value: bytes) -> tuple[str, str, Params, bool]:
    """`type/subtype; params` -> (type, subtype, params, ok). Type and subtype keep their case (IMAP returns
    them as sent); an unusable value gives ('', '', params, False) and the caller applies the default."""
    s = to_str(value)
    i = skip_cfws(s, 0)
    typ, i = read_token(s, i)
    i = skip_cfws(s, i)
    if not typ or i >= len(s) or s[i] != "/":
        params, _ = parse_params(s, s.find(";") if ";" in s else len(s))
        return "", "", params, False
    i = skip_cfws(s, i + 1)
    sub, i = read_token(s, i)
    if not sub:
        params, _ = parse_params(s, s.find(";", i) if ";" in s[i:] else len(s))
        return "", "", params, False
    params, ok = parse_params(s, i)
    return typ, sub, params, ok


def parse_disposition(value: bytes) -> tuple[str, Params, bool]:
    """`inline; filename=...` (RFC 2183) -> (type, params, ok); type '' when unusable, ok False when the
    parameters were malformed (the caller records a defect)."""
    s = to_str(value)
    i = skip_cfws(s, 0)
    typ, i = read_token(s, i)
    params, ok = parse_params(s, i)
    return typ, params, ok


def parse_token_value(value: bytes) -> str:
    """A single token field (Content-Transfer-Encoding): comments and blanks removed."""
    s = to_str(value)
    i = skip_cfws(s, 0)
    tok, _ = read_token(s, i)
    return tok


def parse_language(value: bytes) -> tuple[str, ...]:
    """Content-Language (RFC 3282): a comma list of language tags."""
    s = to_str(value)
    out: list[str] = []
    for piece in s.split(","):
        piece = piece.strip()
        j = skip_cfws(piece, 0)
        tok, _ = read_token(piece, j)
        if tok:
            out.append(tok)
    return tuple(out)
