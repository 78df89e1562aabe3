"""IDLE (RFC 2177) against the real server (imap/idle.py): changes of other sessions and deliveries pushed as
they come, a bad line ends IDLE with BAD, IDLE in the authenticated state. What a session is told between
commands: test_imap_changes.py."""

from __future__ import annotations

from typing import Any

import pytest
from ann_support import ADDR, PW, session
from imap_support import Raw, fill, message, wire_imap

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server_overrides: dict[str, Any], server: Any) -> Any:
    return server


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def test_idle_pushes_appends_flags_expunges_and_deliveries(imap: Any) -> None:
    fill(imap, ADDR, PW, 2)
    a, b = session(imap, rev2=True), session(imap)
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    b.cmd("1 STORE 1 +FLAGS (\\Answered)")
    assert a.line() == b"* 1 FETCH (FLAGS (\\Answered) UID 1)\r\n"
    b.cmd(b"2 APPEND INBOX {%d+}\r\n" % len(message(3)) + message(3))
    assert a.line() == b"* 3 EXISTS\r\n"
    b.cmd("3 STORE 2 +FLAGS.SILENT (\\Deleted)")
    assert a.line() == b"* 2 FETCH (FLAGS (\\Deleted) UID 2)\r\n"
    b.cmd("4 EXPUNGE")
    assert a.line() == b"* 2 EXPUNGE\r\n"  # IDLE is a command in progress: expunges may be sent
    # A delivery through the store (as SMTP's local delivery does) reaches the idler too.
    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    imap.run(imap.store.deliver([inbox.id], AppendRequest(raw=message(5), meta=compute_meta(message(5)).to_bytes())))
    assert a.line() == b"* 3 EXISTS\r\n"
    a.send(b"DONE\r\n")
    assert a.line() == b"i OK IDLE terminated\r\n"
    assert a.cmd("5 NOOP") == [b"5 OK NOOP completed\r\n"]


def test_idle_bad_line_and_authenticated_state(imap: Any) -> None:
    imap.add_user(ADDR, PW)
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    r.send(b"i IDLE\r\n")
    assert r.line() == b"+ idling\r\n"
    r.send(b"NOPE\r\n")
    assert r.line() == b"i BAD Expected DONE\r\n"
    assert r.cmd("n NOOP") == [b"n OK NOOP completed\r\n"]


def test_idle_sees_a_message_delivered_by_smtp(imap: Any) -> None:
    import smtplib

    imap.add_user(ADDR, PW)
    a = session(imap, rev2=True)
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    with smtplib.SMTP("127.0.0.1", imap.port("smtp"), timeout=10) as smtp:
        assert smtp.sendmail("someone@example.test", [ADDR], message(1)) == {}
    assert a.line() == b"* 1 EXISTS\r\n"
    a.send(b"DONE\r\n")
    assert a.line() == b"i OK IDLE terminated\r\n"
    lines = a.cmd("f FETCH 1 (ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b'"note 1"' in lines[0] and b"Subject: note 1\r\n" in lines[0]
