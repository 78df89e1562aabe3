"""Every IMAP command against the real server, byte for byte where the wire matters (raw socket) and through
Python's imaplib where a client's view is enough."""

from __future__ import annotations

import imaplib
import re
from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap

from postroom.imap import fetch, objectid
from postroom.mime.meta import compute_meta
from postroom.store.blobs import blob_id_of

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def srv(monkeypatch: pytest.MonkeyPatch, server_overrides: dict[str, Any]) -> None:
    wire_imap(monkeypatch)


@pytest.fixture
def imap(srv: None, server: Any) -> Any:
    server.add_user(ADDR, PW)
    return server


def raw(server: Any) -> Raw:
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    return r


def client(server: Any) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", server.port("imap"), timeout=10)
    c.login(ADDR, PW)
    return c


# ---- not authenticated

def test_greeting_capability_noop_logout(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 ")
    caps = r.cmd("a CAPABILITY")
    assert caps[0].startswith(b"* CAPABILITY ") and b"STARTTLS" in caps[0] and b"AUTH=PLAIN" in caps[0]
    for word in (b"IDLE", b"UIDPLUS", b"MOVE", b"LITERAL+", b"NAMESPACE", b"ID", b"ENABLE", b"UNSELECT",
                 b"SPECIAL-USE", b"LIST-EXTENDED", b"LIST-STATUS", b"CHILDREN", b"ESEARCH", b"SEARCHRES",
                 b"SASL-IR", b"BINARY", b"APPENDLIMIT=", b"STATUS=SIZE"):
        assert word in caps[0]
    assert r.cmd("b NOOP") == [b"b OK NOOP completed\r\n"]
    assert r.cmd("c SELECT INBOX")[-1].startswith(b"c BAD ")
    assert r.cmd("d LOGOUT") == [b"* BYE Logging out\r\n", b"d OK LOGOUT completed\r\n"]


def test_login_and_failures(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.cmd('a LOGIN ann@example.org "wrong"') == [b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    assert r.cmd("b LOGIN nobody@example.org x") == [b"b NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    ok = r.cmd(f"c LOGIN {ADDR} {PW}")[-1]
    assert ok.startswith(b"c OK [CAPABILITY IMAP4rev1 ") and b"AUTH=" not in ok and b"STARTTLS" not in ok
    assert r.cmd(f"d LOGIN {ADDR} {PW}")[-1].startswith(b"d BAD ")  # already authenticated


def test_authenticate_plain_with_and_without_initial_response(imap: Any) -> None:
    import base64

    token = base64.b64encode(f"\0{ADDR}\0{PW}".encode()).decode()
    r = Raw(imap.port("imap"))
    assert r.cmd(f"a AUTHENTICATE PLAIN {token}")[-1].startswith(b"a OK [CAPABILITY ")
    r = Raw(imap.port("imap"))
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ \r\n"
    r.send(token.encode() + b"\r\n")
    assert r.line().startswith(b"a OK ")
    r = Raw(imap.port("imap"))
    r.send(b"a AUTHENTICATE PLAIN\r\n")
    r.line()
    r.send(b"*\r\n")
    assert r.line() == b"a BAD Authentication cancelled\r\n"
    assert r.cmd("b AUTHENTICATE PLAIN !!!")[-1].startswith(b"b BAD")
    assert r.cmd("c AUTHENTICATE X-UNKNOWN")[-1].startswith(b"c NO")


def test_authenticate_scram_sha_256(imap: Any) -> None:
    import base64
    import hashlib
    import hmac

    r = Raw(imap.port("imap"))
    first_bare = f"n={ADDR},r=clientnonce123"
    r.send(b"a AUTHENTICATE SCRAM-SHA-256 " + base64.b64encode(("n,," + first_bare).encode()) + b"\r\n")
    server_first = base64.b64decode(r.line()[2:].strip()).decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", PW.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_msg = f"{first_bare},{server_first},{without_proof}".encode()
    sig = hmac.new(stored, auth_msg, hashlib.sha256).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
    r.send(base64.b64encode(f"{without_proof},p={proof}".encode()) + b"\r\n")
    final = r.line()
    assert final.startswith(b"+ ") and base64.b64decode(final[2:].strip()).startswith(b"v=")
    r.send(b"\r\n")
    assert r.line().startswith(b"a OK ")


def test_id_and_enable(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.cmd('a ID ("name" "test")')[0] == b'* ID ("name" "Postroom" "version" "0.1.0")\r\n'
    assert r.cmd("b ENABLE IMAP4rev2")[-1].startswith(b"b BAD")  # authenticated state only
    r.login(ADDR, PW)
    assert r.cmd("c ENABLE IMAP4rev2 CONDSTORE") == [b"* ENABLED IMAP4rev2 CONDSTORE\r\n",
                                                     b"c OK ENABLE completed\r\n"]


def test_bad_syntax_never_drops_the_session(imap: Any) -> None:
    r = raw(imap)
    assert r.cmd("a FROB")[-1] == b"a BAD Unknown command FROB\r\n"
    assert r.cmd('a LOGIN "unterminated')[-1].startswith(b"a BAD")
    r.send(b"+++\r\n")
    assert r.line().startswith(b"* BAD")
    r.send(b"x " + b"A" * 70000 + b"\r\n")  # over limits.imap_command_length (64 KiB)
    assert r.line().startswith(b"x BAD Command too long")
    assert r.cmd("b FETCH 1 FLAGS")[-1].startswith(b"b BAD")  # not selected
    assert r.cmd("c NOOP") == [b"c OK NOOP completed\r\n"]


def test_long_commands_up_to_the_command_limit(imap: Any) -> None:
    """Issue 15 item 6: RFC 2971 §3.3 allows 30 field-value pairs with values of 1024 octets, one ID command of
    about 31 KB; a SEARCH with hundreds of keys is one long line too. The IMAP command limit (64 KiB,
    limits.imap_command_length) rules, not the 8 KiB limits.line_length of SMTP and POP3."""
    fill(imap, ADDR, PW, 3)
    r = raw(imap)
    pairs = " ".join(f'"field{i:02d}" "{chr(65 + i % 26) * 1024}"' for i in range(30))
    line = f"a ID ({pairs})"
    assert len(line) > 30 * 1024
    lines = r.cmd(line)
    assert lines[0].startswith(b'* ID ("name" "Postroom"') and lines[-1] == b"a OK ID completed\r\n"
    r.cmd("b SELECT INBOX")
    keys = " ".join(f"UNKEYWORD $never{i:03d}" for i in range(500))  # every message matches every key
    assert len(keys) > 8192
    assert r.cmd(f"c SEARCH {keys}") == [b"* SEARCH 1 2 3\r\n", b"c OK SEARCH completed\r\n"]
    # Over the limit: a clear BAD, and the session goes on.
    r.send(b"d SEARCH " + b"ALL " * 20000 + b"\r\n")
    assert r.line() == b"d BAD Command too long\r\n"
    assert r.cmd("e NOOP") == [b"e OK NOOP completed\r\n"]


def test_long_lines_inside_idle_and_authenticate(imap: Any) -> None:
    """IDLE's DONE line and AUTHENTICATE's response lines are read with limits of their own (session.py)."""
    import base64

    r = raw(imap)
    r.send(b"i IDLE\r\n")
    assert r.line() == b"+ idling\r\n"
    r.send(b"x" * 5000 + b"\r\n")  # longer than any DONE line needs to be
    assert r.line() == b"i BAD Line too long\r\n"
    assert r.cmd("n NOOP") == [b"n OK NOOP completed\r\n"]
    a = Raw(imap.port("imap"))
    a.send(b"a AUTHENTICATE PLAIN\r\n")
    assert a.line() == b"+ \r\n"
    # A response line longer than limits.line_length (8 KiB) is within the AUTHENTICATE line limit.
    a.send(base64.b64encode(b"\0" + ADDR.encode() + b"\0" + b"x" * 9000) + b"\r\n")
    assert a.line() == b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    a.send(b"b AUTHENTICATE PLAIN\r\n")
    assert a.line() == b"+ \r\n"
    a.send(b"A" * 70000 + b"\r\n")
    assert a.line() == b"b BAD Line too long\r\n"
    assert a.cmd("c NOOP") == [b"c OK NOOP completed\r\n"]


def test_too_many_errors_says_bye(imap: Any) -> None:
    r = raw(imap)
    lines: list[bytes] = []
    r.send(b"".join(b"e%d FROB\r\n" % i for i in range(25)))
    while True:
        try:
            lines.append(r.line())
        except (ConnectionError, OSError):
            break
    assert lines[-1] == b"* BYE Too many errors\r\n"


def test_literals_sync_nonsync_and_too_big(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.send(b"a LOGIN {15}\r\n")
    assert r.line() == b"+ Ready for literal data\r\n"
    r.send(ADDR.encode() + b" {" + str(len(PW)).encode() + b"+}\r\n" + PW.encode() + b"\r\n")
    assert r.line().startswith(b"a OK ")
    r.send(b"b APPEND INBOX {999999999999}\r\n")
    assert r.line().startswith(b"b NO [TOOBIG]")
    r.send(b"c APPEND INBOX {99999999999+}\r\n")  # the client will send it anyway: too big to wait for
    assert r.line().startswith(b"c NO [TOOBIG]")


# ---- mailboxes

def test_create_list_rename_delete(imap: Any) -> None:
    r = raw(imap)
    assert re.fullmatch(rb"a OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n",  # RFC 8474 §4.1
                        r.cmd("a CREATE Projects/2024/")[0])
    assert r.cmd("a CREATE Projects")[-1].startswith(b"a NO [ALREADYEXISTS]")
    assert r.cmd("a CREATE inbox")[-1].startswith(b"a NO [ALREADYEXISTS]")
    assert r.cmd('a CREATE "&AOk-t&AOk-"')[0].endswith(b"] CREATE completed\r\n")
    lines = r.cmd('b LIST "" *')
    assert b'* LIST (\\HasChildren) "/" "Projects"\r\n' in lines
    assert b'* LIST (\\HasNoChildren) "/" "Projects/2024"\r\n' in lines
    assert b'* LIST (\\HasNoChildren) "/" "&AOk-t&AOk-"\r\n' in lines
    assert lines[0] == b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
    assert b'* LIST (\\HasNoChildren \\Sent) "/" "Sent"\r\n' in lines
    assert r.cmd('c LIST "" %')[:-1] == [x for x in lines[:-1] if b"Projects/" not in x]
    assert r.cmd('c LIST "" ""') == [b'* LIST (\\Noselect) "/" ""\r\n', b"c OK LIST completed\r\n"]
    assert r.cmd('c LIST "Projects/" %') == [b'* LIST (\\HasNoChildren) "/" "Projects/2024"\r\n',
                                              b"c OK LIST completed\r\n"]
    assert r.cmd("d RENAME Projects Work") == [b"d OK RENAME completed\r\n"]
    assert b'* LIST (\\HasNoChildren) "/" "Work/2024"\r\n' in r.cmd('e LIST "" Work/*')
    assert r.cmd("f RENAME Nope Other")[-1].startswith(b"f NO [NONEXISTENT]")
    assert r.cmd("f RENAME Work Sent")[-1].startswith(b"f NO [ALREADYEXISTS]")
    assert r.cmd("g DELETE Work") == [b"g OK DELETE completed\r\n"]
    # The child stays; its parent is listed as a placeholder (RFC 9051 §6.3.5)
    assert r.cmd('h LIST "" Work')[0] == b'* LIST (\\Noselect \\HasChildren) "/" "Work"\r\n'
    assert r.cmd("i DELETE INBOX")[-1].startswith(b"i NO")
    assert r.cmd("i DELETE Nope")[-1].startswith(b"i NO [NONEXISTENT]")
    assert r.cmd("j CREATE a*b")[-1].startswith(b"j BAD")
    assert r.cmd('j CREATE "a%b"')[-1].startswith(b"j NO [CANNOT]")


def test_rename_inbox_moves_messages(imap: Any) -> None:
    fill(imap, ADDR, PW, 2)
    r = raw(imap)
    assert r.cmd("a RENAME INBOX Old") == [b"a OK RENAME completed\r\n"]
    st = r.cmd("b STATUS Old (MESSAGES)")[0]
    assert st == b'* STATUS "Old" (MESSAGES 2)\r\n'
    assert r.cmd("c STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)\r\n'


def test_list_extended_special_use_status_subscribed(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    r = raw(imap)
    r.cmd("a CREATE Lists/rust")
    r.cmd("a UNSUBSCRIBE Lists")  # created subscribed? make sure only the child is
    r.cmd("a SUBSCRIBE Lists/rust")
    lines = r.cmd('b LIST (SPECIAL-USE) "" *')
    assert [x.split(b'"/" ')[1] for x in lines[:-1]] == [b'"Archive"\r\n', b'"Drafts"\r\n', b'"Junk"\r\n',
                                                         b'"Sent"\r\n', b'"Trash"\r\n']
    lines = r.cmd('c LIST (SUBSCRIBED RECURSIVEMATCH) "" % RETURN (CHILDREN)')
    assert b'* LIST (\\HasChildren) "/" "Lists" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in lines
    assert b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"\r\n' in lines
    lines = r.cmd('d LIST "" INBOX RETURN (STATUS (MESSAGES UNSEEN SIZE))')
    assert lines[0] == b'* LIST (\\HasNoChildren) "/" "INBOX"\r\n'
    assert re.match(rb'\* STATUS "INBOX" \(MESSAGES 3 UNSEEN 3 SIZE \d+\)\r\n', lines[1])
    lines = r.cmd('e LIST "" ("Sent" "Trash") RETURN (SUBSCRIBED)')
    assert lines[:-1] == [b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "/" "Sent"\r\n',
                          b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "/" "Trash"\r\n']


def test_list_extended_option_rules(imap: Any) -> None:
    """RFC 5258 §3.1: RECURSIVEMATCH alone or only with REMOTE is BAD; unknown options are BAD; repeated options
    count once; the session goes on."""
    r = raw(imap)
    assert r.cmd('a LIST (RECURSIVEMATCH REMOTE) "" ""')[-1].startswith(b"a BAD ")
    assert r.cmd('b LIST (RECURSIVEMATCH) "" "*"')[-1].startswith(b"b BAD ")
    assert r.cmd('c LIST (FROB) "" "*"')[-1].startswith(b"c BAD ")
    assert r.cmd('d LIST "" "*" RETURN (FROB)')[-1].startswith(b"d BAD ")
    assert r.cmd('e LIST (SUBSCRIBED SUBSCRIBED) "" INBOX RETURN (CHILDREN CHILDREN)') == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "INBOX"\r\n', b"e OK LIST completed\r\n"]
    assert r.cmd('f LIST () "" ""') == [b"f OK LIST completed\r\n"]  # extended: "" is no special request


def test_subscribe_lsub_namespace(imap: Any) -> None:
    r = raw(imap)
    r.cmd("a CREATE Foo/Bar")
    r.cmd("a UNSUBSCRIBE Foo")
    assert r.cmd("b SUBSCRIBE Foo/Bar") == [b"b OK SUBSCRIBE completed\r\n"]
    lines = r.cmd('c LSUB "" *')
    assert b'* LSUB () "/" "Foo/Bar"\r\n' in lines and b'* LSUB () "/" "Foo"\r\n' not in lines
    assert r.cmd('d LSUB "" %')[:-1].count(b'* LSUB (\\Noselect) "/" "Foo"\r\n') == 1
    assert r.cmd("e UNSUBSCRIBE Foo/Bar") == [b"e OK UNSUBSCRIBE completed\r\n"]
    assert b'* LSUB () "/" "Foo/Bar"\r\n' not in r.cmd('f LSUB "" *')
    assert r.cmd("g SUBSCRIBE Nope") == [b"g OK SUBSCRIBE completed\r\n"]  # RFC 9051 §6.3.7: names, not mailboxes
    # RFC 2342 §5: personal, other users' (ACL, imap/acl.py), no shared namespace
    assert r.cmd("h NAMESPACE") == [b'* NAMESPACE (("" "/")) (("Other Users/" "/")) (("Shared Folders/" "/"))\r\n',
                                    b"h OK NAMESPACE completed\r\n"]


def _attrs(line: bytes) -> set[bytes]:
    """The attributes of one LIST/LSUB response, as a set (RFC 9051 §6.3.9.3: they are additive; order is free)."""
    return set(line[line.index(b"(") + 1:line.index(b")")].split())


def test_subscriptions_outlive_their_mailbox(imap: Any) -> None:
    """Issue 15 item 3. RFC 3501 §6.3.9: the server "MUST NOT unilaterally remove an existing mailbox name from
    the subscription list even if a mailbox by that name no longer exists"; RFC 9051 §6.3.9.1 (SUBSCRIBED: the
    list may "contain the names of mailboxes that don't exist") and §6.3.9.3's `(\\Subscribed \\NonExistent)`."""
    r = raw(imap)
    assert r.cmd("a CREATE a/b")[-1].endswith(b"] CREATE completed\r\n")
    r.cmd("b SUBSCRIBE a/b")
    assert r.cmd("c DELETE a/b")[-1] == b"c OK DELETE completed\r\n"
    assert r.cmd('d LSUB "" a/*') == [b'* LSUB () "/" "a/b"\r\n', b"d OK LSUB completed\r\n"]
    lines = r.cmd('e LIST (SUBSCRIBED) "" a/*')
    assert len(lines) == 2 and lines[0].endswith(b' "/" "a/b"\r\n')
    assert _attrs(lines[0]) == {b"\\Subscribed", b"\\NonExistent"}
    # LIST without the SUBSCRIBED selection lists mailboxes only; RETURN (SUBSCRIBED) marks the subscribed ones
    assert r.cmd('f LIST "" a/* RETURN (SUBSCRIBED)') == [b"f OK LIST completed\r\n"]
    # RECURSIVEMATCH: "a" exists, is not subscribed, and has a subscribed descendant the pattern does not match
    lines = r.cmd('g LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
    assert b'* LIST (\\HasNoChildren) "/" "a" ("CHILDINFO" ("SUBSCRIBED"))\r\n' in lines
    # UNSUBSCRIBE of a name whose mailbox is gone (RFC 9051 §6.3.8)
    assert r.cmd("h UNSUBSCRIBE a/b") == [b"h OK UNSUBSCRIBE completed\r\n"]
    assert r.cmd('i LSUB "" a/*') == [b"i OK LSUB completed\r\n"]
    assert r.cmd('j LIST (SUBSCRIBED) "" a/*') == [b"j OK LIST completed\r\n"]


def test_subscribe_names_that_do_not_exist(imap: Any) -> None:
    """RFC 9051 §6.3.7: a server MAY validate the name; Postroom, like Dovecot, subscribes it either way."""
    r = raw(imap)
    assert r.cmd("a SUBSCRIBE x/y") == [b"a OK SUBSCRIBE completed\r\n"]
    assert r.cmd('b LSUB "" x*') == [b'* LSUB () "/" "x/y"\r\n', b"b OK LSUB completed\r\n"]
    # RFC 3501 §6.3.9: with "%" the unsubscribed parent is listed instead, flagged \Noselect
    assert r.cmd('c LSUB "" x%') == [b'* LSUB (\\Noselect) "/" "x"\r\n', b"c OK LSUB completed\r\n"]
    # RFC 9051 §6.3.9.6 table 3: no mailbox, not subscribed, a subscribed child: (\NonExistent) + CHILDINFO
    lines = r.cmd('d LIST (SUBSCRIBED RECURSIVEMATCH) "" x%')
    assert len(lines) == 2 and lines[0].endswith(b' "/" "x" ("CHILDINFO" ("SUBSCRIBED"))\r\n')
    assert _attrs(lines[0]) == {b"\\NonExistent"}
    # the redundant CHILDINFO is left out when the matching child is listed itself (§6.3.9.6)
    lines = r.cmd('e LIST (SUBSCRIBED RECURSIVEMATCH) "" x*')
    assert len(lines) == 2 and lines[0].endswith(b' "/" "x/y"\r\n')
    assert _attrs(lines[0]) == {b"\\Subscribed", b"\\NonExistent"}
    assert r.cmd("f CREATE x/y")[-1].startswith(b"f OK [MAILBOXID (")  # made later: subscribed already
    lines = r.cmd('g LIST "" x/y RETURN (SUBSCRIBED)')
    assert len(lines) == 2 and _attrs(lines[0]) == {b"\\HasNoChildren", b"\\Subscribed"}


def test_rename_does_not_move_subscriptions(imap: Any) -> None:
    """RFC 9051 §6.3.6: "renaming a mailbox doesn't update subscription information on the original name. To keep
    subscription information in sync, the following sequence of commands can be used: RENAME X Y, SUBSCRIBE Y,
    UNSUBSCRIBE X" (Dovecot's RENAME leaves subscriptions alone too)."""
    r = raw(imap)
    r.cmd("a CREATE X")
    r.cmd("b SUBSCRIBE X")
    assert r.cmd("c RENAME X Y") == [b"c OK RENAME completed\r\n"]
    lines = r.cmd('e LIST (SUBSCRIBED) "" X')
    assert len(lines) == 2 and _attrs(lines[0]) == {b"\\Subscribed", b"\\NonExistent"}
    assert r.cmd('f LIST "" Y RETURN (SUBSCRIBED)')[0] == b'* LIST (\\HasNoChildren) "/" "Y"\r\n'
    r.cmd("g SUBSCRIBE Y")
    r.cmd("h UNSUBSCRIBE X")
    assert r.cmd('i LSUB "" *')[:-1] == [b'* LSUB () "/" "%s"\r\n' % n for n in
                                        (b"INBOX", b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash", b"Y")]


def test_status_items(imap: Any) -> None:
    mid = fill(imap, ADDR, PW, 3)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    r.cmd("a STORE 1 +FLAGS (\\Seen \\Deleted)")
    size = sum(len(message(i)) for i in (1, 2, 3))
    mb = imap.run(imap.store.get_mailbox_by_id(mid))
    assert r.cmd("b STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN DELETED SIZE RECENT APPENDLIMIT)")[0] == (
        b'* STATUS "INBOX" (MESSAGES 3 UIDNEXT 4 UIDVALIDITY %d UNSEEN 2 DELETED 1 SIZE %d RECENT 0'
        b' APPENDLIMIT 52428800)\r\n' % (mb.uidvalidity, size))
    assert r.cmd("c STATUS Nope (MESSAGES)")[-1].startswith(b"c NO [NONEXISTENT]")


def test_status_recent_counts_what_no_session_was_told(imap: Any) -> None:
    """RFC 3501 §6.3.10 RECENT: the messages with \\Recent, i.e. that no session has been told of yet; STATUS
    does not claim them (a later SELECT still sees them as recent)."""
    fill(imap, ADDR, PW, 2)
    r = raw(imap)
    r.cmd("a SELECT INBOX")  # claims UIDs 1-2
    r.cmd("b UNSELECT")
    fill(imap, ADDR, PW, 3)  # three more, told to no session
    assert r.cmd("c STATUS INBOX (MESSAGES RECENT)")[0] == b'* STATUS "INBOX" (MESSAGES 5 RECENT 3)\r\n'
    assert r.cmd("d STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 3)\r\n'
    assert b"* 3 RECENT\r\n" in r.cmd("e SELECT INBOX")
    assert r.cmd("f STATUS INBOX (RECENT)")[0] == b'* STATUS "INBOX" (RECENT 0)\r\n'


def test_append_with_flags_date_and_appenduid(imap: Any) -> None:
    r = raw(imap)
    msg = message(7)
    r.send(b'a APPEND Drafts (\\Draft $Work) "14-Jul-2023 02:44:25 -0700" {%d}\r\n' % len(msg))
    assert r.line() == b"+ Ready for literal data\r\n"
    r.send(msg + b"\r\n")
    ok = r.line()
    m = re.match(rb"a OK \[APPENDUID (\d+) 1\] APPEND completed", ok)
    assert m
    r.cmd("b SELECT Drafts")
    f = r.cmd("c FETCH 1 (FLAGS INTERNALDATE RFC822.SIZE)")[0]
    assert f == (b'* 1 FETCH (FLAGS (\\Draft \\Recent $Work) INTERNALDATE "14-Jul-2023 09:44:25 +0000" '
                 b"RFC822.SIZE %d)\r\n" % len(msg))
    assert r.cmd(b"d APPEND Nope {1+}\r\nx")[-1].startswith(b"d NO [TRYCREATE]")
    assert r.cmd(b"e APPEND INBOX (\\Bogus) {1+}\r\nx")[-1].startswith(b"e BAD")
    assert r.cmd(b"f APPEND INBOX ~{3+}\r\na\x00b")[-1].startswith(b"f OK [APPENDUID ")  # literal8


def test_append_meta_is_stored(imap: Any) -> None:
    r = raw(imap)
    r.cmd(b"a APPEND INBOX {%d+}\r\n" % len(message(1)) + message(1))
    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    info = imap.run(imap.store.list_messages(inbox.id))[0]
    assert imap.run(imap.store.read_meta(info.blob_id)) == compute_meta(message(1)).to_bytes()


# ---- selected state

def test_select_and_examine_responses(imap: Any) -> None:
    mid = fill(imap, ADDR, PW, 3)
    mb = imap.run(imap.store.get_mailbox_by_id(mid))
    r = raw(imap)
    lines = r.cmd("a SELECT INBOX")
    assert lines == [
        b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft)\r\n",
        b"* 3 EXISTS\r\n",
        b"* 3 RECENT\r\n",
        b"* OK [UNSEEN 1] First unseen message\r\n",
        b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)] Flags permitted\r\n",
        b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mb.uidvalidity,
        b"* OK [UIDNEXT 4] Predicted next UID\r\n",
        b"* OK [MAILBOXID (%s)] Ok\r\n" % objectid.mailbox_id(mid, mb.uidvalidity).encode(),  # RFC 8474 §4.1
        b"a OK [READ-WRITE] SELECT completed\r\n",
    ]
    # \Recent went to the first session only
    r2 = raw(imap)
    lines = r2.cmd("b EXAMINE INBOX")
    assert b"* 0 RECENT\r\n" in lines and lines[-1] == b"b OK [READ-ONLY] EXAMINE completed\r\n"
    assert b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n" in lines
    assert r2.cmd("c STORE 1 +FLAGS (\\Seen)")[-1].startswith(b"c NO [READ-ONLY]")
    assert r2.cmd("c EXPUNGE")[-1].startswith(b"c NO [READ-ONLY]")
    r2.cmd("d FETCH 1 BODY[]")
    assert r2.cmd("e FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"  # EXAMINE never sets \Seen
    assert r.cmd("f SELECT Nope")[-1].startswith(b"f NO [NONEXISTENT]")
    assert r.cmd("g FETCH 1 FLAGS")[-1].startswith(b"g BAD")  # a failed SELECT deselects


def test_fetch_items(imap: Any) -> None:
    mime = (b"From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
            b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
            b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"AAECAw==\r\n--b--\r\n")
    r = raw(imap)
    r.cmd(b"a APPEND INBOX {%d+}\r\n" % len(mime) + mime)
    r.cmd("b SELECT INBOX")
    meta = compute_meta(mime)
    lines = r.cmd("c FETCH 1 (UID ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE)")
    assert lines[0] == (b"* 1 FETCH (UID 1 ENVELOPE " + meta.envelope + b" BODYSTRUCTURE " + meta.bodystructure
                        + b" BODY " + meta.body + b" RFC822.SIZE %d)\r\n" % len(mime))
    assert r.cmd("d FETCH 1 BODY.PEEK[1]")[0] == b"* 1 FETCH (BODY[1] {5}\r\nhello)\r\n"
    assert r.cmd("d FETCH 1 BODY.PEEK[1.MIME]")[0] == (
        b"* 1 FETCH (BODY[1.MIME] {28}\r\nContent-Type: text/plain\r\n\r\n)\r\n")
    assert r.cmd("d FETCH 1 BODY.PEEK[]<6.13>")[0] == b"* 1 FETCH (BODY[]<6> {13}\r\na@example.org)\r\n"
    assert r.cmd("d FETCH 1 BODY.PEEK[HEADER.FIELDS (subject)]")[0] == (
        b"* 1 FETCH (BODY[HEADER.FIELDS (subject)] {18}\r\nSubject: parts\r\n\r\n)\r\n")
    assert r.cmd("d FETCH 1 BODY.PEEK[9]")[0] == b"* 1 FETCH (BODY[9] NIL)\r\n"
    assert r.cmd("e FETCH 1 BINARY.SIZE[2]")[0] == b"* 1 FETCH (BINARY.SIZE[2] 4)\r\n"
    assert r.cmd("e FETCH 1 BINARY.PEEK[2]")[0] == b"* 1 FETCH (BINARY[2] ~{4}\r\n\x00\x01\x02\x03)\r\n"
    assert r.cmd("e FETCH 1 RFC822.HEADER")[0].startswith(b"* 1 FETCH (RFC822.HEADER {")
    assert r.cmd("f FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"  # PEEKs left \Seen alone
    lines = r.cmd("g FETCH 1 BODY[TEXT]")
    assert lines[0].startswith(b"* 1 FETCH (BODY[TEXT] {") and lines[0].endswith(b" FLAGS (\\Seen \\Recent))\r\n")
    lines = r.cmd("h FETCH 1 RFC822")
    assert lines[0] == b"* 1 FETCH (RFC822 {%d}\r\n" % len(mime) + mime + b")\r\n"
    assert r.cmd("i FETCH 1 FAST")[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE ")
    assert r.cmd("i FETCH 1 ALL")[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE ")
    assert b"BODY (" in r.cmd("i FETCH 1 FULL")[0]
    assert r.cmd("j FETCH 2 FLAGS")[-1].startswith(b"j BAD")
    assert r.cmd("k UID FETCH 5 FLAGS") == [b"k OK FETCH completed\r\n"]
    assert r.cmd("l UID FETCH 1 FLAGS")[0] == b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))\r\n"
    assert r.cmd("m UID FETCH 1:* (RFC822.SIZE)")[0] == b"* 1 FETCH (UID 1 RFC822.SIZE %d)\r\n" % len(mime)


def test_unknown_cte_binary(imap: Any) -> None:
    msg = b"Subject: x\r\nContent-Transfer-Encoding: x-weird\r\n\r\nabc\r\n"
    r = raw(imap)
    r.cmd(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg)
    r.cmd("b SELECT INBOX")
    assert r.cmd("c FETCH 1 BINARY[1]")[-1].startswith(b"c NO [UNKNOWN-CTE]")


def test_message_without_meta_is_computed_on_fetch(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from postroom.store.api import AppendRequest

    monkeypatch.setattr(fetch, "META_CACHE", fetch.MetaCache())  # an earlier test may have decoded these bytes

    user = imap.run(imap.store.get_user(ADDR))
    inbox = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    imap.run(imap.store.append(inbox.id, AppendRequest(raw=message(3))))  # imported without meta
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    assert r.cmd("b FETCH 1 ENVELOPE")[0] == b"* 1 FETCH (ENVELOPE " + compute_meta(message(3)).envelope + b")\r\n"
    # Its structure is kept from then on (fetch.py invariant 6, schema 19), the same bytes.
    blob = blob_id_of(message(3))
    kept = imap.run(imap.store.read_structures([blob]))[blob]
    assert kept.envelope == compute_meta(message(3)).envelope


def test_structure_items_without_kept_rows(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A body stored before schema 19 (its metadata current, no `imap_structure` row) answers ENVELOPE,
    BODYSTRUCTURE and BODY from its metadata, the same bytes as a body with the row, and gets the row."""
    import sqlite3

    fill(imap, ADDR, PW, 3)
    blobs = [blob_id_of(message(i)) for i in (1, 2, 3)]
    assert set(imap.run(imap.store.read_structures(blobs))) == set(blobs)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    before = r.cmd("b FETCH 1:3 (ENVELOPE BODYSTRUCTURE BODY)")
    if getattr(imap.store, "path", None) is not None:
        conn = sqlite3.connect(imap.store.path)
        conn.execute("DELETE FROM imap_structure WHERE blob_id = ?", (blobs[1],))
        conn.commit()
        conn.close()
    else:  # POSTROOM_TEST_STORE=postgresql: the same table on that engine (postgresql/structure.py)
        import asyncpg

        async def forget() -> None:
            pg = await asyncpg.connect(imap.store.dsn)
            try:
                await pg.execute("DELETE FROM imap_structure WHERE blob_id = $1", blobs[1])
            finally:
                await pg.close()

        imap.run(forget())
    monkeypatch.setattr(fetch, "META_CACHE", fetch.MetaCache())  # nothing decoded before is remembered
    assert r.cmd("c FETCH 1:3 (ENVELOPE BODYSTRUCTURE BODY)") == [*before[:-1], b"c OK FETCH completed\r\n"]
    assert set(imap.run(imap.store.read_structures(blobs))) == set(blobs)
    meta = compute_meta(message(2))
    assert before[1] == (b"* 2 FETCH (ENVELOPE " + meta.envelope + b" BODYSTRUCTURE " + meta.bodystructure
                         + b" BODY " + meta.body + b")\r\n")


def test_store_flags_and_keywords(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    assert r.cmd("b STORE 1:2 +FLAGS (\\Flagged $Todo)") == [  # a new keyword is announced first (RFC 9051 §7.3.5)
        b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo)\r\n",
        b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo \\*)] Flags permitted\r\n",
        b"* 1 FETCH (FLAGS (\\Flagged \\Recent $Todo))\r\n", b"* 2 FETCH (FLAGS (\\Flagged \\Recent $Todo))\r\n",
        b"b OK STORE completed\r\n"]
    assert r.cmd("c STORE 1 -FLAGS ($Todo)") == [b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n",
                                                 b"c OK STORE completed\r\n"]
    assert r.cmd("d STORE 1 FLAGS.SILENT (\\Answered)") == [b"d OK STORE completed\r\n"]
    assert r.cmd("e UID STORE 1,3 FLAGS (\\Seen)") == [b"* 1 FETCH (FLAGS (\\Seen \\Recent) UID 1)\r\n",
                                                      b"* 3 FETCH (FLAGS (\\Seen \\Recent) UID 3)\r\n",
                                                      b"e OK STORE completed\r\n"]
    assert r.cmd("f STORE 1 +FLAGS (\\Recent)")[-1] == b"f OK STORE completed\r\n"
    assert r.cmd("g STORE 1 +FLAGS (\\Bogus)")[-1].startswith(b"g BAD")
    # RFC 7162 §3.2.11: with QRESYNC offered, CLOSED ends the old mailbox's responses, rev1 too
    assert r.cmd("h SELECT INBOX")[:2] == [b"* OK [CLOSED] Previous mailbox closed\r\n",
                                           b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Todo)\r\n"]


def test_copy_move_expunge_close_unselect(imap: Any) -> None:
    fill(imap, ADDR, PW, 5)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    trash = r.cmd("b STATUS Trash (UIDVALIDITY)")[0]
    v = int(re.search(rb"UIDVALIDITY (\d+)", trash).group(1))  # type: ignore[union-attr]
    assert r.cmd("c COPY 1:2 Trash") == [b"c OK [COPYUID %d 1:2 1:2] COPY completed\r\n" % v]
    assert r.cmd("d COPY 1 Nope")[-1].startswith(b"d NO [TRYCREATE]")
    assert r.cmd("e MOVE 2,4 Trash") == [b"* OK [COPYUID %d 2,4 3:4] Moved\r\n" % v, b"* 2 EXPUNGE\r\n",
                                         b"* 3 EXPUNGE\r\n", b"e OK MOVE completed\r\n"]
    # left: UIDs 1 3 5
    assert r.cmd("f UID MOVE 5 Trash")[1:] == [b"* 3 EXPUNGE\r\n", b"f OK MOVE completed\r\n"]
    r.cmd("g STORE 1:2 +FLAGS.SILENT (\\Deleted)")
    assert r.cmd("h UID EXPUNGE 3") == [b"* 2 EXPUNGE\r\n", b"h OK UID EXPUNGE completed\r\n"]
    assert r.cmd("i EXPUNGE") == [b"* 1 EXPUNGE\r\n", b"i OK EXPUNGE completed\r\n"]
    assert r.cmd("j STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)\r\n'
    r.cmd("k SELECT Trash")
    r.cmd("l STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert r.cmd("m UNSELECT") == [b"m OK UNSELECT completed\r\n"]
    assert r.cmd("n STATUS Trash (MESSAGES DELETED)")[0] == b'* STATUS "Trash" (MESSAGES 5 DELETED 1)\r\n'
    r.cmd("o SELECT Trash")
    assert r.cmd("p CHECK") == [b"p OK CHECK completed\r\n"]
    assert r.cmd("q CLOSE") == [b"q OK CLOSE completed\r\n"]  # silently expunges
    assert r.cmd("r STATUS Trash (MESSAGES DELETED)")[0] == b'* STATUS "Trash" (MESSAGES 4 DELETED 0)\r\n'
    assert r.cmd("s EXPUNGE")[-1].startswith(b"s BAD")


def test_search_keys_and_esearch(imap: Any) -> None:
    fill(imap, ADDR, PW, 6)
    r = raw(imap)
    r.cmd("a SELECT INBOX")
    r.cmd("a STORE 2,4 +FLAGS.SILENT (\\Seen)")
    r.cmd("a STORE 5 +FLAGS.SILENT ($Important)")
    assert r.cmd("b SEARCH SEEN") == [b"* SEARCH 2 4\r\n", b"b OK SEARCH completed\r\n"]
    assert r.cmd("b SEARCH UNSEEN NOT 1")[0] == b"* SEARCH 3 5 6\r\n"
    assert r.cmd("b SEARCH OR 1 SUBJECT \"note 6\"")[0] == b"* SEARCH 1 6\r\n"
    assert r.cmd("b SEARCH FROM ann SUBJECT NOTE")[0] == b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("b SEARCH KEYWORD $important")[0] == b"* SEARCH 5\r\n"
    assert r.cmd("b SEARCH UNKEYWORD $Important 4:*")[0] == b"* SEARCH 4 6\r\n"
    assert r.cmd("b SEARCH BODY \"number 3\"")[0] == b"* SEARCH 3\r\n"
    assert r.cmd("b SEARCH TEXT \"number 3\"")[0] == b"* SEARCH 3\r\n"
    assert r.cmd("b SEARCH HEADER Message-ID <m4@")[0] == b"* SEARCH 4\r\n"
    assert r.cmd("b SEARCH HEADER X-Missing \"\"")[0] == b"* SEARCH\r\n"
    assert r.cmd("b SEARCH SENTON 5-Feb-2024 SENTSINCE 5-Feb-2024 NOT SENTBEFORE 5-Feb-2024")[0] == \
        b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("b SEARCH SINCE 1-Jan-2000 NOT BEFORE 1-Jan-2000 NOT ON 1-Jan-2000")[0] == b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("b SEARCH LARGER 1 SMALLER 100000 TO bob CC nobody")[0] == b"* SEARCH\r\n"
    assert r.cmd("b SEARCH RECENT NEW")[0] == b"* SEARCH 1 3 5 6\r\n"
    assert r.cmd("b SEARCH OLD")[0] == b"* SEARCH\r\n"
    assert r.cmd("b SEARCH CHARSET UTF-8 SUBJECT note")[0] == b"* SEARCH 1 2 3 4 5 6\r\n"
    assert r.cmd("c SEARCH CHARSET KOI8-R ALL")[-1].startswith(b"c NO [BADCHARSET (UTF-8 US-ASCII)]")
    assert r.cmd("d UID SEARCH UID 2:4 ANSWERED")[0] == b"* SEARCH\r\n"
    assert r.cmd("d UID SEARCH UID 2:4")[0] == b"* SEARCH 2 3 4\r\n"
    assert r.cmd("e SEARCH RETURN (MIN MAX COUNT) UNSEEN")[0] == b'* ESEARCH (TAG "e") MIN 1 MAX 6 COUNT 4\r\n'
    assert r.cmd("f UID SEARCH RETURN () UNSEEN")[0] == b'* ESEARCH (TAG "f") UID ALL 1,3,5:6\r\n'
    assert r.cmd("f SEARCH RETURN (COUNT) DELETED")[0] == b'* ESEARCH (TAG "f") COUNT 0\r\n'
    # SEARCHRES: save, then use $
    assert r.cmd("g SEARCH RETURN (SAVE) SEEN") == [b"g OK SEARCH completed\r\n"]
    assert r.cmd("h FETCH $ (UID)")[:-1] == [b"* 2 FETCH (UID 2)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert r.cmd("i SEARCH $ UNSEEN")[0] == b"* SEARCH\r\n"
    assert r.cmd("j UID SEARCH RETURN (SAVE MIN) UNSEEN")[0] == b'* ESEARCH (TAG "j") UID MIN 1\r\n'
    assert r.cmd("k UID FETCH $ (FLAGS)")[:-1] == [b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n"]


def test_search_in_rev2_answers_esearch_and_drops_recent(imap: Any) -> None:
    fill(imap, ADDR, PW, 2)
    r = raw(imap)
    r.cmd("a ENABLE IMAP4rev2")
    lines = r.cmd("b SELECT INBOX")
    assert not any(b"RECENT" in x or b"UNSEEN" in x for x in lines)
    assert b'* LIST () "/" "INBOX"\r\n' in lines
    assert r.cmd("c SEARCH ALL")[0] == b'* ESEARCH (TAG "c") ALL 1:2\r\n'
    assert r.cmd("d FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"
    assert r.cmd("e SELECT INBOX")[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"


def test_utf8_names_after_enable(imap: Any) -> None:
    r = raw(imap)
    r.cmd('a CREATE "&AOk-t&AOk-"')
    r.cmd("b ENABLE IMAP4rev2")
    assert 'LIST (\\HasNoChildren) "/" "été"'.encode() in b"".join(r.cmd('c LIST "" *'))
    assert r.cmd('d SELECT "été"'.encode())[-1].startswith(b"d OK")


def test_user_reaches_only_own_mailboxes(imap: Any) -> None:
    fill(imap, "eve@example.org", "eve-pw", 2)
    r = raw(imap)
    for name in ("eve@example.org/INBOX", "../eve@example.org", "*", "%", "~eve/INBOX"):
        assert r.cmd(f'a SELECT "{name}"')[-1].startswith(b"a NO")
    assert all(b"eve" not in x for x in r.cmd('b LIST "" *'))
    assert r.cmd("c STATUS INBOX (MESSAGES)")[0] == b'* STATUS "INBOX" (MESSAGES 0)\r\n'


def test_imaplib_end_to_end(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    c = client(imap)
    assert c.select("INBOX") == ("OK", [b"3"])
    typ, data = c.fetch("1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and data[0][1] == b"Subject: note 1\r\n\r\n"  # type: ignore[index]
    assert c.search(None, "SUBJECT", '"note 2"') == ("OK", [b"2"])
    assert c.uid("SEARCH", "ALL") == ("OK", [b"1 2 3"])
    assert c.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert c.expunge() == ("OK", [b"1"])
    assert c.create("Box")[0] == "OK"
    assert c.copy("1", "Box")[0] == "OK"
    assert c.uid("MOVE", "3", "Box")[0] == "OK"
    assert c.status("Box", "(MESSAGES)") == ("OK", [b'"Box" (MESSAGES 2)'])
    assert c.rename("Box", "Box2")[0] == "OK"
    assert c.subscribe("Box2")[0] == "OK"
    assert b'"Box2"' in b"".join(c.lsub()[1])  # type: ignore[arg-type]
    assert c.unsubscribe("Box2")[0] == "OK"
    assert c.namespace()[0] == "OK"
    assert c.check()[0] == "OK"
    assert c.close()[0] == "OK"
    assert c.delete("Box2")[0] == "OK"
    assert c.append("INBOX", "(\\Seen)", imaplib.Time2Internaldate(1700000000), message(9))[0] == "OK"
    assert c.logout()[0] == "BYE"


def test_login_with_bytes_that_are_not_utf8(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    assert r.cmd(b'a LOGIN "ann@example.org" "\xff\xfe"') == [
        b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"]
    assert r.cmd(b"b LOGIN {5}\r\n\xff\xfe\xfd\xfc\xfb pw")[-1].startswith(b"b NO [AUTHENTICATIONFAILED]")


def test_string_literal_limit_is_smaller_than_append(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.send(b"a LOGIN {1000000}\r\n")
    assert r.line().startswith(b"a NO [TOOBIG]")
    assert r.cmd("b NOOP") == [b"b OK NOOP completed\r\n"]


SCRIPT = (b"p1 LOGIN ann@example.org {10+}\r\nann-secret\r\np2 SELECT INBOX\r\n"
          b"p3 APPEND INBOX (\\Seen) {14+}\r\nSubject: x\r\n\r\n\r\np4 NOOP\r\np5 UID FETCH 1 (FLAGS RFC822.SIZE)\r\n"
          b"p6 LOGOUT\r\n")


def _run_script(imap: Any, chunks: list[bytes]) -> list[bytes]:
    import socket as socket_mod

    r = Raw(imap.port("imap"))
    r.sock.setsockopt(socket_mod.IPPROTO_TCP, socket_mod.TCP_NODELAY, 1)
    for chunk in chunks:
        r.send(chunk)
    lines = []
    while True:
        line = r.line()
        lines.append(line)
        if line.startswith(b"p6 "):
            return [x for x in lines if not x.startswith(b"* ")] + [x for x in lines if x.startswith(b"* 1 FETCH")]


def test_pipelined_and_byte_by_byte_input_give_the_same_answers(imap: Any) -> None:
    whole = _run_script(imap, [SCRIPT])
    assert [x.split(b" ")[:2] for x in whole[:6]] == [[b"p%d" % i, b"OK"] for i in range(1, 7)]
    assert whole[-1] == b"* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent) RFC822.SIZE 14)\r\n"
    one_by_one = _run_script(imap, [SCRIPT[i:i + 1] for i in range(len(SCRIPT))])
    assert [x.split(b" ")[:2] for x in one_by_one] == [x.split(b" ")[:2] for x in whole]
