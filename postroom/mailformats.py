"""mbox and Maildir: reading and writing the two formats other mail programs keep mail in.

This module is pure format code: no store, no asyncio. `postroom/transfer.py` moves what it reads into the store
and what the store holds out into files.

Theory of operation
-------------------
Every message crosses this module as a `MailRecord`: the message bytes in Internet format (CRLF line endings,
RFC 5322 §2.1), the system flags as a `Flag` bitmask, the IMAP keywords, and the internal date. The readers turn
each format's bookkeeping (mbox `Status:` headers, Maildir file-name flags and mtimes) into those fields, the
writers turn them back, so a record survives write -> read unchanged.

**mbox.** One file, messages one after another, each introduced by a "From_" line
(`From sender Sat Nov 22 19:56:00 2025`) and followed by an empty line. A body line that itself begins with
`From ` must be escaped or it would split the message. There are several escaping schemes:

* *mboxo*: writers turn `From ` into `>From `; readers strip one `>` from `>From `. Ambiguous: a body line that
  really was `>From ` comes back as `From `.
* *mboxrd* (the default here, and what Postfix `local`, Dovecot, mutt and procmail write): writers add one `>`
  to every line matching `^>*From `; readers remove one `>` from every line matching `^>+From `. Reversible.
* *mboxcl/mboxcl2*: a `Content-Length:` header says where the message ends.

`Content-Length:` is never trusted for splitting. It is a header like any other: mail arrives with forged ones
(a sender could hide a second message inside the first, or swallow the next one), MUAs and filters edit
messages without fixing it, and a CRLF<->LF conversion or our own removal of `Status:` makes every count wrong.
Escaped From_ lines make it unnecessary.

A line is a message separator when it starts with `From ` and (a) it is the first non-empty line of the file,
or (b) the rest of it ends in an asctime date we can parse (as mutt and Dovecot require), or (c) the previous
line was empty and the file's first From_ line had no parseable date either (a writer with an odd date format;
then the empty line is all we have). The empty line before a separator, and one empty line at the end of the
file, belong to the framing and are not part of the message.

From_ dates carry no time zone by convention; one without a zone is read as UTC, which is what Python's
`mailbox` and this module write (Postfix writes local time; an import from it may be off by the zone offset).
An explicit `+hhmm` is honoured.

mbox bookkeeping headers, read and then removed from the message as Dovecot does: `Status:` (R = \\Seen,
O = old, i.e. not \\Recent), `X-Status:` (A = \\Answered, F = \\Flagged, T = \\Draft, D = \\Deleted) and
`X-Keywords:` (keywords separated by commas and/or spaces; anything that is not a valid IMAP atom is dropped).
Other headers (`Content-Length:`, `X-UID:`, `X-IMAPbase:`) are left in the message untouched. The writer
removes any bookkeeping headers the message carries and writes its own from the record, at the end of the
header section, with LF line endings (the mbox convention on Unix).

**Maildir.** One file per message in `cur/` or `new/`, written into `tmp/` first. A file's name is
`<unique>:2,<info>`; the info letters are D = \\Draft, F = \\Flagged, P = passed (no IMAP equivalent, ignored),
R = \\Answered, S = \\Seen, T = trashed (\\Deleted), and lower-case a-z are keywords numbered 0-25 through the
folder's `dovecot-keywords` file (lines `N name`). Letters are written in ASCII order, as the Maildir spec asks.
`new/` holds messages no client has seen yet: no info, no flags. The internal date is the file's mtime (as
Dovecot does); `,S=<size>` and `,W=<size>` name fields are written for Dovecot's benefit but never read.
Messages are read in the order of the unique name's leading timestamp (then the numbers after it: microseconds,
pid, counter), which is delivery order for every common writer.

Files are written with LF line endings (the Maildir convention on Unix: Dovecot, Courier, mutt, Python's
`mailbox`) and read with either: a bare LF becomes CRLF, an existing CRLF stays.

**Maildir++** (Courier, Dovecot) keeps sub-folders as hidden Maildirs inside the INBOX Maildir: mailbox
`Sub/Folder` lives in `.Sub.Folder`, each name component in IMAP modified UTF-7 (RFC 3501 §5.1.3). A `.` inside
a component (legal in Postroom, whose separator is `/`) is written as `&AC4-` so it cannot read back as a
separator.

Invariants
----------
1. `raw` in every record this module returns uses CRLF line endings (a final line without any line ending in
   the source stays without one): the store keeps Internet-format bytes.
2. Apart from line endings, mbox unescaping and the removal of the three bookkeeping headers, a reader never
   changes message bytes. Write -> read gives back the same `raw`, flags, keywords and (to the second for mbox,
   to the filesystem's timestamp precision for Maildir) internal date, for every message whose line breaks are
   all CRLF and that ends in CRLF.
3. The mbox reader holds one message in memory at a time, never the file: mbox files can be gigabytes.
4. A Maildir message is visible in `cur/` only after its bytes were fsync'd in `tmp/`, and it carries its final
   mtime before it gets there; `MaildirWriter.close()` fsyncs `cur/` so the renames are durable.
"""

