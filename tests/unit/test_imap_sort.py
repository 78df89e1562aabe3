"""SORT, THREAD, ESORT / PARTIAL and OBJECTID syntax fed to the sans-I/O reader (whole, byte by byte, at random
splits), and the sort and thread algorithms on rows (RFC 5256 §3), without a server."""

from __future__ import annotations

import random
from collections.abc import Generator
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from postroom.imap import parser as P
from postroom.imap.results import ordered_set, partial_item
from postroom.imap.thread import Kept, kept_answer, ordered_subject, references, render
from postroom.mime.sortkeys import casemap
from postroom.store.api import ThreadColumns


def framed(data: bytes, chunks: list[bytes]) -> list[P.Command]:
    """Commands framed from `chunks` (literals accepted) and parsed."""
    f = P.Framer(max_line=1000, max_command=4000)
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


def every_split(data: bytes) -> list[list[bytes]]:
    """`data` whole, byte by byte, and at five random splits."""
    ways = [[data], [data[i:i + 1] for i in range(len(data))]]
    for seed in range(5):
        rnd = random.Random(seed)
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, 6)))
        ways.append([data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])])
    return ways


ALL = P.Key("ALL")

CASES: list[tuple[bytes, P.Command]] = [
    (b"a SORT (DATE) UTF-8 ALL\r\n",
     P.Command("a", "SORT", P.SortArgs((("DATE", False),), "UTF-8", ALL))),
    (b"b UID SORT (REVERSE ARRIVAL subject DISPLAYFROM) us-ascii SUBJECT {5}\r\nhello UNSEEN\r\n",
     P.Command("b", "SORT", P.SortArgs((("ARRIVAL", True), ("SUBJECT", False), ("DISPLAYFROM", False)), "US-ASCII",
                                       P.Key("AND", (P.Key("SUBJECT", ("hello",)), P.Key("UNSEEN")))), uid=True)),
    (b"c SORT RETURN (MIN MAX COUNT ALL) (SIZE CC TO FROM DISPLAYTO) UTF-8 1:5\r\n",
     P.Command("c", "SORT", P.SortArgs((("SIZE", False), ("CC", False), ("TO", False), ("FROM", False),
                                        ("DISPLAYTO", False)), "UTF-8", P.Key("SEQ", (P.SeqSet(((1, 5),)),)),
                                       ("MIN", "MAX", "COUNT", "ALL")))),
    (b"d SORT RETURN (PARTIAL 10:1 COUNT) (DATE) UTF-8 ALL\r\n",
     P.Command("d", "SORT", P.SortArgs((("DATE", False),), "UTF-8", ALL, ("PARTIAL", "COUNT"), (1, 10)))),
    (b"e THREAD REFERENCES UTF-8 ALL\r\n", P.Command("e", "THREAD", P.ThreadArgs("REFERENCES", "UTF-8", ALL))),
    (b"f UID THREAD orderedsubject \"UTF-8\" NOT DELETED\r\n",
     P.Command("f", "THREAD", P.ThreadArgs("ORDEREDSUBJECT", "UTF-8", P.Key("NOT", (P.Key("DELETED"),))), uid=True)),
    (b"g SEARCH RETURN (PARTIAL 1:100) ALL\r\n",
     P.Command("g", "SEARCH", P.SearchArgs(ALL, None, ("PARTIAL",), (1, 100)))),
    (b"h UID SEARCH EMAILID M6d99ac3275bb4e THREADID \"T64b478a75b7ea9\"\r\n",
     P.Command("h", "SEARCH", P.SearchArgs(P.Key("AND", (P.Key("EMAILID", ("M6d99ac3275bb4e",)),
                                                        P.Key("THREADID", ("T64b478a75b7ea9",))))), uid=True)),
    (b"i FETCH 1:* (EMAILID THREADID UID)\r\n",
     P.Command("i", "FETCH", P.FetchArgs(P.SeqSet(((1, P.STAR),)), (P.FetchAtt("EMAILID"), P.FetchAtt("THREADID"),
                                                                     P.FetchAtt("UID"))))),
    (b"j STATUS INBOX (MAILBOXID MESSAGES)\r\n",
     P.Command("j", "STATUS", P.StatusArgs("INBOX", ("MAILBOXID", "MESSAGES")))),
]


