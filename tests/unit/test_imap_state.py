"""The Selected state's bookkeeping (sequence numbers, held expunges, own-change echoes, \\Recent) and the
response encoder, without a socket."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.imap import encoder
from postroom.imap.state import Selected
from postroom.store.api import Change, ChangeKind, Flag, Mailbox

MBOX = Mailbox(7, 1, "INBOX", 99, 10, 20, None, True)


def change(kind: ChangeKind, uid: int, modseq: int = 0, flags: int = 0, mailbox: int = 7) -> Change:
    return Change(kind, 1, mailbox, uid, modseq, flags)


def sel(uids: list[int], rev2: bool = True) -> Selected:
    return Selected(MBOX, False, list(uids), rev2=rev2)


def test_exists_and_flags() -> None:
    s = sel([1, 2, 5])
    s.absorb(change(ChangeKind.FLAGS, 5, 30, int(Flag.SEEN)))
    s.absorb(change(ChangeKind.APPEND, 6, 31))
    s.absorb(change(ChangeKind.APPEND, 7, 32))
    s.absorb(change(ChangeKind.FLAGS, 1, 33, 0, mailbox=8))  # another mailbox
    assert s.report(False) == [b"* 3 FETCH (FLAGS (\\Seen) UID 5)\r\n", b"* 5 EXISTS\r\n"]
    assert list(s.uids) == [1, 2, 5, 6, 7]


def test_expunge_is_held_until_allowed() -> None:
    s = sel([1, 2, 3, 4])
    s.absorb(change(ChangeKind.EXPUNGE, 2))
    s.absorb(change(ChangeKind.EXPUNGE, 4))
    assert s.report(False) == []
    assert s.msn(4) == 4 and s.held == {2, 4}
    s.absorb(change(ChangeKind.APPEND, 9))
    assert s.report(False) == [b"* 5 EXISTS\r\n"]
    assert s.report(True) == [b"* 2 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"]
    assert list(s.uids) == [1, 3, 9]


def test_append_then_expunge_before_report_is_silent() -> None:
    s = sel([1])
    s.absorb(change(ChangeKind.APPEND, 2))
    s.absorb(change(ChangeKind.EXPUNGE, 2))
    s.absorb(change(ChangeKind.APPEND, 2))  # a late echo of the same append
    assert s.report(True) == []
    assert list(s.uids) == [1]


def test_own_changes_are_not_echoed() -> None:
    s = sel([1, 2])
    s.own_change(40)
    s.absorb(change(ChangeKind.FLAGS, 1, 40, int(Flag.DELETED)))
    assert s.removed(2) == 2
    s.absorb(change(ChangeKind.EXPUNGE, 2))
    assert s.report(True) == []
    assert list(s.uids) == [1]


def test_recent_rev1() -> None:
    s = Selected(MBOX, False, [1, 2, 3], rev2=False)
    s.grant_recent(3, 3)  # what SELECT claimed in the store
    assert s.recent_count() == 1 and s.is_recent(3) and not s.is_recent(2)
    s.grant_recent(4, 4)  # the session claimed the arrival (Session.claim_recent) before reporting it
    s.absorb(change(ChangeKind.APPEND, 4))
    assert s.report(False) == [b"* 4 EXISTS\r\n", b"* 2 RECENT\r\n"]
    s.absorb(change(ChangeKind.APPEND, 5))  # another session claimed 5 first: nothing granted here
    assert s.report(False) == [b"* 5 EXISTS\r\n", b"* 2 RECENT\r\n"]
    s.grant_recent(7, 8)  # a later, disjoint claim
    assert s.is_recent(8) and not s.is_recent(6) and not s.is_recent(5)
    rev2 = Selected(MBOX, False, [1], rev2=True)
    rev2.grant_recent(1, 1)
    assert rev2.recent_count() == 0 and not rev2.is_recent(1)  # RFC 9051 has no \Recent


def test_resync_after_overflow() -> None:
    s = sel([1, 2, 3])
    s.modseq = 10
    s.own_change(12)
    s.absorb(change(ChangeKind.APPEND, 4, 11))  # queued before the overflow: in the listing too
    kw: frozenset[str] = frozenset()
    s.resync([(1, 5, 0, kw), (3, 11, int(Flag.SEEN), kw), (4, 12, 0, kw), (5, 13, 0, kw), (6, 12, 0, kw)])
    assert s.report(True) == [b"* 2 EXPUNGE\r\n", b"* 2 FETCH (FLAGS (\\Seen) UID 3)\r\n", b"* 5 EXISTS\r\n"]
    assert list(s.uids) == [1, 3, 4, 5, 6] and s.modseq == 13 and not s.own_modseqs


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "x", "r"]), st.integers(1, 30), st.booleans()), max_size=60))
def test_view_matches_a_model(ops: list[tuple[str, int, bool]]) -> None:
    """Replaying the reported EXISTS/EXPUNGE on a client's model always gives the session's `uids`."""
    s = sel([])
    store: set[int] = set()
    next_uid = 1
    client: list[int | None] = []
    for op, n, allow in ops:
        if op == "a":
            s.absorb(change(ChangeKind.APPEND, next_uid))
            store.add(next_uid)
            next_uid += 1
        elif op == "x" and store:
            uid = sorted(store)[n % len(store)]
            store.discard(uid)
            s.absorb(change(ChangeKind.EXPUNGE, uid))
        for line in s.report(allow):
            words = line.split()
            if words[2] == b"EXISTS":
                client.extend([None] * (int(words[1]) - len(client)))
            elif words[2] == b"EXPUNGE":
                del client[int(words[1]) - 1]
        assert len(client) == len(s.uids)
        assert list(s.uids) == sorted(s.uids)
        assert set(s.uids) - store <= s.held
    s.report(True)
    assert list(s.uids) == sorted(store)


def test_encoder() -> None:
    assert encoder.seqset([5, 1, 2, 3, 9, 10, 3]) == b"1:3,5,9:10"
    assert encoder.seqset_ordered([4, 5, 6, 2]) == b"4:6,2"
    flags = encoder.flag_list(int(Flag.SEEN | Flag.DRAFT), frozenset(["$b", "$a"]), recent=True)
    assert flags == b"(\\Seen \\Draft \\Recent $a $b)"
    assert encoder.internal_date(0) == b'" 1-Jan-1970 00:00:00 +0000"'
    assert encoder.mailbox("été/x", utf8=False) == b'"&AOk-t&AOk-/x"'
    assert encoder.mailbox("été", utf8=True) == '"été"'.encode()
    assert encoder.mailbox('a"b', utf8=True) == b'"a\\"b"'
    assert encoder.mailbox("a\nb", utf8=True) == b"{3}\r\na\nb"
    assert encoder.decode_mailbox("&AOk-t&AOk-", utf8=False) == "été"
    assert encoder.decode_mailbox("&AOk-t", utf8=True) == "&AOk-t"
    assert encoder.string("x" * 2000).startswith(b"{2000}\r\n")


SYSTEM = b"\\Seen \\Answered \\Flagged \\Deleted \\Draft"


def test_new_keywords_are_announced_before_the_fetch_that_shows_them() -> None:
    """RFC 9051 §7.3.5 (state invariant 5): FLAGS and PERMANENTFLAGS come before the FETCH carrying a keyword
    this session has not announced, whether the store's MAILBOX_KEYWORDS change arrived or not."""
    s = sel([1, 2])
    s.learn({"$Seen1"})
    s.absorb(Change(ChangeKind.FLAGS, 1, 7, 2, 40, 0, frozenset({"$new"})))
    assert s.report(False) == [
        b"* FLAGS (" + SYSTEM + b" $Seen1 $new)\r\n",
        b"* OK [PERMANENTFLAGS (" + SYSTEM + b" $Seen1 $new \\*)] Flags permitted\r\n",
        b"* 2 FETCH (FLAGS ($new) UID 2)\r\n",
    ]
    s.absorb(Change(ChangeKind.MAILBOX_KEYWORDS, 1, 7, keywords=frozenset({"$NEW"})))  # known, in any case
    assert s.report(False) == []
    s.absorb(Change(ChangeKind.MAILBOX_KEYWORDS, 1, 8, keywords=frozenset({"other"})))  # another mailbox
    assert s.report(False) == []
    s.absorb(Change(ChangeKind.MAILBOX_KEYWORDS, 1, 7, keywords=frozenset({"later"})))
    assert s.report(False)[0] == b"* FLAGS (" + SYSTEM + b" $Seen1 $new later)\r\n"
    assert s.announce(["LATER", "$seen1"]) == []
    ro = Selected(MBOX, True, [1], rev2=True)  # read-only: FLAGS only; PERMANENTFLAGS stays ()
    assert ro.announce(["x"]) == [b"* FLAGS (" + SYSTEM + b" x)\r\n"]
    assert ro.permanentflags_line() == b"* OK [PERMANENTFLAGS ()] Read-only mailbox\r\n"


