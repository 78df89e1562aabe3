"""SAVEDATE syntax (RFC 8514 §5): the FETCH item and the SEARCH keys, framed whole, byte by byte and at random
splits, then parsed."""

from __future__ import annotations

import pytest
from imap_frames import parsed

from postroom.imap import parser as P

DAY_28_DEC_2014 = 1419724800.0  # 28-Dec-2014 00:00 UTC


def test_fetch_savedate() -> None:
    for cmd in parsed(b"f1 UID FETCH 1:* (UID SAVEDATE)\r\n"):
        assert isinstance(cmd.args, P.FetchArgs)
        assert [a.name for a in cmd.args.atts] == ["UID", "SAVEDATE"]


def test_search_saved_keys() -> None:
    for cmd in parsed(b"s1 SEARCH SAVEDON 28-Dec-2014 OR SAVEDBEFORE 1-Jan-2015 SAVEDSINCE 28-Dec-2014"
                      b" SAVEDATESUPPORTED\r\n"):
        assert isinstance(cmd.args, P.SearchArgs)
        assert cmd.args.key == P.Key("AND", (
            P.Key("SAVEDON", (DAY_28_DEC_2014,)),
            P.Key("OR", (P.Key("SAVEDBEFORE", (DAY_28_DEC_2014 + 4 * 86400,)),
                         P.Key("SAVEDSINCE", (DAY_28_DEC_2014,)))),
            P.Key("SAVEDATESUPPORTED"),
        ))


@pytest.mark.parametrize("line", [b"a SEARCH SAVEDON", b"a SEARCH SAVEDON 31-Feb-2024",
                                  b"a SEARCH SAVEDATESUPPORTED 1-Jan-2024", b"a FETCH 1 SAVEDATE[]"])
def test_bad(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line)
