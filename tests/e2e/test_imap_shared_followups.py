"""ACL follow-ups end to end (issue 14 round 2): PERMANENTFLAGS narrowed to the rights (RFC 4314 §4), SETACL's
"+" / "-" read and written in one store write, METADATA on another user's mailbox by its rights (RFC 5464 §3.3),
NOTIFY STATUS of shared mailboxes the user may read (RFC 5465) and nothing of what they may not."""

from __future__ import annotations

from typing import Any

import imapclient
import pytest
from imap_support import Raw, fill, message, wire_imap

BOB, ALICE, CAROL, EVE = "bob@example.org", "alice@example.org", "carol@example.org", "eve@other.test"
PW = "secret-password"
SHARED = '"Other Users/bob@example.org/Shared"'
PRIVATE = '"Other Users/bob@example.org/Private"'


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def imap(server: Any) -> Any:
    """bob with "Shared" (2 messages) and "Private" (1); alice and carol of his domain, eve of another."""
    for address in (BOB, ALICE, CAROL, EVE):
        server.add_user(address, PW)
    bob = server.run(server.store.get_user(BOB))
    for name, count in (("Shared", 2), ("Private", 1)):
        server.run(server.store.create_mailbox(bob.id, name))
        fill(server, BOB, PW, count, name)
    return server


def login(server: Any, address: str) -> Raw:
    r = Raw(server.port("imap"))
    r.login(address, PW)
    ok(r.cmd("e ENABLE IMAP4rev2"))
    return r


def ok(lines: list[bytes]) -> list[bytes]:
    assert b" OK " in lines[-1], lines
    return lines[:-1]


def grant(server: Any, who: str, rights: str, mailbox: str = "Shared") -> None:
    ok(login(server, BOB).cmd(f"g SETACL {mailbox} {who} {rights}"))


def permanentflags(lines: list[bytes]) -> bytes:
    return next(x for x in lines if b"PERMANENTFLAGS" in x)


# ---- PERMANENTFLAGS (RFC 4314 §4)

@pytest.mark.parametrize(("rights", "expected"), [
    # "s" alone: \Seen is all STORE may change; no keywords, no \*.
    ("lrs", b"* OK [PERMANENTFLAGS (\\Seen)] Flags permitted\r\n"),
    ("lrt", b"* OK [PERMANENTFLAGS (\\Deleted)] Flags permitted\r\n"),
    ("lre", b"* OK [PERMANENTFLAGS ()] Flags permitted\r\n"),  # READ-WRITE for EXPUNGE, no flag to change
    # "w": the other system flags and keywords (new ones too), not \Seen nor \Deleted.
    ("lrw", b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Draft $Work \\*)] Flags permitted\r\n"),
    ("lrstw", b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Work \\*)] Flags permitted\r\n"),
])
def test_permanentflags_list_only_what_the_rights_let_store_change(imap: Any, rights: str, expected: bytes) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd("1 SELECT Shared"))
    ok(bob.cmd("2 STORE 1 +FLAGS ($Work)"))
    grant(imap, ALICE, rights)
    alice = login(imap, ALICE)
    selected = alice.cmd(f"3 SELECT {SHARED}")
    assert selected[-1] == b"3 OK [READ-WRITE] SELECT completed\r\n"
    assert permanentflags(selected) == expected
    # and STORE agrees with what was announced: a flag left out is refused
    if "s" not in rights:
        assert alice.cmd("4 STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"4 NO [NOPERM]")


def test_own_mailbox_permanentflags_unchanged(imap: Any) -> None:
    bob = login(imap, BOB)
    assert permanentflags(bob.cmd("1 SELECT Shared")) == (
        b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)] Flags permitted\r\n")


def test_permanentflags_seen_by_imapclient(imap: Any) -> None:
    grant(imap, ALICE, "lrs")
    c = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    c.login(ALICE, PW)
    info = c.select_folder("Other Users/bob@example.org/Shared")
    assert info[b"PERMANENTFLAGS"] == (b"\\Seen",)
    c.logout()


# ---- SETACL "+" / "-" in one store write

def test_concurrent_setacl_additions_all_stay(imap: Any) -> None:
    """Eight sessions add a different right to the same entry at the same moment: RFC 4314 §3.1 "+" adds to the
    rights there are, so every one of them must remain (a read in one write and the write in another lost some)."""
    letters = "lrswitex"
    sessions = [login(imap, BOB) for _ in letters]
    for i, (r, letter) in enumerate(zip(sessions, letters, strict=True)):
        r.send(f"a{i} SETACL Shared {ALICE} +{letter}\r\n".encode())
    for i, r in enumerate(sessions):
        assert r.until(f"a{i}".encode())[-1] == f"a{i} OK SETACL completed\r\n".encode()
    acl = login(imap, BOB).cmd("2 GETACL Shared")[0]
    assert acl == b'* ACL "Shared" bob@example.org lrswipkxteacd alice@example.org lrswixted\r\n'
    for i, r in enumerate(sessions):
        r.send(f"b{i} SETACL Shared {ALICE} -{letters[i]}\r\n".encode())
    for i, r in enumerate(sessions):
        r.until(f"b{i}".encode())
    assert login(imap, BOB).cmd("3 GETACL Shared")[0] == b'* ACL "Shared" bob@example.org lrswipkxteacd\r\n'


