"""The lexical layer of the IMAP command syntax (RFC 9051 §9): a cursor over one command's bytes.

Theory of operation
-------------------
`Cursor` walks the bytes of one framed command (literals included, as the framer delivered them) and reads
the grammar's terminals and small composites: SP, atoms, numbers, quoted strings, literals (and literal8),
astrings, nstrings, mailbox names and list patterns, parenthesised lists, flags, sequence sets (with `*` and
`$`), dates and date-times. Each method consumes what it reads or raises `ParseError`; the command parsers
(`parser.py`) are built from them.

Invariants
1. A cursor never reads past the end of its bytes; every failure is a `ParseError` naming what was expected.
2. Nesting is counted (`enter`/`leave`) and bounded by `MAX_DEPTH`.
3. A literal announced as `{n}` must be followed by exactly n bytes, none of them NUL (RFC 9051 §4.3 CHAR8);
   NUL is only allowed in literal8 `~{n}`, and only where the caller allows literal8 (APPEND).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass

MAX_DEPTH = 32
STAR = -1  # "*" in a sequence set: the largest number in use (RFC 9051 §9 seq-number)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUM = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}


class ParseError(Exception):
    """A command that does not follow RFC 9051 §9: the session answers `tag BAD [code] text` (§7.1.3). `tag` is
    the command's, or "*" when it had none."""

    def __init__(self, tag: str, text: str, code: str = "") -> None:
        super().__init__(text)
        self.tag = tag
        self.text = text
        self.code = code  # a response code for the BAD, e.g. "BADCHARSET (UTF-8)"


@dataclass(frozen=True, slots=True)
class SeqSet:
    """A sequence set: ranges (lo, hi) with STAR for "*", or the saved search result "$" (RFC 5182)."""

    ranges: tuple[tuple[int, int], ...] = ()
    saved: bool = False


# ------------------------------------------------------------------------------------------------------------
# The cursor over one command's bytes

_ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | frozenset(range(0x20)) | {0x7F}
ATOM_CHARS = bytes(c for c in range(0x80) if c not in _ATOM_SPECIALS)
_ASTRING_CHARS = ATOM_CHARS + b"]"
_LIST_CHARS = ATOM_CHARS + b"%*]"  # list-mailbox allows list-wildcards and resp-specials
_DIGITS = b"0123456789"
_LITERAL_SPEC = re.compile(rb"(~?)\{(\d{1,20})\+?\}\r?\n")
# RFC 9051 §9: date-day = 1*2DIGIT (search dates); date-day-fixed = (SP DIGIT) / 2DIGIT (APPEND date-time).
# A one-digit day without the space is accepted in date-time too: iOS Mail sends it, and Dovecot takes it.
_DATE = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
FIRST_INSTANT = calendar.timegm((1, 1, 1, 0, 0, 0))  # 0001-01-01 00:00:00 UTC
LAST_INSTANT = calendar.timegm((9999, 12, 31, 23, 59, 59))
_DATE_TIME = re.compile(r"( \d|\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z")


def _valid_day(year: int, month: int, day: int) -> bool:
    """A day that exists in its month (so 31-Feb-2024 or 0-Jan-2024 is BAD, not some other day)."""
    return 1 <= day <= calendar.monthrange(year, month)[1] if 1 <= year <= 9999 else False


def _span(data: bytes, pos: int, chars: bytes) -> int:
    end = pos
    n = len(data)
    while end < n and data[end] in chars:
        end += 1
    return end


