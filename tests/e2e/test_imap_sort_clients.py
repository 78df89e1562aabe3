"""SORT, THREAD, ESORT and OBJECTID end to end: imaplib and imapclient against a real server on loopback, errors
answered as the RFCs say, and messages stored by an older version (no keys, no thread id) answered at once."""

from __future__ import annotations

import imaplib
import re
from typing import Any

import pytest
from imap_support import Raw, wire_imap
from imapclient import IMAPClient

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest

ADDR, PW = "sorter@example.org", "sort-password"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"allow_plaintext": True}}


def mail(subject: str, date: str, msgid: str, refs: str = "", frm: str = "ann@example.org") -> bytes:
    extra = f"References: {refs}\r\n" if refs else ""
    return (f"From: {frm}\r\nTo: bob@example.org\r\nSubject: {subject}\r\nDate: {date}\r\n"
            f"Message-ID: <{msgid}>\r\n{extra}\r\nbody of {msgid}\r\n").encode()


MAILS = [
    mail("Plans", "Mon, 1 Jan 2024 10:00:00 +0000", "p1@x", frm="zed@example.org"),
    mail("Re: Plans", "Mon, 1 Jan 2024 11:00:00 +0000", "p2@x", "<p1@x>", frm="amy@example.org"),
    mail("Another", "Sun, 31 Dec 2023 09:00:00 +0000", "a1@x", frm="max@example.org"),
    mail("Re: Re: Plans", "Mon, 1 Jan 2024 12:00:00 +0000", "p3@x", "<p1@x> <p2@x>", frm="bea@example.org"),
]


@pytest.fixture
def imap(server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    wire_imap(monkeypatch)
    user = server.add_user(ADDR, PW)
    box = server.run(server.store.get_mailbox(user.id, "INBOX"))
    server.run(server.store.append_many(box.id, [AppendRequest(m, meta=compute_meta(m).to_bytes()) for m in MAILS]))
    return server


def test_imaplib_sort_and_thread(imap: Any) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap.port("imap"))
    c.login(ADDR, PW)
    c.select("INBOX")
    assert c.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"3 1 2 4"])
    assert c.sort("(REVERSE DATE)", "UTF-8", "ALL") == ("OK", [b"4 2 1 3"])
    assert c.sort("(FROM)", "UTF-8", "SUBJECT", "plans") == ("OK", [b"2 4 1"])  # amy, bea, zed
    assert c.uid("SORT", "(SUBJECT DATE)", "UTF-8", "ALL") == ("OK", [b"3 1 2 4"])
    assert c.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(1 2 4)"])
    assert c.thread("ORDEREDSUBJECT", "UTF-8", "ALL") == ("OK", [b"(3)(1 (2)(4))"])
    c.logout()


