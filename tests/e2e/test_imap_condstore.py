"""CONDSTORE and QRESYNC (RFC 7162) against the real server: byte for byte with the raw client, then with imaplib
and imapclient. The resynchronisation of issue 14: client A caches a mailbox, client B changes flags, expunges
and appends, A comes back with its saved state and is told exactly what changed, also once the record of
expunges was pruned."""

from __future__ import annotations

import imaplib
import re
import time
from typing import Any

import pytest
from imap_support import Raw, fill, message, wire_imap

ADDR = "ann@example.org"
PW = "ann-secret"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server: Any) -> Any:
    wire_imap(monkeypatch)
    server.add_user(ADDR, PW)
    return server


def raw(server: Any, *enable: str) -> Raw:
    r = Raw(server.port("imap"))
    r.login(ADDR, PW)
    if enable:
        r.cmd("e ENABLE " + " ".join(enable))
    return r


def highest(server: Any) -> int:
    """HIGHESTMODSEQ of INBOX as the store has it (every change to a message takes the next MODSEQ)."""
    user = server.run(server.store.get_user(ADDR))
    return int(server.run(server.store.get_mailbox(user.id, "INBOX")).highestmodseq)


def uidvalidity(server: Any) -> int:
    user = server.run(server.store.get_user(ADDR))
    return int(server.run(server.store.get_mailbox(user.id, "INBOX")).uidvalidity)


def untagged(lines: list[bytes], word: bytes) -> list[bytes]:
    return [x for x in lines if re.match(rb"\* (\d+ )?" + word + rb"\b", x)]


# ---- CONDSTORE (RFC 7162 §3.1)

