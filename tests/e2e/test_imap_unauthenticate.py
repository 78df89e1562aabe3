"""UNAUTHENTICATE (RFC 8437): back to the not-authenticated state on the same connection, the selected mailbox
closed without expunge, the change feed let go, and a new login (another user's too) that sees nothing of the
first user's state. Raw bytes, then imaplib."""

from __future__ import annotations

import imaplib
from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap

from postroom.store.api import AppendRequest

ANN, ANN_PW = "ann@example.org", "ann-secret"
BOB, BOB_PW = "bob@example.org", "bob-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def test_capability_is_advertised(server: Any) -> None:
    fill(server, ANN, ANN_PW, 0)
    raw = Raw(server.port("imap"))
    assert b"UNAUTHENTICATE" in raw.cmd("c CAPABILITY")[0].split()


def test_unauthenticate_then_another_user_sees_nothing_of_the_first(server: Any) -> None:
    fill(server, ANN, ANN_PW, 3)
    fill(server, BOB, BOB_PW, 1)
    ann_id = server.run(server.store.get_user(ANN)).id
    raw = Raw(server.port("imap"))
    assert raw.cmd("0 UNAUTHENTICATE")[0].startswith(b"0 BAD")  # RFC 8437 §3: authenticated states only
    raw.login(ANN, ANN_PW)
    assert raw.cmd("1 ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    assert raw.cmd("2 SELECT INBOX")[-1].startswith(b"2 OK [READ-WRITE]")
    assert raw.cmd("3 STORE 1 +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"3 OK")
    assert server.store.hub.subscriber_count(ann_id) == 1
    done = raw.cmd("4 UNAUTHENTICATE")
    assert len(done) == 1 and done[0].startswith(b"4 OK [CAPABILITY ") and b" AUTH=PLAIN" in done[0]
    assert server.store.hub.subscriber_count(ann_id) == 0  # the change feed is let go
    # not authenticated again: commands of the authenticated states are refused, LOGIN works
    assert raw.cmd("5 SELECT INBOX")[0].startswith(b"5 BAD")
    assert raw.cmd("6 NOOP") == [b"6 OK NOOP completed\r\n"]
    raw.login(BOB, BOB_PW)
    # IMAP4rev2 was ann's ENABLE: bob's SELECT is rev1 again (RECENT, no LIST), on bob's INBOX
    lines = raw.cmd("7 SELECT INBOX")
    assert b"* 1 EXISTS\r\n" in lines and any(x.endswith(b" RECENT\r\n") for x in lines)
    assert not any(x.startswith(b"* LIST") for x in lines)
    # ann's mailbox changes reach bob's session no more
    ann_box = server.run(server.store.get_mailbox(ann_id, "INBOX"))
    server.run(server.store.append(ann_box.id, AppendRequest(raw=message(8))))
    assert raw.cmd("8 NOOP") == [b"8 OK NOOP completed\r\n"]
    # the \Deleted message of ann was not expunged by leaving (RFC 8437 §3, as UNSELECT)
    assert raw.cmd("9 UNAUTHENTICATE")[0].startswith(b"9 OK")
    raw.login(ANN, ANN_PW)
    lines = raw.cmd("10 SELECT INBOX")
    assert b"* 4 EXISTS\r\n" in lines
    assert raw.cmd("11 FETCH 1 FLAGS")[0].startswith(b"* 1 FETCH (FLAGS (\\Deleted")


def test_unauthenticate_drops_condstore_and_qresync(server: Any) -> None:
    """RFC 8437 §3: what ENABLE turned on is dropped: after ENABLE QRESYNC and UNAUTHENTICATE, the next user's
    session is a plain one (no MODSEQ in FETCH, EXPUNGE rather than VANISHED, RFC 7162 §3.2.10)."""
    fill(server, ANN, ANN_PW, 1)
    fill(server, BOB, BOB_PW, 1)
    raw = Raw(server.port("imap"))
    raw.login(ANN, ANN_PW)
    assert raw.cmd("1 ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    assert raw.cmd("2 UNAUTHENTICATE")[0].startswith(b"2 OK")
    raw.login(BOB, BOB_PW)
    raw.cmd("3 SELECT INBOX")
    assert raw.cmd("4 STORE 1 +FLAGS (\\Deleted)")[0] == b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\n"
    assert raw.cmd("5 EXPUNGE") == [b"* 1 EXPUNGE\r\n", b"5 OK EXPUNGE completed\r\n"]


def test_unauthenticate_with_imaplib(server: Any) -> None:
    fill(server, ANN, ANN_PW, 2)
    fill(server, BOB, BOB_PW, 5)
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"))
    assert "UNAUTHENTICATE" in c.capabilities
    c.login(ANN, ANN_PW)
    assert c.select("INBOX") == ("OK", [b"2"])
    imaplib.Commands["UNAUTHENTICATE"] = ("AUTH", "SELECTED")
    typ, _ = c._simple_command("UNAUTHENTICATE")
    assert typ == "OK"
    c.state = "NONAUTH"
    c.login(BOB, BOB_PW)
    assert c.select("INBOX") == ("OK", [b"5"])
    c.logout()
