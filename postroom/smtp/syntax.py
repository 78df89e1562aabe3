"""SMTP syntax shared by the server core and the outbound client: replies, paths, ESMTP parameters, dot-stuffing.

Theory of operation
-------------------
Both ends of SMTP speak the same grammar, so it lives once, here, with no I/O and no Postroom imports (a leaf:
`delivery/client.py` may use it without depending on a protocol layer, tests/test_import_contract.py):

    Reply            one reply: code, enhanced status code (RFC 3463), text lines; rendered with `to_bytes`
                     (what the server sends) or read with `parse_reply_line` (what the client receives)
    parse_path       `<[@route:]local@domain>` of MAIL FROM / RCPT TO (RFC 5321 §4.1.2, RFC 6531 §3.3)
    parse_params     ESMTP parameters `KEY=value` after a path (RFC 5321 §4.1.2 esmtp-param)
    valid_xtext      RFC 3461 §4 xtext (ENVID, ORCPT, AUTH=)
    dot_stuff        the DATA transparency of RFC 5321 §4.5.2, for sending: a whole message, with its end line
    dot_unstuff      the same undone, for receiving: one piece of whole lines at a time

Invariants
1. A Reply the server builds carries an enhanced status code (RFC 2034 §3) whose class digit equals the reply
   code's first digit (RFC 3463 §2), except the 220 greeting and the replies to HELO/EHLO (`esc` ""), which RFC
   2034 §3 exempts. A reply the client parsed keeps its text as received (`esc` "": the code, when the server
   sent one, is the first word of the text; `status` finds it).
2. Reply text is without CR or LF; a multi-line reply is rendered `250-...` / `250 ...` (RFC 5321 §4.2.1). A
   received reply line with a stray CR inside (RFC 5321 §2.3.8: CR only in CRLF) keeps its code, and its text
   has a space there (`parse_reply_line`), so no stray CR reaches a log line or a DSN and a peer's 250 to the
   data still means it has the message.
3. `dot_unstuff(dot_stuff(m))` is `m` (plus the final CRLF `dot_stuff` adds when missing) minus the end line,
   for any `m`, however it is cut into pieces of whole lines.
4. `parse_path` returns an address in the one spelling the store keys on (store/names.py invariant 5).
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

# ---------------------------------------------------------------------------------------------------------
# Replies (RFC 5321 §4.2, RFC 3463, RFC 2034)

_ESC = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass(frozen=True)
class Reply:
    """One SMTP reply. `code` 200-599; `esc` the enhanced status code "x.y.z" the server puts before each line
    ("" for the greeting, HELO/EHLO and a parsed reply: invariant 1); `lines` the text, one per reply line.
    Raises ValueError for an `esc` of another class than `code` or text with CR or LF (invariants 1, 2)."""

    code: int
    esc: str  # "2.1.0"; "" only for the greeting and HELO/EHLO, or a reply read from the wire (invariant 1)
    lines: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.esc and self.esc[0] != str(self.code)[0]:  # invariant 1
            raise ValueError(f"enhanced code {self.esc} does not match {self.code}")
        for line in self.lines:
            if "\r" in line or "\n" in line:  # invariant 2
                raise ValueError("reply text must not contain CR or LF")

    @property
    def text(self) -> str:
        """The reply's lines joined by spaces (without code or `esc`)."""
        return " ".join(self.lines)

    @property
    def is_error(self) -> bool:
        """4xx or 5xx (counted towards the server's `max_errors`)."""
        return self.code >= 400

    @property
    def positive(self) -> bool:
        """2xx or 3xx (RFC 5321 §4.2.1)."""
        return 200 <= self.code < 400

    @property
    def permanent(self) -> bool:
        """5xx: do not try again (RFC 5321 §4.2.1)."""
        return 500 <= self.code < 600

    @property
    def status(self) -> str:
        """The RFC 3463 enhanced status code of the reply: `esc`, else the one its text starts with, else one
        made from the reply code's class (RFC 3463 §3: X.0.0)."""
        if self.esc:
            return self.esc
        if self.lines:
            m = _ESC.match(self.lines[0])
            if m and m.group(1) == str(self.code)[0]:
                return m.group(0)
        return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(self.code // 100, "4.0.0")

    def to_bytes(self) -> bytes:
        """The reply as the server sends it: `code SP esc SP text CRLF`, `code "-" ...` for all but the last
        line (RFC 5321 §4.2.1, RFC 2034 §4)."""
        out = []
        prefix = f"{self.esc} " if self.esc else ""
        last = len(self.lines) - 1
        for i, line in enumerate(self.lines or ("",)):
            sep = " " if i >= last else "-"
            out.append(f"{self.code}{sep}{prefix}{line}".rstrip(" ") + "\r\n")
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        return " ".join(p for p in (str(self.code), self.esc, self.text.strip()) if p)


def parse_reply_line(line: bytes) -> tuple[int, bool, str]:
    """b"250-SIZE 1000\\r\\n" -> (250, True, "SIZE 1000"): the code, whether more lines follow, the text.
    Raises ValueError on a line that is not a reply (RFC 5321 §4.2: three digits, then SP, "-" or the end). A
    stray CR inside the text is a space in the text returned (invariant 2: none reaches a log line or a DSN),
    but the reply stands: once a peer said 250 to the data it has the message (RFC 5321 §6.1), whatever its
    text holds, and a 550 with such a text is still a permanent refusal."""
    text = line.rstrip(b"\r\n").decode("utf-8", "replace")
    if len(text) < 3 or not text[:3].isdigit() or text[0] not in "2345" or (len(text) > 3 and text[3] not in " -"):
        raise ValueError(f"not an SMTP reply: {text[:80]!r}")
    if "\r" in text or "\n" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return int(text[:3]), len(text) > 3 and text[3] == "-", text[4:]


# ---------------------------------------------------------------------------------------------------------
# DATA transparency (RFC 5321 §4.5.2)


def dot_stuff(data: bytes) -> bytes:
    """A whole message as DATA sends it (RFC 5321 §4.5.2): a line starting with "." gets another, a final CRLF
    is added when missing, and the end-of-data line "." CRLF follows. `data` lines end in CRLF (the client checks
    that before, `mime.lineends.stray`)."""
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    stuffed = data.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


def dot_unstuff(piece: bytes | bytearray, at_line_start: bool) -> bytes | bytearray:
    """One piece of received DATA, without the end line, unstuffed (RFC 5321 §4.5.2: the first "." of every line
    that starts with one is removed). `at_line_start`: the piece starts a line (the previous piece ended in
    CRLF). The piece must not end between CR and LF (a "\\r" "\\n." split would hide a stuffed dot)."""
    raw = piece.replace(b"\r\n.", b"\r\n")
    if at_line_start and raw[:1] == b".":
        if isinstance(raw, bytearray):
            del raw[0]  # in place: no second buffer
        else:
            raw = raw[1:]
    return raw


# ---------------------------------------------------------------------------------------------------------
# Paths and parameters (RFC 5321 §4.1.2, RFC 6531 §3.3, RFC 3461 §4)

_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LDH = frozenset(string.ascii_letters + string.digits + "-")
MAX_PATH = 512  # RFC 5321 §4.5.3.1.3: a path is at most 256 octets; be generous, but bounded


def _atext(c: str, utf8: bool) -> bool:
    return c in _ATEXT or (utf8 and ord(c) >= 0x80)


def _is_dot_string(s: str, utf8: bool = True) -> bool:
    return bool(s) and all(part and all(_atext(c, utf8) for c in part) for part in s.split("."))


def _valid_domain(d: str, utf8: bool) -> bool:
    # RFC 5321 §4.1.2 Domain = sub-domain *("." sub-domain); RFC 6531 §3.3 allows U-labels.
    if not d or len(d) > 255:
        return False
    if d.startswith("[") and d.endswith("]"):
        inner = d[1:-1]
        # address-literal: IPv4, "IPv6:..." or a General-address-literal "tag:content" (RFC 5321 §4.1.3)
        return bool(inner) and all(33 <= ord(c) <= 126 and c not in "[]\\" for c in inner)
    for label in d.split("."):
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-"):
            return False
        if not all(c in _LDH or (utf8 and ord(c) >= 0x80) for c in label):
            return False
    return True


class PathError(ValueError):
    """A path or its parameters do not parse (the server answers 501)."""


def parse_path(text: str, *, allow_null: bool, utf8: bool) -> tuple[str, str]:
    """`<[@route:]local@domain> rest` -> (canonical mailbox, rest). The route is dropped (RFC 5321 §4.1.1.3:
    relays MUST ignore source routes; honouring them would let `<@us:victim@there>` relay). A quoted local part
    whose content is a dot-string is unquoted (RFC 5321 §4.1.2: they are the same mailbox). A path without a
    domain (only `<postmaster>` is legal, RFC 5321 §4.1.1.3) comes back without '@'."""
    if not text.startswith("<"):
        raise PathError("path must be enclosed in <>")
    i = 1
    n = len(text)
    if text.startswith("<@"):
        j = text.find(":", i)
        if j < 0:
            raise PathError("bad source route")
        for hop in text[1:j].split(","):
            if not hop.startswith("@") or not _valid_domain(hop[1:], utf8):
                raise PathError("bad source route")
        i = j + 1
    if text.startswith('"', i):
        i += 1
        out = []
        while True:
            if i >= n:
                raise PathError("unterminated quoted string")
            c = text[i]
            if c == "\\":
                if i + 1 >= n or not (32 <= ord(text[i + 1]) <= 126 or (utf8 and ord(text[i + 1]) >= 0x80)):
                    raise PathError("bad quoted pair")
                out.append(text[i + 1])
                i += 2
                continue
            if c == '"':
                i += 1
                break
            if not (32 <= ord(c) <= 126 or (utf8 and ord(c) >= 0x80)):
                raise PathError("bad character in quoted string")
            out.append(c)
            i += 1
        content = "".join(out)
        if _is_dot_string(content, utf8):
            local = content
        else:
            local = '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        j = i
        while j < n and text[j] not in "@>":
            j += 1
        local = text[i:j]
        if local and not _is_dot_string(local, utf8):
            raise PathError("bad local part")
        i = j
    if i >= n:
        raise PathError("path not closed")
    if text[i] == ">":
        rest = text[i + 1:]
        if not local:
            if allow_null:
                return "", rest
            raise PathError("empty path")
        return local, rest
    if text[i] != "@" or not local:
        raise PathError("bad mailbox")
    j = text.find(">", i)
    if j < 0:
        raise PathError("path not closed")
    domain = text[i + 1:j]
    if not _valid_domain(domain, utf8):
        raise PathError("bad domain")
    if j > MAX_PATH:
        raise PathError("path too long")
    return f"{local}@{domain.lower()}", text[j + 1:]


def parse_params(rest: str) -> dict[str, str | None]:
    """ESMTP parameters ` KEY=value KEY ...` (RFC 5321 §4.1.2 esmtp-param; values may be UTF-8, RFC 6531)."""
    params: dict[str, str | None] = {}
    if rest and not rest.startswith(" "):
        raise PathError("junk after path")
    for item in rest.split():
        key, eq, value = item.partition("=")
        if not key or not key[0].isascii() or not key[0].isalnum() \
                or not all(c.isascii() and (c.isalnum() or c == "-") for c in key):
            raise PathError("bad parameter keyword")
        if eq and (not value or "=" in value):
            raise PathError("bad parameter value")
        k = key.upper()
        if k in params:
            raise PathError("duplicate parameter")
        params[k] = value if eq else None
    return params


def valid_xtext(s: str) -> bool:
    """RFC 3461 §4: xtext = *( xchar / hexchar ), hexchar = "+" 2HEXDIG (upper-case)."""
    i = 0
    while i < len(s):
        c = s[i]
        if c == "+":
            h = s[i + 1:i + 3]
            if len(h) != 2 or any(ch not in "0123456789ABCDEF" for ch in h):
                return False
            i += 3
            continue
        if not (33 <= ord(c) <= 126) or c == "=":
            return False
        i += 1
    return True
