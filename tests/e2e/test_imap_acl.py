"""ACL (RFC 4314), LIST-MYRIGHTS (RFC 8440) and the "Other Users" namespace (RFC 2342) end to end: issue 14's
shared-folder test (bob grants alice `lr`; she lists, selects, reads and cannot write; revoking reaches her open
session, IDLE included), the ACL commands' answers, and hostile paths (no way into a mailbox without rights).
Raw bytes where the answer is pinned down, imaplib and imapclient for interoperability."""

from __future__ import annotations

import imaplib
import poplib
from typing import Any

import imapclient
import pytest
from imap_support import fill, message, wire_imap
from shared_support import ALICE, BOB, CAROL, EVE, PW, SHARED, login, ok, populate


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def imap(server: Any) -> Any:
    """bob with a folder "Shared" of 3 messages and a "Private" one of 1; alice and carol of his domain, eve not."""
    return populate(server, shared=3)


def test_capabilities_advertise_acl_rights_and_list_myrights(imap: Any) -> None:
    caps = login(imap, ALICE).cmd("c CAPABILITY")[0].split()
    # RFC 4314 §2.1: RIGHTS= lists the rights beyond RFC 2086's (all of them implemented); RFC 8440 §3.
    assert b"ACL" in caps and b"RIGHTS=texk" in caps and b"LIST-MYRIGHTS" in caps


def test_bob_grants_alice_lr_she_reads_cannot_write_and_revoking_reaches_her(imap: Any) -> None:
    """Issue 14's shared-folder test."""
    bob = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=10)
    bob.login(BOB, PW)
    assert bob.setacl("Shared", ALICE, "lr")[0] == "OK"

    alice = login(imap, ALICE)
    listed = ok(alice.cmd('1 LIST "" "*"'))
    assert b'* LIST (\\HasNoChildren) "/" "Other Users/bob@example.org/Shared"\r\n' in listed
    assert not any(b"Private" in line for line in listed)  # no right on it: not there at all
    selected = alice.cmd(f"2 SELECT {SHARED}")
    assert b"* 3 EXISTS\r\n" in selected
    assert selected[-1] == b"2 OK [READ-ONLY] SELECT completed\r\n"  # RFC 4314 §4: none of s w t e
    body = alice.cmd("3 FETCH 1 BODY[]")
    assert message(1) in body[0] and body[-1] == b"3 OK FETCH completed\r\n"
    assert b"\\Seen" not in alice.cmd("4 FETCH 1 FLAGS")[0]  # reading set no \Seen (no "s")
    # RFC 4314 §4 and RFC 5530 §3: writes refused with NOPERM.
    assert alice.cmd("5 STORE 1 +FLAGS (\\Seen)")[-1] == b"5 NO [NOPERM] STORE needs the right(s) s on this mailbox\r\n"
    assert alice.cmd("6 STORE 1 +FLAGS (\\Flagged $Work)")[-1].startswith(b"6 NO [NOPERM]")
    msg = message(9)
    appended = alice.cmd(b"7 APPEND " + SHARED.encode() + b" {%d+}\r\n" % len(msg) + msg)
    assert appended[-1] == b"7 NO [NOPERM] APPEND needs the right(s) i on this mailbox\r\n"
    assert alice.cmd("8 EXPUNGE")[-1] == b"8 NO [NOPERM] EXPUNGE needs the right e on this mailbox\r\n"
    assert alice.cmd("9 UID EXPUNGE 1")[-1].startswith(b"9 NO [NOPERM]")
    assert len(imap.run(imap.store.list_messages(bob_box(imap, "Shared")))) == 3

    # The owner's changes to the shared folder reach her; those of his other mailboxes never do.
    bob.append("Shared", None, None, message(4))
    bob.append("INBOX", None, None, message(5))
    bob.append("Private", None, None, message(6))
    # (rev1: she never claims bob's \Recent, so what nobody claimed stays recent for her, as in EXAMINE)
    assert alice.cmd("10 NOOP") == [b"* 4 EXISTS\r\n", b"* 3 RECENT\r\n", b"10 OK NOOP completed\r\n"]

    assert bob.deleteacl("Shared", ALICE)[0] == "OK"  # revoked while she has it selected
    revoked = alice.cmd("11 FETCH 1 BODY[]")
    assert revoked == [b"* NO [NOPERM] Access to the selected mailbox was revoked\r\n",
                       b"11 NO [NOPERM] Access to the selected mailbox was revoked\r\n"]
    bob.append("Shared", None, None, message(7))
    assert alice.cmd("12 NOOP") == [b"12 OK NOOP completed\r\n"]  # nothing of the mailbox any more
    assert alice.cmd("13 SEARCH ALL")[-1].startswith(b"13 NO [NOPERM]")
    assert alice.cmd("14 UNSELECT") == [b"14 OK UNSELECT completed\r\n"]
    # Gone for her: exactly the answer a mailbox that does not exist gets.
    assert alice.cmd(f"15 SELECT {SHARED}") == [b"15 NO [NONEXISTENT] Mailbox does not exist\r\n"]
    assert not any(b"Other Users" in line for line in ok(alice.cmd('16 LIST "" "*"')))
    bob.logout()


