"""NOTIFY's metadata events end to end (RFC 5465 §5.6 MailboxMetadataChange, §5.7 ServerMetadataChange, with
RFC 5464): one session NOTIFYing, another doing SETMETADATA; the notification is the unsolicited METADATA
response of RFC 5464 §4.4.2, `* METADATA mailbox entry` (the §5 entry-list form: names only, no values). Of a
mailbox shared through its ACL (RFC 4314) another user is told its "/shared" entries while they may read it,
never an entry that is someone else's "/private" one."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from imap_support import Raw, fill, wire_imap

BOB, ALICE, CAROL = "bob@example.org", "alice@example.org", "carol@example.org"
PW = "secret-password"
SHARED = '"Other Users/bob@example.org/Shared"'


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def login(server: Any, address: str, select: str | None = None) -> Raw:
    r = Raw(server.port("imap"))
    r.login(address, PW)
    ok(r.cmd("e ENABLE IMAP4rev2"))
    if select:
        ok(r.cmd(f"s SELECT {select}"))
    return r


def ok(lines: list[bytes]) -> list[bytes]:
    assert b" OK " in lines[-1], lines
    return lines[:-1]


def nothing_more(r: Raw, wait: float = 0.5) -> bool:
    """True if the server sends nothing within `wait` seconds."""
    r.sock.settimeout(wait)
    try:
        return r.sock.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return True
    finally:
        r.sock.settimeout(10)


def test_metadata_events_are_supported(server: Any) -> None:
    """RFC 5465 §5.6, §5.7: required of a server that has METADATA; the BADEVENT list names them (§3.1)."""
    fill(server, BOB, PW, 0)
    a = login(server, BOB)
    caps = a.cmd("c CAPABILITY")[0].split()
    assert b"METADATA" in caps and b"NOTIFY" in caps
    assert a.cmd("1 NOTIFY SET (inboxes (MailboxMetadataChange)) (personal (ServerMetadataChange))") == [
        b"1 OK NOTIFY completed\r\n"]
    assert a.cmd("2 NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))") == [
        b"2 NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange "
        b"MailboxMetadataChange ServerMetadataChange)] Unsupported NOTIFY event AnnotationChange\r\n"]
    assert a.cmd("3 NOTIFY SET (selected (MailboxMetadataChange))")[0].startswith(b"3 BAD")  # §6.1, §8


def test_mailbox_and_server_entries_are_told_by_name(server: Any) -> None:
    fill(server, BOB, PW, 1)
    a, b = login(server, BOB, select="INBOX"), login(server, BOB)
    assert a.cmd("n NOTIFY SET (inboxes (MailboxMetadataChange ServerMetadataChange))") == [
        b"n OK NOTIFY completed\r\n"]
    ok(b.cmd('1 SETMETADATA INBOX (/private/comment "mine" /shared/comment "ours")'))
    # between commands (RFC 5465 §3: at any time); the selected mailbox is matched by its name (§6.1)
    assert [a.line(), a.line()] == [b'* METADATA "INBOX" /private/comment\r\n',
                                    b'* METADATA "INBOX" /shared/comment\r\n']
    ok(b.cmd('2 SETMETADATA "" (/private/motd "hello")'))
    assert a.line() == b'* METADATA "" /private/motd\r\n'  # RFC 5464 §5: "" is the server
    ok(b.cmd('3 SETMETADATA Archive (/private/comment "elsewhere")'))  # not covered by INBOXES
    ok(b.cmd("4 SETMETADATA INBOX (/private/comment NIL)"))  # a removal is a change
    assert a.line() == b'* METADATA "INBOX" /private/comment\r\n'
    ok(b.cmd("5 SETMETADATA INBOX (/private/never NIL)"))  # nothing was there: nothing changed
    assert nothing_more(a)
    # the value is read with GETMETADATA (RFC 5464 §4.4.2)
    assert a.cmd("6 GETMETADATA INBOX /shared/comment")[0] == b'* METADATA "INBOX" (/shared/comment "ours")\r\n'
    # the events not asked for: nothing
    assert a.cmd("7 NOTIFY SET (personal (MailboxName))") == [b"7 OK NOTIFY completed\r\n"]
    ok(b.cmd('8 SETMETADATA INBOX (/shared/comment "changed")'))
    ok(b.cmd('9 SETMETADATA "" (/private/motd "bye")'))
    assert nothing_more(a)
    # and in IDLE (RFC 5465 §4)
    assert a.cmd("10 NOTIFY SET (personal (MailboxMetadataChange))") == [b"10 OK NOTIFY completed\r\n"]
    a.send(b"i IDLE\r\n")
    assert a.line().startswith(b"+ ")
    ok(b.cmd('11 SETMETADATA Archive (/shared/comment "archive")'))
    assert a.line() == b'* METADATA "Archive" /shared/comment\r\n'
    a.send(b"DONE\r\n")
    assert a.line() == b"i OK IDLE terminated\r\n"


@pytest.fixture
def shared(server: Any) -> Any:
    """bob's "Shared", readable and writable by alice, readable by carol."""
    for address in (BOB, ALICE, CAROL):
        server.add_user(address, PW)
    bob = server.run(server.store.get_user(BOB))
    server.run(server.store.create_mailbox(bob.id, "Shared"))
    owner = login(server, BOB)
    ok(owner.cmd("g1 SETACL Shared alice@example.org lrw"))
    ok(owner.cmd("g2 SETACL Shared carol@example.org lr"))
    return server


