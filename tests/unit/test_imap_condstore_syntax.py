"""CONDSTORE and QRESYNC syntax (RFC 7162 §7) fed to the sans-I/O framer and parser: whole, byte by byte and at
random splits; and the VANISHED encoding of `state` (one place for EXPUNGE / VANISHED, RFC 7162 §3.2.10)."""

from __future__ import annotations

import random

import pytest

from postroom.imap import parser as P
from postroom.imap.state import Selected, vanished_lines
from postroom.store.api import Change, ChangeKind, Flag, Mailbox

S = P.SeqSet
F = P.FetchAtt

# Each command as a client sends it (most are the RFC's own examples) and what it must parse to.
CASES: list[tuple[bytes, P.Command]] = [
    (b"a1 ENABLE QRESYNC CONDSTORE\r\n", P.Command("a1", "ENABLE", P.Names(("QRESYNC", "CONDSTORE")))),
    (b"a2 SELECT INBOX (CONDSTORE)\r\n", P.Command("a2", "SELECT", P.SelectArgs("INBOX", condstore=True))),
    (b"a3 EXAMINE INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541))\r\n",
     P.Command("a3", "EXAMINE", P.SelectArgs("INBOX", qresync=P.Qresync(
         67890007, 90060115194045000, ((41, 211), (214, 541)))))),
    (b"a4 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500,9000,9990:9999 "
     b"15000,22500,27000,29970,29973,29976,29979,29982,29985,29988,29991,29994,29997)))\r\n",
     P.Command("a4", "SELECT", P.SelectArgs("INBOX", qresync=P.Qresync(
         67890007, 90060115194045000, ((1, 29997),),
         (((5000, 5000), (7500, 7500), (9000, 9000), (9990, 9999)),
          tuple((u, u) for u in (15000, 22500, 27000, *range(29970, 29998, 3)))))))),
    (b"a5 SELECT {5}\r\nINBOX (CONDSTORE QRESYNC (1 2 (3:4 8:9)))\r\n",
     P.Command("a5", "SELECT", P.SelectArgs("INBOX", True, P.Qresync(1, 2, None, (((3, 4),), ((8, 9),)))))),
    (b"a6 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n",
     P.Command("a6", "FETCH", P.FetchArgs(S(((300, 500),)), (F("FLAGS"),), changedsince=12345, vanished=True),
               uid=True)),
    (b"a7 FETCH 1:* (UID FLAGS) (CHANGEDSINCE 12345)\r\n",
     P.Command("a7", "FETCH", P.FetchArgs(S(((1, P.STAR),)), (F("UID"), F("FLAGS")), changedsince=12345))),
    (b"a8 FETCH 1:3 (MODSEQ)\r\n", P.Command("a8", "FETCH", P.FetchArgs(S(((1, 3),)), (F("MODSEQ"),)))),
    (b"a9 FETCH 2 modseq\r\n", P.Command("a9", "FETCH", P.FetchArgs(S(((2, 2),)), (F("MODSEQ"),)))),
    (b"b1 STORE 7,5,9 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)\r\n",
     P.Command("b1", "STORE", P.StoreArgs(S(((7, 7), (5, 5), (9, 9))), "+", True, ("\\Deleted",), 320162338))),
    (b"b2 UID STORE 6,4,8 (unchangedsince 0) FLAGS $MDNSent\r\n",
     P.Command("b2", "STORE", P.StoreArgs(S(((6, 6), (4, 4), (8, 8))), "", False, ("$MDNSent",), 0), uid=True)),
    (b"b3 SEARCH MODSEQ \"/flags/\\\\draft\" all 620162338\r\n",
     P.Command("b3", "SEARCH", P.SearchArgs(P.Key("MODSEQ", (620162338,))))),
    (b"b4 UID SEARCH RETURN (MIN MAX) OR NOT MODSEQ 720162338 LARGER 50000 modseq \"/flags/$x\" priv 5\r\n",
     P.Command("b4", "SEARCH", P.SearchArgs(P.Key("AND", (
         P.Key("OR", (P.Key("NOT", (P.Key("MODSEQ", (720162338,)),)), P.Key("LARGER", (50000,)))),
         P.Key("MODSEQ", (5,)))), returns=("MIN", "MAX")), uid=True)),
    (b"b5 STATUS blurdybloop (UIDNEXT MESSAGES HIGHESTMODSEQ)\r\n",
     P.Command("b5", "STATUS", P.StatusArgs("blurdybloop", ("UIDNEXT", "MESSAGES", "HIGHESTMODSEQ")))),
    (b"b6 LIST \"\" % RETURN (STATUS (HIGHESTMODSEQ))\r\n",
     P.Command("b6", "LIST", P.ListArgs("", ("%",), (), ("STATUS",), ("HIGHESTMODSEQ",), True))),
]
STREAM = b"".join(c for c, _ in CASES)