def test_setacl_modifications_store_level(imap: Any) -> None:
    bob = imap.run(imap.store.get_user(BOB))
    box = imap.run(imap.store.get_mailbox(bob.id, "Shared")).id

    async def both() -> None:
        import asyncio

        await asyncio.gather(imap.store.set_acl(box, ALICE, "l", modify="+"),
                             imap.store.set_acl(box, ALICE, "r", modify="+"))

    imap.run(both())
    assert [(e.identifier, e.rights) for e in imap.run(imap.store.get_acl(box))] == [(ALICE, "lr")]
    imap.run(imap.store.set_acl(box, ALICE, "rk", modify="-"))
    assert [(e.identifier, e.rights) for e in imap.run(imap.store.get_acl(box))] == [(ALICE, "l")]
    imap.run(imap.store.set_acl(box, ALICE, "l", modify="-"))
    assert imap.run(imap.store.get_acl(box)) == []


# ---- METADATA on another user's mailbox (RFC 5464 §3.3)

def test_metadata_of_a_shared_mailbox_by_rights(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd('1 SETMETADATA Shared (/shared/comment "team box" /private/comment "bob only")'))
    ok(bob.cmd(f"2 SETACL Shared {ALICE} lr"))
    alice = login(imap, ALICE)
    # "r": she reads the /shared entries (the owner's), never bob's /private ones.
    got = alice.cmd(f"3 GETMETADATA (DEPTH infinity) {SHARED} (/shared /private)")
    assert got == [b'* METADATA "Other Users/bob@example.org/Shared" (/shared/comment "team box")\r\n',
                   b"3 OK GETMETADATA completed\r\n"]
    # Her own /private entry on his mailbox: hers alone.
    ok(alice.cmd(f'4 SETMETADATA {SHARED} (/private/comment "alice notes")'))
    assert alice.cmd(f"5 GETMETADATA {SHARED} /private/comment")[0] == (
        b'* METADATA "Other Users/bob@example.org/Shared" (/private/comment "alice notes")\r\n')
    assert bob.cmd("6 GETMETADATA Shared /private/comment")[0] == (
        b'* METADATA "Shared" (/private/comment "bob only")\r\n')
    # /shared needs "w" to change (RFC 5464 §3.3), and nothing changes.
    assert alice.cmd(f'7 SETMETADATA {SHARED} (/private/x "1" /shared/comment "mine")') == [
        b"7 NO [NOPERM] SETMETADATA needs the right(s) w on this mailbox\r\n"]
    assert alice.cmd(f"8 GETMETADATA {SHARED} /private/x")[0] == (
        b'* METADATA "Other Users/bob@example.org/Shared" (/private/x NIL)\r\n')
    ok(bob.cmd(f"9 SETACL Shared {ALICE} +w"))
    ok(alice.cmd(f'10 SETMETADATA {SHARED} (/shared/comment "edited")'))
    assert bob.cmd("11 GETMETADATA Shared /shared/comment")[0] == b'* METADATA "Shared" (/shared/comment "edited")\r\n'
    # Only "l": she may know it exists, not read its entries.
    ok(bob.cmd(f"12 SETACL Shared {ALICE} l"))
    assert alice.cmd(f"13 GETMETADATA {SHARED} /shared/comment") == [
        b"13 NO [NOPERM] GETMETADATA needs the right(s) r on this mailbox\r\n"]


@pytest.mark.parametrize("who", [CAROL, EVE])
def test_metadata_of_a_mailbox_without_rights_is_a_missing_mailbox(imap: Any, who: str) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd('1 SETMETADATA Private (/shared/comment "secret")'))
    ok(bob.cmd(f"2 SETACL Shared {ALICE} lr"))  # someone else's right gives carol and eve nothing
    r = login(imap, who)
    missing = b"NO [NONEXISTENT] Mailbox does not exist\r\n"
    for mailbox in (PRIVATE, SHARED, '"Other Users/bob@example.org/Nope"'):
        assert r.cmd(f"3 GETMETADATA {mailbox} /shared/comment") == [b"3 " + missing]
        assert r.cmd(f'4 SETMETADATA {mailbox} (/private/comment "x")') == [b"4 " + missing]
        assert r.cmd(f'5 SETMETADATA {mailbox} (/shared/comment "x")') == [b"5 " + missing]
    assert bob.cmd("6 GETMETADATA Private /shared/comment")[0] == b'* METADATA "Private" (/shared/comment "secret")\r\n'


def test_metadata_store_refuses_without_rights(imap: Any) -> None:
    """The store checks too (store invariant 6): a mailbox id of another user without "r" is NotFound."""
    from postroom.store.api import NotFound

    bob = imap.run(imap.store.get_user(BOB))
    carol = imap.run(imap.store.get_user(CAROL))
    box = imap.run(imap.store.get_mailbox(bob.id, "Private")).id
    with pytest.raises(NotFound):
        imap.run(imap.store.get_metadata(carol.id, box, ["/shared/comment"]))
    with pytest.raises(NotFound):
        imap.run(imap.store.set_metadata(carol.id, box, [("/private/x", b"1")]))


# ---- NOTIFY STATUS of shared mailboxes (RFC 5465)

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