def test_capabilities_and_enable(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    caps = r.cmd("a CAPABILITY")[0].split()
    assert b"CONDSTORE" in caps and b"QRESYNC" in caps
    r.login(ADDR, PW)
    assert r.cmd("b ENABLE CONDSTORE") == [b"* ENABLED CONDSTORE\r\n", b"b OK ENABLE completed\r\n"]
    assert r.cmd("c ENABLE QRESYNC CONDSTORE") == [b"* ENABLED QRESYNC\r\n", b"c OK ENABLE completed\r\n"]


def test_select_condstore_fetch_modseq_and_store(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    h = highest(imap)
    r = raw(imap, "IMAP4rev2")
    lines = r.cmd("a SELECT INBOX (CONDSTORE)")
    assert b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % h in lines  # RFC 7162 §3.1.2.1
    assert r.cmd("b FETCH 1:3 (MODSEQ)") == [b"* 1 FETCH (MODSEQ (%d))\r\n" % (h - 2),
                                             b"* 2 FETCH (MODSEQ (%d))\r\n" % (h - 1),
                                             b"* 3 FETCH (MODSEQ (%d))\r\n" % h, b"b OK FETCH completed\r\n"]
    # §3.1: once enabled, STORE's FETCH carries the new MODSEQ, even for .SILENT (§3.1.3)
    assert r.cmd("c STORE 2 +FLAGS (\\Seen)") == [b"* 2 FETCH (FLAGS (\\Seen) MODSEQ (%d))\r\n" % (h + 1),
                                                  b"c OK STORE completed\r\n"]
    assert r.cmd("d UID STORE 3 +FLAGS.SILENT (\\Flagged)") == [b"* 3 FETCH (UID 3 MODSEQ (%d))\r\n" % (h + 2),
                                                                b"d OK STORE completed\r\n"]
    # an external change is announced with its MODSEQ
    other = raw(imap)
    other.cmd("x SELECT INBOX")
    other.cmd("y STORE 1 +FLAGS.SILENT (\\Answered)")
    assert r.cmd("e NOOP") == [b"* 1 FETCH (FLAGS (\\Answered) UID 1 MODSEQ (%d))\r\n" % (h + 3),
                               b"e OK NOOP completed\r\n"]
    st = r.cmd("f STATUS Archive (HIGHESTMODSEQ MESSAGES)")
    assert st[0] == b'* STATUS "Archive" (HIGHESTMODSEQ 1 MESSAGES 0)\r\n'  # RFC 7162 §3.1.7


def test_enabling_while_selected_announces_highestmodseq(imap: Any) -> None:
    fill(imap, ADDR, PW, 2)
    h = highest(imap)
    r = raw(imap, "IMAP4rev2")
    assert not any(b"HIGHESTMODSEQ" in x for x in r.cmd("a SELECT INBOX"))  # not enabled yet
    # FETCH MODSEQ is a CONDSTORE enabling command (§3.1); the value comes first
    assert r.cmd("b FETCH 2 (FLAGS MODSEQ)") == [b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % h,
                                                 b"* 2 FETCH (FLAGS () MODSEQ (%d))\r\n" % h,
                                                 b"b OK FETCH completed\r\n"]
    # a FETCH that sets \Seen tells the new MODSEQ too
    lines = r.cmd("c FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)])")
    assert lines[0].endswith(b" FLAGS (\\Seen) MODSEQ (%d))\r\n" % (h + 1))


def test_unchangedsince_and_modified(imap: Any) -> None:
    """RFC 7162 §3.1.3, example 10's shape: 5 passes, 7 was changed since, 9 was expunged by another session
    (that expunge not reported yet): both fail and are named in MODIFIED."""
    fill(imap, ADDR, PW, 10)
    m = highest(imap)
    a = raw(imap, "IMAP4rev2")
    a.cmd("s SELECT INBOX")
    b = raw(imap)
    b.cmd("s SELECT INBOX")
    b.cmd("t STORE 7 +FLAGS.SILENT (\\Flagged)")  # m + 1
    b.cmd("u STORE 9 +FLAGS.SILENT (\\Deleted)")  # m + 2
    b.cmd("v EXPUNGE")  # m + 3
    assert a.cmd(f"d105 STORE 7,5,9 (UNCHANGEDSINCE {m}) +FLAGS.SILENT (\\Deleted)") == [
        b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % m,  # an enabling command: what this session has seen (§3.1)
        b"* 5 FETCH (MODSEQ (%d))\r\n" % (m + 4),
        b"* 7 FETCH (FLAGS (\\Flagged) UID 7 MODSEQ (%d))\r\n" % (m + 1),
        # §3.2: the expunge of 9 waits (no EXPUNGE during STORE); the client must not count past it
        b"* OK [HIGHESTMODSEQ %d] Expunges pending\r\n" % (m + 2),
        b"d105 OK [MODIFIED 7,9] STORE completed\r\n"]
    assert a.cmd("n NOOP") == [b"* 9 EXPUNGE\r\n", b"n OK NOOP completed\r\n"]
    # UID STORE names UIDs; UNCHANGEDSINCE 0 always fails (RFC 7162 §3.1.3, example 11)
    assert a.cmd("a102 UID STORE 10 (UNCHANGEDSINCE 0) +FLAGS.SILENT ($MDNSent)") == [
        b"a102 OK [MODIFIED 10] STORE completed\r\n"]
    assert a.cmd(f"a103 UID STORE 8,10 (UNCHANGEDSINCE {m + 4}) FLAGS ($MDNSent)") == [
        b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $MDNSent)\r\n",
        b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $MDNSent \\*)] Flags permitted\r\n",
        b"* 8 FETCH (FLAGS ($MDNSent) UID 8 MODSEQ (%d))\r\n" % (m + 5),
        b"* 9 FETCH (FLAGS ($MDNSent) UID 10 MODSEQ (%d))\r\n" % (m + 6),
        b"a103 OK STORE completed\r\n"]