@pytest.mark.parametrize("data, want", CASES, ids=[c[0][:1].decode() for c in CASES])
def test_new_syntax_whole_byte_by_byte_and_split(data: bytes, want: P.Command) -> None:
    for chunks in every_split(data):
        assert framed(data, chunks) == [want]


def test_pipelined_sort_and_thread_split_anywhere() -> None:
    stream = b"".join(d for d, _ in CASES)
    want = [c for _, c in CASES]
    for chunks in every_split(stream):
        assert framed(stream, chunks) == want


@pytest.mark.parametrize("line", [
    b"a SORT DATE UTF-8 ALL",  # criteria need parentheses (RFC 5256 §4)
    b"a SORT () UTF-8 ALL",
    b"a SORT (DATE) ALL",  # the charset is required
    b"a SORT (DATE) UTF-8",
    b"a SORT (REVERSE) UTF-8 ALL",
    b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL",
    b"a SORT (MODSEQ) UTF-8 ALL",
    b"a SORT RETURN (SAVE) (DATE) UTF-8 ALL",  # SAVE is SEARCHRES's (RFC 5182), not ESORT's
    b"a SORT RETURN (PARTIAL 0:5) (DATE) UTF-8 ALL",  # nz-number
    b"a SORT RETURN (PARTIAL 5) (DATE) UTF-8 ALL",
    b"a SORT RETURN (PARTIAL 1:2 PARTIAL 3:4) (DATE) UTF-8 ALL",
    b"a SORT (" + b"DATE " * 21 + b"SIZE) UTF-8 ALL",
    b"a THREAD UTF-8 ALL",
    b"a THREAD REFERENCES ALL",
    b"a SEARCH EMAILID ab.c",
    b"a SEARCH THREADID " + b"T" * 256,
    b"a SEARCH RETURN (PARTIAL 1:x) ALL",
    b"a FETCH 1 (EMAILID[])",
    b"a STATUS INBOX (MAILBOXID BOGUS)",
])
def test_bad_syntax_is_a_parse_error(line: bytes) -> None:
    with pytest.raises(P.ParseError):
        P.parse_command(line + b"\r\n")


# ---- ESEARCH items

def test_ordered_set_folds_only_ascending_runs() -> None:
    assert ordered_set([3, 1, 2, 7, 6, 5, 8, 9, 10]) == b"3,1:2,7,6,5,8:10"  # RFC 5267 §3.1: SORT order kept
    assert ordered_set([4]) == b"4"


def test_partial_item() -> None:
    assert partial_item((2, 4), [9, 8, 7, 6]) == b"PARTIAL (2:4 8,7,6)"  # RFC 5267 §4.4
    assert partial_item((5, 9), [9, 8, 7, 6]) == b"PARTIAL (5:9 NIL)"


# ---- the algorithms on rows

Row = tuple[int, float, str, int, "str | None", str]


def row(uid: int, *, date: float | None = None, arrival: float = 0.0, subject: str = "", reply: bool = False,
        msgid: str | None = None, refs: str = "") -> Row:
    """One message as `Store.thread_rows` gives it to THREAD: the sent date, else the arrival (RFC 5256 §2.2)."""
    return (uid, arrival if date is None else date, casemap(subject), int(reply), msgid, refs)


def run(steps: Generator[None, None, Any]) -> Any:
    try:
        while True:
            next(steps)
    except StopIteration as done:
        return done.value


def thread_text(rows: list[Row], algorithm: str = "REFERENCES") -> str:
    """The thread-list of `rows` (sequence order), computed twice: with the date (and subject) orders sorted by
    the algorithm itself, and with them given as the store's sorter gives them (`sort.thread_rows`), here from
    a plain `sorted`; both must agree."""
    cols = ThreadColumns()
    for r in rows:
        cols.add(*r)
    n = len(rows)
    by_date = sorted(range(n), key=lambda i: (rows[i][1], i))
    by_subject = sorted(range(n), key=lambda i: (rows[i][2], rows[i][1], i))
    answers = []
    for given in (False, True):
        if algorithm == "REFERENCES":
            f, roots = run(references(cols, by_date) if given else references(cols))
        else:
            f, roots = run(ordered_subject(cols, by_subject, by_date) if given else ordered_subject(cols))
        answers.append(b"".join(run(render(f, roots, cols.uids))).decode())
    assert answers[0] == answers[1]
    return answers[0]


