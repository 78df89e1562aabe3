"""GETMETADATA / SETMETADATA syntax (RFC 5464 §5), framed whole, byte by byte and at random splits, then parsed;
what is not that syntax is BAD."""

from __future__ import annotations

import pytest
from imap_frames import parsed

from postroom.imap import parser as P


def test_getmetadata() -> None:
    line = b'g1 GETMETADATA (MAXSIZE 1024 DEPTH infinity) "" (/shared/comment {8}\r\n/private)\r\n'
    for cmd in parsed(line):
        assert cmd.args == P.GetMetadata("", ("/shared/comment", "/private"), 1024, -1)
    for cmd in parsed(b"g2 GETMETADATA INBOX /private/comment\r\n"):
        assert cmd.args == P.GetMetadata("INBOX", ("/private/comment",), None, 0)
    for cmd in parsed(b"g3 GETMETADATA (DEPTH 1) Work (/shared/vendor/x)\r\n"):
        assert cmd.args == P.GetMetadata("Work", ("/shared/vendor/x",), None, 1)


def test_setmetadata() -> None:
    line = (b'm1 SETMETADATA INBOX (/private/comment {5+}\r\nhello /shared/comment NIL'
            b' /shared/vendor/bin ~{3}\r\na\x00b /private/q "quoted")\r\n')
    for cmd in parsed(line):
        assert cmd.args == P.SetMetadata("INBOX", (("/private/comment", b"hello"), ("/shared/comment", None),
                                                    ("/shared/vendor/bin", b"a\x00b"), ("/private/q", b"quoted")))


@pytest.mark.parametrize("line", [
    b"a GETMETADATA (DEPTH 2) INBOX /private/x",
    b"a GETMETADATA (FOO 1) INBOX /private/x",
    b"a GETMETADATA (DEPTH 1 DEPTH 0) INBOX /private/x",
    b"a GETMETADATA INBOX",
    b"a GETMETADATA INBOX ()",
    b"a SETMETADATA INBOX /private/x hello",  # the entry-value list is parenthesised
    b"a SETMETADATA INBOX (/private/x)",
    b"a SETMETADATA INBOX ()",
    b"a SETMETADATA INBOX (/private/x hello)",  # a value is an nstring, not an atom
])
def test_bad(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line)
