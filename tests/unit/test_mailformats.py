"""mbox and Maildir reading and writing (postroom/mailformats.py), and interoperability with Python's `mailbox`."""

from __future__ import annotations

import io
import mailbox
import os
import re
import time
from pathlib import Path
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.mailformats import (
    FormatError,
    MaildirWriter,
    MailRecord,
    is_maildir,
    iter_mbox,
    looks_like_mbox,
    maildir_entries,
    maildir_folder_path,
    maildir_folders,
    mbox_entry,
    mutf7_decode,
    mutf7_encode,
    parse_from_line,
    parse_maildir_info,
    read_keywords_file,
    read_maildir,
    read_mbox,
    write_mbox,
)
from postroom.store.api import Flag

T0 = 1_700_000_000.0  # Tue Nov 14 22:13:20 2023 UTC


def rec(raw: bytes, flags: int = 0, keywords: tuple[str, ...] = (), date: float = T0) -> MailRecord:
    return MailRecord(raw=raw, flags=flags, keywords=frozenset(keywords), internal_date=date)


def msg(subject: str, body: bytes = b"Hello.\r\n", extra: bytes = b"") -> bytes:
    return (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: " + subject.encode() + b"\r\n"
        b"Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n" + extra + b"\r\n" + body
    )


def read_all(data: bytes, **kw: object) -> list[MailRecord]:
    return list(iter_mbox(io.BytesIO(data), **kw))  # type: ignore[arg-type]