def test_imapclient_sort_thread_and_object_ids(imap: Any) -> None:
    with IMAPClient("127.0.0.1", port=imap.port("imap"), ssl=False) as c:
        c.login(ADDR, PW)
        for cap in (b"SORT", b"SORT=DISPLAY", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT", b"ESORT", b"OBJECTID"):
            assert c.has_capability(cap.decode())
        c.select_folder("INBOX")
        assert c.sort(["REVERSE DATE"]) == [4, 2, 1, 3]
        assert c.sort(["DISPLAYFROM"], ["SINCE", "1-Jan-2000"]) == [2, 4, 3, 1]
        assert c.thread("REFERENCES") == ((3,), (1, 2, 4))
        ids = c.fetch([1, 2, 3, 4], ["EMAILID", "THREADID"])
        threads = {n: ids[n][b"THREADID"] for n in ids}
        assert threads[1] == threads[2] == threads[4] != threads[3]
        assert len({ids[n][b"EMAILID"] for n in ids}) == 4
        for value in (*threads.values(), *(ids[n][b"EMAILID"] for n in ids)):  # imapclient parses "(id)" to a tuple
            assert isinstance(value, tuple) and re.fullmatch(rb"[MT][0-9a-f]{24}", value[0])


def test_object_ids_are_stable_and_searchable(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    status = r.cmd("a STATUS INBOX (MAILBOXID MESSAGES)")[0]
    m = re.match(rb"\* STATUS \"INBOX\" \(MAILBOXID \((F[0-9a-f]{24})\) MESSAGES 4\)", status)
    assert m, status
    created = r.cmd("b CREATE Work")[-1]
    work_id = re.match(rb"b OK \[MAILBOXID \((F[0-9a-f]{24})\)\]", created)
    assert work_id, created
    assert r.cmd("c RENAME Work Play")[-1].startswith(b"c OK")
    assert work_id.group(1) in r.cmd("d STATUS Play (MAILBOXID)")[0]  # RFC 8474 §4: RENAME keeps it
    select = r.cmd("e SELECT INBOX")
    assert b"* OK [MAILBOXID (%s)] Ok\r\n" % m.group(1) in select
    fetched = r.cmd("f FETCH 1:4 (EMAILID THREADID)")
    ids = [re.search(rb"EMAILID \((M\w+)\) THREADID \((T\w+)\)", ln) for ln in fetched[:-1]]
    assert all(ids)
    email1, thread1 = ids[0].group(1), ids[0].group(2)  # type: ignore[union-attr]
    assert r.cmd(f"g SEARCH EMAILID {email1.decode()}")[0] == b"* SEARCH 1\r\n"
    assert r.cmd(f"h SEARCH THREADID {thread1.decode()}")[0] == b"* SEARCH 1 2 4\r\n"
    assert r.cmd("i SEARCH THREADID T0000")[0] == b"* SEARCH\r\n"
    # RFC 8474 §5.1, §5.2: a copy keeps both identifiers.
    assert r.cmd("j COPY 1 Play")[-1].startswith(b"j OK")
    assert r.cmd("k SELECT Play")[-1].startswith(b"k OK")
    assert r.cmd("l FETCH 1 (EMAILID THREADID)")[0] == b"* 1 FETCH (EMAILID (%s) THREADID (%s))\r\n" % (
        email1, thread1)


def test_esort_and_partial(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    r.cmd("s SELECT INBOX")
    assert r.cmd("a SORT RETURN (MIN MAX COUNT ALL) (REVERSE DATE) UTF-8 ALL")[0] == (
        b'* ESEARCH (TAG "a") MIN 4 MAX 3 ALL 4,2,1,3 COUNT 4\r\n')  # RFC 5267 §3.1: in sort order
    assert r.cmd("b UID SORT RETURN (PARTIAL 2:3) (DATE) UTF-8 ALL")[0] == (
        b'* ESEARCH (TAG "b") UID PARTIAL (2:3 1:2)\r\n')
    assert r.cmd("c SEARCH RETURN (PARTIAL 3:9) ALL")[0] == b'* ESEARCH (TAG "c") PARTIAL (3:9 3:4)\r\n'
    assert r.cmd("d SORT RETURN () (DATE) UTF-8 NOT ALL")[0] == b'* ESEARCH (TAG "d")\r\n'


def test_errors(imap: Any) -> None:
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    assert r.cmd("a SORT (DATE) UTF-8 ALL")[-1].startswith(b"a BAD")  # not in the authenticated state
    r.cmd("s SELECT INBOX")
    assert r.cmd("b SORT (DATE) KOI8-R ALL")[-1].startswith(b"b NO [BADCHARSET (UTF-8 US-ASCII)]")
    assert r.cmd("c THREAD REFS UTF-8 ALL")[-1].startswith(b"c BAD")  # not advertised
    assert r.cmd("d SORT (NOSUCHKEY) UTF-8 ALL")[-1].startswith(b"d BAD")
    assert r.cmd("e SORT (DATE) UTF-8 " + "(" * 200 + "ALL" + ")" * 200)[-1].startswith(b"e BAD")
    assert r.cmd("f SORT (DATE) UTF-8 " + " ".join(["SEEN"] * 1001))[-1].startswith(b"f NO [LIMIT]")
    assert r.cmd("g NOOP")[-1].startswith(b"g OK")  # the session goes on


def test_messages_of_an_older_store_are_sorted_threaded_and_get_a_thread_id(imap: Any) -> None:
    """Bodies stored without metadata (as imports and older versions left them): keys and thread ids come from
    the metadata computed on first use, and the store keeps them."""
    user = imap.run(imap.store.get_user(ADDR))
    box = imap.run(imap.store.create_mailbox(user.id, "Old"))
    imap.run(imap.store.append_many(box.id, [AppendRequest(m + b"old\r\n") for m in MAILS]))  # new bodies
    assert {r.known for r in imap.run(imap.store.list_sort_rows(box.id))} == {0}
    r = Raw(imap.port("imap"))
    r.login(ADDR, PW)
    r.cmd("s SELECT Old")
    assert r.cmd("a FETCH 1 THREADID")[0].startswith(b"* 1 FETCH (THREADID (T")
    assert r.cmd("b THREAD REFERENCES UTF-8 ALL")[0] == b"* THREAD (3)(1 2 4)\r\n"
    assert r.cmd("c SORT (DATE) UTF-8 ALL")[0] == b"* SORT 3 1 2 4\r\n"
    rows = imap.run(imap.store.list_sort_rows(box.id))
    assert all(row.known and row.thread_id for row in rows)


def test_kept_answers_follow_other_sessions_changes(imap: Any) -> None:
    """Answers are kept (imap/ordercache.py) until the mailbox's messages change: another session's flag change
    keeps them (served again, nothing new kept), its expunge and append do not (RFC 5256 §3 answers anew)."""
    from postroom.imap.ordercache import cache_of

    a = imaplib.IMAP4("127.0.0.1", imap.port("imap"))
    a.login(ADDR, PW)
    a.select("INBOX")
    b = imaplib.IMAP4("127.0.0.1", imap.port("imap"))
    b.login(ADDR, PW)
    b.select("INBOX")
    kept = cache_of(imap.store)
    assert a.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"3 1 2 4"])
    assert a.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(1 2 4)"])
    held = len(kept)
    assert held >= 2
    assert b.store("1:4", "+FLAGS", "(\\Seen)")[0] == "OK"  # flags: no answer depends on them
    a.noop()
    assert a.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"3 1 2 4"])
    assert a.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(1 2 4)"])
    assert len(kept) == held  # served from what was kept
    assert b.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert b.expunge()[0] == "OK"  # "Plans" (UID 1) goes: its replies now hang under a dummy
    reply = mail("Re: Another", "Tue, 2 Jan 2024 08:00:00 +0000", "a2@x", "<a1@x>")
    assert b.append("INBOX", None, None, reply)[0] == "OK"  # UID 5
    a.noop()  # A learns of both: UIDs 2 3 4 5 are sequence numbers 1 2 3 4
    assert a.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"2 1 3 4"])
    assert a.uid("SORT", "(DATE)", "UTF-8", "ALL") == ("OK", [b"3 2 4 5"])
    # RFC 5256 §3 REFERENCES: the dummy for <p1@x> has one child (Re: Plans), which is promoted (step 4);
    # "Another" with its reply first by date (step 5).
    assert a.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(2 4)(1 3)"])
    assert a.thread("REFERENCES", "UTF-8", "SUBJECT", "plans") == ("OK", [b"(1 3)"])
    a.logout()
    b.logout()