from __future__ import annotations

import calendar
import email.utils
import itertools
import os
import re
import socket
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Self

from postroom.fsutil import fsync_dir, write_all
from postroom.imap.mutf7 import mutf7_decode as mutf7_decode  # re-exported (import/export tools)
from postroom.imap.mutf7 import mutf7_encode as mutf7_encode
from postroom.store.api import Flag

MboxVariant = Literal["mboxrd", "mboxo"]
SkipHandler = Callable[[str, str], None]
"""Called with (where, why) for a message a reader had to leave out; without one, the reader raises."""


class FormatError(ValueError):
    """The input is not in the format it was read as."""


@dataclass(frozen=True)
class MailRecord:
    raw: bytes  # Internet format, CRLF line endings
    flags: int  # postroom.store.api.Flag bitmask
    keywords: frozenset[str]
    internal_date: float  # seconds since the epoch, UTC
    # Where the record came from ("file:offset" for mbox, the file for Maildir), for reports. Not part of the
    # value: two records with the same message are equal wherever they came from.
    origin: str = field(default="", compare=False)


# --------------------------------------------------------------------------------------------------------
# Shared helpers

_CRLF = b"\r\n"
_BOOKKEEPING = frozenset({b"status", b"x-status", b"x-keywords"})
# RFC 9051 §9: atom-specials are ( ) { SP CTL % * " \ ]; a keyword is an atom (and does not start with "\").
_ATOM = re.compile(r"[^\x00-\x20\x7f(){%*\"\\\]]+")


def _is_keyword(word: str) -> bool:
    return bool(_ATOM.fullmatch(word)) and word.isascii()


