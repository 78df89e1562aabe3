"""The mailbox commands against the real server (imap/mailboxes.py): SELECT, EXAMINE, CREATE, DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE, LIST (LIST-EXTENDED, SPECIAL-USE, LIST-STATUS), LSUB, NAMESPACE, STATUS; names in
UTF-8 after ENABLE IMAP4rev2. APPEND: test_imap_append.py."""

# ruff: noqa: F811 (the fixtures imported from ann_support are test arguments: pytest's way)
from __future__ import annotations

import re
from typing import Any

from ann_support import ADDR, PW, imap, raw, server_overrides, srv  # noqa: F401 (fixtures)
from imap_support import fill, message

from postroom.imap import objectid


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