def test_a_sort_after_arrivals_places_them_into_the_kept_order(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """sort.py invariant 5: after another session's appends, SORT places the new messages into the order kept
    for the criteria (no sort of the mailbox by the store), with the answer RFC 5256 §3 gives; a search that
    matches other old messages, or an expunge, sorts again."""
    sorts: list[object] = []
    real = imap.store.sort_uids

    async def counted(*args: Any, **kw: Any) -> Any:
        sorts.append(args[1])
        return await real(*args, **kw)

    monkeypatch.setattr(imap.store, "sort_uids", counted)
    a = imaplib.IMAP4("127.0.0.1", imap.port("imap"))
    a.login(ADDR, PW)
    a.select("INBOX")
    b = imaplib.IMAP4("127.0.0.1", imap.port("imap"))
    b.login(ADDR, PW)
    b.select("INBOX")
    assert a.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"3 1 2 4"])
    assert a.sort("(REVERSE FROM)", "UTF-8", "ALL") == ("OK", [b"1 3 4 2"])  # zed max bea amy
    assert a.sort("(FROM)", "UTF-8", "SUBJECT", "plans") == ("OK", [b"2 4 1"])
    assert len(sorts) == 3
    for m in (mail("Lunch", "Mon, 1 Jan 2024 10:30:00 +0000", "l1@x", frm="cat@example.org"),  # UID 5
              mail("Re: Plans", "Sun, 31 Dec 2023 08:00:00 +0000", "p4@x", "<p1@x>", frm="abe@example.org")):
        assert b.append("INBOX", None, None, m)[0] == "OK"
    a.noop()
    assert a.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"6 3 1 5 2 4"])  # RFC 5256 §2.2: the Date fields
    assert a.uid("SORT", "(DATE)", "UTF-8", "ALL") == ("OK", [b"6 3 1 5 2 4"])
    assert a.sort("(REVERSE FROM)", "UTF-8", "ALL") == ("OK", [b"1 3 5 4 2 6"])  # zed max cat bea amy abe
    assert a.sort("(FROM)", "UTF-8", "SUBJECT", "plans") == ("OK", [b"6 2 4 1"])  # abe amy bea zed
    assert len(sorts) == 3  # every answer placed the arrivals into a kept order
    assert b.store("3", "+FLAGS", "(\\Seen)")[0] == "OK"
    a.noop()
    assert a.sort("(DATE)", "UTF-8", "UNSEEN") == ("OK", [b"6 1 5 2 4"])  # other old messages: sorted again
    assert len(sorts) == 4
    assert b.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
    assert b.expunge()[0] == "OK"
    assert b.append("INBOX", None, None, mail("Early", "Sat, 30 Dec 2023 08:00:00 +0000", "e1@x"))[0] == "OK"
    a.noop()  # UIDs 2 3 4 5 6 7 are now 1 2 3 4 5 6
    assert a.sort("(DATE)", "UTF-8", "ALL") == ("OK", [b"6 5 2 4 1 3"])  # a removal: sorted again
    assert len(sorts) == 5
    a.logout()
    b.logout()


