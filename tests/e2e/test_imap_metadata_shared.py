"""METADATA on another user's mailbox by its rights (RFC 5464 §3.3, RFC 4314): what the user may read and set,
and a mailbox without rights answered as a missing one."""

from __future__ import annotations

from typing import Any

import pytest
from imap_support import wire_imap
from shared_support import ALICE, BOB, CAROL, EVE, PRIVATE, SHARED, ok, populate
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