def test_references_rfc_steps() -> None:
    rows = [
        row(1, date=1, subject="a", msgid="a1"),
        row(2, date=2, subject="a", reply=True, msgid="a2", refs="a1"),
        row(3, date=3, subject="a", reply=True, msgid="a3", refs="a1 a2"),
        row(4, date=4, subject="x", msgid="a1"),  # duplicate Message-ID: gets a unique one (step 1.A)
        row(5, date=5, subject="k", reply=True, msgid="k1", refs="gone"),  # dummies (steps 3, 4)
        row(6, date=0.5, subject="k", reply=True, msgid="k2", refs="gone"),
        row(7, date=7, subject="c", msgid="c1", refs="c2"),  # a cycle (step 1.B: no loop)
        row(8, date=8, subject="c2", msgid="c2", refs="c1"),
    ]
    # The dummy "gone" keeps two children at the root, sorted by date, and sorts by its first child (steps 5,
    # 7); (1 2 3) is a chain; (4) is apart; 8 is the root of the cycle (7's link to it came first, so 8's link
    # to 7 would loop).
    assert thread_text(rows) == "((6)(5))(1 2 3)(4)(8 7)"


def test_references_subject_merge_rules() -> None:
    rows = [
        row(1, date=1, subject="topic", msgid="t1"),
        row(2, date=2, subject="topic", reply=True, msgid="t2"),  # a reply: a child of the original (step 6.C)
        row(3, date=3, subject="other", msgid="o1"),
        row(4, date=4, subject="other", msgid="o2"),  # neither a reply: a new dummy holds both
        row(5, date=5, subject="", msgid="e1"),  # empty base subject: never merged (step 6.B.ii)
        row(6, date=6, subject="", msgid="e2"),
    ]
    assert thread_text(rows) == "(1 2)((3)(4))(5)(6)"


def test_ordered_subject() -> None:
    rows = [row(1, date=3, subject="b"), row(2, date=1, subject="a"), row(3, date=2, subject="b"),
            row(4, date=4, subject="b"), row(5, date=0, subject="c")]
    assert thread_text(rows, "ORDEREDSUBJECT") == "(5)(2)(3 (1)(4))"  # RFC 5256 §3 ORDEREDSUBJECT


def test_a_deep_reply_chain_needs_no_recursion() -> None:
    depth = 20_000  # far past Python's recursion limit
    rows = [row(1, date=0, subject="s", msgid="m1")]
    rows += [row(i, date=i, subject="s", reply=True, msgid=f"m{i}", refs=f"m{i - 1}") for i in range(2, depth + 1)]
    assert thread_text(rows) == "(" + " ".join(str(i) for i in range(1, depth + 1)) + ")"


# THREAD after arrivals (thread.py invariant 6): the kept answer with arrivals placed into it equals computing
# it again over every message, byte for byte; mailboxes in the style of tests/data/sortthread (duplicate and
# missing Message-IDs, dangling references, reply cycles, references to itself, equal dates, empty subjects).

IDS = [f"m{k}" for k in range(10)]
mail = st.tuples(
    st.integers(0, 6),  # sent date: few values, so ties are common (broken by sequence number)
    st.sampled_from(["", "a", "b", "c"]),  # base subject
    st.booleans(),  # the extraction removed a reply marker
    st.one_of(st.none(), st.sampled_from(IDS)),  # Message-ID
    st.lists(st.sampled_from(IDS), max_size=3).map(" ".join),  # references
)


def columns(mails: list[tuple[int, str, bool, str | None, str]]) -> ThreadColumns:
    cols = ThreadColumns()
    for n, (date, subject, reply, msgid, refs) in enumerate(mails):
        cols.add(3 * n + 2, float(date), subject, int(reply), msgid, refs)  # UIDs with gaps
    return cols