def test_sessions_on_one_mailbox_share_the_view_until_one_changes() -> None:
    """Invariant 10: equal listings of one mailbox give one array; a session's EXISTS or EXPUNGE copies it
    first, so the other sessions keep exactly their own view (invariant 1)."""
    from array import array

    from postroom.imap.state import shared_view

    a = Selected(MBOX, False, shared_view(7, array("I", [1, 2, 3, 4])), rev2=True, uids_shared=True)
    b = Selected(MBOX, False, shared_view(7, array("I", [1, 2, 3, 4])), rev2=True, uids_shared=True)
    c = Selected(MBOX, False, shared_view(7, array("I", [1, 2, 3, 4])), rev2=True, uids_shared=True)
    assert a.uids is b.uids is c.uids
    a.absorb(change(ChangeKind.APPEND, 9))
    assert a.report(False) == [b"* 5 EXISTS\r\n"]
    assert b.expunged([2]) == [b"* 2 EXPUNGE\r\n"]
    assert (list(a.uids), list(b.uids), list(c.uids)) == ([1, 2, 3, 4, 9], [1, 3, 4], [1, 2, 3, 4])
    d = Selected(MBOX, False, shared_view(7, array("I", [1, 3, 4])), rev2=True, uids_shared=True)
    assert d.uids is not b.uids and list(d.uids) == [1, 3, 4]  # a different listing is not shared