def test_shared_mailbox_tells_shared_entries_never_anothers_private_ones(shared: Any) -> None:
    server = shared
    bob, alice, carol = login(server, BOB), login(server, ALICE), login(server, CAROL)
    bob2, alice2 = login(server, BOB), login(server, ALICE)
    assert bob.cmd("n NOTIFY SET (personal (MailboxMetadataChange))") == [b"n OK NOTIFY completed\r\n"]
    for r in (alice, carol):
        assert r.cmd('n NOTIFY SET (subtree "Other Users/bob@example.org" (MailboxMetadataChange))') == [
            b"n OK NOTIFY completed\r\n"]
    # the owner's "/private" entry: the owner is told, nobody else
    ok(bob2.cmd('1 SETMETADATA Shared (/private/comment "bob only")'))
    assert bob.line() == b'* METADATA "Shared" /private/comment\r\n'
    # a "/shared" entry: everyone who may read the mailbox, each under their name for it
    ok(bob2.cmd('2 SETMETADATA Shared (/shared/comment "team")'))
    assert bob.line() == b'* METADATA "Shared" /shared/comment\r\n'
    assert alice.line() == b'* METADATA "Other Users/bob@example.org/Shared" /shared/comment\r\n'
    assert carol.line() == b'* METADATA "Other Users/bob@example.org/Shared" /shared/comment\r\n'
    # a sharee's "/private" entry: that sharee alone, neither the owner nor another sharee watching the mailbox
    ok(alice2.cmd(f'3 SETMETADATA {SHARED} (/private/comment "alice notes")'))
    assert alice.line() == b'* METADATA "Other Users/bob@example.org/Shared" /private/comment\r\n'
    # a sharee's "/shared" entry (it needs "w", RFC 5464 §3.3) is the owner's row: everyone is told
    ok(alice2.cmd(f'4 SETMETADATA {SHARED} (/shared/comment "edited")'))
    assert bob.line() == b'* METADATA "Shared" /shared/comment\r\n'
    assert alice.line() == b'* METADATA "Other Users/bob@example.org/Shared" /shared/comment\r\n'
    assert carol.line() == b'* METADATA "Other Users/bob@example.org/Shared" /shared/comment\r\n'
    for r in (bob, alice, carol):
        assert nothing_more(r, wait=0.3)
    # without the right to read the mailbox any more, nothing of it (RFC 4314 §4)
    ok(bob2.cmd("5 DELETEACL Shared carol@example.org"))
    ok(bob2.cmd('6 SETMETADATA Shared (/shared/comment "after")'))
    assert bob.line() == b'* METADATA "Shared" /shared/comment\r\n'
    assert alice.line() == b'* METADATA "Other Users/bob@example.org/Shared" /shared/comment\r\n'
    assert nothing_more(carol)
    assert carol.cmd("7 NOOP") == [b"7 OK NOOP completed\r\n"]