def parsed(chunks: list[bytes]) -> list[P.Command]:
    f = P.Framer(max_line=4000, max_command=8000)
    out: list[P.Command] = []
    for chunk in chunks:
        f.feed(chunk)
        while True:
            ev = f.next_event()
            if ev is P.NEED_DATA:
                break
            if isinstance(ev, P.LiteralRequest):
                f.accept_literal()
                continue
            assert isinstance(ev, P.RawCommand)
            out.append(P.parse_command(ev.data))
    return out


def test_whole() -> None:
    assert parsed([STREAM]) == [want for _, want in CASES]


def test_byte_by_byte() -> None:
    assert parsed([STREAM[i:i + 1] for i in range(len(STREAM))]) == [want for _, want in CASES]


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int) -> None:
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(STREAM)), 12))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)])]
    assert parsed(chunks) == [want for _, want in CASES]


@pytest.mark.parametrize("line", [
    b"a SELECT INBOX (QRESYNC)",  # no parameter list
    b"a SELECT INBOX (QRESYNC (0 5))",  # uidvalidity is nz-number
    b"a SELECT INBOX (QRESYNC (1 5 1:*))",  # known-uids: "*" is not allowed (RFC 7162 §7)
    b"a SELECT INBOX (QRESYNC (1 5 $))",
    b"a SELECT INBOX (QRESYNC (1 5 1:9 (1:3 4:5)))",  # seq-match-data sets of different sizes
    b"a SELECT INBOX (QRESYNC (1 5 1:9 (1:3)))",
    b"a SELECT INBOX (QRESYNC (1 5) QRESYNC (1 5))",
    b"a SELECT INBOX (QRESYNC (1 9223372036854775808))",  # past 63 bits
    b"a SELECT INBOX (CONDSTORE",
    b"a SELECT INBOX ()",
    b"a UID FETCH 1:* FLAGS (VANISHED)",  # RFC 7162 §3.2.6: VANISHED without CHANGEDSINCE is BAD
    b"a FETCH 1 FLAGS (CHANGEDSINCE)",
    b"a FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)",
    b"a FETCH 1 FLAGS (CHANGEDSINCE -1)",
    b"a FETCH 1 FLAGS ()",
    b"a STORE 1 (UNCHANGEDSINCE 1 UNCHANGEDSINCE 2) +FLAGS \\Seen",  # only one (RFC 7162 §7)
    b"a STORE 1 (UNCHANGEDSINCE) +FLAGS \\Seen",
    b"a STORE 1 (UNCHANGEDSINCE 5)+FLAGS \\Seen",
    b"a STORE 1 (BOGUS 5) +FLAGS \\Seen",
    b"a SEARCH MODSEQ",
    b"a SEARCH MODSEQ \"/flags/\\\\draft\" 5",  # entry-type-req missing
    b"a SEARCH MODSEQ \"/flags/\\\\draft\" every 5",
    b"a SEARCH MODSEQ \"/vendor/x\" all 5",  # only flag entries exist (RFC 7162 §7 entry-flag-name)
    b"a SEARCH MODSEQ \"/flags/\" all 5",
    b"a STATUS INBOX (LOWESTMODSEQ)",
])
def test_bad_syntax_is_a_parse_error(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line + b"\r\n")


MBOX = Mailbox(7, 1, "INBOX", 99, 10, 20, None, True)


def test_vanished_lines_collapse_ranges_and_split_long_sets() -> None:
    assert vanished_lines([5, 1, 2, 3, 9]) == [b"* VANISHED 1:3,5,9\r\n"]
    assert vanished_lines([(4, 8)], earlier=True) == [b"* VANISHED (EARLIER) 4:8\r\n"]
    assert vanished_lines([]) == []
    lines = vanished_lines(list(range(1, 5001, 2)), earlier=True)  # 2,500 ranges: bounded lines
    assert len(lines) == 3 and all(len(x) < 10_000 for x in lines)
    assert b"".join(lines).count(b",") == 2500 - 3


def test_qresync_session_reports_vanished_instead_of_expunge() -> None:
    s = Selected(MBOX, False, [1, 2, 3, 4, 5], rev2=True, condstore=True, qresync=True)
    s.absorb(Change(ChangeKind.EXPUNGE, 1, 7, 2, 31))
    s.absorb(Change(ChangeKind.EXPUNGE, 1, 7, 4, 32))
    s.absorb(Change(ChangeKind.FLAGS, 1, 7, 5, 33, int(Flag.SEEN)))
    # RFC 7162 §3.2: a FETCH with a MODSEQ above held expunges needs a HIGHESTMODSEQ below them
    assert s.report(False) == [b"* 5 FETCH (FLAGS (\\Seen) UID 5 MODSEQ (33))\r\n",
                               b"* OK [HIGHESTMODSEQ 30] Expunges pending\r\n"]
    assert s.report(True) == [b"* VANISHED 2,4\r\n"]
    assert list(s.uids) == [1, 3, 5]
    assert s.expunged([3, 9]) == [b"* VANISHED 3\r\n"]  # an unannounced UID is never sent (RFC 7162 §3.2.10.2)
    s.qresync = False
    assert s.expunged([1, 5]) == [b"* 1 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
