"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4) end to end: one session holds UPDATE contexts, another appends,
flags and expunges, and the first receives ADDTO / REMOVEFROM, byte for byte as in the RFC's examples (§4.3,
§4.3.1, §4.3.3, §4.3.4, §4.3.5), with IDLE, NOTIFY and QRESYNC."""

from __future__ import annotations

from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap

from postroom.imap.context import MAX_CONTEXTS
from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server_overrides: dict[str, Any], server: Any) -> Any:
    return server


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def session(server: Any, *enable: str) -> Raw:
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    # rev2: no \Recent, whose claim would race between the sessions
    assert r.cmd(" ".join(("e ENABLE IMAP4rev2", *enable)))[-1].startswith(b"e OK")
    assert r.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
    return r


def subjects(server: Any, *subjects: str) -> None:
    """A user whose INBOX holds one message per subject, UIDs 1, 2, ... in that order."""
    fill(server, ADDR, PW, 0)
    user = server.run(server.store.get_user(ADDR))
    inbox = server.run(server.store.get_mailbox(user.id, "INBOX"))
    raws = [message(i, subject=s) for i, s in enumerate(subjects, 1)]
    server.run(server.store.append_many(inbox.id, [
        AppendRequest(raw=r, meta=compute_meta(r).to_bytes()) for r in raws]))


def test_capabilities_advertised(imap: Any) -> None:
    fill(imap, ADDR, PW, 1)
    caps = session(imap).cmd("c CAPABILITY")[0].split()
    assert b"CONTEXT=SEARCH" in caps and b"CONTEXT=SORT" in caps


def test_search_context_follows_flags_and_expunges(imap: Any) -> None:
    """RFC 5267 §4.3 (B01, tag reuse), §4.3.3 (ADDTO with position 0), §4.3.4 (REMOVEFROM before the EXPUNGE),
    §4.3.5 (CANCELUPDATE)."""
    fill(imap, ADDR, PW, 4)
    a, b = session(imap), session(imap)
    assert a.cmd("B01 UID SEARCH RETURN (UPDATE COUNT) DELETED KEYWORD $Junk") == [
        b'* ESEARCH (TAG "B01") UID COUNT 0\r\n', b"B01 OK SEARCH completed\r\n"]
    # §4.3: "the following is rejected, and has no effect"
    assert a.cmd("B01 UID SORT RETURN (UPDATE) (DATE) UTF-8 FLAGGED") == [b"B01 BAD Tag reuse\r\n"]
    assert b.cmd("1 STORE 2:3 +FLAGS ($Junk \\Deleted)")[-1].startswith(b"1 OK")
    lines = a.cmd("2 NOOP")
    fetches = [x for x in lines if b" FETCH " in x]
    assert len(fetches) == 2 and lines.index(fetches[-1]) < len(lines) - 2
    # §4.3.3's example: "only the ADDTO is included, and not the (now changed) COUNT"
    assert lines[-2:] == [b'* ESEARCH (TAG "B01") UID ADDTO (0 2:3)\r\n', b"2 OK NOOP completed\r\n"]
    b.cmd("3 STORE 2 -FLAGS.SILENT ($Junk)")
    assert a.cmd("4 NOOP")[-2:] == [b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 2)\r\n', b"4 OK NOOP completed\r\n"]
    assert b.cmd("5 EXPUNGE")[-1].startswith(b"5 OK")
    # During FETCH no EXPUNGE may be sent (RFC 9051 §7.5.1), but the REMOVEFROM may (RFC 5267 §4.3.4's example)
    lines = a.cmd("6 FETCH 1 (UID)")
    assert lines[-2:] == [b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 3)\r\n', b"6 OK FETCH completed\r\n"]
    assert a.cmd("B03 NOOP") == [b"* 2 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"B03 OK NOOP completed\r\n"]
    assert a.cmd('B04 CANCELUPDATE "B01"') == [b"B04 OK No further updates\r\n"]
    b.cmd("7 STORE 1 +FLAGS.SILENT ($Junk \\Deleted)")
    assert a.cmd("8 NOOP") == [b"* 1 FETCH (FLAGS (\\Deleted $Junk) UID 1)\r\n", b"8 OK NOOP completed\r\n"]


def test_sort_context_positions(imap: Any) -> None:
    """RFC 5267 §4.3.3: results 4:5, three messages sorting before them -> `ADDTO (1 1:3)`, the preferred form;
    an arrival goes to its place in sort order after its EXISTS; §4.3.4: removals name positions."""
    subjects(imap, "a", "b", "c", "d", "e")
    a, b = session(imap), session(imap)
    a.cmd("0 STORE 4:5 +FLAGS.SILENT (\\Flagged)")
    assert a.cmd("C01 UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 FLAGGED") == [
        b'* ESEARCH (TAG "C01") UID ALL 4:5\r\n', b"C01 OK SORT completed\r\n"]
    b.cmd("1 STORE 1:3 +FLAGS.SILENT (\\Flagged)")
    assert a.cmd("2 NOOP")[-2:] == [b'* ESEARCH (TAG "C01") UID ADDTO (1 1:3)\r\n', b"2 OK NOOP completed\r\n"]
    raw = message(6, subject="ca")
    assert b.cmd(b"3 APPEND INBOX (\\Flagged) {%d+}\r\n" % len(raw) + raw)[-1].startswith(b"3 OK")
    # "c" < "ca" < "d": the new message is the fourth result; its ADDTO follows the EXISTS (§4.3.3)
    assert a.cmd("4 NOOP") == [b"* 6 EXISTS\r\n", b'* ESEARCH (TAG "C01") UID ADDTO (4 6)\r\n',
                               b"4 OK NOOP completed\r\n"]
    b.cmd("5 STORE 2:3 -FLAGS.SILENT (\\Flagged)")  # results 1 2 3 6 4 5: the 2nd and 3rd go
    assert a.cmd("6 NOOP")[-2:] == [b'* ESEARCH (TAG "C01") UID REMOVEFROM (2 2:3)\r\n', b"6 OK NOOP completed\r\n"]
    assert a.cmd("7 UID SORT RETURN () (SUBJECT) UTF-8 FLAGGED")[0] == b'* ESEARCH (TAG "7") UID ALL 1,6,4:5\r\n'


def test_sort_context_by_message_number_while_idling(imap: Any) -> None:
    """Message numbers (SORT without UID, §4.3.2): a REMOVEFROM names the expunged message's number before its
    EXPUNGE (§4.3.4), an ADDTO the new one's after its EXISTS; IDLE pushes both as they come."""
    subjects(imap, "b", "a", "c")
    a, b = session(imap), session(imap)
    assert a.cmd("D01 SORT RETURN (UPDATE) (REVERSE SUBJECT) UTF-8 ALL")[0] == b'* ESEARCH (TAG "D01") ALL 3,1:2\r\n'
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    b.cmd("1 STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert a.line() == b"* 1 FETCH (FLAGS (\\Deleted) UID 1)\r\n"
    b.cmd("2 EXPUNGE")
    assert [a.line(), a.line()] == [b'* ESEARCH (TAG "D01") REMOVEFROM (2 1)\r\n', b"* 1 EXPUNGE\r\n"]
    raw = message(4, subject="bb")
    b.cmd(b"3 APPEND INBOX {%d+}\r\n" % len(raw) + raw)
    # view: 1=a(uid 2) 2=c(uid 3) 3=bb(uid 4); reverse subject: c, bb, a -> the new one is second
    assert [a.line(), a.line()] == [b"* 3 EXISTS\r\n", b'* ESEARCH (TAG "D01") ADDTO (2 3)\r\n']
    a.send(b"DONE\r\n")
    assert a.line() == b"i OK IDLE terminated\r\n"


def test_too_many_contexts_and_unselect(imap: Any) -> None:
    """RFC 5267 §4.3.1: past the cap, `* NO [NOUPDATE "B02"]` and the other return options still honoured;
    §4.3: updates cease when the mailbox is no longer selected."""
    fill(imap, ADDR, PW, 2)
    a, b = session(imap), session(imap)
    for i in range(MAX_CONTEXTS):
        assert a.cmd(f"t{i} SEARCH RETURN (UPDATE) UNSEEN")[-1] == b"t%d OK SEARCH completed\r\n" % i
    assert a.cmd("B02 UID SORT RETURN (UPDATE COUNT) (DATE) UTF-8 KEYWORD $Junk") == [
        b'* ESEARCH (TAG "B02") UID COUNT 0\r\n', b'* NO [NOUPDATE "B02"] Too many contexts\r\n',
        b"B02 OK SORT completed\r\n"]
    a.cmd('c CANCELUPDATE "t0" "t1"')
    assert a.cmd("B03 UID SORT RETURN (UPDATE COUNT) (DATE) UTF-8 KEYWORD $Junk") == [
        b'* ESEARCH (TAG "B03") UID COUNT 0\r\n', b"B03 OK SORT completed\r\n"]
    b.cmd("1 STORE 1 +FLAGS.SILENT (\\Seen)")
    lines = a.cmd("2 NOOP")
    assert lines[1:-1] == [b'* ESEARCH (TAG "t%d") REMOVEFROM (0 1)\r\n' % i for i in range(2, MAX_CONTEXTS)]
    assert a.cmd("u UNSELECT")[-1] == b"u OK UNSELECT completed\r\n"
    assert a.cmd("s SELECT INBOX")[-1].startswith(b"s OK")
    b.cmd("3 STORE 2 +FLAGS.SILENT (\\Seen)")
    assert a.cmd("4 NOOP") == [b"* 2 FETCH (FLAGS (\\Seen) UID 2)\r\n", b"4 OK NOOP completed\r\n"]
    assert a.cmd("t2 SEARCH RETURN (UPDATE) ALL")[-1] == b"t2 OK SEARCH completed\r\n"  # the tag is free again


def test_qresync_vanished_follows_removefrom(imap: Any) -> None:
    """With QRESYNC the removal is VANISHED (RFC 7162 §3.2.10.2); the REMOVEFROM still comes first."""
    fill(imap, ADDR, PW, 3)
    a, b = session(imap, "QRESYNC"), session(imap)
    assert a.cmd("U1 UID SEARCH RETURN (UPDATE) ALL")[0] == b'* ESEARCH (TAG "U1") UID ALL 1:3\r\n'
    b.cmd("1 STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.cmd("2 EXPUNGE")
    lines = a.cmd("3 NOOP")
    assert lines[-3:] == [b'* ESEARCH (TAG "U1") UID REMOVEFROM (0 2)\r\n', b"* VANISHED 2\r\n",
                          b"3 OK NOOP completed\r\n"]


def test_notify_pushes_updates_between_commands(imap: Any) -> None:
    """Updates ride NOTIFY's change feed (RFC 5465 §3; RFC 5267 §4.3.2: "MAY be sent at any time"): with SELECTED
    events they come unasked, between commands, even for flag changes NOTIFY was not asked to report."""
    fill(imap, ADDR, PW, 2)
    a, b = session(imap), session(imap)
    assert a.cmd("n NOTIFY SET (selected (MessageNew MessageExpunge))")[-1].startswith(b"n OK")
    assert a.cmd("F1 UID SEARCH RETURN (UPDATE COUNT) FLAGGED") == [
        b'* ESEARCH (TAG "F1") UID COUNT 0\r\n', b"F1 OK SEARCH completed\r\n"]
    b.cmd("1 STORE 2 +FLAGS.SILENT (\\Flagged)")
    assert a.line() == b'* ESEARCH (TAG "F1") UID ADDTO (0 2)\r\n'  # no FETCH: FlagChange was not asked for
    raw = message(3)
    b.cmd(b"2 APPEND INBOX (\\Flagged) {%d+}\r\n" % len(raw) + raw)
    assert [a.line(), a.line()] == [b"* 3 EXISTS\r\n", b'* ESEARCH (TAG "F1") UID ADDTO (0 3)\r\n']
    assert a.cmd("3 NOOP") == [b"3 OK NOOP completed\r\n"]


def _expand(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition(":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(a, b + 1) if a <= b else range(a, b - 1, -1))
    return out


def apply(results: list[int], line: bytes) -> list[int]:
    """A client's processing of one ESEARCH update line (RFC 5267 §4.3.2-§4.3.4): items and pairs in order."""
    words = line.decode().split("UID ", 1)[1].rstrip("\r\n")
    out = list(results)
    while words:
        name, rest = words.split(" (", 1)
        body, _, words = rest.partition(")")
        words = words.strip()
        parts = body.split()
        for pos, numbers in zip(parts[::2], parts[1::2]):
            p, nums = int(pos), _expand(numbers)
            if p == 0:  # §4.3.3, §4.3.4: mailbox order, removed wherever they are
                out = sorted(set(out) | set(nums)) if name == "ADDTO" else [u for u in out if u not in nums]
            elif name == "ADDTO":
                out[p - 1:p - 1] = nums
            else:
                assert out[p - 1:p - 1 + len(nums)] == nums
                del out[p - 1:p - 1 + len(nums)]
    return out


def test_many_changes_at_once_keep_the_order(imap: Any) -> None:
    """A STORE over a range changes many results at once (the bulk paths: one sort of the span for SORT, one
    merge for SEARCH); applying the updates as a client does gives what a new SORT / SEARCH answers."""
    subjects(imap, *(f"s{(i * 37) % 101:03d}" for i in range(1, 81)))
    a, b = session(imap), session(imap)
    every7 = ",".join(str(u) for u in range(1, 81, 7))
    assert a.cmd(f"0 STORE {every7} +FLAGS.SILENT (\\Flagged)")[-1][:4] == b"0 OK"

    def sort() -> list[int]:
        return _expand(a.cmd("q UID SORT RETURN () (SUBJECT) UTF-8 FLAGGED")[0].decode().split("ALL ")[1].strip())

    held = _expand(a.cmd("M1 UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 FLAGGED")[0].decode().split("ALL ")[1].strip())
    assert held == sort() and len(held) == 12
    searched = _expand(a.cmd("M2 UID SEARCH RETURN (UPDATE) FLAGGED")[0].decode().split("ALL ")[1].strip())
    b.cmd("1 STORE 2:70 +FLAGS.SILENT (\\Flagged)")
    b.cmd("2 STORE 30:40,75 -FLAGS.SILENT (\\Flagged)")
    lines = a.cmd("3 NOOP")
    for line in lines:
        if line.startswith(b'* ESEARCH (TAG "M1")'):
            held = apply(held, line)
        elif line.startswith(b'* ESEARCH (TAG "M2")'):
            searched = apply(searched, line)
    assert held == sort()
    assert searched == _expand(a.cmd("r UID SEARCH RETURN () FLAGGED")[0].decode().split("ALL ")[1].strip())