def _lf_to_crlf(data: bytes) -> bytes:
    # A bare LF becomes CRLF, CRLF stays: reads files written with either convention (invariant 1).
    if b"\n" not in data:
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _split_keep(data: bytes, eol: bytes) -> list[bytes]:
    """Lines of `data`, each with its `eol`; a final piece without one is kept as is."""
    parts = data.split(eol)
    lines = [p + eol for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _header_end(data: bytes, eol: bytes) -> int:
    """Offset just past the last header line, i.e. where the empty line starts (len(data) if there is none)."""
    if data.startswith(eol):
        return 0
    i = data.find(eol + eol)
    return len(data) if i < 0 else i + len(eol)


def _take_fields(
    header: bytes, eol: bytes, names: frozenset[bytes]
) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """Remove the header fields called `names` (lower-case) from `header`, folded lines included.

    Returns the header without them and their unfolded values by lower-case name."""
    kept: list[bytes] = []
    fields: list[tuple[bytes, list[bytes]]] = []
    current: list[bytes] | None = None  # the lines of a field being taken, None while keeping
    for line in _split_keep(header, eol):
        if line[:1] in (b" ", b"\t"):
            # RFC 5322 §2.2.3: a line starting with WSP continues the previous field.
            (current if current is not None else kept).append(line)
            continue
        name, colon, _ = line.partition(b":")
        key = name.strip().lower()
        if colon and key in names:
            current = [line[len(name) + 1 :]]
            fields.append((key, current))
        else:
            current = None
            kept.append(line)
    taken: dict[bytes, list[bytes]] = {}
    for key, parts in fields:
        taken.setdefault(key, []).append(b" ".join(p.strip() for p in parts).strip())
    return b"".join(kept), taken


def _flags_from_bookkeeping(fields: dict[bytes, list[bytes]]) -> tuple[int, frozenset[str]]:
    flags = 0
    for value in fields.get(b"status", []):
        if b"R" in value:
            flags |= Flag.SEEN
        # "O" only says the message is not \Recent; \Recent is per session and not stored.
    for value in fields.get(b"x-status", []):
        for letter, bit in _XSTATUS_FLAGS.items():
            if letter in value:
                flags |= bit
    keywords: set[str] = set()
    for value in fields.get(b"x-keywords", []):
        for word in re.split(rb"[\s,]+", value):
            text = word.decode("ascii", "replace")
            if word and _is_keyword(text):
                keywords.add(text)
    return flags, frozenset(keywords)


_XSTATUS_FLAGS: dict[bytes, Flag] = {
    b"A": Flag.ANSWERED,
    b"F": Flag.FLAGGED,
    b"T": Flag.DRAFT,
    b"D": Flag.DELETED,
}


def _date_header(raw: bytes) -> float | None:
    """The Date: header of a CRLF message as a timestamp, None if missing or unparseable."""
    header = raw[: _header_end(raw, _CRLF)]
    _, fields = _take_fields(header, _CRLF, frozenset({b"date"}))
    for value in fields.get(b"date", []):
        try:
            parsed = email.utils.parsedate_to_datetime(value.decode("ascii", "replace"))
        except (ValueError, TypeError, IndexError, OverflowError):
            continue
        if parsed.tzinfo is None:  # RFC 5322 §3.3 "-0000": the zone is unknown; UTC is the best guess
            return float(calendar.timegm(parsed.utctimetuple()))
        return parsed.timestamp()
    return None


# --------------------------------------------------------------------------------------------------------
# mbox: reading

_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}
# asctime ("Sat Nov  2 19:56:00 2025"), also with the variations writers produce: no seconds, a zone before or
# after the year ("Sat Nov 2 19:56:00 +0100 2025", "... 2025 UTC"), a comma after the weekday.
_ASCTIME = re.compile(
    rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun),?[ \t]+(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[ \t]+"
    rb"(?P<day>\d{1,2})[ \t]+(?P<h>\d{1,2}):(?P<m>\d\d)(?::(?P<s>\d\d))?[ \t]+"
    rb"(?:(?P<tz1>[+-]\d{4}|[A-Z]{1,5})[ \t]+)?(?P<year>\d{4})(?:[ \t]+(?P<tz2>[+-]\d{4}|[A-Z]{1,5}))?[ \t]*$"
)


def parse_from_line(line: bytes) -> tuple[str, float | None]:
    """The sender and date of a From_ line (`From sender asctime`); the date is None if it does not parse."""
    rest = line[5:].rstrip(b"\r\n") if line.startswith(b"From ") else line.rstrip(b"\r\n")
    m = _ASCTIME.search(rest)
    if m is None:
        return rest.strip().decode("utf-8", "replace"), None
    sender = rest[: m.start()].strip().decode("utf-8", "replace")
    try:
        stamp = calendar.timegm(
            (
                int(m["year"]),
                _MONTHS[m["mon"].decode()],
                int(m["day"]),
                int(m["h"]),
                int(m["m"]),
                int(m["s"] or 0),
                0,
                0,
                0,
            )
        )
    except (ValueError, OverflowError):
        return sender, None
    if not (1 <= int(m["day"]) <= 31 and int(m["h"]) < 24 and int(m["m"]) < 60 and int(m["s"] or 0) < 61):
        return sender, None
    zone = m["tz1"] or m["tz2"]
    if zone and zone[:1] in (b"+", b"-"):
        offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
        stamp -= offset if zone[:1] == b"+" else -offset
    # A named zone (UTC, GMT, CET, EST...) is taken as UTC: names are ambiguous and rare in From_ lines.
    return sender, float(stamp)


