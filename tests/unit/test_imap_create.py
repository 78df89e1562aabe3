"""CREATE with CREATE-SPECIAL-USE parameters (RFC 6154 §3, §6 syntax; RFC 4466 create-params): framed and parsed
whole, byte by byte and at random splits; what is not that syntax is BAD."""

from __future__ import annotations

import pytest
from imap_frames import events, splits

from postroom.imap import parser as P

COMMAND = b'c1 CREATE {7}\r\nMy Sent (USE (\\Sent))\r\n'


def check(evs: list[object]) -> None:
    assert evs[0] == P.LiteralRequest(7, True, "c1", verb="CREATE")
    assert evs[1] == P.RawCommand(COMMAND)
    assert P.parse_command(COMMAND).args == P.Create("My Sent", ("\\Sent",))


def test_create_use_whole() -> None:
    check(events([COMMAND]))


def test_create_use_byte_by_byte() -> None:
    check(events([COMMAND[i:i + 1] for i in range(len(COMMAND))]))


@pytest.mark.parametrize("seed", range(30))
def test_create_use_random_splits(seed: int) -> None:
    check(events(splits(COMMAND, seed)))


@pytest.mark.parametrize(("line", "uses"), [
    (b"a CREATE x", ()),
    (b"a CREATE x (USE ())", ()),  # RFC 6154 §6: the list may be empty
    (b"a CREATE x (use (\\Archive \\Bogus))", ("\\Archive", "\\Bogus")),  # use-attr-ext: judged by the handler
])
def test_create_forms(line: bytes, uses: tuple[str, ...]) -> None:
    assert P.parse_command(line).args == P.Create("x", uses)


@pytest.mark.parametrize("line", [
    b"a CREATE x (FOO (\\Sent))",  # an unknown create-param (RFC 4466: BAD)
    b"a CREATE x (USE (Sent))",  # a use-attr starts with a backslash
    b"a CREATE x (USE (\\*))",
    b"a CREATE x (USE \\Sent)",
    b"a CREATE x (USE (\\Sent)) junk",
    b"a CREATE x (USE (\\Sent) USE (\\Trash))",
    b"a CREATE x ()",
])
def test_create_bad_syntax(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line)