def bob_box(server: Any, name: str) -> int:
    bob = server.run(server.store.get_user(BOB))
    return int(server.run(server.store.get_mailbox(bob.id, name)).id)


def test_revocation_reaches_an_idling_session(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd(f"1 SETACL Shared {ALICE} lr"))
    alice = login(imap, ALICE, rev2=True)
    ok(alice.cmd(f"2 SELECT {SHARED}"))
    alice.send(b"3 IDLE\r\n")
    assert alice.line() == b"+ idling\r\n"
    bob.cmd(b"4 APPEND Shared {%d+}\r\n" % len(message(8)) + message(8))
    assert alice.line() == b"* 4 EXISTS\r\n"
    ok(bob.cmd(f"5 SETACL Shared {ALICE} -r"))  # RFC 4314 §3.1: "-" removes rights
    assert alice.line() == b"* NO [NOPERM] Access to the selected mailbox was revoked\r\n"
    bob.cmd(b"6 APPEND Shared {%d+}\r\n" % len(message(9)) + message(9))
    alice.send(b"DONE\r\n")
    assert alice.line() == b"3 OK IDLE terminated\r\n"  # no EXISTS for the append after the revocation


def test_acl_commands_answer_as_rfc_4314_says(imap: Any) -> None:
    bob = login(imap, BOB)
    assert ok(bob.cmd("1 MYRIGHTS Shared")) == [b'* MYRIGHTS "Shared" lrswipkxteacd\r\n']  # the owner: all
    ok(bob.cmd(f"2 SETACL Shared {ALICE} lrsc"))  # §2.1.1: "c" is "k" here
    ok(bob.cmd("3 SETACL Shared anyone l"))
    ok(bob.cmd(f"4 SETACL Shared -{ALICE} s"))  # §2: negative rights
    ok(bob.cmd(f"5 SETACL Shared {ALICE} +d"))  # "d" is "x", "t" and "e"
    assert ok(bob.cmd("6 GETACL Shared")) == [
        b'* ACL "Shared" bob@example.org lrswipkxteacd alice@example.org lrskxtecd -alice@example.org s anyone l\r\n']
    assert ok(bob.cmd(f"7 LISTRIGHTS Shared {ALICE}")) == [
        b'* LISTRIGHTS "Shared" alice@example.org "" l r s w i p k x t e a c d\r\n']
    assert ok(bob.cmd(f"8 LISTRIGHTS Shared {BOB}")) == [  # §3.7: the owner's rights are all required
        b'* LISTRIGHTS "Shared" bob@example.org lrswipkxteacd\r\n']
    assert ok(bob.cmd(f"9 LISTRIGHTS Shared {EVE}")) == [b'* LISTRIGHTS "Shared" eve@other.test ""\r\n']
    # §3.1: an unrecognised right is BAD, uppercase ones included; nothing changed.
    assert bob.cmd(f"10 SETACL Shared {ALICE} lrQ")[-1] == (
        b"10 BAD Unknown right 'Q' (uppercase rights are not allowed)\r\n")
    assert bob.cmd(f"11 SETACL Shared {ALICE} lr9")[-1].startswith(b"11 BAD")
    # The owner's rights cannot change; another domain's users and unknown users can never be granted.
    assert bob.cmd(f"13 SETACL Shared {BOB} l")[-1] == (
        b"13 NO [CANNOT] The owner of a mailbox always has every right\r\n")
    assert bob.cmd(f"14 SETACL Shared {EVE} lr")[-1].startswith(b"14 NO [CANNOT]")
    assert bob.cmd("15 SETACL Shared nobody@example.org lr")[-1].startswith(b"15 NO [CANNOT]")
    assert bob.cmd("16 SETACL Shared not-an-address lr")[-1].startswith(b"16 NO [CANNOT]")
    ok(bob.cmd(f"17 DELETEACL Shared -{ALICE}"))
    alice = login(imap, ALICE)
    assert ok(alice.cmd(f"18 MYRIGHTS {SHARED}")) == [
        b'* MYRIGHTS "Other Users/bob@example.org/Shared" lrskxtecd\r\n']
    # No "a": the ACL of the mailbox is not hers to read or change (§4), but she may know it exists.
    assert alice.cmd(f"19 GETACL {SHARED}")[-1] == b"19 NO [NOPERM] GETACL needs the right(s) a on this mailbox\r\n"
    assert alice.cmd(f"20 SETACL {SHARED} {CAROL} lr")[-1].startswith(b"20 NO [NOPERM]")
    assert alice.cmd(f"21 LISTRIGHTS {SHARED} {CAROL}")[-1].startswith(b"21 NO [NOPERM]")
    assert alice.cmd(f"22 DELETEACL {SHARED} anyone")[-1].startswith(b"22 NO [NOPERM]")
    # Without any right: the same answer as for no mailbox at all (§6).
    for tag, name in (("23", '"Other Users/bob@example.org/Private"'), ("24", '"Other Users/bob@example.org/Nope"')):
        assert alice.cmd(f"{tag} MYRIGHTS {name}") == [f"{tag} NO [NONEXISTENT] Mailbox does not exist\r\n".encode()]
    # With "a" she administers it, but never grants another domain.
    ok(bob.cmd(f"25 SETACL Shared {ALICE} +a"))
    ok(alice.cmd(f"26 SETACL {SHARED} {CAROL} lr"))
    assert alice.cmd(f"27 SETACL {SHARED} {EVE} lr")[-1].startswith(b"27 NO [CANNOT]")
    assert b" carol@example.org lr" in ok(bob.cmd("28 GETACL Shared"))[0]