def test_fetch_changedsince(imap: Any) -> None:
    fill(imap, ADDR, PW, 6)
    m = highest(imap)
    r = raw(imap, "IMAP4rev2")
    r.cmd("s SELECT INBOX (CONDSTORE)")
    r.cmd("t STORE 4,2 +FLAGS.SILENT (\\Seen)")
    # RFC 7162 §3.1.4.1: only messages changed after m, MODSEQ added to the items
    assert r.cmd(f"s100 FETCH 1:* (UID FLAGS) (CHANGEDSINCE {m})") == [
        b"* 2 FETCH (UID 2 FLAGS (\\Seen) MODSEQ (%d))\r\n" % (m + 1),
        b"* 4 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (%d))\r\n" % (m + 2),
        b"s100 OK FETCH completed\r\n"]
    assert r.cmd(f"s101 UID FETCH 3:* (FLAGS) (CHANGEDSINCE {m + 1})") == [
        b"* 4 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (%d))\r\n" % (m + 2), b"s101 OK FETCH completed\r\n"]
    assert r.cmd(f"s102 FETCH 1:3 (FLAGS) (CHANGEDSINCE {m + 2})") == [b"s102 OK FETCH completed\r\n"]
    assert r.cmd("s103 FETCH 7 (FLAGS) (CHANGEDSINCE 1)")[-1].startswith(b"s103 BAD")  # beyond EXISTS
    # VANISHED: UID FETCH only, and only after ENABLE QRESYNC (§3.2.6, §3.2.3)
    assert r.cmd("s104 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1].startswith(b"s104 BAD")
    assert r.cmd("s105 FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1].startswith(b"s105 BAD")


def test_search_modseq(imap: Any) -> None:
    fill(imap, ADDR, PW, 5)
    m = highest(imap)
    r = raw(imap)  # rev1: the untagged SEARCH response of §3.1.6
    r.cmd("s SELECT INBOX (CONDSTORE)")
    r.cmd("t STORE 2 +FLAGS.SILENT (\\Draft)")
    r.cmd("u STORE 5 +FLAGS.SILENT (\\Flagged)")
    assert r.cmd(f"a SEARCH MODSEQ {m + 1}") == [b"* SEARCH 2 5 (MODSEQ %d)\r\n" % (m + 2),
                                                     b"a OK SEARCH completed\r\n"]
    assert r.cmd(f'b SEARCH MODSEQ "/flags/\\\\draft" all {m + 1}') == [
        b"* SEARCH 2 5 (MODSEQ %d)\r\n" % (m + 2), b"b OK SEARCH completed\r\n"]
    assert r.cmd(f"c SEARCH MODSEQ {m + 3}") == [b"* SEARCH\r\n", b"c OK SEARCH completed\r\n"]  # none
    assert r.cmd(f"d UID SEARCH RETURN (MIN) MODSEQ {m + 1}") == [
        b'* ESEARCH (TAG "d") UID MIN 2 MODSEQ %d\r\n' % (m + 1), b"d OK SEARCH completed\r\n"]
    assert r.cmd(f"e SEARCH RETURN (COUNT) OR MODSEQ {m + 1} SEEN") == [
        b'* ESEARCH (TAG "e") COUNT 2 MODSEQ %d\r\n' % (m + 2), b"e OK SEARCH completed\r\n"]
    assert r.cmd("f SEARCH UNSEEN MODSEQ 1") == [b"* SEARCH 1 2 3 4 5 (MODSEQ %d)\r\n" % (m + 2),
                                                 b"f OK SEARCH completed\r\n"]


# ---- QRESYNC (RFC 7162 §3.2)

def _cache(server: Any) -> tuple[int, int, list[int]]:
    """Client A's first visit: its saved (UIDVALIDITY, HIGHESTMODSEQ, UIDs)."""
    a = raw(server, "QRESYNC")
    lines = a.cmd("a SELECT INBOX")
    uv = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines)).group(1))  # type: ignore[union-attr]
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(lines)).group(1))  # type: ignore[union-attr]
    uids = [int(x) for x in re.findall(rb"UID (\d+)", b"".join(a.cmd("b UID FETCH 1:* (FLAGS)")))]
    a.cmd("c LOGOUT")
    return uv, hms, uids


