"""CONTEXT=SEARCH / CONTEXT=SORT syntax (RFC 5267 §5) through the sans-I/O framer and parser, fed whole, byte by
byte and at random splits: the UPDATE and CONTEXT return options of SEARCH and SORT, and CANCELUPDATE; and the
pure half of the contexts (imap/context.py) against the RFC's own examples."""

from __future__ import annotations

import pytest
from test_imap_parser import drive, splits

from postroom.imap import parser as P
from postroom.imap.context import UidRanges, UpdateContext

# The commands of RFC 5267 §4.2, §4.3, §4.3.1 and §4.3.5 (SORT with its criteria and charset, which the
# example of §4.3 leaves out), one with a literal.
STREAM = (b"A01 SEARCH RETURN (CONTEXT COUNT) UNDELETED UNKEYWORD $Junk\r\n"
          b"B01 UID SEARCH RETURN (UPDATE COUNT) DELETED KEYWORD $Junk\r\n"
          b"B02 UID SORT RETURN (UPDATE COUNT) (DATE) UTF-8 KEYWORD $Junk\r\n"
          b"C01 UID SORT RETURN (update partial 1:10) (REVERSE SUBJECT) UTF-8 SUBJECT {4+}\r\nnote\r\n"
          b'B04 CANCELUPDATE "B01"\r\n'
          b'B05 cancelupdate "B01" "C01"\r\n')


def parsed(chunks: list[bytes]) -> list[P.Command]:
    return [P.parse_command(ev.data) for ev in drive(chunks) if isinstance(ev, P.RawCommand)]


def check(cmds: list[P.Command]) -> None:
    assert [c.tag for c in cmds] == ["A01", "B01", "B02", "C01", "B04", "B05"]
    a01, b01, b02, c01, b04, b05 = (c.args for c in cmds)
    assert isinstance(a01, P.SearchArgs) and a01.returns == ("CONTEXT", "COUNT")
    assert isinstance(b01, P.SearchArgs) and b01.returns == ("UPDATE", "COUNT") and cmds[1].uid
    assert b01.key == P.Key("AND", (P.Key("DELETED"), P.Key("KEYWORD", ("$Junk",))))
    assert isinstance(b02, P.SortArgs) and b02.returns == ("UPDATE", "COUNT") and b02.criteria == (("DATE", False),)
    assert isinstance(c01, P.SortArgs) and c01.returns == ("UPDATE", "PARTIAL") and c01.partial == (1, 10)
    assert c01.criteria == (("SUBJECT", True),) and c01.key == P.Key("SUBJECT", ("note",))
    assert b04 == P.Names(("B01",)) and cmds[4].verb == "CANCELUPDATE"
    assert b05 == P.Names(("B01", "C01"))


def test_whole() -> None:
    check(parsed([STREAM]))


def test_byte_by_byte() -> None:
    check(parsed([STREAM[i:i + 1] for i in range(len(STREAM))]))


@pytest.mark.parametrize("seed", range(30))
def test_random_splits(seed: int) -> None:
    check(parsed(splits(STREAM, seed)))


@pytest.mark.parametrize("line", [
    b"a CANCELUPDATE",  # 1*(SP quoted)
    b"a CANCELUPDATE B01",  # a tag is a quoted string here
    b'a CANCELUPDATE "B01" ',
    b"a SEARCH RETURN (UPDATE (UID)) ALL",  # RFC 5465's fetch-att form is not offered
    b"a SORT RETURN (UPDATE SAVE) (DATE) UTF-8 ALL",  # SAVE is SEARCH's (RFC 5182)
    b"a SEARCH RETURN (UPDATES) ALL",
])
def test_bad(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line + b"\r\n")


def ctx(results: list[int], sort: bool, uid: bool = True) -> UpdateContext:
    return UpdateContext.create("C01", uid, P.Key("ALL"), {}, (("DATE", False),) if sort else None, results)


def test_addto_preferred_form() -> None:
    """RFC 5267 §4.3.3: a result list of 2734:2735 and three insertions at position 1 give 2731:2735, and
    `ADDTO (1 2731:2733)` is the preferred representation."""
    c = ctx([2734, 2735], sort=True)
    placed = []
    for i, uid in enumerate([2731, 2732, 2733]):
        c.insert(i, uid)
        placed.append((i + 1, uid))
    assert c.line([c.addto(placed, lambda u: 0)]) == b'* ESEARCH (TAG "C01") UID ADDTO (1 2731:2733)\r\n'
    assert list(c.results) == [2731, 2732, 2733, 2734, 2735]


def test_search_context_uses_position_zero() -> None:
    """RFC 5267 §4.3.3's example: `UID ADDTO (0 32768:32769)`; §4.3.4's: `UID REMOVEFROM (0 32768)`."""
    c = ctx([5, 9], sort=False)
    assert c.add_search([32769, 32768], lambda u: 0) == b"ADDTO (0 32768:32769)"
    assert c.remove([32768, 7], lambda u: 0) == b"REMOVEFROM (0 32768)"
    assert list(c.results) == [5, 9, 32769] and c.has(32769) and not c.has(32768)
    # message numbers come from the view as it is when the line is written
    m = ctx([5, 9], sort=False, uid=False)
    assert m.remove([9], {5: 1, 9: 2}.__getitem__) == b"REMOVEFROM (0 2)"


def test_sort_removals_name_positions_before_removal() -> None:
    """RFC 5267 §4.3.4: the first result of the set occupies the given position before removal; adjacent
    results go in one pair, others in pairs of their own, in order."""
    c = ctx([7, 3, 9, 1, 4], sort=True)
    assert c.remove([3, 9, 4], lambda u: 0) == b"REMOVEFROM (2 3,9 3 4)"
    assert list(c.results) == [7, 1] and list(c.members) == [1, 7]
    many = ctx(list(range(100, 0, -1)), sort=True)  # past the one-pass threshold
    descending = b",".join(b"%d" % u for u in range(40, 0, -1))  # a range would say ascending (RFC 5267 §3.2)
    assert many.remove(range(1, 41), lambda u: 0) == b"REMOVEFROM (61 " + descending + b")"


def test_uid_ranges() -> None:
    r = UidRanges([9, 1, 2, 3, 7])
    assert list(r.starts) == [1, 7, 9] and list(r.ends) == [3, 7, 9]
    assert [u for u in range(12) if u in r] == [1, 2, 3, 7, 9]
