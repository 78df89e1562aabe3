"""METADATA and METADATA-SERVER (RFC 5464) end to end with imaplib and a raw client: entries on mailboxes and on
the server, DEPTH and MAXSIZE (LONGENTRIES), the read-only /shared/admin and /private/specialuse (RFC 6154 §4),
MAXSIZE and TOOMANY refusals, entries gone with their mailbox, one user's entries unseen by another."""

from __future__ import annotations

import imaplib
from typing import Any

import pytest
from imap_support import Raw, wire_imap

from postroom.store import names

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    server.add_user("bob@example.org", "bob-secret")
    return server


def raw_login(imap: Any, user: str = ADDR, pw: str = PW) -> Raw:
    r = Raw(imap.port("imap"))
    r.login(user, pw)
    return r


def test_imaplib_set_and_get(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for verb in ("GETMETADATA", "SETMETADATA"):  # imaplib sends only the commands it knows
        monkeypatch.setitem(imaplib.Commands, verb, ("AUTH", "SELECTED"))
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=30)
    c.login(ADDR, PW)
    assert "METADATA" in c.capabilities and "METADATA-SERVER" in c.capabilities
    typ, _ = c._simple_command("SETMETADATA", "INBOX", '(/private/comment "My own comment" /shared/comment "Ours")')
    assert typ == "OK"
    typ, _ = c._simple_command("GETMETADATA", "INBOX", "(/private/comment /shared/comment /private/none)")
    assert typ == "OK"
    [line] = c.untagged_responses.pop("METADATA")
    # RFC 5464 §4.4.1: METADATA mailbox (entry value ...); an entry asked for that has no value: NIL
    assert line == b'"INBOX" (/private/comment "My own comment" /private/none NIL /shared/comment "Ours")'
    c.logout()


def test_depth_maxsize_and_server_entries(imap: Any) -> None:
    r = raw_login(imap)
    big = b"x" * 3000
    r.send(b'a SETMETADATA "" (/shared/comment "Server note" /private/vendor/v/big {%d+}\r\n%s'
           b' /private/vendor/v/small "s" /private/vendor/v/deep/er "d")\r\n' % (len(big), big))
    assert r.until(b"a")[-1].startswith(b"a OK")
    lines = r.cmd('b GETMETADATA "" (/shared/admin /shared/comment)')
    assert lines[0] == (b'* METADATA "" (/shared/admin "mailto:postmaster@example.org"'
                        b' /shared/comment "Server note")\r\n')
    lines = r.cmd('c GETMETADATA (DEPTH 1 MAXSIZE 100) "" /private/vendor/v')
    # RFC 5464 §4.2.2 DEPTH 1: the children, not the grandchildren; §4.2.1: the 3000-octet value is left out
    # and the largest size left out is said in LONGENTRIES
    assert lines[0] == b'* METADATA "" (/private/vendor/v/small "s")\r\n'
    assert lines[1].startswith(b"c OK [METADATA LONGENTRIES 3000]")
    lines = r.cmd('d GETMETADATA (DEPTH infinity) "" /private')
    assert lines[0].startswith(b'* METADATA "" (/private/vendor/v/big {3000}\r\n' + big)
    assert lines[0].endswith(b' /private/vendor/v/deep/er "d" /private/vendor/v/small "s")\r\n')
    assert r.cmd('e SETMETADATA "" (/shared/admin "mailto:me@example.org")')[-1].startswith(b"e NO [CANNOT]")
    r.close()


def test_specialuse_limits_and_mailbox_deletion(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    r = raw_login(imap)
    lines = r.cmd("a GETMETADATA Sent /private/specialuse")  # RFC 6154 §4
    assert lines[0] == b'* METADATA "Sent" (/private/specialuse "\\\\Sent")\r\n'
    assert r.cmd('b SETMETADATA Sent (/private/specialuse "\\\\Trash")')[-1].startswith(b"b NO [CANNOT]")
    too_big = b"y" * (names.MAX_METADATA_VALUE + 1)
    r.send(b"c SETMETADATA INBOX (/private/x {%d+}\r\n%s)\r\n" % (len(too_big), too_big))
    assert r.until(b"c")[-1].startswith(b"c NO [METADATA MAXSIZE %d]" % names.MAX_METADATA_VALUE)
    assert r.cmd('d SETMETADATA Nope (/private/x "1")')[-1].startswith(b"d NO [NONEXISTENT]")
    assert r.cmd('e SETMETADATA INBOX (/private/x* "1")')[-1].startswith(b"e BAD")
    assert r.cmd('f SETMETADATA INBOX (/elsewhere/x "1")')[-1].startswith(b"f BAD")
    monkeypatch.setattr(names, "MAX_METADATA_ENTRIES", 2)
    assert r.cmd('g SETMETADATA INBOX (/private/a "1" /private/b "2")')[-1].startswith(b"g OK")
    # RFC 5464 §4.3 TOOMANY, and nothing of the refused command is kept
    assert r.cmd('h SETMETADATA INBOX (/private/c "3" /private/a NIL)')[-1].startswith(b"h OK")  # still 2
    assert r.cmd('i SETMETADATA Trash (/private/d "4")')[-1].startswith(b"i NO [METADATA TOOMANY]")
    assert r.cmd("j GETMETADATA Trash /private/d")[0] == b'* METADATA "Trash" (/private/d NIL)\r\n'
    assert r.cmd("k CREATE Work")[-1].startswith(b"k OK")
    assert r.cmd('l SETMETADATA INBOX (/private/b NIL)')[-1].startswith(b"l OK")
    assert r.cmd('m SETMETADATA Work (/shared/comment "w")')[-1].startswith(b"m OK")
    assert r.cmd("n DELETE Work")[-1].startswith(b"n OK")
    assert r.cmd("o CREATE Work")[-1].startswith(b"o OK")
    assert r.cmd("p GETMETADATA Work /shared/comment")[0] == b'* METADATA "Work" (/shared/comment NIL)\r\n'
    r.close()
    bob = raw_login(imap, "bob@example.org", "bob-secret")  # another user sees none of ann's entries
    assert bob.cmd('q GETMETADATA (DEPTH infinity) "" (/private /shared)')[0] == (
        b'* METADATA "" (/shared/admin "mailto:postmaster@example.org")\r\n')
    bob.close()