class OneByteRaw(io.RawIOBase):
    """A raw stream that returns one byte per read: the reader must not depend on how reads are split."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        if self._pos >= len(self._data) or not len(b):
            return 0
        b[0] = self._data[self._pos]
        self._pos += 1
        return 1


# --------------------------------------------------------------------------------------------------------
# mbox round trips


RECORDS = [
    rec(msg("plain"), 0, (), T0),
    rec(msg("seen+answered"), Flag.SEEN | Flag.ANSWERED, ("$Forwarded",), T0 + 86400),
    rec(
        msg("all flags"),
        Flag.SEEN | Flag.ANSWERED | Flag.FLAGGED | Flag.DELETED | Flag.DRAFT,
        ("a", "b"),
        T0 + 1,
    ),
    rec(msg("empty body", b""), Flag.FLAGGED, (), 0.0),
    rec(msg("blank lines at end", b"x\r\n\r\n\r\n"), 0, ("$Junk",), T0 - 10**8),
]


def test_mbox_round_trip_keeps_bytes_flags_keywords_dates() -> None:
    out = io.BytesIO()
    written = write_mbox(out, RECORDS)
    data = out.getvalue()
    assert written == len(data)
    assert b"\r\n" not in data  # mbox on Unix: LF
    assert read_all(data) == RECORDS


def test_mbox_round_trip_read_byte_by_byte() -> None:
    out = io.BytesIO()
    write_mbox(out, RECORDS)
    stream = io.BufferedReader(OneByteRaw(out.getvalue()), buffer_size=1)  # type: ignore[type-var]
    assert list(iter_mbox(stream)) == RECORDS


def test_mbox_escaping_of_from_lines_mboxrd() -> None:
    body = b"From here\r\n>From there\r\n>>From everywhere\r\n From not at start\r\nFromage\r\n"
    r = rec(msg("escapes", body))
    entry = mbox_entry(r)
    lines = entry.split(b"\n")
    assert lines[0].startswith(b"From ")
    assert b">From here" in lines
    assert b">>From there" in lines
    assert b">>>From everywhere" in lines
    assert b" From not at start" in lines and b"Fromage" in lines
    assert sum(1 for line in lines if line.startswith(b"From ")) == 1
    assert read_all(entry) == [r]


def test_mbox_from_line_format_and_sender() -> None:
    entry = mbox_entry(rec(msg("x", extra=b"Return-Path: <bounce+1@example.org>\r\n"), date=T0))
    assert entry.split(b"\n", 1)[0] == b"From bounce+1@example.org Tue Nov 14 22:13:20 2023"
    assert mbox_entry(rec(msg("x"), date=T0)).startswith(b"From MAILER-DAEMON Tue Nov 14 22:13:20 2023\n")
    null = mbox_entry(rec(msg("x", extra=b"Return-Path: <>\r\n"), date=T0))
    assert null.startswith(b"From MAILER-DAEMON ")
    # asctime pads one-digit days with a space
    assert mbox_entry(rec(msg("x"), date=1704153600.0)).startswith(
        b"From MAILER-DAEMON Tue Jan  2 00:00:00 2024\n"
    )
    assert mbox_entry(rec(msg("x")), sender="me@example.org").startswith(b"From me@example.org ")


def test_mbox_bookkeeping_headers_written_at_end_of_header() -> None:
    entry = mbox_entry(rec(msg("x"), Flag.SEEN | Flag.FLAGGED | Flag.ANSWERED, ("work", "$Label1")))
    header = entry.split(b"\n\n", 1)[0].split(b"\n")
    assert header[-3:] == [b"Status: RO", b"X-Status: AF", b"X-Keywords: $Label1 work"]
    unseen = mbox_entry(rec(msg("x")))
    assert b"\nStatus: O\n" in unseen and b"X-Status" not in unseen and b"X-Keywords" not in unseen


def test_mbox_writer_replaces_bookkeeping_headers_in_the_message() -> None:
    # A message that arrived by SMTP carrying its own "Status: RO" must not come back \Seen.
    raw = msg("forged", extra=b"Status: RO\r\nX-Status: D\r\nX-Keywords: evil\r\n")
    entry = mbox_entry(rec(raw, 0))
    assert entry.count(b"Status:") == 1 and b"Status: O\n" in entry and b"evil" not in entry
    (back,) = read_all(entry)
    assert back.flags == 0 and back.keywords == frozenset()
    assert back.raw == msg("forged")


def test_mbox_message_without_body_separator_and_empty_message() -> None:
    headers_only = b"Subject: only headers\r\nX-Other: 1\r\n"
    empty = b""
    starts_blank = b"\r\nno header at all\r\n"
    records = [rec(headers_only, Flag.SEEN), rec(empty, Flag.FLAGGED), rec(starts_blank, 0, ("k",))]
    out = io.BytesIO()
    write_mbox(out, records)
    assert read_all(out.getvalue()) == records


# A message body made of lines that are hard for mbox: From lines with any number of ">", blank lines, spaces.
_LINE = st.sampled_from(
    [b"", b"From x", b">From x", b">>From y", b"From", b">From", b" From z", b"text", b"> quoted", b"From:"]
)


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.lists(_LINE, max_size=8), min_size=1, max_size=4),
    flags=st.integers(0, 31),
    keywords=st.frozensets(st.sampled_from(["$Label1", "work", "Junk"]), max_size=3),
)
def test_mbox_round_trip_property(bodies: list[list[bytes]], flags: int, keywords: frozenset[str]) -> None:
    records = [
        MailRecord(msg(f"m{i}", b"".join(line + b"\r\n" for line in body)), flags, keywords, T0 + i)
        for i, body in enumerate(bodies)
    ]
    out = io.BytesIO()
    write_mbox(out, records)
    assert read_all(out.getvalue()) == records


# --------------------------------------------------------------------------------------------------------
# mbox: hand-written files with tricky cases

SAMPLE = b"""From alice@example.org Tue Nov 14 22:13:20 2023
Return-Path: <alice@example.org>
Subject: lying Content-Length
Content-Length: 5
Status: RO
X-Status: AF
X-UID: 7

This body is much longer than five bytes.
>From an escaped line
>>From a doubly escaped line
From a line nobody escaped, without a date

and more after a blank line.

