"""UIDONLY (RFC 9586) without a socket: commands fed to the sans-I/O framer and parser whole, byte by byte and at
random splits, then judged by `uidonly.refusal` (§3: message numbers are BAD [UIDREQUIRED]); and the responses
`state.Selected` writes once UIDONLY is on (§3.3 UIDFETCH, VANISHED instead of EXPUNGE), beside a session
without it, which must not change."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imap_frames import parsed

from postroom.imap import parser as P
from postroom.imap import uidonly
from postroom.imap.state import Selected
from postroom.store.api import Change, ChangeKind, Flag, Mailbox

# Commands a UIDONLY session must have refused: each takes or answers message numbers.
REFUSED = [
    b"a1 FETCH 1:* (FLAGS)\r\n",
    b"a2 FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]\r\n",
    b"a3 STORE 1 +FLAGS (\\Seen)\r\n",
    b"a4 COPY 1:2 Archive\r\n",
    b"a5 MOVE 3 {5}\r\nTrash\r\n",
    b"a6 SEARCH UNSEEN\r\n",
    b"a7 SEARCH RETURN (MIN COUNT) ALL\r\n",  # ESEARCH without UID: its MIN would be a message number
    b"a8 SORT (SUBJECT) UTF-8 ALL\r\n",
    b"a9 SORT RETURN (ALL) (DATE) UTF-8 ALL\r\n",
    b"b1 THREAD REFERENCES UTF-8 ALL\r\n",
    b"b2 UID SEARCH 1:5\r\n",  # a sequence-set search key (§3), also inside other keys and in SORT / THREAD
    b"b3 UID SEARCH UNSEEN OR DELETED (NOT 2,4:*)\r\n",
    b"b4 UID SEARCH *\r\n",
    b"b5 UID SORT (ARRIVAL) UTF-8 NOT 7\r\n",
    b"b6 UID THREAD ORDEREDSUBJECT UTF-8 SUBJECT {3}\r\nabc 1:2\r\n",
    b"b7 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997 (5000,7500 15000,22500)))\r\n",
    b"b8 EXAMINE INBOX (QRESYNC (1 2 (3:4 8:9)))\r\n",
]
# Commands it must run: UIDs only (`*` of a UID set is the highest UID), and `$` (a saved UID result).
ALLOWED = [
    b"c1 UID FETCH 1:* (FLAGS)\r\n",
    b"c2 UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n",
    b"c3 UID STORE 5 (UNCHANGEDSINCE 7) +FLAGS (\\Seen)\r\n",
    b"c4 UID COPY 1:* Archive\r\n",
    b"c5 UID MOVE $ Trash\r\n",
    b"c6 UID SEARCH RETURN (SAVE) UID 1:* UNSEEN\r\n",
    b"c7 UID SEARCH $ SUBJECT {4}\r\nnote\r\n",
    b"c8 UID SORT RETURN (ALL) (REVERSE DATE) UTF-8 UID 3:*\r\n",
    b"c9 UID THREAD REFERENCES UTF-8 NOT UID 4\r\n",
    b"d1 UID EXPUNGE 3:5\r\n",
    b"d2 SELECT INBOX (QRESYNC (67890007 90060115194045000 1:29997))\r\n",
    b"d3 EXAMINE INBOX (CONDSTORE)\r\n",
    b"d4 ENABLE UIDONLY QRESYNC\r\n",
    b"d5 EXPUNGE\r\n",
    b"d6 NOOP\r\n",
    b"d7 STATUS INBOX (MESSAGES UIDNEXT)\r\n",
    b"d8 NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge))\r\n",
]


@pytest.mark.parametrize("data", REFUSED)
def test_refused_whole_byte_by_byte_and_split(data: bytes) -> None:
    for cmd in parsed(data):  # every chunking frames and parses to the same command
        why = uidonly.refusal(cmd)
        assert why is not None, data


@pytest.mark.parametrize("data", ALLOWED)
def test_allowed_whole_byte_by_byte_and_split(data: bytes) -> None:
    for cmd in parsed(data):
        assert uidonly.refusal(cmd) is None, data


def test_enable_parses_uidonly() -> None:
    assert parsed(b"e ENABLE uidonly\r\n")[0] == P.Command("e", "ENABLE", P.Names(("UIDONLY",)))


def test_saved_result_is_not_a_message_number() -> None:
    # RFC 5182's "$" names the messages a UID SEARCH saved, not numbers; "1:*" as a search key does.
    assert not uidonly.uses_numbers(P.Key("SEQ", (P.SeqSet(saved=True),)))
    assert uidonly.uses_numbers(P.Key("NOT", (P.Key("SEQ", (P.SeqSet(((1, P.STAR),)),)),)))


# ---- the responses of Selected (state.py invariant 8)

MBOX = Mailbox(7, 1, "INBOX", 99, 10, 20, None, True)


def change(kind: ChangeKind, uid: int, modseq: int = 0, flags: int = 0) -> Change:
    return Change(kind, 1, 7, uid, modseq, flags)


def selected(uidonly: bool, condstore: bool = False) -> Selected:
    return Selected(MBOX, False, [3, 5, 8, 9], rev2=True, condstore=condstore, uidonly=uidonly)


def test_flag_change_is_uidfetch() -> None:
    # RFC 9586 §3.3: uidfetch-resp = uniqueid SP "UIDFETCH" SP msg-att; the UID is the response's number
    s = selected(True)
    s.absorb(change(ChangeKind.FLAGS, 8, 30, int(Flag.SEEN)))
    assert s.report(True) == [b"* 8 UIDFETCH (FLAGS (\\Seen))\r\n"]
    s = selected(True, condstore=True)  # RFC 7162 §3.1: MODSEQ in every message response once enabled
    s.absorb(change(ChangeKind.FLAGS, 9, 31, int(Flag.FLAGGED)))
    assert s.report(True) == [b"* 9 UIDFETCH (FLAGS (\\Flagged) MODSEQ (31))\r\n"]


def test_expunge_is_vanished_without_qresync() -> None:
    s = selected(True)
    s.absorb(change(ChangeKind.EXPUNGE, 5, 40))
    s.absorb(change(ChangeKind.EXPUNGE, 9, 41))
    s.absorb(change(ChangeKind.APPEND, 12, 42))
    assert s.report(False) == [b"* 5 EXISTS\r\n"]  # held as EXPUNGE would be; EXISTS is a count
    assert s.report(True) == [b"* VANISHED 5,9\r\n"]
    assert list(s.uids) == [3, 8, 12]
    assert s.expunged([3, 4]) == [b"* VANISHED 3\r\n"]  # 4 was never announced: not named


def test_without_uidonly_nothing_changes() -> None:
    s = selected(False)
    s.absorb(change(ChangeKind.FLAGS, 8, 30, int(Flag.SEEN)))
    s.absorb(change(ChangeKind.EXPUNGE, 5, 31))
    assert s.report(True) == [b"* 2 EXPUNGE\r\n", b"* 2 FETCH (FLAGS (\\Seen) UID 8)\r\n"]
    assert s.fetch_head(8, 2) == b"* 2 FETCH ("


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([b"a FETCH ", b"a UID SEARCH ", b"a UID SORT (DATE) UTF-8 ", b"a UID THREAD REFERENCES UTF-8 ",
                        b"a SELECT INBOX ", b"a UID STORE "]),
       st.lists(st.sampled_from([b"1", b":", b"*", b"$", b",", b" ", b"(", b")", b"NOT ", b"OR ", b"UID ", b"ALL",
                                 b"QRESYNC", b"FLAGS", b"+FLAGS", b"(\\Seen)"]), max_size=30))
def test_refusal_never_raises(head: bytes, parts: list[bytes]) -> None:
    # uidonly.py invariant 2: whatever parses is judged without an exception
    try:
        cmd = P.parse_command(head + b"".join(parts) + b"\r\n")
    except P.ParseError:
        return
    why = uidonly.refusal(cmd)
    if cmd.name == "FETCH" and not cmd.uid:
        assert why is not None  # a non-UID FETCH is refused whatever its set
    elif cmd.name == "STORE" or (cmd.name == "SELECT" and isinstance(cmd.args, P.SelectArgs)
                                 and cmd.args.qresync is None):
        assert why is None  # UID STORE, SELECT without seq-match-data: allowed