def test_idle_sessions_share_empty_sets_until_their_first_member() -> None:
    """Invariant 11: `held`, `gone` and `own_modseqs` start as the one shared empty frozenset and no attribute
    dictionary is made; a session's first held expunge, own change or expunge gives it a set of its own, and
    the other sessions (and the shared empty one) stay as they were (invariants 2 and 3)."""
    from postroom.imap.state import NO_UIDS

    a, b = sel([1, 2, 3, 4]), sel([1, 2, 3, 4])
    assert not hasattr(a, "__dict__")
    for name in ("held", "gone", "own_modseqs"):
        assert getattr(a, name) is getattr(b, name) is NO_UIDS
    assert (a.recent_more, a.saved, a.context_changes) == ((), (), ())
    r = sel([1, 2, 3, 4, 5, 6], rev2=False)
    r.grant_recent(1, 2)
    r.grant_recent(4, 4)  # not adjacent: a second range, in a list of r's own
    r.grant_recent(5, 5)  # adjacent to it: that range grows
    assert r.recent_more == [(4, 5)] and a.recent_more == () and r.recent_count() == 4
    assert [r.is_recent(u) for u in (1, 2, 3, 4, 5, 6)] == [True, True, False, True, True, False]
    assert a.context_change(change(ChangeKind.FLAGS, 3, 52)) == 1 and b.context_changes == ()
    a.absorb(change(ChangeKind.EXPUNGE, 2, 50))  # held: EXPUNGE not allowed yet (invariant 2)
    a.own_change(51)
    a.absorb(change(ChangeKind.FLAGS, 3, 51, int(Flag.SEEN)))  # its own change's echo: dropped (invariant 3)
    assert a.report(False) == []
    assert a.held == {2} and a.own_modseqs == set()
    assert a.expunged([4]) == [b"* 4 EXPUNGE\r\n"] and a.gone == {4}
    assert a.report(True) == [b"* 2 EXPUNGE\r\n"] and a.held == set() and a.gone == {2, 4}
    assert NO_UIDS == frozenset() and (b.held, b.gone, b.own_modseqs) == (NO_UIDS, NO_UIDS, NO_UIDS)
    b.absorb(change(ChangeKind.FLAGS, 3, 51, int(Flag.SEEN)))  # not b's own: reported
    assert b.report(False) == [b"* 3 FETCH (FLAGS (\\Seen) UID 3)\r\n"]


def test_sessions_of_one_user_share_an_equal_user_record() -> None:
    """imap/auth.py invariant 5: a second login of the same user keeps the first one's record when equal; a
    changed record (a new password hash) is not replaced by the old one, and becomes the one shared."""
    import dataclasses

    from postroom.imap.auth import shared_user
    from postroom.store.api import User

    def fetched(password_hash: str) -> User:  # a fresh record each time, as each store read makes one
        return User(41, "ann@example.org", 3, "".join(["$argon2id$", password_hash]), "scram", 0, 1.5)

    first = shared_user(fetched("one"))
    second = fetched("one")
    assert second is not first and shared_user(second) is first
    changed = shared_user(fetched("two"))
    assert changed.password_hash == "$argon2id$two" and changed is not first
    assert shared_user(fetched("two")) is changed
    other = shared_user(dataclasses.replace(first, id=42, address="bob@example.org"))
    assert other.id == 42 and shared_user(fetched("two")) is changed
