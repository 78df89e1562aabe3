"""MULTIAPPEND (RFC 3502) end to end: imapclient's `multiappend`, raw LITERAL+ with large messages that go to
staging files, all or nothing (RFC 3502 §3), APPENDUID with a UID set (RFC 4315 §3), no staging file left."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import imapclient
import pytest
from imap_support import Raw, wire_imap
from test_imap_append_stream import big_message, inbox_messages, staging

from postroom.imap.session import MAX_STAGED_LITERALS, STREAM_LITERAL_MIN
from postroom.store import names

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    return server


def msg(i: int) -> bytes:
    return b"From: ann@example.org\r\nSubject: m%d\r\nMessage-ID: <m%d@example.org>\r\n\r\nbody %d\r\n" % (i, i, i)


def test_imapclient_multiappend(imap: Any) -> None:
    c = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=30)
    c.login(ADDR, PW)
    assert b"MULTIAPPEND" in c.capabilities()
    when = dt.datetime(2024, 2, 5, 10, 0, 0, tzinfo=dt.UTC)
    answer = c.multiappend("INBOX", [msg(1), {"msg": msg(2), "flags": [b"\\Seen", b"$Work"], "date": when},
                                     {"msg": msg(3), "flags": [b"\\Flagged"]}])
    # RFC 4315 §3: MULTIAPPEND answers APPENDUID with the UIDs of all the messages, as a uid-set
    typ, data = answer
    assert typ == "OK" and re.fullmatch(rb"\[APPENDUID \d+ 1:3\] APPEND completed", data[0])
    c.select_folder("INBOX")
    got = c.fetch([1, 2, 3], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE"])
    assert [got[u][b"BODY[]"] for u in (1, 2, 3)] == [msg(1), msg(2), msg(3)]
    flags = {u: set(got[u][b"FLAGS"]) - {b"\\Recent"} for u in (1, 2, 3)}  # rev1 SELECT claims \Recent
    assert flags == {1: set(), 2: {b"\\Seen", b"$Work"}, 3: {b"\\Flagged"}}
    assert got[2][b"INTERNALDATE"].astimezone(dt.UTC) == when
    c.logout()


def test_all_or_nothing(imap: Any) -> None:
    r = Raw(imap.port("imap"), timeout=30)
    r.login(ADDR, PW)
    kws = " ".join(f"k{i}" for i in range(names.MAX_MAILBOX_KEYWORDS))
    assert r.cmd(b"a APPEND INBOX (" + kws.encode() + b") {%d+}\r\n" % len(msg(0)) + msg(0))[-1].startswith(
        b"a OK")
    # The third message's keyword is one more than the mailbox may have: the store refuses it inside the one
    # transaction, so neither the first nor the second (a large, staged one) is stored (RFC 3502 §3).
    big = big_message(2 * STREAM_LITERAL_MIN)
    r.send(b"b APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s (extra) {%d+}\r\n%s\r\n"
           % (len(msg(1)), msg(1), len(big), big, len(msg(2)), msg(2)))
    assert r.until(b"b")[-1].startswith(b"b NO")
    # A message refused before the store (a bad flag, a message over APPENDLIMIT) stores none either.
    r.send(b"c APPEND INBOX {%d+}\r\n%s (\\Bogus) {%d+}\r\n%s\r\n" % (len(msg(3)), msg(3), len(msg(4)), msg(4)))
    assert r.until(b"c")[-1].startswith(b"c BAD")
    r.send(b"d APPEND INBOX {%d+}\r\n%s {0+}\r\n\r\n" % (len(msg(5)), msg(5)))
    assert r.until(b"d")[-1].startswith(b"d NO [CANNOT]")  # an empty message
    assert [m.uid for m in inbox_messages(imap)] == [1]
    assert list(staging(imap).iterdir()) == []
    r.close()


def test_large_messages_are_staged_and_memory_stays_bounded(imap: Any) -> None:
    # Three 2 MiB messages and small ones between them: each large one streams to its own staging file (the
    # command never holds more than STREAM_LITERAL_MIN plus its text), and all are stored byte-exact.
    bigs = [big_message(2 * STREAM_LITERAL_MIN, salt=i) for i in range(3)]
    r = Raw(imap.port("imap"), timeout=60)
    r.login(ADDR, PW)
    parts = []
    for i, b in enumerate(bigs):
        parts.append(b" (\\Seen) {%d+}\r\n" % len(b) + b)
        parts.append(b" {%d+}\r\n" % len(msg(i)) + msg(i))
    r.send(b"a APPEND INBOX" + b"".join(parts) + b"\r\n")
    assert re.match(rb"a OK \[APPENDUID \d+ 1:6\]", r.until(b"a")[-1])
    r.cmd("b SELECT INBOX")
    lines = r.cmd("c FETCH 1:6 (BODY.PEEK[])")
    expected = [bigs[0], msg(0), bigs[1], msg(1), bigs[2], msg(2)]
    for line, want in zip(lines, expected):
        assert line.endswith(b"{%d}\r\n" % len(want) + want + b")\r\n")
    # Many small literals past the command's memory cap go to files too, up to MAX_STAGED_LITERALS; past that
    # the literal is refused (RFC 5530 LIMIT) before it is sent, and nothing of the command is stored.
    piece = msg(9) + b"x" * (STREAM_LITERAL_MIN // 2)
    r.send(b"d APPEND INBOX {%d}\r\n" % len(piece))
    for _ in range(MAX_STAGED_LITERALS + 2):
        assert r.line().startswith(b"+")
        r.send(piece + b" {%d}\r\n" % len(piece))
    assert r.line().startswith(b"d NO [LIMIT]")
    assert r.cmd("e NOOP")[-1].startswith(b"e OK")
    r.close()
    assert len(inbox_messages(imap)) == 6
    assert list(staging(imap).iterdir()) == []