_UNESCAPE: dict[str, re.Pattern[bytes]] = {
    "mboxrd": re.compile(rb">+From "),
    "mboxo": re.compile(rb">From "),
}


def _is_blank(line: bytes) -> bool:
    return line == b"\n" or line == b"\r\n"


def iter_mbox(
    stream: BinaryIO,
    *,
    variant: MboxVariant = "mboxrd",
    clock: Callable[[], float] = time.time,
    name: str = "mbox",
) -> Generator[MailRecord, None, None]:
    """The messages of an mbox, read from a binary stream one line at a time (invariant 3).

    `name` prefixes each record's origin ("name:offset of the From_ line"). Raises FormatError if the first
    non-empty line is not a From_ line; an empty stream yields nothing."""
    unescape = _UNESCAPE[variant]
    from_line: bytes | None = None
    from_offset = 0
    lines: list[bytes] = []
    prev_blank = False
    strict_dates = True  # learnt from the first From_ line: does this writer put parseable dates there?
    offset = 0
    for line in stream:
        size = len(line)  # before unescaping: offsets are positions in the file
        if line.startswith(b"From "):
            if from_line is None:
                separator = True
                strict_dates = parse_from_line(line)[1] is not None
            else:
                separator = parse_from_line(line)[1] is not None or (prev_blank and not strict_dates)
            if separator:
                if from_line is not None:
                    if prev_blank:
                        lines.pop()  # the empty line before a From_ line is framing
                    yield _mbox_record(from_line, lines, clock, f"{name}:{from_offset}")
                from_line, from_offset, lines, prev_blank = line, offset, [], False
                offset += size
                continue
        if from_line is None:
            if not _is_blank(line):
                raise FormatError(f"{name}: not an mbox file: it does not start with a 'From ' line")
        else:
            if line[:1] == b">" and unescape.match(line):
                line = line[1:]
            lines.append(line)
        prev_blank = _is_blank(line)
        offset += size
    if from_line is not None:
        if prev_blank:
            lines.pop()  # the empty line a writer puts after the last message
        yield _mbox_record(from_line, lines, clock, f"{name}:{from_offset}")


def _mbox_record(from_line: bytes, lines: list[bytes], clock: Callable[[], float], origin: str) -> MailRecord:
    raw = _lf_to_crlf(b"".join(lines))
    end = _header_end(raw, _CRLF)
    header, fields = _take_fields(raw[:end], _CRLF, _BOOKKEEPING)
    raw = header + raw[end:]
    flags, keywords = _flags_from_bookkeeping(fields)
    date = parse_from_line(from_line)[1]
    if date is None:
        date = _date_header(raw)
    if date is None:
        date = clock()
    return MailRecord(raw=raw, flags=flags, keywords=keywords, internal_date=date, origin=origin)


def read_mbox(
    path: str | os.PathLike[str],
    *,
    variant: MboxVariant = "mboxrd",
    clock: Callable[[], float] = time.time,
) -> Generator[MailRecord, None, None]:
    """The messages of the mbox file at `path` (see `iter_mbox`); the file is closed when the iterator ends."""
    with open(path, "rb") as f:
        yield from iter_mbox(f, variant=variant, clock=clock, name=os.fspath(path))


def looks_like_mbox(path: str | os.PathLike[str]) -> bool:
    """True if the file is empty or its first non-empty line is a From_ line."""
    with open(path, "rb") as f:
        for line in f:
            if not _is_blank(line):
                return line.startswith(b"From ")
    return True


# --------------------------------------------------------------------------------------------------------
# mbox: writing

_ESCAPE = re.compile(rb"^(>*From )", re.MULTILINE)
_RETURN_PATH = re.compile(rb"<([^<>\s]+)>")


