"""A domain's shared folders end to end: RFC 2342 §5's shared namespace ("Shared Folders/<name>") over mailboxes
of the domain's shared-folders owner, reached only through their ACL (RFC 4314 §4). Made with the store calls
`postroom mailbox share` makes (the command itself: tests/e2e/test_cli_shared_folders.py); alice gets `lrsi`, bob
nothing, eve is of another domain; the owner can log in by no protocol."""

from __future__ import annotations

import base64
import imaplib
import poplib
import smtplib
from typing import Any

import pytest
from imap_support import Raw, message, wire_imap

ALICE, BOB, EVE = "alice@example.org", "bob@example.org", "eve@other.test"
OWNER = "shared folders@example.org"
PW = "secret-password"
TEAM = '"Shared Folders/Team"'


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def shared(server: Any) -> Any:
    """The shared folder "Team" of example.org with alice `lrsi`, and "Board" with nobody's rights."""
    for address in (ALICE, BOB, EVE):
        server.add_user(address, PW)
    owner = server.run(server.store.shared_folders_owner("example.org", create=True))
    team = server.run(server.store.create_mailbox(owner, "Team"))
    server.run(server.store.create_mailbox(owner, "Board"))
    server.run(server.store.set_acl(team.id, ALICE, "lrsi"))
    return server


def login(server: Any, address: str) -> Raw:
    r = Raw(server.port("imap"))
    r.login(address, PW)
    return r


def ok(lines: list[bytes]) -> list[bytes]:
    assert b" OK " in lines[-1], lines
    return lines[:-1]


def test_namespace_announces_the_shared_namespace(shared: Any) -> None:
    # RFC 2342 §5: personal, other users', shared; announced whether or not the domain has a shared folder.
    for address in (ALICE, EVE):
        assert login(shared, address).cmd("n NAMESPACE")[0] == (
            b'* NAMESPACE (("" "/")) (("Other Users/" "/")) (("Shared Folders/" "/"))\r\n')