def test_other_domain_sees_nothing_even_with_anyone(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd("1 SETACL Shared anyone lrswi"))
    eve = login(imap, EVE)
    assert not any(b"Other Users" in line for line in ok(eve.cmd('2 LIST "" "*"')))
    assert eve.cmd(f"3 SELECT {SHARED}") == [b"3 NO [NONEXISTENT] Mailbox does not exist\r\n"]
    assert eve.cmd(f"4 STATUS {SHARED} (MESSAGES)") == [b"4 NO [NONEXISTENT] Mailbox does not exist\r\n"]
    assert eve.cmd(f"5 MYRIGHTS {SHARED}") == [b"5 NO [NONEXISTENT] Mailbox does not exist\r\n"]
    ok(eve.cmd("6 SELECT INBOX"))
    assert eve.cmd(f"7 COPY 1:* {SHARED}")[-1] == b"7 NO [TRYCREATE] Mailbox does not exist\r\n"
    carol = login(imap, CAROL)  # "anyone" is every user of bob's domain
    assert ok(carol.cmd(f"8 STATUS {SHARED} (MESSAGES)")) == [
        b'* STATUS "Other Users/bob@example.org/Shared" (MESSAGES 3)\r\n']


def test_status_list_and_select_without_rights(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd(f"1 SETACL Shared {ALICE} l"))
    ok(bob.cmd(f"2 SETACL Private {ALICE} p"))  # "p" alone does not reveal a mailbox (§4 "any" column)
    alice = login(imap, ALICE)
    # RFC 4314 §4: STATUS and SELECT need "r"; with "l" she knows it exists: NOPERM.
    assert alice.cmd(f"3 STATUS {SHARED} (MESSAGES)") == [
        b"3 NO [NOPERM] STATUS needs the right(s) r on this mailbox\r\n"]
    assert alice.cmd(f"4 SELECT {SHARED}") == [b"4 NO [NOPERM] SELECT needs the right(s) r on this mailbox\r\n"]
    assert alice.cmd(f"5 EXAMINE {SHARED}")[-1].startswith(b"5 NO [NOPERM]")
    private = '"Other Users/bob@example.org/Private"'
    nope = '"Other Users/bob@example.org/Nope"'
    for verb in ("SELECT", "EXAMINE", "DELETE", "STATUS"):
        args = " (MESSAGES)" if verb == "STATUS" else ""
        answers = [alice.cmd(f"x {verb} {name}{args}") for name in (private, nope)]
        assert answers[0] == answers[1] == [b"x NO [NONEXISTENT] Mailbox does not exist\r\n"], verb
    # LIST shows it (with "l"), never STATUS data for it (no "r"); MYRIGHTS per mailbox (RFC 8440).
    listed = ok(alice.cmd('6 LIST "" "Other Users/*" RETURN (STATUS (MESSAGES) MYRIGHTS)'))
    assert listed == [
        b'* LIST (\\NonExistent \\HasChildren) "/" "Other Users/bob@example.org"\r\n',
        b'* LIST (\\HasNoChildren) "/" "Other Users/bob@example.org/Shared" ("MYRIGHTS" l)\r\n']
    own = ok(alice.cmd('7 LIST "" INBOX RETURN (MYRIGHTS)'))
    assert own == [b'* LIST (\\HasNoChildren) "/" "INBOX" ("MYRIGHTS" lrswipkxteacd)\r\n']