def _envelope_sender(header_lf: bytes) -> str:
    _, fields = _take_fields(header_lf, b"\n", frozenset({b"return-path"}))
    for value in fields.get(b"return-path", []):
        m = _RETURN_PATH.search(value)
        if m:
            return m.group(1).decode("ascii", "replace")
    return "MAILER-DAEMON"


def bookkeeping_headers(flags: int, keywords: Iterable[str], eol: bytes = b"\n") -> bytes:
    """The Status/X-Status/X-Keywords header fields that say `flags` and `keywords` in an mbox."""
    out = b"Status: RO" if flags & Flag.SEEN else b"Status: O"
    out += eol
    xstatus = b"".join(letter for letter, bit in _XSTATUS_FLAGS.items() if flags & bit)
    if xstatus:
        out += b"X-Status: " + xstatus + eol
    words = sorted(k for k in keywords if _is_keyword(k))
    if words:
        out += b"X-Keywords: " + " ".join(words).encode("ascii") + eol
    return out


def mbox_entry(record: MailRecord, *, sender: str | None = None) -> bytes:
    """One message as it goes into an mboxrd file: From_ line, escaped message, empty line; LF line endings.

    The envelope sender in the From_ line is `sender`, else the message's Return-Path, else MAILER-DAEMON."""
    data = record.raw.replace(b"\r\n", b"\n")
    end = _header_end(data, b"\n")
    header, _ = _take_fields(data[:end], b"\n", _BOOKKEEPING)
    if header and not header.endswith(b"\n"):
        header += b"\n"  # a message that is one header line without a line break
    data = header + bookkeeping_headers(record.flags, record.keywords) + data[end:]
    data = _ESCAPE.sub(rb">\1", data)
    if not data.endswith(b"\n"):
        data += b"\n"
    who = sender or _envelope_sender(header)
    if not who or any(c.isspace() for c in who):
        who = "MAILER-DAEMON"  # the From_ line is split on spaces; a sender with one would garble the date
    stamp = time.asctime(time.gmtime(max(0.0, record.internal_date)))
    return b"From " + who.encode("utf-8") + b" " + stamp.encode("ascii") + b"\n" + data + b"\n"


def write_mbox(stream: BinaryIO, records: Iterable[MailRecord]) -> int:
    """Write the records to `stream` as mboxrd; returns the number of bytes written."""
    total = 0
    for record in records:
        entry = mbox_entry(record)
        stream.write(entry)
        total += len(entry)
    return total


# --------------------------------------------------------------------------------------------------------
# Maildir

_MAILDIR_FLAGS: dict[str, Flag] = {
    "D": Flag.DRAFT,
    "F": Flag.FLAGGED,
    "R": Flag.ANSWERED,
    "S": Flag.SEEN,
    "T": Flag.DELETED,
}
KEYWORDS_FILE = "dovecot-keywords"
_INFO = re.compile(r"[:!]2,([^:!/]*)$")  # "!" is the separator some tools use where ":" is not allowed


def is_maildir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / "cur").is_dir() or (p / "new").is_dir()


def read_keywords_file(maildir: str | os.PathLike[str]) -> dict[int, str]:
    """The `dovecot-keywords` file of a Maildir: keyword index (0 = a ... 25 = z) -> name; {} if absent."""
    try:
        text = (Path(maildir) / KEYWORDS_FILE).read_text("utf-8", "replace")
    except FileNotFoundError:
        return {}
    out: dict[int, str] = {}
    for line in text.splitlines():
        number, _, name = line.strip().partition(" ")
        if number.isdigit() and 0 <= int(number) < 26 and _is_keyword(name.strip()):
            out[int(number)] = name.strip()
    return out


def _unique_key(name: str) -> tuple[int, int, tuple[int, ...], str]:
    unique = _INFO.sub("", name)
    first, _, rest = unique.partition(".")
    if not first.isdigit():
        return (1, 0, (), name)  # not a timestamped name: after all the others, by name
    second = rest.partition(".")[0]
    return (0, int(first), tuple(int(n) for n in re.findall(r"\d+", second)), name)