def _client_b_changes(server: Any) -> None:
    """Client B: flags on 2 and 5, expunges 3 and 7, appends one message (UID 11)."""
    b = raw(server)
    b.cmd("a SELECT INBOX")
    b.cmd("b UID STORE 2,5 +FLAGS.SILENT (\\Flagged)")
    b.cmd("c UID STORE 3,7 +FLAGS.SILENT (\\Deleted)")
    b.cmd("d EXPUNGE")
    m = message(11)
    assert b.cmd(b"e APPEND INBOX {%d+}\r\n" % len(m) + m)[-1].startswith(b"e OK [APPENDUID")
    b.cmd("f LOGOUT")


def _resync_lines(lines: list[bytes]) -> list[bytes]:
    return [x for x in lines if x.startswith(b"* VANISHED") or b" FETCH " in x]


def test_qresync_resynchronisation(imap: Any) -> None:
    fill(imap, ADDR, PW, 10)
    uv, hms, uids = _cache(imap)
    assert uids == list(range(1, 11))
    _client_b_changes(imap)
    a = raw(imap, "QRESYNC")
    lines = a.cmd(f"r1 SELECT INBOX (QRESYNC ({uv} {hms} 1:10))")
    # Exactly: the expunged known UIDs, then the changed known messages (RFC 7162 §3.2.5.1); nothing else.
    # UID 11 is not among the known UIDs: it is learnt from EXISTS / UIDNEXT (the client fetches it itself).
    assert _resync_lines(lines) == [
        b"* VANISHED (EARLIER) 3,7\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 1),
        b"* 4 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 2)]
    assert b"* 9 EXISTS\r\n" in lines and b"* OK [UIDNEXT 12] Predicted next UID\r\n" in lines
    assert b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % (hms + 7) in lines
    assert lines[-1] == b"r1 OK [READ-WRITE] SELECT completed\r\n"
    # Without known UIDs the server takes 1:UIDNEXT-1: the new message is fetched too
    lines = a.cmd(f"r2 SELECT INBOX (QRESYNC ({uv} {hms}))")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert _resync_lines(lines) == [
        b"* VANISHED (EARLIER) 3,7\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 1),
        b"* 4 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 2),
        b"* 9 FETCH (UID 11 FLAGS () MODSEQ (%d))\r\n" % (hms + 7)]
    # A client up to date is told nothing; a UIDVALIDITY that differs means a plain SELECT (§3.2.5)
    assert _resync_lines(a.cmd(f"r3 EXAMINE INBOX (QRESYNC ({uv} {hms + 7} 1:11))")) == []
    assert _resync_lines(a.cmd(f"r4 SELECT INBOX (QRESYNC ({uv + 1} {hms} 1:10))")) == []
    # The same with UID FETCH (CHANGEDSINCE n VANISHED): VANISHED (EARLIER) before the FETCHes (§3.2.6)
    assert a.cmd(f"r5 UID FETCH 1:* (FLAGS) (CHANGEDSINCE {hms} VANISHED)") == [
        b"* VANISHED (EARLIER) 3,7\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 1),
        b"* 4 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 2),
        b"* 9 FETCH (UID 11 FLAGS () MODSEQ (%d))\r\n" % (hms + 7),
        b"r5 OK FETCH completed\r\n"]
    # QRESYNC parameters without ENABLE QRESYNC are BAD (§3.2.3)
    plain = raw(imap)
    assert plain.cmd(f"p SELECT INBOX (QRESYNC ({uv} {hms}))")[-1].startswith(b"p BAD")


def test_qresync_after_the_record_was_pruned(imap: Any) -> None:
    """The expunged record older than the retention is gone: the server falls back to "every known UID that
    is not in the mailbox" (RFC 7162 §3.2.5.2), which for a client that names what it knows is exact."""
    fill(imap, ADDR, PW, 10)
    uv, hms, uids = _cache(imap)
    _client_b_changes(imap)
    assert imap.run(imap.store.prune_expunged(time.time() + 1)) == 2
    a = raw(imap, "QRESYNC")
    lines = a.cmd(f"r1 SELECT INBOX (QRESYNC ({uv} {hms} 1:10))")
    assert _resync_lines(lines) == [
        b"* VANISHED (EARLIER) 3,7\r\n",
        b"* 2 FETCH (UID 2 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 1),
        b"* 4 FETCH (UID 5 FLAGS (\\Flagged) MODSEQ (%d))\r\n" % (hms + 2)]
    # seq-match-data: message 4 still being UID 4 means the client knew of every expunge up to 4 (§3.2.5.2)
    lines = a.cmd(f"r2 SELECT INBOX (QRESYNC ({uv} {hms} 1:10 (1,2,4 1,2,4)))")
    assert _resync_lines(lines)[0] == b"* VANISHED (EARLIER) 3,7\r\n"  # message 3 is UID 4 now: no match
    lines = a.cmd(f"r3 SELECT INBOX (QRESYNC ({uv} {hms} 1:10 (1:3 1,2,4)))")
    assert _resync_lines(lines)[0] == b"* VANISHED (EARLIER) 7\r\n"  # (3, 4) matches: nothing up to 4
    # UID FETCH VANISHED falls back the same way, over the UIDs asked for
    assert a.cmd(f"r4 UID FETCH 1:10 (FLAGS) (CHANGEDSINCE {hms} VANISHED)")[0] == (
        b"* VANISHED (EARLIER) 3,7\r\n")
    # a client whose MODSEQ is newer than what was pruned still gets the exact answer
    assert _resync_lines(a.cmd(f"r5 SELECT INBOX (QRESYNC ({uv} {hms + 6}))")) == [
        b"* 9 FETCH (UID 11 FLAGS () MODSEQ (%d))\r\n" % (hms + 7)]


def test_vanished_replaces_expunge_everywhere(imap: Any) -> None:
    fill(imap, ADDR, PW, 8)
    a = raw(imap, "QRESYNC")
    a.cmd("s SELECT INBOX")
    b = raw(imap)
    b.cmd("s SELECT INBOX")
    b.cmd("t STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.cmd("u EXPUNGE")
    nxt = highest(imap)
    # another session's expunge, at NOOP (RFC 7162 §3.2.10.2), with UID and MODSEQ on FETCH (§3.2.4)
    assert a.cmd("n NOOP") == [b"* VANISHED 2\r\n", b"n OK NOOP completed\r\n"]
    # this session's EXPUNGE and UID EXPUNGE: VANISHED, and HIGHESTMODSEQ in the tagged OK (§3.2.7, §3.2.9)
    a.cmd("v STORE 1,3 +FLAGS.SILENT (\\Deleted)")
    assert a.cmd("w EXPUNGE") == [b"* VANISHED 1,4\r\n", b"w OK [HIGHESTMODSEQ %d] EXPUNGE completed\r\n" % (nxt + 4)]
    a.cmd("x UID STORE 5 +FLAGS.SILENT (\\Deleted)")
    assert a.cmd("y UID EXPUNGE 5:6") == [b"* VANISHED 5\r\n",
                                          b"y OK [HIGHESTMODSEQ %d] UID EXPUNGE completed\r\n" % (nxt + 6)]
    # MOVE (RFC 6851 §4.4)
    lines = a.cmd("z UID MOVE 6 Archive")
    assert lines[0].startswith(b"* OK [COPYUID ") and lines[1:] == [
        b"* VANISHED 6\r\n", b"z OK [HIGHESTMODSEQ %d] MOVE completed\r\n" % (nxt + 7)]
    # IDLE pushes VANISHED as it happens
    a.send(b"i IDLE\r\n")
    assert a.line() == b"+ idling\r\n"
    b.cmd("k UID STORE 7 +FLAGS.SILENT (\\Deleted)")
    assert a.line() == b"* 2 FETCH (FLAGS (\\Deleted \\Recent) UID 7 MODSEQ (%d))\r\n" % (nxt + 8)
    b.cmd("l EXPUNGE")
    assert a.line() == b"* VANISHED 7\r\n"
    a.send(b"DONE\r\n")
    assert a.line() == b"i OK IDLE terminated\r\n"
    # CLOSE expunges silently, with no HIGHESTMODSEQ (§3.2.8)
    a.cmd("c1 STORE 1 +FLAGS.SILENT (\\Deleted)")
    assert a.cmd("c2 CLOSE") == [b"c2 OK CLOSE completed\r\n"]


# ---- real clients

def test_imaplib_qresync_resync(imap: Any) -> None:
    fill(imap, ADDR, PW, 10)
    uv, hms, _ = _cache(imap)
    _client_b_changes(imap)
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"), timeout=10)
    c.login(ADDR, PW)
    assert c._simple_command("ENABLE", "QRESYNC")[0] == "OK"
    typ, _ = c.select(f"INBOX (QRESYNC ({uv} {hms} 1:10))")
    assert typ == "OK"
    assert c.untagged_responses["VANISHED"] == [b"(EARLIER) 3,7"]
    assert c.untagged_responses["FETCH"] == [b"2 (UID 2 FLAGS (\\Flagged) MODSEQ (%d))" % (hms + 1),
                                             b"4 (UID 5 FLAGS (\\Flagged) MODSEQ (%d))" % (hms + 2)]
    assert c.untagged_responses["HIGHESTMODSEQ"] == [b"%d" % (hms + 7)]
    c.logout()


def test_imapclient_condstore(imap: Any) -> None:
    imapclient = pytest.importorskip("imapclient")
    fill(imap, ADDR, PW, 4)
    m = highest(imap)
    c = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    c.login(ADDR, PW)
    assert c.enable("CONDSTORE") == [b"CONDSTORE"]
    info = c.select_folder("INBOX")
    assert info[b"HIGHESTMODSEQ"] == m
    c.add_flags([3], [b"$Done"])
    got = c.fetch([1, 2, 3, 4], ["FLAGS"], modifiers=[f"CHANGEDSINCE {m}"])
    assert got == {3: {b"FLAGS": (b"\\Recent", b"$Done"), b"MODSEQ": (m + 1,), b"SEQ": 3}}
    assert c.search(["MODSEQ", str(m + 1)]) == [3]
    assert c.folder_status("INBOX", [b"HIGHESTMODSEQ"]) == {b"HIGHESTMODSEQ": m + 1}
    c.logout()


def test_server_prunes_past_the_configured_retention(imap: Any) -> None:
    """The running server forgets expunged UIDs older than imap.expunged_retention_days (30 by default)."""
    fill(imap, ADDR, PW, 3)
    _, hms, _ = _cache(imap)
    b = raw(imap)
    b.cmd("a SELECT INBOX")
    b.cmd("b STORE 2 +FLAGS.SILENT (\\Deleted)")
    b.cmd("c EXPUNGE")
    retention = imap.postroom.retention
    assert retention is not None and retention.days == imap.config.imap.expunged_retention_days == 30
    retention.clock = lambda: time.time() + 29 * 86400
    assert imap.run(retention.run_once()) == 0
    retention.clock = lambda: time.time() + 31 * 86400
    assert imap.run(retention.run_once()) == 1
    user = imap.run(imap.store.get_user(ADDR))
    box = imap.run(imap.store.get_mailbox(user.id, "INBOX"))
    assert not imap.run(imap.store.vanished(box.id, hms)).complete