def test_copy_move_append_into_and_out_of_shared_mailboxes(imap: Any) -> None:
    bob = login(imap, BOB, rev2=True)
    ok(bob.cmd(f"1 SETACL Shared {ALICE} lr"))
    ok(bob.cmd("2 SELECT Shared"))
    ok(bob.cmd("3 STORE 1 +FLAGS (\\Flagged \\Seen)"))
    alice = login(imap, ALICE)
    ok(alice.cmd(f"4 SELECT {SHARED}"))
    # COPY out of a mailbox she may read, into her own: allowed, flags kept (hers to set).
    copied = alice.cmd("5 COPY 1 INBOX")
    assert copied[-1].startswith(b"5 OK [COPYUID ")
    assert ok(alice.cmd("6 STATUS INBOX (MESSAGES)")) == [b'* STATUS "INBOX" (MESSAGES 1)\r\n']
    # MOVE out needs "t" and "e" on the source; COPY into it needs "i".
    assert alice.cmd("7 MOVE 1 INBOX")[-1] == b"7 NO [NOPERM] MOVE needs the rights t and e on the selected mailbox\r\n"
    ok(alice.cmd("8 SELECT INBOX"))
    assert alice.cmd(f"9 COPY 1 {SHARED}")[-1] == b"9 NO [NOPERM] COPY needs the right(s) i on this mailbox\r\n"
    assert alice.cmd(f"10 MOVE 1 {SHARED}")[-1] == b"10 NO [NOPERM] MOVE needs the right(s) i on this mailbox\r\n"
    ok(alice.cmd("11 SELECT INBOX"))
    # With "i" (and "s", not "w"): the copy lands with \Seen only (RFC 4314 §4: flags need their rights).
    ok(bob.cmd(f"12 SETACL Shared {ALICE} lris"))
    assert alice.cmd(f"13 MOVE 1 {SHARED}")[-1] == b"13 OK MOVE completed\r\n"
    ok(bob.cmd("14 NOOP"))
    assert bob.cmd("15 FETCH 4 FLAGS")[0] == b"* 4 FETCH (FLAGS (\\Seen))\r\n"
    msg = message(9)
    assert alice.cmd(b"16 APPEND " + SHARED.encode() + b" (\\Seen \\Deleted $x) {%d+}\r\n" % len(msg) + msg)[
        -1].startswith(b"16 OK [APPENDUID ")
    ok(bob.cmd("17 NOOP"))
    assert bob.cmd("18 FETCH 5 FLAGS")[0] == b"* 5 FETCH (FLAGS (\\Seen))\r\n"