def maildir_entries(maildir: str | os.PathLike[str]) -> list[Path]:
    """The message files of one Maildir folder (`new/` and `cur/`), in delivery order."""
    root = Path(maildir)
    found: list[Path] = []
    for sub in ("new", "cur"):
        try:
            with os.scandir(root / sub) as it:
                found.extend(Path(e.path) for e in it if not e.name.startswith(".") and e.is_file())
        except FileNotFoundError:
            continue
    found.sort(key=lambda p: _unique_key(p.name))
    return found


def parse_maildir_info(name: str, keyword_names: dict[int, str]) -> tuple[int, frozenset[str]]:
    """Flags and keywords from a Maildir file name's `:2,<letters>` info."""
    m = _INFO.search(name)
    if m is None:
        return 0, frozenset()
    flags = 0
    keywords: set[str] = set()
    for letter in m.group(1):
        if letter in _MAILDIR_FLAGS:
            flags |= _MAILDIR_FLAGS[letter]
        elif "a" <= letter <= "z":
            keyword = keyword_names.get(ord(letter) - ord("a"))
            if keyword is not None:  # a letter without a name in dovecot-keywords has no meaning left
                keywords.add(keyword)
        # "P" (passed, i.e. bounced/forwarded) has no IMAP flag; other letters are experimental: ignored.
    return flags, frozenset(keywords)


def read_maildir(
    maildir: str | os.PathLike[str],
    *,
    entries: Sequence[Path] | None = None,
    on_skip: SkipHandler | None = None,
) -> Generator[MailRecord, None, None]:
    """The messages of one Maildir folder, in delivery order.

    `entries` (from `maildir_entries`) saves listing the folder twice. A file that vanishes or cannot be read
    between listing and reading (another program moved it) is reported to `on_skip`, or raised without one."""
    keyword_names = read_keywords_file(maildir)
    for path in maildir_entries(maildir) if entries is None else entries:
        try:
            with open(path, "rb") as f:
                data = f.read()
                mtime = os.fstat(f.fileno()).st_mtime
        except OSError as exc:
            if on_skip is None:
                raise
            on_skip(str(path), f"cannot read: {exc.strerror or exc}")
            continue
        flags, keywords = parse_maildir_info(path.name, keyword_names)
        yield MailRecord(
            raw=_lf_to_crlf(data), flags=flags, keywords=keywords, internal_date=mtime, origin=str(path)
        )


def read_message_file(path: str | os.PathLike[str]) -> MailRecord:
    """One RFC 5322 message in a file of its own (".eml"): not \\Seen, dated by its Date: field, else the file's
    modification time."""
    with open(path, "rb") as f:
        data = f.read()
        mtime = os.fstat(f.fileno()).st_mtime
    raw = _lf_to_crlf(data)
    if not raw.strip():
        raise FormatError(f"{os.fspath(path)}: the file is empty")
    date = _date_header(raw)
    return MailRecord(raw=raw, flags=0, keywords=frozenset(), internal_date=date if date is not None else mtime,
                      origin=os.fspath(path))


# ---- Maildir++ folder names: IMAP modified UTF-7 (RFC 3501 §5.1.3), imap/mutf7.py


