"""UIDONLY (RFC 9586) against the real server, byte for byte with the raw client (imaplib cannot read UIDFETCH
responses): ENABLE, every command that takes message numbers refused with BAD [UIDREQUIRED] (§3), UIDFETCH
instead of FETCH (§3.3) for UID FETCH, UID STORE, other sessions' changes (NOOP, IDLE), QRESYNC's SELECT and
CHANGEDSINCE, NOTIFY's MessageNew; VANISHED instead of EXPUNGE without QRESYNC; and a session that did not
enable it, which answers as before."""

from __future__ import annotations

import re
from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap

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


def raw(server: Any, *enable: str) -> Raw:
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    if enable:
        r.cmd("e ENABLE " + " ".join(enable))
    return r


def highest(server: Any) -> int:
    user = server.run(server.store.get_user(ADDR))
    return int(server.run(server.store.get_mailbox(user.id, "INBOX")).highestmodseq)


def no_message_numbers(lines: list[bytes]) -> bool:
    """No FETCH, EXPUNGE, SEARCH or message-number response code among `lines`."""
    return not any(re.match(rb"\* \d+ (FETCH|EXPUNGE)\b|\* SEARCH|\* SORT|\* THREAD", x)
                   or b"[UNSEEN " in x for x in lines)


def test_capability_and_enable(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert b"UIDONLY" in r.cmd("a CAPABILITY")[0].split()
    r.login(ADDR, PW)
    assert r.cmd("b ENABLE UIDONLY") == [b"* ENABLED UIDONLY\r\n", b"b OK ENABLE completed\r\n"]
    assert r.cmd("c ENABLE UIDONLY") == [b"* ENABLED\r\n", b"c OK ENABLE completed\r\n"]  # already on


def test_message_numbers_are_refused(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    r = raw(imap, "UIDONLY")  # a rev1 session: SELECT would say [UNSEEN 1]
    lines = r.cmd("s SELECT INBOX")
    assert b"* 3 EXISTS\r\n" in lines and no_message_numbers(lines)  # RFC 3501 §7.1 UNSEEN is a number
    for tag, command in [("a", "FETCH 1:* (FLAGS)"), ("b", "STORE 1 +FLAGS (\\Deleted)"), ("c", "COPY 1 Archive"),
                         ("d", "MOVE 1 Archive"), ("e", "SEARCH ALL"), ("f", "SEARCH RETURN (COUNT) ALL"),
                         ("g", "SORT (DATE) UTF-8 ALL"), ("h", "THREAD REFERENCES UTF-8 ALL"),
                         ("i", "UID SEARCH 1:2"), ("j", "UID SORT (SUBJECT) UTF-8 UNSEEN NOT *"),
                         ("k", "UID THREAD ORDEREDSUBJECT UTF-8 (2)")]:
        lines = r.cmd(f"{tag} {command}")
        assert len(lines) == 1 and lines[0].startswith(tag.encode() + b" BAD [UIDREQUIRED] "), (command, lines)
    # nothing was done: no flag set, nothing copied or moved
    assert r.cmd("l UID FETCH 1:* (FLAGS)") == [b"* %d UIDFETCH (FLAGS (\\Recent))\r\n" % u for u in (1, 2, 3)] + [
        b"l OK FETCH completed\r\n"]
    assert r.cmd("m STATUS Archive (MESSAGES)")[0] == b'* STATUS "Archive" (MESSAGES 0)\r\n'
    # the UID forms answer with UIDs
    assert r.cmd("n UID SEARCH UID 2:* UNSEEN") == [b"* SEARCH 2 3\r\n", b"n OK SEARCH completed\r\n"]
    assert r.cmd("o UID SORT (REVERSE SUBJECT) UTF-8 ALL") == [b"* SORT 3 2 1\r\n", b"o OK SORT completed\r\n"]
    assert r.cmd("p UID SEARCH RETURN (SAVE) UID 1,3") == [b"p OK SEARCH completed\r\n"]
    assert r.cmd("q UID SEARCH RETURN (ALL) $") == [b'* ESEARCH (TAG "q") UID ALL 1,3\r\n',
                                                    b"q OK SEARCH completed\r\n"]  # "$" is UIDs, allowed


def test_uidfetch_store_copy_move_expunge(imap: Any) -> None:
    fill(imap, ADDR, PW, 4)
    r = raw(imap, "IMAP4rev2", "UIDONLY")
    r.cmd("s SELECT INBOX")
    # §3.3: `* uid UIDFETCH (...)`; the UID data item only when asked for
    assert r.cmd("a UID FETCH 2:3 (FLAGS RFC822.SIZE)") == [
        b"* 2 UIDFETCH (FLAGS () RFC822.SIZE %d)\r\n" % len(message(2)),
        b"* 3 UIDFETCH (FLAGS () RFC822.SIZE %d)\r\n" % len(message(3)), b"a OK FETCH completed\r\n"]
    assert r.cmd("b UID FETCH 4 (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
        b"* 4 UIDFETCH (UID 4 BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: note 4\r\n\r\n)\r\n",
        b"b OK FETCH completed\r\n"]
    assert r.cmd("c UID STORE 1,3 +FLAGS (\\Flagged)") == [b"* 1 UIDFETCH (FLAGS (\\Flagged))\r\n",
                                                          b"* 3 UIDFETCH (FLAGS (\\Flagged))\r\n",
                                                          b"c OK STORE completed\r\n"]
    assert r.cmd("d UID COPY 1 Archive")[-1].startswith(b"d OK [COPYUID ")
    # VANISHED instead of EXPUNGE, with QRESYNC not enabled (§3)
    r.cmd("e UID STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert r.cmd("f EXPUNGE") == [b"* VANISHED 2\r\n", b"f OK EXPUNGE completed\r\n"]
    lines = r.cmd("g UID MOVE 3:4 Archive")
    assert lines[0].startswith(b"* OK [COPYUID ") and lines[1:] == [b"* VANISHED 3:4\r\n",
                                                                   b"g OK MOVE completed\r\n"]
    r.cmd("h UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert r.cmd("i UID EXPUNGE 1") == [b"* VANISHED 1\r\n", b"i OK UID EXPUNGE completed\r\n"]
    # a message fetched without PEEK gets \Seen: its new FLAGS come in the same UIDFETCH
    r.cmd("j SELECT Archive")
    lines = r.cmd("k UID FETCH 1 (BODY[TEXT])")
    assert lines == [b"* 1 UIDFETCH (BODY[TEXT] {15}\r\nbody number 1\r\n FLAGS (\\Seen \\Flagged))\r\n",
                     b"k OK FETCH completed\r\n"]


def test_condstore_and_qresync(imap: Any) -> None:
    fill(imap, ADDR, PW, 5)
    h = highest(imap)
    r = raw(imap, "IMAP4rev2", "UIDONLY", "QRESYNC")
    lines = r.cmd("s SELECT INBOX")
    uv = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines)).group(1))  # type: ignore[union-attr]
    # RFC 7162 §3.1.3: STORE answers carry MODSEQ, .SILENT too
    assert r.cmd("a UID STORE 2 +FLAGS (\\Seen)") == [b"* 2 UIDFETCH (FLAGS (\\Seen) MODSEQ (%d))\r\n" % (h + 1),
                                                      b"a OK STORE completed\r\n"]
    assert r.cmd("b UID STORE 3 +FLAGS.SILENT (\\Deleted)") == [b"* 3 UIDFETCH (MODSEQ (%d))\r\n" % (h + 2),
                                                               b"b OK STORE completed\r\n"]
    assert r.cmd("c UID EXPUNGE 3") == [b"* VANISHED 3\r\n", b"c OK [HIGHESTMODSEQ %d] UID EXPUNGE completed\r\n"
                                        % (h + 3)]
    assert r.cmd(f"d UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h} VANISHED)") == [
        b"* VANISHED (EARLIER) 3\r\n", b"* 2 UIDFETCH (FLAGS (\\Seen) MODSEQ (%d))\r\n" % (h + 1),
        b"d OK FETCH completed\r\n"]
    r.cmd("e UNSELECT")
    # seq-match-data holds message numbers: refused; known-uids alone is fine (RFC 7162 §3.2.5)
    assert r.cmd(f"f SELECT INBOX (QRESYNC ({uv} {h} 1:5 (1:2 1:2)))")[-1].startswith(b"f BAD [UIDREQUIRED] ")
    lines = r.cmd(f"g SELECT INBOX (QRESYNC ({uv} {h} 1:5))")
    assert lines[-3:] == [b"* VANISHED (EARLIER) 3\r\n", b"* 2 UIDFETCH (FLAGS (\\Seen) MODSEQ (%d))\r\n" % (h + 1),
                          b"g OK [READ-WRITE] SELECT completed\r\n"]
    assert no_message_numbers(lines)


def test_other_sessions_changes_noop_and_idle(imap: Any) -> None:
    fill(imap, ADDR, PW, 4)
    a = raw(imap, "IMAP4rev2", "UIDONLY", "CONDSTORE")
    a.cmd("s SELECT INBOX")
    b = raw(imap)
    b.cmd("s SELECT INBOX")
    b.cmd("t STORE 2 +FLAGS.SILENT (\\Answered)")
    b.cmd("u STORE 3 +FLAGS.SILENT (\\Deleted)")
    b.cmd("v EXPUNGE")
    b.cmd(b"w APPEND INBOX {%d+}\r\n" % len(message(5)) + message(5))
    h = highest(imap)
    assert a.cmd("n NOOP") == [b"* VANISHED 3\r\n", b"* 2 UIDFETCH (FLAGS (\\Answered) MODSEQ (%d))\r\n" % (h - 3),
                               b"* 4 EXISTS\r\n", b"n OK NOOP completed\r\n"]
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    b.cmd("x STORE 4 +FLAGS.SILENT (\\Flagged)")  # b's message 4 is UID 5
    assert a.line() == b"* 5 UIDFETCH (FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (h + 1)
    b.cmd("y UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert a.line() == b"* 1 UIDFETCH (FLAGS (\\Deleted) MODSEQ (%d))\r\n" % (h + 2)
    b.cmd("z EXPUNGE")
    assert a.line() == b"* VANISHED 1\r\n"
    a.send(b"DONE\r\n")
    assert a.line() == b"i OK IDLE terminated\r\n"


def test_notify_message_new(imap: Any) -> None:
    fill(imap, ADDR, PW, 2)
    a = raw(imap, "IMAP4rev2", "UIDONLY")
    a.cmd("s SELECT INBOX")
    assert a.cmd("n NOTIFY SET (selected (MessageNew (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge "
                 "FlagChange))") == [b"n OK NOTIFY completed\r\n"]
    b = raw(imap)
    b.cmd(b"1 APPEND INBOX {%d+}\r\n" % len(message(3)) + message(3))
    assert a.line() == b"* 3 EXISTS\r\n"
    # RFC 5465 §5.2 as a UID FETCH would answer it: a UIDFETCH (RFC 9586 §3.3)
    assert a.line() == b"* 3 UIDFETCH (FLAGS () BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: note 3\r\n\r\n)\r\n"
    b.cmd("2 SELECT INBOX")
    b.cmd("3 STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert a.line() == b"* 1 UIDFETCH (FLAGS (\\Deleted))\r\n"
    b.cmd("4 EXPUNGE")
    assert a.cmd("5 NOOP") == [b"* VANISHED 1\r\n", b"5 OK NOOP completed\r\n"]


def test_session_without_uidonly_is_unchanged(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    a = raw(imap, "UIDONLY")
    a.cmd("s SELECT INBOX")
    r = raw(imap)  # rev1, nothing enabled
    lines = r.cmd("s SELECT INBOX")
    assert b"* OK [UNSEEN 1] First unseen message\r\n" in lines
    assert r.cmd("a FETCH 2 (FLAGS)") == [b"* 2 FETCH (FLAGS ())\r\n", b"a OK FETCH completed\r\n"]
    assert r.cmd("b UID FETCH 2 (FLAGS)") == [b"* 2 FETCH (UID 2 FLAGS ())\r\n", b"b OK FETCH completed\r\n"]
    assert r.cmd("c STORE 1 +FLAGS (\\Deleted)") == [b"* 1 FETCH (FLAGS (\\Deleted))\r\n",
                                                     b"c OK STORE completed\r\n"]
    assert r.cmd("d SEARCH DELETED") == [b"* SEARCH 1\r\n", b"d OK SEARCH completed\r\n"]
    assert r.cmd("e EXPUNGE") == [b"* 1 EXPUNGE\r\n", b"e OK EXPUNGE completed\r\n"]
    # the UIDONLY session sees the same changes by UID
    assert a.cmd("n NOOP") == [b"* VANISHED 1\r\n", b"n OK NOOP completed\r\n"]


def test_unauthenticate_forgets_uidonly(imap: Any) -> None:
    fill(imap, ADDR, PW, 1)
    r = raw(imap, "UIDONLY", "QRESYNC")
    r.cmd("a UNAUTHENTICATE")
    r.login(ADDR, PW)  # RFC 8437 §3: what ENABLE turned on is reset, QRESYNC (and CONDSTORE) too
    assert r.cmd("b SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"b BAD ")  # RFC 7162 §3.2.3: not enabled
    lines = r.cmd("s SELECT INBOX")
    assert not any(b"HIGHESTMODSEQ" in x for x in lines)
    assert r.cmd("c FETCH 1 (FLAGS)") == [b"* 1 FETCH (FLAGS (\\Recent))\r\n", b"c OK FETCH completed\r\n"]