def test_store_keeps_to_the_flags_the_rights_allow(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd(f"1 SETACL Shared {ALICE} lrs"))
    alice = login(imap, ALICE, rev2=True)
    assert alice.cmd(f"2 SELECT {SHARED}")[-1] == b"2 OK [READ-WRITE] SELECT completed\r\n"  # "s" changes it
    # RFC 4314 §4: a STORE "SHOULD NOT fail if the user has rights to modify at least one flag".
    assert ok(alice.cmd("3 STORE 1 +FLAGS (\\Seen \\Flagged)")) == [b"* 1 FETCH (FLAGS (\\Seen))\r\n"]
    assert alice.cmd("4 STORE 1 +FLAGS (\\Deleted)")[-1] == (
        b"4 NO [NOPERM] STORE needs the right(s) t on this mailbox\r\n")
    assert alice.cmd("5 STORE 1 FLAGS (\\Seen)")[-1].startswith(b"5 NO [NOPERM]")
    assert alice.cmd("6 FETCH 2 BODY[]")[-1] == b"6 OK FETCH completed\r\n"
    assert b"\\Seen" in alice.cmd("7 FETCH 2 FLAGS")[0]  # with "s", reading sets \Seen (RFC 9051 §6.4.5)
    assert alice.cmd("8 CLOSE") == [b"8 OK CLOSE completed\r\n"]  # no "e": nothing expunged, no error


