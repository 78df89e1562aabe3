"""The ACL commands' syntax (RFC 4314 §7) and LIST RETURN (MYRIGHTS) (RFC 8440 §5) fed to the sans-I/O reader
whole, byte by byte and at random splits; the rights helpers and the Other Users names of imap/acl.py."""

from __future__ import annotations

import random

import pytest

from postroom.imap import acl
from postroom.imap import parser as P
from postroom.imap.session import Bad


def chunkings(data: bytes) -> list[list[bytes]]:
    rnd = random.Random(14)
    out = [[data], [data[i:i + 1] for i in range(len(data))]]
    for _ in range(5):
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 8))))
        out.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])])
    return out


def parse_fed(chunks: list[bytes]) -> P.Command:
    """The one command the chunks carry, every literal accepted."""
    f = P.Framer(max_line=1000, max_command=10_000)
    commands: list[P.Command] = []
    for chunk in chunks:
        f.feed(chunk)
        while (ev := f.next_event()) is not P.NEED_DATA:
            if isinstance(ev, P.LiteralRequest):
                f.accept_literal()
            else:
                assert isinstance(ev, P.RawCommand), ev
                commands.append(P.parse_command(ev.data))
    assert len(commands) == 1
    return commands[0]


@pytest.mark.parametrize("data, name, args", [
    (b"a SETACL INBOX/Drafts John lrswicda\r\n", "SETACL", P.AclArgs("INBOX/Drafts", "John", "lrswicda")),
    (b'a setacl "Shared Stuff" "-fred@x.org" "+lr"\r\n', "SETACL", P.AclArgs("Shared Stuff", "-fred@x.org", "+lr")),
    (b"a SETACL Shared {6+}\r\nanyone {0+}\r\n\r\n", "SETACL", P.AclArgs("Shared", "anyone", "")),
    (b"a DELETEACL INBOX Fred\r\n", "DELETEACL", P.AclArgs("INBOX", "Fred")),
    (b"a GETACL INBOX\r\n", "GETACL", P.AclArgs("INBOX")),
    (b'a LISTRIGHTS "~/Mail/saved" smith\r\n', "LISTRIGHTS", P.AclArgs("~/Mail/saved", "smith")),
    (b"a MYRIGHTS {6}\r\nShared\r\n", "MYRIGHTS", P.AclArgs("Shared")),
])
def test_acl_commands_parse_however_split(data: bytes, name: str, args: P.AclArgs) -> None:
    # RFC 4314 §7: setacl = "SETACL" SP mailbox SP identifier SP mod-rights, and so on; astrings throughout.
    for chunks in chunkings(data):
        cmd = parse_fed(chunks)
        assert (cmd.tag, cmd.name, cmd.args, cmd.uid) == ("a", name, args, False)


@pytest.mark.parametrize("data", [
    b"a SETACL INBOX fred\r\n",  # no rights
    b"a SETACL INBOX fred lr extra\r\n",
    b"a DELETEACL INBOX\r\n",
    b"a GETACL\r\n",
    b"a GETACL INBOX fred\r\n",
    b"a LISTRIGHTS INBOX\r\n",
    b"a MYRIGHTS INBOX x\r\n",
    b"a UID MYRIGHTS INBOX\r\n",
    b'a LIST "" * RETURN (MYRIGHTS STATUS)\r\n',  # STATUS needs its items
    b'a LIST "" * RETURN (YOURRIGHTS)\r\n',
])
def test_malformed_acl_commands_are_parse_errors(data: bytes) -> None:
    for chunks in chunkings(data):
        with pytest.raises(P.ParseError):
            parse_fed(chunks)


def test_list_return_myrights_however_split() -> None:
    data = b'a LIST "" "Other Users/*" RETURN (MYRIGHTS STATUS (MESSAGES))\r\n'  # RFC 8440 §4
    for chunks in chunkings(data):
        cmd = parse_fed(chunks)
        assert isinstance(cmd.args, P.ListArgs)
        assert cmd.args.returns == ("MYRIGHTS", "STATUS") and cmd.args.status_items == ("MESSAGES",)
        assert cmd.args.patterns == ("Other Users/*",) and cmd.args.extended


def test_setacl_rights_letters() -> None:
    # RFC 4314 §2.1.1: "c" is "k" here and "d" is "x", "t" and "e"; the result is in §2.1 order.
    assert acl._rights_letters("dclr") == "lrkxte"
    assert acl._rights_letters("") == ""
    for bad in ("lrQ", "lr1", "l r", "lr+"):  # §3.1: an unrecognised right is BAD, uppercase included
        with pytest.raises(Bad):
            acl._rights_letters(bad)
    # §2.1.1: "c" and "d" are sent whenever one of their members is there.
    assert acl.with_obsolete("lr") == "lr"
    assert acl.with_obsolete("lrk") == "lrkc"
    assert acl.with_obsolete("lrt") == "lrtd"
    assert acl.with_obsolete("lrswipkxtea") == "lrswipkxteacd"


def test_other_users_names() -> None:
    assert acl.split_other("Other Users/bob@example.org/Shared/Sub") == ("bob@example.org", "Shared/Sub")
    assert acl.split_other("Other Users/bob@example.org") == ("bob@example.org", "")
    assert acl.split_other("Other Users/a/b@example.org/X") == ("a/b@example.org", "X")  # "/" in a local part
    assert acl.split_other("Other Users") is None and acl.split_other("other users/x@y/z") is None
    assert acl.split_other("INBOX") is None
    assert acl.in_other_namespace("Other Users") and acl.in_other_namespace("Other Users/x")
    assert not acl.in_other_namespace("Other Usersx")
    assert acl.writable("lrs") and acl.writable("lre") and not acl.writable("lrip")


def test_identifier_atoms_and_strings() -> None:
    assert acl.astring("alice@example.org") == b"alice@example.org"
    assert acl.astring("") == b'""'
    assert acl.astring('we "quote"') == b'"we \\"quote\\""'
