"""WITHIN (RFC 5032): the OLDER and YOUNGER search keys through the sans-I/O reader, fed whole, byte by byte and
at random splits, then parsed."""

from __future__ import annotations

import pytest
from test_imap_parser import chunkings, drive

from postroom.imap import parser as P


def _parsed(data: bytes) -> list[P.Command]:
    """Every way of feeding `data` to the framer, each command parsed; all must agree."""
    answers = []
    for chunks in chunkings(data):
        events = drive(chunks)
        answers.append([P.parse_command(e.data) for e in events if isinstance(e, P.RawCommand)])
    assert all(a == answers[0] for a in answers)
    return answers[0]


def test_older_and_younger_parse_whole_byte_by_byte_and_split() -> None:
    # RFC 5032 §4: search-key =/ ( "OLDER" / "YOUNGER" ) SP nz-number; §2 example "SEARCH UNSEEN YOUNGER 259200".
    data = b"a1 SEARCH UNSEEN YOUNGER 259200\r\na2 UID SEARCH OR OLDER 1 younger 4294967295 NOT OLDER 60\r\n"
    first, second = _parsed(data)
    assert first.args == P.SearchArgs(P.Key("AND", (P.Key("UNSEEN"), P.Key("YOUNGER", (259200,)))), None, None)
    assert second.uid and second.args == P.SearchArgs(P.Key("AND", (
        P.Key("OR", (P.Key("OLDER", (1,)), P.Key("YOUNGER", (4294967295,)))),
        P.Key("NOT", (P.Key("OLDER", (60,)),)),
    )), None, None)


@pytest.mark.parametrize("bad", [b"a SEARCH OLDER 0", b"a SEARCH YOUNGER", b"a SEARCH OLDER -5",
                                 b"a SEARCH YOUNGER 4294967296", b"a SEARCH OLDER x", b"a SEARCH OLDER  5"])
def test_bad_intervals_are_syntax_errors(bad: bytes) -> None:
    # nz-number (RFC 9051 §9): 1..4294967295; anything else is BAD, not a traceback.
    with pytest.raises(P.ParseError):
        P.parse_command(bad + b"\r\n")