def test_create_delete_rename_in_another_users_hierarchy(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd(f"1 SETACL Shared {ALICE} lr"))
    alice = login(imap, ALICE)
    ok(alice.cmd("2 CREATE Mine"))
    assert alice.cmd('3 CREATE "Other Users/bob@example.org/Shared/Sub"')[-1] == (
        b"3 NO [NOPERM] CREATE cannot make a mailbox there\r\n")
    assert alice.cmd('4 CREATE "Other Users/bob@example.org/Top"')[-1] == (
        b"4 NO [NOPERM] CREATE cannot make a mailbox there\r\n")
    assert alice.cmd(f"5 DELETE {SHARED}")[-1] == b"5 NO [NOPERM] DELETE needs the right(s) x on this mailbox\r\n"
    assert alice.cmd(f'6 RENAME {SHARED} "Other Users/bob@example.org/Moved"')[-1].startswith(b"6 NO [NOPERM]")
    # Never into (or out of) another user's hierarchy, whatever the rights.
    assert alice.cmd('7 RENAME Mine "Other Users/bob@example.org/Stolen"')[-1] == (
        b"7 NO [CANNOT] Cannot rename a mailbox into another user's hierarchy\r\n")
    assert alice.cmd('8 CREATE "Other Users/mine"')[-1] == b"8 NO [CANNOT] Other Users holds other users' mailboxes\r\n"
    ok(bob.cmd(f"9 SETACL Shared {ALICE} lrkx"))
    assert alice.cmd(f"10 RENAME {SHARED} Mine2")[-1] == (
        b"10 NO [CANNOT] Cannot rename a mailbox out of its owner's hierarchy\r\n")
    ok(alice.cmd('11 CREATE "Other Users/bob@example.org/Shared/Sub"'))
    bob_user = imap.run(imap.store.get_user(BOB))
    sub = imap.run(imap.store.get_mailbox(bob_user.id, "Shared/Sub"))
    assert sub is not None  # bob's mailbox, with the ACL of its parent (RFC 4314 §4 SHOULD)
    assert [e.rights for e in imap.run(imap.store.get_acl(sub.id))] == ["lrkx"]
    ok(alice.cmd('12 RENAME "Other Users/bob@example.org/Shared/Sub" "Other Users/bob@example.org/Shared/Sub2"'))
    ok(alice.cmd('13 DELETE "Other Users/bob@example.org/Shared/Sub2"'))
    # "k" is needed on the nearest existing parent, even one she cannot see (RFC 4314 §4).
    ok(bob.cmd("14 CREATE Shared/Hidden"))
    ok(bob.cmd(f"15 DELETEACL Shared/Hidden {ALICE}"))  # it inherited her entry; taken away
    assert alice.cmd('16 CREATE "Other Users/bob@example.org/Shared/Hidden/X"')[-1] == (
        b"16 NO [NOPERM] CREATE cannot make a mailbox there\r\n")
    assert alice.cmd('17 CREATE "Other Users/eve@other.test/Shared/X"')[-1] == (
        b"17 NO [NOPERM] CREATE cannot make a mailbox there\r\n")
    ok(bob.cmd("18 DELETE Shared/Hidden"))
    assert [m.name for m in imap.run(imap.store.list_mailboxes(bob_user.id))] == [
        "INBOX", "Archive", "Drafts", "Junk", "Private", "Sent", "Shared", "Trash"]


def test_imaplib_and_imapclient_drive_the_shared_folder(imap: Any) -> None:
    bob = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    bob.login(BOB, PW)
    bob.setacl("Shared", ALICE, "lrswi")
    assert bob.getacl("Shared") == [(BOB.encode(), b"lrswipkxteacd"), (ALICE.encode(), b"lrswi")]
    alice = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    alice.login(ALICE, PW)
    assert alice.namespace().other[0][0] == "Other Users/"
    folders = [f[2] for f in alice.list_folders()]
    assert "Other Users/bob@example.org/Shared" in folders and "Other Users/bob@example.org/Private" not in folders
    info = alice.select_folder("Other Users/bob@example.org/Shared")
    assert info[b"EXISTS"] == 3 and info[b"READ-WRITE"]
    assert alice.fetch([1], ["BODY.PEEK[]"])[1][b"BODY[]"] == message(1)
    alice.add_flags([2], [imapclient.SEEN])
    assert imapclient.SEEN in alice.get_flags([2])[2]
    alice.append("Other Users/bob@example.org/Shared", message(5))
    alice.logout()
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=10)
    c.login(ALICE, PW)
    typ, data = c.myrights('"Other Users/bob@example.org/Shared"')
    assert typ == "OK" and data[0] == b'"Other Users/bob@example.org/Shared" lrswi'
    c.logout()
    bob.logout()


def test_pop3_stays_on_the_users_own_inbox(imap: Any) -> None:
    bob = login(imap, BOB)
    ok(bob.cmd(f"1 SETACL INBOX {ALICE} lrswipkxtea"))
    ok(bob.cmd(f"2 SETACL Shared {ALICE} lrswipkxtea"))
    fill(imap, BOB, PW, 2)
    p = poplib.POP3("127.0.0.1", imap.port("pop3"), timeout=10)
    p.user(ALICE)
    p.pass_(PW)
    assert p.stat() == (0, 0)  # her INBOX, empty: nothing of bob's
    p.quit()