def maildir_folders(root: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """A Maildir++ tree: ("INBOX", root) first (if root is a Maildir), then ("Sub/Folder", root/".Sub.Folder")
    for every sub-folder, sorted by name."""
    base = Path(root)
    out: list[tuple[str, Path]] = []
    if is_maildir(base):
        out.append(("INBOX", base))
    subs: list[tuple[str, Path]] = []
    with os.scandir(base) as it:
        for entry in it:
            if not entry.name.startswith(".") or entry.name in (".", "..") or not entry.is_dir():
                continue
            if not is_maildir(entry.path):
                continue
            parts = entry.name[1:].split(".")
            if not all(parts):
                continue  # ".a..b" or "." + "": no sensible mailbox name
            decoded = []
            for part in parts:
                try:
                    decoded.append(mutf7_decode(part))
                except ValueError:
                    decoded.append(part)  # not modified UTF-7 after all: keep the name as it is on disk
            subs.append(("/".join(decoded), Path(entry.path)))
    out.extend(sorted(subs))
    return out


def maildir_folder_path(root: str | os.PathLike[str], mailbox: str) -> Path:
    """Where mailbox `mailbox` lives in the Maildir++ tree at `root` (INBOX is the root itself)."""
    if mailbox.upper() == "INBOX":
        return Path(root)
    return Path(root) / ("." + ".".join(mutf7_encode(part, force=".") for part in mailbox.split("/")))


# One counter for the whole process, not per writer: two writers on one folder within the same second (two
# exports in a row) must not make the same unique name, or the rename would replace a message.
_DELIVERIES = itertools.count(1)


class MaildirWriter:
    """Adds messages to one Maildir folder, creating it (and `tmp/ new/ cur/`) if needed.

    Every message goes to `cur/` with its flags (invariant 4). Keywords get letters through the folder's
    `dovecot-keywords` file, which is extended as needed; a folder has only 26 letters, so keywords beyond
    those are left off the file name and collected in `dropped_keywords`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        maildirfolder: bool = False,
        hostname: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        if maildirfolder:
            # Maildir++: marks a sub-folder, so delivery agents know quota lives in the parent.
            (self.path / "maildirfolder").touch(exist_ok=True)
        host = hostname if hostname is not None else socket.gethostname()
        # Maildir spec: "/" and ":" in the host name are written as octal escapes.
        self._host = host.replace("/", "\\057").replace(":", "\\072") or "localhost"
        self._clock = clock
        self._pid = os.getpid()
        self._letters: dict[str, int] = {}  # lower-case keyword -> index
        self._names: dict[int, str] = read_keywords_file(self.path)
        for index, name in self._names.items():
            self._letters[name.lower()] = index
        self.dropped_keywords: set[str] = set()
        self.count = 0

    def _keyword_letter(self, keyword: str) -> str | None:
        index = self._letters.get(keyword.lower())
        if index is None:
            free = [i for i in range(26) if i not in self._names]
            if not free or not _is_keyword(keyword):
                self.dropped_keywords.add(keyword)
                return None
            index = free[0]
            self._names[index] = keyword
            self._letters[keyword.lower()] = index
            self._write_keywords_file()
        return chr(ord("a") + index)

    def _write_keywords_file(self) -> None:
        text = "".join(f"{i} {name}\n" for i, name in sorted(self._names.items()))
        tmp = self.path / f".{KEYWORDS_FILE}.tmp{self._pid}"
        tmp.write_text(text, "utf-8")
        os.replace(tmp, self.path / KEYWORDS_FILE)

    def info(self, flags: int, keywords: Iterable[str]) -> str:
        """The `2,<letters>` info for flags and keywords, letters in ASCII order (Maildir spec)."""
        letters = [letter for letter, bit in _MAILDIR_FLAGS.items() if flags & bit]
        for keyword in keywords:
            letter = self._keyword_letter(keyword)
            if letter is not None:
                letters.append(letter)
        return "2," + "".join(sorted(set(letters)))

    def add(self, record: MailRecord) -> Path:
        """Write one message: tmp/, fsync, mtime = internal date, rename into cur/. Returns its path."""
        data = record.raw.replace(b"\r\n", b"\n")
        counter = next(_DELIVERIES)
        # W= is the size with CRLF line endings (RFC822.SIZE), which lets Dovecot skip reading the file.
        vsize = len(data) + data.count(b"\n")
        unique = f"{int(self._clock())}.{self._pid}_{counter}.{self._host},S={len(data)},W={vsize}"
        info = self.info(record.flags, sorted(record.keywords))
        tmp = self.path / "tmp" / unique
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.utime(tmp, (record.internal_date, record.internal_date))
        final = self.path / "cur" / f"{unique}:{info}"
        os.rename(tmp, final)
        self.count += 1
        return final

    def close(self) -> None:
        """Make the renames into cur/ durable."""
        fsync_dir(self.path / "cur")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