def test_a_thread_after_arrivals_places_them_into_the_kept_answer(imap: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """thread.py invariant 6: after another session's appends, THREAD places them into the answer kept for the
    mailbox (no rows of the old messages read), by RFC 5256 §3; one it cannot place computes the answer again."""
    from postroom.imap.thread import Kept

    placed: list[bool] = []
    real = Kept.arrive

    def counted(self: Kept, *args: Any) -> bool:
        placed.append(real(self, *args))
        return placed[-1]

    monkeypatch.setattr(Kept, "arrive", counted)
    a = imaplib.IMAP4("127.0.0.1", imap.port("imap"))
    a.login(ADDR, PW)
    a.select("INBOX")
    b = imaplib.IMAP4("127.0.0.1", imap.port("imap"))
    b.login(ADDR, PW)
    assert a.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(1 2 4)"])
    assert a.uid("THREAD", "ORDEREDSUBJECT", "UTF-8", "ALL") == ("OK", [b"(3)(1 (2)(4))"])
    # UID 5: a reply to "Another" (a message), earlier than every other message of the mailbox
    assert b.append("INBOX", None, None, mail("Re: Another", "Sun, 31 Dec 2023 10:00:00 +0000", "a2@x",
                                              "<a1@x>"))[0] == "OK"
    assert a.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3)(1 2 4)"])  # A has not learnt of it yet
    assert placed == []
    a.noop()
    assert a.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3 5)(1 2 4)"])  # under 3 (RFC 5256 §3 step 1)
    assert a.uid("THREAD", "ORDEREDSUBJECT", "UTF-8", "ALL") == ("OK", [b"(3 5)(1 (2)(4))"])  # base subject
    assert placed == [True, True]
    # UID 6: "Plans" again without references: a root whose base subject a thread has (step 6 merges them)
    assert b.append("INBOX", None, None, mail("Plans", "Tue, 2 Jan 2024 10:00:00 +0000", "p9@x"))[0] == "OK"
    a.noop()
    # neither is a reply: a new dummy holds both (RFC 5256 §3 step 6)
    assert a.thread("REFERENCES", "UTF-8", "ALL") == ("OK", [b"(3 5)((1 2 4)(6))"])
    assert placed == [True, True, False]
    a.logout()
    b.logout()