def test_alice_with_lrsi_lists_selects_appends_and_stores_seen_only(shared: Any) -> None:
    alice = login(shared, ALICE)
    listed = ok(alice.cmd('1 LIST "" "*" RETURN (MYRIGHTS)'))
    team = [line for line in listed if b"Shared Folders/Team" in line]
    assert team == [b'* LIST (\\HasNoChildren) "/" "Shared Folders/Team" ("MYRIGHTS" lrsi)\r\n'], listed
    assert not any(b"Board" in line or b"shared folders@" in line for line in listed)  # no right: not there
    # RFC 4314 §4: APPEND needs "i"; flags without their right are left off (\Flagged needs "w").
    msg = message(1)
    ok(alice.cmd(b"2 APPEND " + TEAM.encode() + b" (\\Seen \\Flagged) {%d+}\r\n" % len(msg) + msg))
    selected = alice.cmd(f"3 SELECT {TEAM}")
    assert b"* 1 EXISTS\r\n" in selected
    assert selected[-1] == b"3 OK [READ-WRITE] SELECT completed\r\n"  # "s" changes the mailbox
    # (rev1: a session of another user than the owner never claims \\Recent, so what nobody claimed shows it)
    assert alice.cmd("4 FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n"
    assert message(1) in alice.cmd("5 FETCH 1 BODY[]")[0]
    ok(alice.cmd("6 STORE 1 -FLAGS.SILENT (\\Seen)"))  # "s"
    assert alice.cmd("7 STORE 1 +FLAGS (\\Flagged)")[-1] == (
        b"7 NO [NOPERM] STORE needs the right(s) w on this mailbox\r\n")
    assert alice.cmd("8 EXPUNGE")[-1] == b"8 NO [NOPERM] EXPUNGE needs the right e on this mailbox\r\n"
    assert alice.cmd(f"9 GETACL {TEAM}")[-1] == b"9 NO [NOPERM] GETACL needs the right(s) a on this mailbox\r\n"
    assert alice.cmd(f"10 MYRIGHTS {TEAM}")[0] == b'* MYRIGHTS "Shared Folders/Team" lrsi\r\n'
    assert alice.cmd("11 FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"
    # Nothing of hers is made in the namespace, nor reached by the owner's would-be "Other Users" name.
    assert alice.cmd('12 CREATE "Shared Folders/Mine"')[-1].startswith(b"12 NO [CANNOT]")
    assert alice.cmd('13 SELECT "Other Users/shared folders@example.org/Team"')[-1] == (
        b"13 NO [NONEXISTENT] Mailbox does not exist\r\n")
    assert alice.cmd('14 SELECT "Shared Folders/Board"')[-1] == b"14 NO [NONEXISTENT] Mailbox does not exist\r\n"


def test_bob_without_rights_and_eve_of_another_domain_see_nothing(shared: Any) -> None:
    for address in (BOB, EVE):
        r = login(shared, address)
        listed = ok(r.cmd('1 LIST "" "*"'))
        assert not any(b"Shared Folders" in line or b"Team" in line for line in listed), (address, listed)
        # RFC 4314 §6 (acl.py invariant 2): exactly the answer of a mailbox that does not exist.
        for n, command in enumerate((f"SELECT {TEAM}", f"STATUS {TEAM} (MESSAGES)", f"MYRIGHTS {TEAM}",
                                     f"GETACL {TEAM}", f"SETACL {TEAM} {address} lrswipkxtea")):
            assert r.cmd(f"{n} {command}")[-1] == f"{n} NO [NONEXISTENT] Mailbox does not exist\r\n".encode()
        msg = message(2)
        appended = r.cmd(b"a APPEND " + TEAM.encode() + b" {%d+}\r\n" % len(msg) + msg)
        assert appended[-1] == b"a NO [TRYCREATE] Mailbox does not exist\r\n"


def test_a_user_with_a_administers_the_folder_with_setacl(shared: Any) -> None:
    team = shared.run(shared.store.get_shared_folder(shared.run(shared.store.get_user(ALICE)).id, "Team")).mailbox
    shared.run(shared.store.set_acl(team.id, ALICE, "lrsia"))
    alice = login(shared, ALICE)
    ok(alice.cmd(f"1 SETACL {TEAM} {BOB} lr"))
    # RFC 4314 §3.6: nobody owns a shared folder, so no implicit owner entry; the obsolete "d"/"c" are not due.
    assert alice.cmd(f"2 GETACL {TEAM}")[0] == (
        b'* ACL "Shared Folders/Team" alice@example.org lrsia bob@example.org lr\r\n')
    assert alice.cmd(f"3 SETACL {TEAM} {EVE} lr")[-1].startswith(b"3 NO [CANNOT]")  # another domain
    assert alice.cmd(f'4 SETACL {TEAM} "{OWNER}" lr')[-1].startswith(b"4 NO [CANNOT]")  # not an identifier
    bob = login(shared, BOB)
    assert b'* LIST (\\HasNoChildren) "/" "Shared Folders/Team"\r\n' in ok(bob.cmd('1 LIST "" "Shared*/%"'))
    assert bob.cmd(f"2 EXAMINE {TEAM}")[-1] == b"2 OK [READ-ONLY] EXAMINE completed\r\n"
    # Another user's change to the folder reaches a session that has it open (the change feed's watch).
    msg = message(3)
    ok(alice.cmd(b"5 APPEND " + TEAM.encode() + b" {%d+}\r\n" % len(msg) + msg))
    assert bob.cmd("3 NOOP")[0] == b"* 1 EXISTS\r\n"


@pytest.mark.parametrize("server_overrides", [  # a dozen failures from one address: no growing delay here
    {"auth": {"allow_plaintext": True, "max_failures_per_ip": 100, "max_failures_per_user": 100}}])
def test_the_shared_folders_owner_logs_in_by_no_protocol(shared: Any) -> None:
    for password in ("", PW, "x"):
        r = Raw(shared.port("imap"))
        assert r.cmd(f'1 LOGIN "{OWNER}" "{password}"')[-1].startswith(b"1 NO [AUTHENTICATIONFAILED]")
        plain = base64.b64encode(f"\0{OWNER}\0{password}".encode()).decode()
        assert r.cmd(f"2 AUTHENTICATE PLAIN {plain}")[-1].startswith(b"2 NO [AUTHENTICATIONFAILED]")
        p = poplib.POP3("127.0.0.1", shared.port("pop3"), timeout=10)
        with pytest.raises(poplib.error_proto):
            p.user(OWNER)
            p.pass_(password or "x")
        p.close()
        s = smtplib.SMTP("127.0.0.1", shared.port("submission"), timeout=10)
        s.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login(OWNER, password or "x")
        s.close()
    # Nor is it a mail address: the quoted spelling is another (unknown) address, the bare one no address.
    s = smtplib.SMTP("127.0.0.1", shared.port("smtp"), timeout=10)
    s.ehlo()
    s.mail("ann@remote.test")
    assert s.rcpt('"shared folders"@example.org')[0] == 550
    s.close()
    c = imaplib.IMAP4("127.0.0.1", shared.port("imap"), timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        c.login(OWNER, "")
    c.shutdown()
