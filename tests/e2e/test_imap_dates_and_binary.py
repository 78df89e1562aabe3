"""Issue 15, items 1, 2 and 7 against the real server: SEARCH SENT* on the Date field's own date (RFC 9051
§6.4.4), also for metadata an older Postroom stored; BINARY and search of quoted-printable (RFC 2045 §6.7 rules
3 and 5, RFC 3516); APPEND with the one-digit day iOS Mail sends."""

from __future__ import annotations

import imaplib
import json
import re
from typing import Any

import pytest
from imap_support import Raw, wire_imap

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest

ADDR = "ann@example.org"
PW = "ann-secret"

WEST = b"From: a@example.org\r\nSubject: west %b\r\nDate: Mon, 1 Jan 2024 23:30:00 -0800\r\n\r\nw\r\n"
EAST = b"From: a@example.org\r\nSubject: east %b\r\nDate: Tue, 2 Jan 2024 00:30:00 +0900\r\n\r\ne\r\n"
UNDATED = b"From: a@example.org\r\nSubject: no date %b\r\n\r\nn\r\n"
QP = (b"From: a@example.org\r\nSubject: qp\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
      b"Content-Transfer-Encoding: quoted-printable\r\n\r\nhello  \r\nbar= \r\nbaz\r\n")


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    return server


def client(server: Any) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=10)
    c.login(ADDR, PW)
    return c


def search(c: imaplib.IMAP4, *criteria: str) -> list[bytes]:
    typ, data = c.search(None, *criteria)
    assert typ == "OK"
    return data[0].split()


def sent_answers(c: imaplib.IMAP4) -> None:
    """Messages 1 (west), 2 (east), 3 (no Date field) selected: the answers RFC 9051 §6.4.4 gives."""
    assert search(c, "SENTON", "1-Jan-2024") == [b"1"]  # 23:30 -0800 is 1 January where it was written
    assert search(c, "SENTON", "2-Jan-2024") == [b"2"]  # 00:30 +0900 is 2 January where it was written
    assert search(c, "SENTBEFORE", "2-Jan-2024") == [b"1"]
    assert search(c, "SENTSINCE", "2-Jan-2024") == [b"2"]
    assert search(c, "SENTSINCE", "1-Jan-1970") == [b"1", b"2"]  # no Date field, no sent date: no match
    assert search(c, "NOT", "SENTON", "1-Jan-2024") == [b"2", b"3"]


def test_sent_keys_use_the_date_as_written(imap: Any) -> None:
    c = client(imap)
    for msg in (WEST % b"a", EAST % b"a", UNDATED % b"a"):
        assert c.append("INBOX", "", "", msg)[0] == "OK"
    c.select("INBOX")
    sent_answers(c)
    c.logout()


def _format_1(raw: bytes) -> bytes:
    """The metadata Postroom stored before meta format 2: no "day", the Date field only as a UTC POSIX time."""
    doc = json.loads(compute_meta(raw).to_bytes())
    doc["v"] = 1
    del doc["day"]
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def test_metadata_of_the_older_format_answers_right_and_is_upgraded(imap: Any) -> None:
    # A store written by the previous Postroom: the same message rows, metadata in format 1 (distinct bodies, so
    # no other test's cached metadata answers for them).
    raws = [WEST % b"old", EAST % b"old", UNDATED % b"old"]
    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    imap.run(imap.store.append_many(inbox.id, [AppendRequest(raw=r, meta=_format_1(r)) for r in raws]))
    c = client(imap)
    c.select("INBOX")
    sent_answers(c)
    c.logout()
    infos = imap.run(imap.store.list_messages(inbox.id))
    stored = imap.run(imap.store.read_metas([m.blob_id for m in infos]))
    # recomputed once and written back in the current format
    assert [stored[m.blob_id] for m in infos] == [compute_meta(r).to_bytes() for r in raws]


def test_binary_of_quoted_printable(imap: Any) -> None:
    c = client(imap)
    assert c.append("INBOX", "", "", QP)[0] == "OK"
    c.select("INBOX")
    typ, data = c.fetch("1", "(BINARY.PEEK[1] BINARY.SIZE[1] BODYSTRUCTURE)")
    assert typ == "OK"
    head, body = data[0]  # type: ignore[misc]
    # RFC 2045 §6.7 rule 3 (trailing blanks deleted) and rule 5 (soft break with transport padding)
    assert body == b"hello\r\nbarbaz\r\n"
    assert b"BINARY.SIZE[1] 15" in head + data[1]  # type: ignore[operator]
    # BODYSTRUCTURE still describes the encoded body: 21 octets, 3 lines
    assert b'"quoted-printable" 21 3' in head + data[1]  # type: ignore[operator]
    assert search(c, "BODY", "barbaz") == [b"1"]
    assert search(c, "BODY", "bar=") == []
    c.logout()


def test_append_with_a_one_digit_day(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    msg = WEST % b"ios"
    r.send(b'a APPEND INBOX "3-Feb-2025 10:00:00 +0000" {%d}\r\n' % len(msg))
    assert r.line() == b"+ Ready for literal data\r\n"
    r.send(msg + b"\r\n")
    assert re.match(rb"a OK \[APPENDUID \d+ 1\] APPEND completed", r.line())
    r.cmd("b SELECT INBOX")
    assert r.cmd("c FETCH 1 INTERNALDATE")[0] == b'* 1 FETCH (INTERNALDATE " 3-Feb-2025 10:00:00 +0000")\r\n'
    assert r.cmd("d SEARCH ON 3-Feb-2025 SENTON 1-Jan-2024")[0] == b"* SEARCH 1\r\n"
    assert r.cmd('e APPEND INBOX "31-Feb-2025 10:00:00 +0000" {1+}\r\nx')[-1].startswith(b"e BAD ")
