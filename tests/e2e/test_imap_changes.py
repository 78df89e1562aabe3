"""Two sessions on one mailbox see each other's changes (RFC 9051 §7.5.1 rules): EXISTS, EXPUNGE, FETCH FLAGS,
keywords announced before use, a feed overflow resynchronised, \\Recent given to one session. Checked byte for
byte with the raw client, then with imapclient and aioimaplib. IDLE: test_imap_idle.py; the NOTIFY command
(RFC 5465): test_imap_notify_command.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ann_support import ADDR, PW, session
from imap_support import Raw, fill, message, wire_imap


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


@pytest.fixture
def imap(monkeypatch: pytest.MonkeyPatch, server_overrides: dict[str, Any], server: Any) -> Any:
    return server


@pytest.fixture(autouse=True)
def _wired(monkeypatch: pytest.MonkeyPatch) -> None:
    wire_imap(monkeypatch)


def test_changes_reach_the_other_session_at_its_next_command(imap: Any) -> None:
    fill(imap, ADDR, PW, 3)
    a, b = session(imap, rev2=True), session(imap)
    assert b.cmd("1 STORE 2 +FLAGS (\\Flagged)")[-1].startswith(b"1 OK")
    assert a.cmd("2 NOOP") == [b"* 2 FETCH (FLAGS (\\Flagged) UID 2)\r\n", b"2 OK NOOP completed\r\n"]
    b.cmd(b"3 APPEND INBOX {%d+}\r\n" % len(message(4)) + message(4))
    assert a.cmd("4 NOOP") == [b"* 4 EXISTS\r\n", b"4 OK NOOP completed\r\n"]
    b.cmd("5 STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd("6 EXPUNGE")
    # RFC 9051 §7.5.1: no EXPUNGE during FETCH (sequence numbers must stay put); the flag change may come.
    lines = a.cmd("7 FETCH 1:* (UID)")
    assert b"* 1 EXPUNGE\r\n" not in lines
    assert [x for x in lines if b"UID" in x and b"FLAGS" not in x] == [
        b"* 2 FETCH (UID 2)\r\n", b"* 3 FETCH (UID 3)\r\n", b"* 4 FETCH (UID 4)\r\n"]
    assert lines[-1].startswith(b"7 OK [EXPUNGEISSUED]")
    assert a.cmd("8 SEARCH ALL")[0] == b'* ESEARCH (TAG "8") ALL 2:4\r\n'  # message 1 still counted, not matched
    assert a.cmd("9 NOOP") == [b"* 1 EXPUNGE\r\n", b"9 OK NOOP completed\r\n"]
    assert a.cmd("10 FETCH 1 (UID)")[0] == b"* 1 FETCH (UID 2)\r\n"
    # UID FETCH may report the expunge (RFC 9051 §7.5.1)
    b.cmd("11 STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd("12 EXPUNGE")
    lines = a.cmd("13 UID FETCH 1:* (FLAGS)")
    assert lines[0] == b"* 1 EXPUNGE\r\n" or b"* 1 EXPUNGE\r\n" in lines


def test_own_changes_are_not_echoed(imap: Any) -> None:
    fill(imap, ADDR, PW, 2)
    a = session(imap)
    assert a.cmd("1 STORE 1 +FLAGS.SILENT (\\Seen)") == [b"1 OK STORE completed\r\n"]
    assert a.cmd("2 NOOP") == [b"2 OK NOOP completed\r\n"]
    a.cmd("3 FETCH 2 BODY[]")
    assert a.cmd("4 NOOP") == [b"4 OK NOOP completed\r\n"]


SYSTEM = b"\\Seen \\Answered \\Flagged \\Deleted \\Draft"


def announced(keywords: bytes) -> list[bytes]:
    """The untagged responses that announce a mailbox's keyword set (RFC 9051 §7.3.5 FLAGS, §7.1 PERMANENTFLAGS
    with \\* since new keywords may be created)."""
    return [b"* FLAGS (" + SYSTEM + b" " + keywords + b")\r\n",
            b"* OK [PERMANENTFLAGS (" + SYSTEM + b" " + keywords + b" \\*)] Flags permitted\r\n"]


def test_new_keywords_are_announced_before_use(imap: Any) -> None:
    """Issue 15 item 5. RFC 9051 §7.3.5: "The update from the FLAGS response MUST be recorded by the client";
    §2.3.2: keywords are defined per mailbox. A keyword the mailbox has not had reaches every session that has it
    selected as FLAGS and PERMANENTFLAGS, before any FETCH that carries it: STORE (the session that ran it
    too), APPEND, COPY and MOVE, and while idling."""
    fill(imap, ADDR, PW, 2)
    a, b = session(imap, rev2=True), session(imap, rev2=True)
    # STORE: the session that brought the keyword hears of it before its own FETCH
    assert a.cmd("1 STORE 1 +FLAGS ($newkw)") == [
        *announced(b"$newkw"), b"* 1 FETCH (FLAGS ($newkw))\r\n", b"1 OK STORE completed\r\n"]
    # the other session: before the FETCH it is told (even one it asked for itself)
    assert b.cmd("2 FETCH 1 FLAGS") == [
        *announced(b"$newkw"), b"* 1 FETCH (FLAGS ($newkw))\r\n",
        b"* 1 FETCH (FLAGS ($newkw) UID 1)\r\n",  # the change itself, reported as before (RFC 9051 §7.5.1)
        b"2 OK FETCH completed\r\n"]
    assert b.cmd("3 NOOP") == [b"3 OK NOOP completed\r\n"]  # told once
    # a keyword the mailbox already has is not announced again (in any case)
    assert a.cmd("4 STORE 2 +FLAGS ($NEWKW)") == [b"* 2 FETCH (FLAGS ($NEWKW))\r\n", b"4 OK STORE completed\r\n"]
    assert b.cmd("5 NOOP") == [b"* 2 FETCH (FLAGS ($NEWKW) UID 2)\r\n", b"5 OK NOOP completed\r\n"]
    # APPEND with a new keyword: FLAGS before EXISTS, in both sessions
    m3 = message(3)
    lines = a.cmd(b"6 APPEND INBOX ($appended) {%d+}\r\n" % len(m3) + m3)
    assert lines[:3] == [*announced(b"$appended $newkw"), b"* 3 EXISTS\r\n"]
    assert b.cmd("7 NOOP") == [*announced(b"$appended $newkw"), b"* 3 EXISTS\r\n", b"7 OK NOOP completed\r\n"]
    # COPY and MOVE from another mailbox bring theirs
    c = Raw(imap.port("imap"))
    c.login(ADDR, PW)
    c.cmd("c1 ENABLE IMAP4rev2")
    c.cmd("c2 CREATE Other")
    c.cmd(b"c3 APPEND Other ($copied) {%d+}\r\n" % len(m3) + m3)
    c.cmd(b"c4 APPEND Other ($moved) {%d+}\r\n" % len(m3) + m3)
    c.cmd("c5 SELECT Other")
    c.cmd("c6 COPY 1 INBOX")
    assert b.cmd("8 NOOP") == [*announced(b"$appended $copied $newkw"), b"* 4 EXISTS\r\n",
                               b"8 OK NOOP completed\r\n"]
    # IDLE: pushed at once, FLAGS first
    b.send(b"i IDLE\r\n")
    assert b.line() == b"+ idling\r\n"
    c.cmd("c7 MOVE 2 INBOX")
    assert [b.line() for _ in range(3)] == [*announced(b"$appended $copied $moved $newkw"), b"* 5 EXISTS\r\n"]
    a.cmd("9 STORE 1 +FLAGS.SILENT (Idle_Kw)")
    assert [b.line() for _ in range(3)] == [*announced(b"$appended $copied $moved $newkw Idle_Kw"),
                                            b"* 1 FETCH (FLAGS ($newkw Idle_Kw) UID 1)\r\n"]
    b.send(b"DONE\r\n")
    assert b.line() == b"i OK IDLE terminated\r\n"
    # a new SELECT lists every keyword the mailbox has had (Dovecot keeps them too)
    lines = b.cmd("10 SELECT INBOX")
    assert lines[0] == b"* OK [CLOSED] Previous mailbox closed\r\n"
    assert lines[1] == announced(b"$appended $copied $moved $newkw Idle_Kw")[0]


def test_keywords_announced_to_imapclient(imap: Any) -> None:
    """The same with a real client library: imapclient records the FLAGS update from a NOOP."""
    imapclient = pytest.importorskip("imapclient")
    fill(imap, ADDR, PW, 1)
    watcher = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    writer = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    try:
        for c in (watcher, writer):
            c.login(ADDR, PW)
            c.select_folder("INBOX")
        writer.add_flags([1], [b"$Forwarded"])
        _, responses = watcher.noop()
        flags = [r for r in responses if r[0] == b"FLAGS"]
        fetch = [i for i, r in enumerate(responses) if len(r) > 1 and r[1] == b"FETCH"]
        assert flags and b"$Forwarded" in flags[0][1] and fetch and responses.index(flags[0]) < fetch[0]
    finally:
        for c in (watcher, writer):
            c.logout()


def test_imapclient_flow(imap: Any) -> None:
    imapclient = pytest.importorskip("imapclient")
    fill(imap, ADDR, PW, 4)
    c = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    c.login(ADDR, PW)
    assert b"IDLE" in c.capabilities() and c.has_capability("MOVE")
    info = c.select_folder("INBOX")
    assert info[b"EXISTS"] == 4 and info[b"UIDNEXT"] == 5
    data = c.fetch([1, 2], ["FLAGS", "ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[TEXT]"])
    assert data[1][b"ENVELOPE"].subject == b"note 1"
    assert data[2][b"BODY[TEXT]"] == b"body number 2\r\n"
    assert not data[1][b"BODYSTRUCTURE"].is_multipart
    assert c.search(["SUBJECT", "note 3"]) == [3]
    c.add_flags([1], [imapclient.SEEN, b"$Label"])
    assert set(c.get_flags([1])[1]) >= {imapclient.SEEN, b"$Label"}
    c.create_folder("Archive/2024")
    assert c.folder_exists("Archive/2024")
    c.copy([2], "Archive/2024")
    c.move([3], "Archive/2024")
    assert c.folder_status("Archive/2024", ["MESSAGES"])[b"MESSAGES"] == 2
    folders = {f[2] for f in c.list_folders()}
    assert {"INBOX", "Archive", "Archive/2024", "Sent"} <= folders
    assert {f[2]: f[0] for f in c.list_folders()}["Sent"] == (b"\\HasNoChildren", b"\\Sent")
    c.delete_messages([4])
    c.expunge()
    assert c.search("ALL") == [1, 2]
    c.unselect_folder()
    ident = c.id_({"name": "imapclient"})
    assert ident[0][:2] == (b"name", b"Postroom")
    assert c.namespace().personal == (("", "/"),)
    uid = c.append("Drafts", message(8), flags=[imapclient.DRAFT])
    assert b"APPENDUID" in uid
    # IDLE, with a second client's APPEND
    c.select_folder("INBOX")
    c.idle()
    other = imapclient.IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False, timeout=10)
    other.login(ADDR, PW)
    other.append("INBOX", message(9))
    responses = c.idle_check(timeout=10)
    c.idle_done()
    assert (3, b"EXISTS") in responses
    other.logout()
    c.logout()


def test_aioimaplib_flow(imap: Any) -> None:
    aioimaplib = pytest.importorskip("aioimaplib")
    fill(imap, ADDR, PW, 2)
    port = imap.port("imap")

    async def main() -> None:
        c = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=10)
        await c.wait_hello_from_server()
        assert (await c.login(ADDR, PW)).result == "OK"
        assert (await c.select("INBOX")).result == "OK"
        res = await c.fetch("1:2", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert res.result == "OK" and any(b"Subject: note 2" in bytes(x) for x in res.lines
                                          if isinstance(x, (bytes, bytearray)))
        res = await c.uid_search("ALL")
        assert res.result == "OK" and res.lines[0] == b"1 2"
        assert (await c.uid("store", "1", "+FLAGS", "(\\Seen)")).result == "OK"
        assert (await c.append(message(3), mailbox="INBOX")).result == "OK"
        idle = await c.idle_start(timeout=10)
        other = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=10)
        await other.wait_hello_from_server()
        await other.login(ADDR, PW)
        await other.append(message(4), mailbox="INBOX")
        pushed = await c.wait_server_push(timeout=10)
        c.idle_done()
        await asyncio.wait_for(idle, 10)
        assert any(b"EXISTS" in bytes(x) for x in pushed)
        await other.logout()
        assert (await c.logout()).result == "OK"

    asyncio.run(main())


def test_change_feed_overflow_resyncs_without_echoing_own_changes(imap: Any) -> None:
    fill(imap, ADDR, PW, 12)
    imap.store.hub.maxsize = 5  # every session below falls behind after 5 changes
    a, b = session(imap, rev2=True), session(imap, rev2=True)
    assert a.cmd("1 STORE 1:10 +FLAGS.SILENT (\\Seen)") == [b"1 OK STORE completed\r\n"]
    assert a.cmd("2 NOOP") == [b"2 OK NOOP completed\r\n"]
    lines = b.cmd("3 NOOP")  # b missed a's ten changes: it re-reads the mailbox and reports them
    assert lines[:-1] == [b"* %d FETCH (FLAGS (\\Seen) UID %d)\r\n" % (i, i) for i in range(1, 11)]
    b.cmd("4 STORE 12 +FLAGS.SILENT (\\Deleted)")
    b.cmd("5 EXPUNGE")
    assert a.cmd("6 NOOP") == [b"* 12 EXPUNGE\r\n", b"6 OK NOOP completed\r\n"]  # its flag change is moot


def test_recent_goes_to_one_session_and_survives_a_restart(imap: Any) -> None:
    """RFC 3501 §2.3.2: \\Recent belongs to the one session first told of a message; the claim is kept in the
    store, so a restarted server does not hand old messages out as recent again."""
    from postroom.app import Postroom

    fill(imap, ADDR, PW, 3)
    ex = Raw(imap.port("imap"))
    ex.login(ADDR, PW)
    lines = ex.cmd("x EXAMINE INBOX")  # shows what nobody claimed, claims nothing (RFC 3501 §6.3.2)
    assert b"* 3 RECENT\r\n" in lines
    a = Raw(imap.port("imap"))
    a.login(ADDR, PW)
    assert b"* 3 RECENT\r\n" in a.cmd("s SELECT INBOX")
    b = Raw(imap.port("imap"))
    b.login(ADDR, PW)
    assert b"* 0 RECENT\r\n" in b.cmd("s SELECT INBOX")
    assert a.cmd("1 SEARCH RECENT")[0] == b"* SEARCH 1 2 3\r\n" and b.cmd("1 SEARCH RECENT")[0] == b"* SEARCH\r\n"
    c = Raw(imap.port("imap"))
    c.login(ADDR, PW)
    c.cmd("e ENABLE IMAP4rev2")
    assert c.cmd("s SELECT INBOX")[-1].startswith(b"s OK")  # rev2: no \Recent shown, none claimed
    assert c.cmd(b"2 APPEND INBOX {%d+}\r\n" % len(message(4)) + message(4))[-1].startswith(b"2 OK")
    assert b.cmd("3 NOOP") == [b"* 4 EXISTS\r\n", b"* 1 RECENT\r\n", b"3 OK NOOP completed\r\n"]  # told first
    assert a.cmd("4 NOOP")[:2] == [b"* 4 EXISTS\r\n", b"* 3 RECENT\r\n"]
    assert b.cmd("5 FETCH 4 FLAGS")[0] == b"* 4 FETCH (FLAGS (\\Recent))\r\n"
    assert a.cmd("6 FETCH 4 FLAGS")[0] == b"* 4 FETCH (FLAGS ())\r\n"
    assert c.cmd("7 FETCH 4 FLAGS")[0] == b"* 4 FETCH (FLAGS ())\r\n"
    assert ex.cmd("8 NOOP")[0] == b"* 4 EXISTS\r\n"
    assert ex.cmd("9 FETCH 1:4 FLAGS")[:-1] == [b"* %d FETCH (FLAGS (\\Recent))\r\n" % n for n in (1, 2, 3)] + [
        b"* 4 FETCH (FLAGS ())\r\n"]  # EXAMINE's view was taken at its start; arrivals it does not claim
    for r in (a, b, c, ex):
        r.cmd("z LOGOUT")
    imap.run(imap.postroom.stop())  # restart: a new server process over the same data
    imap.postroom = Postroom(imap.config)
    imap.run(imap.postroom.start())
    d = Raw(imap.port("imap"))
    d.login(ADDR, PW)
    assert b"* 0 RECENT\r\n" in d.cmd("s SELECT INBOX")
    status = d.cmd("t STATUS INBOX (RECENT)")[0]
    assert status == b'* STATUS "INBOX" (RECENT 0)\r\n'
    fill(imap, ADDR, PW, 1)  # a delivery while nobody is looking: recent for the next session to select
    assert b"* 1 RECENT\r\n" in d.cmd("u SELECT INBOX")
    assert d.cmd("v SEARCH RECENT")[0] == b"* SEARCH 5\r\n"