class Cursor:
    """A read position in one command's bytes (module doc); `tag` goes into its ParseErrors. Every method raises
    ParseError, never another exception, when the bytes do not fit (invariant 1)."""

    __slots__ = ("data", "depth", "pos", "tag")

    def __init__(self, data: bytes, tag: str) -> None:
        # The final line end is not part of the syntax we walk; a bare LF is tolerated like CRLF.
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        self.data = data
        self.pos = 0
        self.tag = tag
        self.depth = 0

    def error(self, text: str) -> ParseError:
        """A ParseError for this command (to raise)."""
        return ParseError(self.tag, text)

    # ---- primitives
    def at_end(self) -> bool:
        """Every byte was read."""
        return self.pos >= len(self.data)

    def peek(self) -> int:
        """The next byte, not consumed; -1 at the end."""
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def startswith(self, s: bytes) -> bool:
        """Whether the next bytes are `s` (upper-case ASCII) in any case (RFC 9051 §9: case-insensitive)."""
        return self.data[self.pos:self.pos + len(s)].upper() == s

    def take(self, s: bytes) -> bool:
        """Consume `s` (as `startswith`) if it is next; whether it was."""
        if self.startswith(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: bytes) -> None:
        """Consume `s` (as `startswith`); ParseError if it is not next."""
        if not self.take(s):
            raise self.error(f"Expected {s.decode()!r}")

    def sp(self) -> None:
        """Consume one SP; ParseError otherwise."""
        if self.peek() != 0x20:
            raise self.error("Expected a space")
        self.pos += 1

    def end(self) -> None:
        """The command must end here (trailing spaces tolerated); ParseError "Unexpected arguments" otherwise."""
        if self.data[self.pos:].strip(b" "):
            raise self.error("Unexpected arguments")
        self.pos = len(self.data)

    def enter(self) -> None:
        """One nesting level deeper (parenthesis, NOT, OR); ParseError past `MAX_DEPTH` (invariant 2)."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error("Too deeply nested")

    def leave(self) -> None:
        """Back out of one nesting level (`enter`)."""
        self.depth -= 1

    def chars(self, allowed: bytes, what: str) -> bytes:
        """One or more bytes of `allowed`, consumed; ParseError "Expected <what>" when there is none."""
        end = _span(self.data, self.pos, allowed)
        if end == self.pos:
            raise self.error(f"Expected {what}")
        out = self.data[self.pos:end]
        self.pos = end
        return out

    def atom(self) -> str:
        """An atom (RFC 9051 §9 `atom`: ATOM-CHARs), as ASCII text."""
        return self.chars(ATOM_CHARS, "an atom").decode("ascii")

    def number(self, nonzero: bool = False, limit: int = 0xFFFFFFFF) -> int:
        """A `number` (RFC 9051 §9; `nz-number` with `nonzero`), at most `limit` (default: 32 bits); ParseError
        otherwise."""
        digits = self.chars(_DIGITS, "a number")
        if len(digits) > 20:
            raise self.error("Number too large")
        n = int(digits)
        if n > limit or (nonzero and n == 0):
            raise self.error("Invalid number")
        return n

    # ---- strings
    def quoted(self) -> bytes:
        """A quoted string's content, its `\\"` and `\\\\` escapes undone (RFC 9051 §9 `quoted`); ParseError for any
        other escape, CR, LF, or no closing quote."""
        data = self.data
        if self.peek() != 0x22:
            raise self.error("Expected a quoted string")
        i = self.pos + 1
        out = bytearray()
        while True:
            j = i
            n = len(data)
            while j < n and data[j] not in (0x22, 0x5C, 0x0D, 0x0A):
                j += 1
            out += data[i:j]
            if j >= n or data[j] in (0x0D, 0x0A):
                raise self.error("Unterminated quoted string")
            if data[j] == 0x22:
                self.pos = j + 1
                return bytes(out)
            if j + 1 < n and data[j + 1] in (0x22, 0x5C):  # RFC 9051 §9 quoted-specials only
                out.append(data[j + 1])
                i = j + 2
                continue
            raise self.error("Bad escape in quoted string")

    def literal(self, allow8: bool = False) -> tuple[bytes, bool]:
        """A literal's octets and whether it was a literal8 `~{n}` (RFC 3516, only with `allow8`); ParseError for
        NUL in a plain literal (invariant 3) or fewer than n octets."""
        m = _LITERAL_SPEC.match(self.data, self.pos)
        if m is None:
            raise self.error("Expected a literal")
        if m.group(1) and not allow8:
            raise self.error("literal8 not allowed here")
        n = int(m.group(2))
        start = m.end()
        if start + n > len(self.data):
            raise self.error("Literal truncated")
        self.pos = start + n
        body = self.data[start:self.pos]
        if not m.group(1) and b"\x00" in body:
            raise self.error("NUL in a literal (use literal8)")  # RFC 9051 §4.3 CHAR8 excludes NUL
        return body, bool(m.group(1))

    def string(self) -> bytes:
        """A `string`: quoted or literal (RFC 9051 §9)."""
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()[0]
        raise self.error("Expected a string")

    def astring(self) -> bytes:
        """An `astring`: an atom (with "]"), or a string (RFC 9051 §9)."""
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        return self.chars(_ASTRING_CHARS, "a string")

    def nstring(self) -> bytes | None:
        """An `nstring`: NIL (None) or a string (RFC 9051 §9)."""
        if self.take(b"NIL"):
            return None
        return self.string()

    def text(self, b: bytes) -> str:
        """Bytes of the command as text: UTF-8, undecodable bytes kept as surrogates (parser invariant 3)."""
        return b.decode("utf-8", "surrogateescape")

    def mailbox(self) -> str:
        """A `mailbox` (RFC 9051 §9): an astring as text, "INBOX" in any case made "INBOX" (§5.1)."""
        name = self.text(self.astring())
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        """A `list-mailbox` (RFC 9051 §9): a pattern that may hold `%` and `*`, as text."""
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.text(self.string())
        return self.text(self.chars(_LIST_CHARS, "a mailbox pattern"))

    # ---- composites
    def paren_list(self, item: str = "atom") -> list[str]:
        """A parenthesised, space-separated list of atoms (or, `item` "flag", of flags); may be empty."""
        self.expect(b"(")
        out: list[str] = []
        if self.take(b")"):
            return out
        while True:
            out.append(self.atom() if item == "atom" else self.flag())
            if self.take(b")"):
                return out
            self.sp()

    def flag(self) -> str:
        """A `flag` (RFC 9051 §9): `\\Atom`, `\\*` (flag-perm) or a keyword atom, as written."""
        if self.take(b"\\"):
            if self.take(b"*"):
                return "\\*"
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self) -> list[str]:
        """A `flag-list`: "(" flags ")" (RFC 9051 §9)."""
        return self.paren_list("flag")

    def seqset(self) -> SeqSet:
        """A `sequence-set` (RFC 9051 §9) as ranges, "*" as STAR, not expanded; or "$" (RFC 5182). ParseError
        past 100,000 ranges."""
        if self.take(b"$"):
            return SeqSet(saved=True)
        ranges: list[tuple[int, int]] = []
        while True:
            lo = self.seq_number()
            hi = lo
            if self.take(b":"):
                hi = self.seq_number()
            ranges.append((lo, hi))
            if not self.take(b","):
                return SeqSet(tuple(ranges))
            if len(ranges) > 100_000:
                raise self.error("Sequence set too long")

    def seq_number(self) -> int:
        """A `seq-number`: a non-zero number, or STAR for "*"."""
        if self.take(b"*"):
            return STAR
        return self.number(nonzero=True)

    def date(self) -> float:
        """search date: d-Mon-yyyy, maybe quoted; returns the UTC midnight of that day."""
        raw = self.quoted() if self.peek() == 0x22 else self.chars(ATOM_CHARS, "a date")
        m = _DATE.match(raw.decode("ascii", "replace"))
        month = _MONTH_NUM.get(m.group(2).lower()) if m else None
        if m is None or month is None or not _valid_day(int(m.group(3)), month, int(m.group(1))):
            raise self.error("Invalid date")
        try:
            return float(calendar.timegm((int(m.group(3)), month, int(m.group(1)), 0, 0, 0)))
        except (ValueError, OverflowError):
            raise self.error("Invalid date") from None

    def date_time(self) -> float:
        """APPEND date-time: quoted "dd-Mon-yyyy hh:mm:ss +zzzz" (day also " d" or "d"); returns POSIX seconds."""
        raw = self.quoted().decode("ascii", "replace")
        m = _DATE_TIME.match(raw)
        month = _MONTH_NUM.get(m.group(2).lower()) if m else None
        if m is None or month is None:
            raise self.error("Invalid date-time")
        day, year, hh, mm, ss = int(m.group(1)), int(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(6))
        if not (_valid_day(year, month, day) and hh < 24 and mm < 60 and ss < 61):
            raise self.error("Invalid date-time")
        zone_h, zone_m = int(m.group(8)), int(m.group(9))
        if zone_h > 23 or zone_m > 59:  # RFC 9051 §9 zone: hours and minutes east of Greenwich
            raise self.error("Invalid time zone")
        zone = (zone_h * 60 + zone_m) * 60 * (1 if m.group(7) == "+" else -1)
        try:
            when = calendar.timegm((year, month, day, hh, mm, ss)) - zone
        except (ValueError, OverflowError):
            raise self.error("Invalid date-time") from None
        # INTERNALDATE is answered in +0000 and its date-year is 4DIGIT (RFC 9051 §9): the instant must fall in
        # years 1-9999 there, or "1-Jan-0001 00:00:00 +0100" would come back in year 0.
        if not FIRST_INSTANT <= when <= LAST_INSTANT:
            raise self.error("Date-time out of range")
        return float(when)