From bob@example.net Wed Nov 15 08:00:00 2023
Subject: swallowing Content-Length
Content-Length: 99999
X-Keywords: $Label1, work  urgent,,bad(keyword
Status: O

second

From carol@example.com Thu Nov 16 12:30:45 2023
Subject: third, folded bookkeeping header
X-Keywords: one,
 two
X-Status: T
Status: R

third body"""


def _check_sample(records: list[MailRecord]) -> None:
    assert len(records) == 3
    first, second, third = records
    assert first.raw == (
        b"Return-Path: <alice@example.org>\r\nSubject: lying Content-Length\r\nContent-Length: 5\r\nX-UID: 7\r\n"
        b"\r\nThis body is much longer than five bytes.\r\nFrom an escaped line\r\n>From a doubly escaped line\r\n"
        b"From a line nobody escaped, without a date\r\n\r\nand more after a blank line.\r\n"
    )
    assert first.flags == Flag.SEEN | Flag.ANSWERED | Flag.FLAGGED
    assert first.keywords == frozenset()
    assert first.internal_date == 1699999999 + 1  # Tue Nov 14 22:13:20 2023 UTC
    assert first.origin.endswith(":0")
    assert second.raw == b"Subject: swallowing Content-Length\r\nContent-Length: 99999\r\n\r\nsecond\r\n"
    assert second.flags == 0
    assert second.keywords == frozenset({"$Label1", "work", "urgent"})  # "bad(keyword" is not an IMAP atom
    assert third.raw == b"Subject: third, folded bookkeeping header\r\n\r\nthird body"  # no final newline
    assert third.flags == Flag.SEEN | Flag.DRAFT
    assert third.keywords == frozenset({"one", "two"})
    assert third.internal_date == T0 + 2 * 86400 - 22 * 3600 - 13 * 60 - 20 + 12 * 3600 + 30 * 60 + 45


def test_mbox_sample_lf() -> None:
    _check_sample(read_all(SAMPLE))


def test_mbox_sample_crlf_file_reads_the_same() -> None:
    crlf = SAMPLE.replace(b"\n", b"\r\n")
    assert read_all(crlf) == read_all(SAMPLE)
    _check_sample(read_all(crlf))


def test_mbox_sample_from_file_and_byte_by_byte(tmp_path: Path) -> None:
    path = tmp_path / "sample.mbox"
    path.write_bytes(SAMPLE)
    records = list(read_mbox(path))
    _check_sample(records)
    assert records[1].origin == f"{path}:{SAMPLE.index(b'From bob')}"
    stream = io.BufferedReader(OneByteRaw(SAMPLE), buffer_size=1)  # type: ignore[type-var]
    _check_sample(list(iter_mbox(stream)))


def test_mbox_final_newline_variants() -> None:
    head = b"From a@b Tue Nov 14 22:13:20 2023\nSubject: s\n\n"
    assert read_all(head + b"body")[0].raw == b"Subject: s\r\n\r\nbody"
    assert read_all(head + b"body\n")[0].raw == b"Subject: s\r\n\r\nbody\r\n"
    assert read_all(head + b"body\n\n")[0].raw == b"Subject: s\r\n\r\nbody\r\n"  # the blank line is framing


def test_mbox_empty_and_blank_files() -> None:
    assert read_all(b"") == []
    assert read_all(b"\n\n") == []
    # leading blank lines before the first From_ line are tolerated
    assert len(read_all(b"\n\nFrom a@b Tue Nov 14 22:13:20 2023\nSubject: s\n\nx\n")) == 1


def test_not_an_mbox(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        read_all(b"Subject: an .eml file\n\nbody\n")
    eml = tmp_path / "x.eml"
    eml.write_bytes(b"Subject: an .eml file\n\nbody\n")
    assert not looks_like_mbox(eml)
    (tmp_path / "empty").write_bytes(b"")
    assert looks_like_mbox(tmp_path / "empty")


def test_mbox_separator_needs_a_date_or_a_blank_line() -> None:
    data = (
        b"From a@b Tue Nov 14 22:13:20 2023\nSubject: 1\n\n"
        b"Unescaped body line follows, not after a blank line:\n"
        b"From here on, nothing\n"
        b"\n"
        b"From my point of view, this is still the body\n"
        b"\n"
        b"From b@c Tue Nov 14 22:13:21 2023\nSubject: 2\n\nx\n"
    )
    records = read_all(data)
    assert [r.raw.split(b"\r\n", 1)[0] for r in records] == [b"Subject: 1", b"Subject: 2"]
    assert b"From my point of view" in records[0].raw
    # A dated From_ line splits even without the blank line before it (mutt and Python do the same).
    glued = b"From a@b Tue Nov 14 22:13:20 2023\nSubject: 1\n\nx\nFrom b@c Tue Nov 14 22:13:21 2023\nSubject: 2\n\n"
    assert [r.raw for r in read_all(glued)] == [b"Subject: 1\r\n\r\nx\r\n", b"Subject: 2\r\n"]


def test_mbox_writer_without_dates_falls_back_to_blank_lines_and_date_header() -> None:
    data = b"From someone\nSubject: 1\nDate: Wed, 15 Nov 2023 00:00:00 +0100\n\nx\n\nFrom someone\nSubject: 2\n\ny\n"
    records = read_all(data, clock=lambda: 42.0)
    assert len(records) == 2
    assert records[0].internal_date == T0 + 46 * 60 + 40  # from Date: 23:00:00 UTC
    assert records[1].internal_date == 42.0  # no date anywhere: now


def test_mboxo_variant_unescapes_one_level_only() -> None:
    data = b"From a@b Tue Nov 14 22:13:20 2023\nSubject: s\n\n>From one\n>>From two\n"
    assert read_all(data, variant="mboxo")[0].raw.endswith(b"\r\nFrom one\r\n>>From two\r\n")
    assert read_all(data, variant="mboxrd")[0].raw.endswith(b"\r\nFrom one\r\n>From two\r\n")


def test_mbox_reader_is_lazy() -> None:
    """Invariant 3: the first message comes out before the rest of the file was read."""
    out = io.BytesIO()
    write_mbox(out, [rec(msg(f"m{i}", b"x" * 1000 + b"\r\n")) for i in range(200)])
    stream = io.BufferedReader(io.BytesIO(out.getvalue()), buffer_size=8192)
    it = iter_mbox(stream)  # type: ignore[arg-type]
    next(it)
    assert stream.raw.tell() < len(out.getvalue()) // 10  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "line, sender, date",
    [
        (b"From a@b Tue Nov 14 22:13:20 2023\n", "a@b", T0),
        (b"From a@b  Tue Nov 14 22:13:20 2023\r\n", "a@b", T0),  # Postfix puts two spaces
        (b"From a@b Tue Nov 14 22:13 2023", "a@b", T0 - 20),  # no seconds
        (b"From a@b Tue Nov 14 23:13:20 +0100 2023", "a@b", T0),  # zone before the year
        (b"From a@b Tue Nov 14 17:13:20 2023 -0500", "a@b", T0),  # zone after the year
        (b"From a@b Tue Nov 14 22:13:20 UTC 2023", "a@b", T0),
        (b"From - Tue Nov 14 22:13:20 2023", "-", T0),  # Thunderbird
        (b"From MAILER-DAEMON Tue Nov  7 22:13:20 2023", "MAILER-DAEMON", T0 - 7 * 86400),
        (b"From a@b yesterday", "a@b yesterday", None),
        (b"From a@b Tue Nov 14 25:13:20 2023", None, None),
    ],
)
def test_parse_from_line(line: bytes, sender: str | None, date: float | None) -> None:
    got_sender, got_date = parse_from_line(line)
    if sender is not None:
        assert got_sender == sender
    assert got_date == date


# --------------------------------------------------------------------------------------------------------
# Maildir

_NAME = re.compile(r"^(\d+)\.(\d+)_(\d+)\.testhost,S=(\d+),W=(\d+):2,([A-Za-z]*)$")


def test_maildir_writer_names_flags_mtime_and_durability(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    with MaildirWriter(md, hostname="testhost", clock=lambda: T0) as w:
        p1 = w.add(rec(msg("1"), Flag.SEEN | Flag.FLAGGED | Flag.DRAFT | Flag.DELETED | Flag.ANSWERED))
        p2 = w.add(rec(msg("2"), 0, ("zeta", "$Label1"), T0 - 3600))
    assert sorted(p.name for p in (md / "cur").iterdir()) == sorted([p1.name, p2.name])
    assert list((md / "tmp").iterdir()) == [] and list((md / "new").iterdir()) == []
    m1, m2 = _NAME.match(p1.name), _NAME.match(p2.name)
    assert m1 and m2
    assert m1.group(1) == str(int(T0)) and m1.group(2) == str(os.getpid())
    assert m1.group(6) == "DFRST"  # ASCII order
    assert int(m2.group(3)) == int(m1.group(3)) + 1
    assert m2.group(6) == "ab"  # keywords sorted: $Label1 -> a, zeta -> b
    data = p1.read_bytes()
    assert b"\r\n" not in data and data == msg("1").replace(b"\r\n", b"\n")
    assert int(m1.group(4)) == len(data) and int(m1.group(5)) == len(msg("1"))
    assert p2.stat().st_mtime == T0 - 3600
    assert read_keywords_file(md) == {0: "$Label1", 1: "zeta"}
    assert (md / "dovecot-keywords").read_text() == "0 $Label1\n1 zeta\n"


def test_maildir_two_writers_in_one_second_do_not_collide(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for _ in range(2):
        with MaildirWriter(md, hostname="h", clock=lambda: T0) as w:
            w.add(rec(msg("same")))
    assert len(list(read_maildir(md))) == 2


def test_maildir_round_trip(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    with MaildirWriter(md) as w:
        for r in RECORDS:
            w.add(r)
    back = list(read_maildir(md))
    assert back == RECORDS  # order too: the counter in the unique name keeps write order within one second


def test_maildir_keywords_reuse_existing_file_and_26_limit(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    md.mkdir()
    (md / "dovecot-keywords").write_text("0 Old\n3 $Junk\n")
    many = [f"k{i:02}" for i in range(30)]
    with MaildirWriter(md) as w:
        p = w.add(rec(msg("kw"), 0, ("$junk", *many)))
    assert read_keywords_file(md)[3] == "$Junk" and read_keywords_file(md)[0] == "Old"
    letters = p.name.split(":2,")[1]
    assert "d" in letters and "a" not in letters and len(letters) == 25  # 24 free letters + $junk's "d"
    assert len(w.dropped_keywords) == 30 - 24
    (back,) = read_maildir(md)
    assert "$Junk" in back.keywords and len(back.keywords) == 25


def test_maildir_reader_new_cur_letters_and_order(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (md / sub).mkdir(parents=True)
    (md / "dovecot-keywords").write_text("0 $Label1\n1 Work\n")
    files = {
        "new/1700000003.M5P10.host": b"Subject: new\n\nbody\n",  # new/: no flags
        "cur/1700000001.M900P10.host,S=20,W=22:2,PRS": b"Subject: first\r\n\r\nCRLF kept\r\n",
        "cur/1700000001.M1000P10.host:2,Fab": b"Subject: second\n\nkeywords\n",
        "cur/1700000002.M1P10.host:2,Tcz": b"Subject: third\n\nunknown letters ignored\n",
        "cur/.hidden:2,S": b"ignored",
        "cur/weird-name": b"Subject: last\n\nno timestamp\n",
        "tmp/1700000000.M1P1.host": b"in tmp: not delivered yet",
    }
    for name, data in files.items():
        (md / name).write_bytes(data)
        os.utime(md / name, (T0, T0 + 5))
    records = list(read_maildir(md))
    subjects = [r.raw.split(b"\r\n", 1)[0].decode() for r in records]
    assert subjects == [
        "Subject: first",
        "Subject: second",
        "Subject: third",
        "Subject: new",
        "Subject: last",
    ]
    first, second, third, new, last = records
    assert first.flags == Flag.SEEN | Flag.ANSWERED and first.raw == b"Subject: first\r\n\r\nCRLF kept\r\n"
    assert second.flags == Flag.FLAGGED and second.keywords == {"$Label1", "Work"}
    assert second.raw == b"Subject: second\r\n\r\nkeywords\r\n"
    assert third.flags == Flag.DELETED and third.keywords == frozenset()
    assert new.flags == 0 and new.keywords == frozenset()
    assert all(r.internal_date == T0 + 5 for r in records)
    assert last.origin == str(md / "cur/weird-name")


def test_maildir_vanished_file_is_reported(tmp_path: Path) -> None:
    md = tmp_path / "Maildir"
    with MaildirWriter(md) as w:
        w.add(rec(msg("1")))
        gone = w.add(rec(msg("2")))
    entries = maildir_entries(md)
    gone.unlink()
    skipped: list[tuple[str, str]] = []
    back = list(read_maildir(md, entries=entries, on_skip=lambda where, why: skipped.append((where, why))))
    assert len(back) == 1 and skipped and skipped[0][0] == str(gone)
    with pytest.raises(FileNotFoundError):
        list(read_maildir(md, entries=entries))


def test_parse_maildir_info() -> None:
    assert parse_maildir_info("1.2.h:2,DFPRST", {}) == (
        Flag.DRAFT | Flag.FLAGGED | Flag.ANSWERED | Flag.SEEN | Flag.DELETED,
        frozenset(),
    )
    assert parse_maildir_info("1.2.h!2,S", {}) == (Flag.SEEN, frozenset())
    assert parse_maildir_info("1.2.h,S=5:2,", {}) == (0, frozenset())
    assert parse_maildir_info("1.2.h", {}) == (0, frozenset())
    assert parse_maildir_info("1.2.h:2,Sb", {1: "x"}) == (Flag.SEEN, frozenset({"x"}))


def test_mutf7() -> None:
    # RFC 3501 §5.1.3 example
    assert mutf7_decode("~peter/mail/&U,BTFw-/&ZeVnLIqe-") == "~peter/mail/台北/日本語"
    assert mutf7_encode("~peter/mail/台北/日本語") == "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
    assert mutf7_encode("A&B") == "A&-B" and mutf7_decode("A&-B") == "A&B"
    assert mutf7_encode("Entwürfe") == "Entw&APw-rfe"
    assert mutf7_encode("v1.2", force=".") == "v1&AC4-2" and mutf7_decode("v1&AC4-2") == "v1.2"
    with pytest.raises(ValueError):
        mutf7_decode("&U,BTFw")


def test_maildir_plus_plus_folders(tmp_path: Path) -> None:
    root = tmp_path / "Maildir"
    MaildirWriter(root).close()
    for name in ("Archive/2024", "Entwürfe", "Sent", "v1.2/notes", "Archive"):
        with MaildirWriter(maildir_folder_path(root, name), maildirfolder=True) as w:
            w.add(rec(msg(name)))
    (root / ".not-a-maildir").mkdir()
    (root / ".a..b" / "cur").mkdir(parents=True)
    (root / "courierimapkeywords").mkdir()
    assert (root / ".Archive.2024" / "maildirfolder").exists()
    assert (root / ".Entw&APw-rfe").is_dir() and (root / ".v1&AC4-2.notes").is_dir()
    assert maildir_folder_path(root, "inbox") == root
    folders = maildir_folders(root)
    assert [name for name, _ in folders] == [
        "INBOX",
        "Archive",
        "Archive/2024",
        "Entwürfe",
        "Sent",
        "v1.2/notes",
    ]
    for name, path in folders[1:]:
        assert is_maildir(path)
        (r,) = read_maildir(path)
        assert f"Subject: {name}".encode() in r.raw


# --------------------------------------------------------------------------------------------------------
# Interoperability with Python's mailbox module (an independent reader and writer)


def test_python_mbox_written_read_by_us(tmp_path: Path) -> None:
    path = tmp_path / "py.mbox"
    box = mailbox.mbox(path)
    bodies = []
    for i, (flags, date) in enumerate([("RO", T0), ("OAF", T0 + 60), ("", T0 + 120), ("RD", T0 + 180)]):
        lf = f"From: a@example.org\nSubject: py {i}\n\nline\nFrom the body\n\n".encode()
        m = mailbox.mboxMessage(lf)
        m.set_flags(flags)
        m.set_from("sender@example.org", time.gmtime(date))
        box.add(m)
        bodies.append(lf)
    box.flush()
    box.close()
    records = list(read_mbox(path))
    assert [r.raw for r in records] == [b.replace(b"\n", b"\r\n") for b in bodies]
    assert [r.flags for r in records] == [
        Flag.SEEN,
        Flag.ANSWERED | Flag.FLAGGED,
        0,
        Flag.SEEN | Flag.DELETED,
    ]
    assert [r.internal_date for r in records] == [T0, T0 + 60, T0 + 120, T0 + 180]


def test_our_mbox_read_by_python(tmp_path: Path) -> None:
    path = tmp_path / "ours.mbox"
    body = b"Hello\r\nFrom the start of a line\r\n"
    records = [
        rec(msg("one", body, b"Return-Path: <r@example.org>\r\n"), Flag.SEEN | Flag.FLAGGED, (), T0),
        rec(msg("two"), Flag.ANSWERED | Flag.DELETED, (), T0 + 1),
        rec(msg("three"), 0, (), T0 + 2),
    ]
    with open(path, "wb") as f:
        write_mbox(f, records)
    box = mailbox.mbox(path, create=False)
    keys = box.keys()
    got = [box[k] for k in keys]
    assert len(got) == 3
    assert got[0].get_from() == "r@example.org Tue Nov 14 22:13:20 2023"
    assert [set(m.get_flags()) for m in got] == [{"R", "O", "F"}, {"O", "A", "D"}, {"O"}]
    assert [m["Subject"] for m in got] == ["one", "two", "three"]
    # Python reads mboxo: our escape stays visible, which is exactly what mboxrd wrote.
    assert got[0].get_payload() == "Hello\n>From the start of a line\n"
    raw_two = box.get_bytes(keys[1])
    assert raw_two.replace(b"Status: O\n", b"").replace(b"X-Status: AD\n", b"") == msg("two").replace(
        b"\r\n", b"\n"
    )
    box.close()


def test_python_maildir_written_read_by_us(tmp_path: Path) -> None:
    md = mailbox.Maildir(tmp_path / "py", create=True)
    cases: list[tuple[str, Literal["new", "cur"], float]] = [
        ("", "new", T0),
        ("S", "cur", T0 + 1),
        ("FRS", "cur", T0 + 2),
        ("DT", "cur", T0 + 3),
    ]
    for i, (flags, subdir, date) in enumerate(cases):
        m = mailbox.MaildirMessage(f"Subject: py {i}\n\nbody {i}\n".encode())
        m.set_subdir(subdir)
        m.set_flags(flags)
        m.set_date(date)
        md.add(m)
    sub = md.add_folder("Sub.Folder")
    sub.add(mailbox.MaildirMessage(b"Subject: in sub\n\n"))
    records = sorted(read_maildir(tmp_path / "py"), key=lambda r: r.internal_date)
    assert [r.raw for r in records] == [f"Subject: py {i}\r\n\r\nbody {i}\r\n".encode() for i in range(4)]
    assert [r.flags for r in records] == [
        0,
        Flag.SEEN,
        Flag.FLAGGED | Flag.ANSWERED | Flag.SEEN,
        Flag.DRAFT | Flag.DELETED,
    ]
    assert [r.internal_date for r in records] == [T0, T0 + 1, T0 + 2, T0 + 3]
    assert [n for n, _ in maildir_folders(tmp_path / "py")] == ["INBOX", "Sub/Folder"]


def test_our_maildir_read_by_python(tmp_path: Path) -> None:
    root = tmp_path / "ours"
    with MaildirWriter(root) as w:
        w.add(rec(msg("one"), Flag.SEEN | Flag.ANSWERED, (), T0))
        w.add(rec(msg("two"), Flag.FLAGGED | Flag.DRAFT, (), T0 + 1))
    with MaildirWriter(maildir_folder_path(root, "Archive/2024"), maildirfolder=True) as w:
        w.add(rec(msg("archived"), Flag.DELETED, (), T0 + 2))
    md = mailbox.Maildir(root, create=False)
    got = sorted((m.get_date(), m.get_flags(), m.get_subdir(), m["Subject"]) for m in md)
    assert got == [(T0, "RS", "cur", "one"), (T0 + 1, "DF", "cur", "two")]
    assert md.get_bytes(next(iter(md.keys()))) in (
        msg("one").replace(b"\r\n", b"\n"),
        msg("two").replace(b"\r\n", b"\n"),
    )
    assert md.list_folders() == ["Archive.2024"]
    (archived,) = list(md.get_folder("Archive.2024"))
    assert archived.get_flags() == "T" and archived["Subject"] == "archived"
