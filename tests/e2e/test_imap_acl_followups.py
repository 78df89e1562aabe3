"""ACL follow-ups end to end (issue 14 round 2): PERMANENTFLAGS narrowed to the rights (RFC 4314 §4), SETACL's
"+" / "-" read and written in one store write. METADATA on another user's mailbox: test_imap_metadata_shared.py;
NOTIFY STATUS of shared mailboxes: test_imap_notify_shared.py."""

from __future__ import annotations

from typing import Any

import imapclient
import pytest
from imap_support import wire_imap
from shared_support import ALICE, BOB, PW, SHARED, grant, ok, populate
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


def permanentflags(lines: list[bytes]) -> bytes:
    return next(x for x in lines if b"PERMANENTFLAGS" in x)


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
