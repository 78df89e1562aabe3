"""FETCH PREVIEW syntax (RFC 8970 §6), framed whole, byte by byte and at random splits, then parsed."""

from __future__ import annotations

import pytest
from imap_frames import parsed

from postroom.imap import parser as P


@pytest.mark.parametrize(("line", "lazy"), [
    (b"f1 FETCH 1:* (UID PREVIEW (LAZY) FLAGS)\r\n", True),
    (b"f1 UID FETCH 5 PREVIEW\r\n", False),
    (b"f1 FETCH 1 PREVIEW (lazy)\r\n", True),
])
def test_fetch_preview(line: bytes, lazy: bool) -> None:
    for cmd in parsed(line):
        assert isinstance(cmd.args, P.FetchArgs)
        [att] = [a for a in cmd.args.atts if a.name == "PREVIEW"]
        assert att.lazy is lazy


@pytest.mark.parametrize("line", [b"a FETCH 1 (PREVIEW (FOO))", b"a FETCH 1 (PREVIEW ())", b"a FETCH 1 PREVIEW[]",
                                  b"a FETCH 1 (PREVIEW (LAZY)"])
def test_bad(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line)
