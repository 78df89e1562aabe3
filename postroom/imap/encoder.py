"""Sans-I/O IMAP response encoding: strings, mailbox names, flag lists, sequence sets, dates (RFC 9051 §4, §7).

Theory of operation
-------------------
Pure functions from values to wire bytes. Sessions build a response as a list of byte chunks and write them
with one `writelines`; nothing here allocates more than the value it encodes.

Invariants
1. A string is sent quoted when it is 7-bit without CR, LF, NUL, and not too long; otherwise as a literal
   (`mime.imap.istring`, shared with the stored ENVELOPE/BODYSTRUCTURE).
2. Mailbox names go out in modified UTF-7 (RFC 3501 §5.1.3) unless the session enabled IMAP4rev2, whose names
   are UTF-8 (RFC 9051 §5.1); then they are quoted UTF-8 or a literal.
3. `seqset` writes a set in ascending order with runs collapsed (`1:3,7`), as ESEARCH wants; `seqset_ordered`
   keeps the order given and collapses only ascending runs, since COPYUID pairs its source and destination UIDs
   by position (RFC 4315 §3).
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Sequence

from postroom.flags import flags_to_names
from postroom.imap.mutf7 import mutf7_decode, mutf7_encode
from postroom.mime.imap import istring

from .parser import MONTHS

_QUOTE_MAX = 1024
_UNQUOTABLE = re.compile(rb"[\x00-\x1f\x7f]")


def quoted(value: str | bytes) -> bytes:
    """`value` as a quoted string (RFC 9051 §9 `quoted`: `\\` and `"` escaped), text as UTF-8. The caller makes sure it
    may be quoted (no CR, LF or NUL: invariant 1); `string` decides for it."""
    b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value: str | bytes | None) -> bytes:
    """nstring: NIL, quoted, or literal (invariant 1)."""
    if value is not None and len(value) > _QUOTE_MAX:
        b = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        return b"{%d}\r\n" % len(b) + b
    return istring(value)


def mailbox(name: str, utf8: bool) -> bytes:
    """A mailbox name as the session speaks (invariant 2). INBOX is always spelled INBOX."""
    if not utf8:
        return string(mutf7_encode(name))
    b = name.encode("utf-8", "surrogateescape")
    if len(b) <= _QUOTE_MAX and not _UNQUOTABLE.search(b):
        try:
            b.decode("utf-8")
        except UnicodeDecodeError:
            return string(b)
        return quoted(b)  # RFC 9051 §9: utf8-quoted
    return string(b)


def decode_mailbox(name: str, utf8: bool) -> str:
    """The stored name for a client's mailbox argument. Raises ValueError for broken modified UTF-7, including
    a 7-bit name that is not in the one canonical form (RFC 3501 §5.1.3: base64 "MUST NOT be used to represent
    any printing US-ASCII character which can represent itself"; `&AGE-` for "a" would alias a second name)."""
    if utf8 or "&" not in name:
        return name  # a rev1 client sending raw UTF-8 means it; accept it as Dovecot does
    decoded = mutf7_decode(name)
    if name.isascii() and mutf7_encode(decoded) != name:
        raise ValueError("modified UTF-7 not in canonical form")
    return decoded


@functools.lru_cache(maxsize=4096)
def flag_list(flags: int, keywords: frozenset[str] = frozenset(), recent: bool = False) -> bytes:
    """`(\\Seen $Label)`; cached, since a mailbox has few distinct combinations (FETCH 1:* FLAGS)."""
    names = flags_to_names(flags)
    if recent:
        names.append("\\Recent")
    names.extend(sorted(keywords))
    return ("(" + " ".join(names) + ")").encode("utf-8", "surrogateescape")


def seqset(numbers: Sequence[int]) -> bytes:
    """Sorted, collapsed (invariant 3). Empty input gives b"" (callers decide what an empty set means)."""
    return seqset_ordered(sorted(set(numbers)))


def seqset_ordered(numbers: Sequence[int]) -> bytes:
    """Like `seqset` but keeping the given order (COPYUID pairs source and destination UIDs by position)."""
    if not numbers:
        return b""
    out: list[str] = []
    start = prev = numbers[0]
    for n in numbers[1:]:
        if n == prev + 1:
            prev = n
            continue
        out.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    out.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(out).encode("ascii")


def internal_date(ts: float) -> bytes:
    """date-time "dd-Mon-yyyy hh:mm:ss +zzzz" (RFC 9051 §9), in UTC."""
    t = time.gmtime(int(ts))
    return b'"%2d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


def response_code_text(code: str, text: str) -> bytes:
    """`[code] text` (RFC 9051 §7.1 resp-text), or `text` without a code; UTF-8."""
    return (f"[{code}] {text}" if code else text).encode("utf-8", "replace")
