"""NOTIFY (RFC 5465) and shared mailboxes: STATUS of the shared mailboxes the user may read and nothing of what
they may not; PERSONAL never covers them; the owner's events are no LIST responses; a socket left idle."""

from __future__ import annotations

from typing import Any

import pytest
from imap_support import message, wire_imap
from shared_support import ALICE, BOB, SHARED, grant, ok, populate
from shared_support import login_rev2 as login


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def imap(server: Any) -> Any:
    """bob with "Shared" (2 messages) and "Private" (1); alice and carol of his domain, eve of another."""
    return populate(server, shared=2)


def _status(lines: list[bytes]) -> list[bytes]:
    return [x for x in lines if x.startswith(b"* STATUS")]


def test_notify_status_of_a_shared_mailbox_the_user_may_read(imap: Any) -> None:
    grant(imap, ALICE, "lr")
    alice = login(imap, ALICE)
    ok(alice.cmd('1 NOTIFY SET (subtree "Other Users" (MessageNew MessageExpunge))'
                 ' (personal (MessageNew MessageExpunge))'))
    bob = login(imap, BOB)
    ok(bob.cmd(b"2 APPEND Shared {%d+}\r\n" % len(message(5)) + message(5)))
    ok(bob.cmd(b"3 APPEND Private {%d+}\r\n" % len(message(6)) + message(6)))  # no right: never told
    assert _status(alice.cmd("4 NOOP")) == [
        b'* STATUS "Other Users/bob@example.org/Shared" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY %d UNSEEN 3)\r\n'
        % imap.run(imap.store.get_mailbox(imap.run(imap.store.get_user(BOB)).id, "Shared")).uidvalidity]
    # revoked: the next change of it is not told, nor anything of it
    ok(bob.cmd(f"5 DELETEACL Shared {ALICE}"))
    ok(bob.cmd(b"6 APPEND Shared {%d+}\r\n" % len(message(7)) + message(7)))
    assert alice.cmd("7 NOOP") == [b"7 OK NOOP completed\r\n"]


def test_notify_personal_never_covers_shared_mailboxes(imap: Any) -> None:
    grant(imap, ALICE, "lr")
    alice = login(imap, ALICE)
    assert not any(b"bob" in x for x in ok(alice.cmd("1 NOTIFY SET STATUS (personal (MessageNew MessageExpunge))")))
    bob = login(imap, BOB)
    ok(bob.cmd(b"2 APPEND Shared {%d+}\r\n" % len(message(5)) + message(5)))
    assert not any(b"bob" in x for x in alice.cmd("3 NOOP"))


def test_notify_set_status_lists_readable_shared_mailboxes_only(imap: Any) -> None:
    grant(imap, ALICE, "lr")
    grant(imap, ALICE, "l", "Private")  # listed, not readable: no STATUS (RFC 4314 §4)
    alice = login(imap, ALICE)
    lines = ok(alice.cmd('1 NOTIFY SET STATUS (subtree "Other Users" (MessageNew MessageExpunge))'))
    assert [x.split(b" (")[0] for x in _status(lines)] == [b'* STATUS "Other Users/bob@example.org/Shared"']


def test_notify_does_not_turn_the_owners_mailbox_events_into_list_responses(imap: Any) -> None:
    """A selected shared mailbox is watched; its owner renaming it must not reach the sharee as a LIST of the
    owner's name (which would read as one of her own mailboxes)."""
    grant(imap, ALICE, "lr")
    alice = login(imap, ALICE)
    ok(alice.cmd(f"1 SELECT {SHARED}"))
    ok(alice.cmd("2 NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MailboxName))"))
    bob = login(imap, BOB)
    ok(bob.cmd("3 RENAME Shared Renamed"))
    ok(bob.cmd("4 CREATE Another"))
    lines = alice.cmd("5 NOOP")
    assert not any(b"Renamed" in x or b"Another" in x for x in lines), lines


def test_notify_over_a_socket_left_idle(imap: Any) -> None:
    """Between commands the STATUS of the shared mailbox arrives unasked (RFC 5465 §3)."""
    grant(imap, ALICE, "lr")
    alice = login(imap, ALICE)
    ok(alice.cmd('1 NOTIFY SET (mailboxes "Other Users/bob@example.org/Shared" (MessageNew MessageExpunge))'))
    bob = login(imap, BOB)
    ok(bob.cmd(b"2 APPEND Shared {%d+}\r\n" % len(message(5)) + message(5)))
    alice.sock.settimeout(10)
    assert alice.line().startswith(b'* STATUS "Other Users/bob@example.org/Shared" (MESSAGES 3 ')
