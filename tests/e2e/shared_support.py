"""The users and mailboxes of the shared-folder tests (RFC 4314 ACL, RFC 2342 "Other Users", RFC 8440): bob owns
"Shared" and "Private"; alice and carol are of his domain, eve of another. One place for what the ACL, METADATA
and NOTIFY tests on shared mailboxes set up alike (test_imap_acl.py, test_imap_acl_followups.py,
test_imap_metadata_shared.py, test_imap_notify_shared.py)."""

from __future__ import annotations

from typing import Any

from imap_support import Raw, fill

BOB, ALICE, CAROL, EVE = "bob@example.org", "alice@example.org", "carol@example.org", "eve@other.test"
PW = "secret-password"
SHARED = '"Other Users/bob@example.org/Shared"'
PRIVATE = '"Other Users/bob@example.org/Private"'


def populate(server: Any, shared: int) -> Any:
    """The four users; bob's "Shared" with `shared` messages and "Private" with one. Returns `server`."""
    for address in (BOB, ALICE, CAROL, EVE):
        server.add_user(address, PW)
    bob = server.run(server.store.get_user(BOB))
    for name, count in (("Shared", shared), ("Private", 1)):
        server.run(server.store.create_mailbox(bob.id, name))
        fill(server, BOB, PW, count, name)
    return server


def ok(lines: list[bytes]) -> list[bytes]:
    """The untagged lines of a command answered OK (asserts it was)."""
    assert b" OK " in lines[-1], lines
    return lines[:-1]


def login(server: Any, address: str, rev2: bool = False) -> Raw:
    """A raw session; `rev2` for one without \\Recent (a session of another user than the owner never claims
    it, so what nobody claimed is recent for it in rev1, as in EXAMINE)."""
    r = Raw(server.port("imap"))
    r.login(address, PW)
    if rev2:
        ok(r.cmd("e ENABLE IMAP4rev2"))
    return r


def login_rev2(server: Any, address: str) -> Raw:
    """`login` with IMAP4rev2 enabled."""
    return login(server, address, rev2=True)


def grant(server: Any, who: str, rights: str, mailbox: str = "Shared") -> None:
    """bob's SETACL of `mailbox` for `who`."""
    ok(login_rev2(server, BOB).cmd(f"g SETACL {mailbox} {who} {rights}"))