def computed(algorithm: str, mails: list[tuple[int, str, bool, str | None, str]], numbers: list[int]) -> Kept:
    """The answer over `mails` computed from scratch, kept (`thread.kept_answer`)."""
    cols = columns(mails)
    f, roots = run(references(cols) if algorithm == "REFERENCES" else ordered_subject(cols))
    kept: Kept = run(kept_answer(algorithm, cols, f, roots, numbers))
    assert kept.answer() == b"".join(run(render(f, roots, numbers)))
    return kept


def arrivals_answer(algorithm: str, mails: list[tuple[int, str, bool, str | None, str]], start: int,
                    by_uid: bool) -> tuple[bytes, int]:
    """The answer over `mails` kept for the first `start` and the rest placed one by one (computed again where
    `Kept.arrive` refuses, as the server does), and how many were placed."""
    def numbers(k: int) -> list[int]:
        return [3 * n + 2 if by_uid else n + 1 for n in range(k)]

    kept = computed(algorithm, mails[:start], numbers(start))
    placed = 0
    for k in range(start, len(mails)):
        date, subject, reply, msgid, refs = mails[k]
        if kept.arrive(float(date), subject, msgid, refs, numbers(k + 1)[-1]):
            placed += 1
        else:
            kept = computed(algorithm, mails[:k + 1], numbers(k + 1))
    return kept.answer(), placed


@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(mails=st.lists(mail, max_size=30), arrivals=st.lists(mail, min_size=1, max_size=8),
       algorithm=st.sampled_from(["REFERENCES", "ORDEREDSUBJECT"]), by_uid=st.booleans())
def test_arrivals_placed_equal_computing_again(mails: list[Any], arrivals: list[Any], algorithm: str,
                                               by_uid: bool) -> None:
    everything = mails + arrivals
    want = computed(algorithm, everything, [3 * n + 2 if by_uid else n + 1 for n in range(len(everything))])
    got, _ = arrivals_answer(algorithm, everything, len(mails), by_uid)
    assert got == want.answer()


def test_arrivals_placed_or_refused_by_rfc_5256_step() -> None:
    """Which arrivals are placed into a kept REFERENCES answer and which make it computed again (invariant 6),
    each case checked against computing it again."""
    base = [(1, "a", False, "a1", ""), (2, "a", True, "a2", "a1"), (3, "b", False, "b1", "gone"),
            (4, "c", False, "c1", ""), (5, "d", False, "d1", "x1"), (6, "d", True, "d2", "x1")]
    cases = [
        ((0, "a", True, "a3", "a1 a2"), True),  # a reply in a chain: under a2, the tree's first message stays
        ((9, "a", True, "a4", "a1"), True),  # a second child of a1: the siblings by date (step 7)
        ((0, "e", False, "e1", ""), True),  # a new subject, the earliest date: a root placed first (step 5)
        ((7, "", False, "z1", ""), True),  # an empty subject is never merged (step 6.B.ii)
        ((7, "q", False, "a1", "c1"), True),  # a duplicate Message-ID gets a unique one (step 1.A)
        ((7, "b", False, "x9", ""), False),  # a root whose subject a thread has: step 6 merges
        ((7, "b", True, "b2", "gone"), False),  # under a dummy: steps 3-4 move it
        ((7, "q", False, "gone", ""), False),  # the Message-ID a dummy holds: it gets that dummy's children
        ((7, "q", True, "q1", "c1 a1"), False),  # step 1.A would link a1 under c1
        ((7, "q", True, "q1", "new"), False),  # a new dummy
        ((7, "q", True, "q1", "a2 a1"), True),  # a1 under a2 would close a loop: no link (step 1.A)
    ]
    for arrival, placed in cases:
        got, n = arrivals_answer("REFERENCES", [*base, arrival], len(base), by_uid=True)
        assert n == int(placed), arrival
        assert got == computed("REFERENCES", [*base, arrival], [3 * k + 2 for k in range(7)]).answer()
    # ORDEREDSUBJECT places every arrival: a new first message of its subject moves the thread (RFC 5256 §3)
    got, n = arrivals_answer("ORDEREDSUBJECT", [*base, (0, "d", False, "d3", ""), (2, "d", False, "d4", "")],
                             len(base), by_uid=False)
    assert n == 2 and got == b"(7 (8)(5)(6))(1 2)(3)(4)"  # 7 (date 0) first; 8, 5, 6 by date
