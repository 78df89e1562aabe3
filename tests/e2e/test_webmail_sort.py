"""Sorted message lists (issue 10 item 3; web/sort.py): each order equals imaplib's `UID SORT` with the same
criteria (RFC 5256 §3, RFC 5957 DISPLAYFROM), across pages; expected orders come from the RFC's rules (base
subject without "Re:", sent date from the Date field, ties by UID); sorting a search's results; an arrival is
placed (the kept order follows the mailbox's content version)."""

from __future__ import annotations

import imaplib
import re
from typing import Any

import pytest
from web_support import deliver, mailbox_id, signed_in

from postroom.web.search import parse
from postroom.web.sort import SORTS

ALICE, PW = "alice@example.org", "sort-pass-1"
ROW = re.compile(r'<tr class="[^"]*" data-uid="(\d+)"')
MAIL = {  # name -> (From, Subject, Date, body padding)
    "a": ("Zed <zed@example.net>", "Re: banana", "Mon, 01 Jan 2024 10:00:00 +0000", 200),
    "b": ("anna@example.net", "apple pie", "Wed, 03 Jan 2024 10:00:00 +0000", 500),
    "c": ("Bob Example <bob@example.net>", "Cherry", "Tue, 02 Jan 2024 23:30:00 -0500", 50),  # = Jan 3 04:30Z
    "d": ("\"Dora\" <dora@example.net>", "Fwd: apple pie", "Sun, 31 Dec 2023 10:00:00 +0000", 2000),
    "e": ("Carla <carla@example.net>", "banana split", "Thu, 04 Jan 2024 08:00:00 +0100", 1),
}


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"web": {"page_size": 2}}


def _mail(name: str) -> bytes:
    sender, subject, date, pad = MAIL[name]
    return (f"From: {sender}\r\nTo: alice@example.org\r\nSubject: {subject}\r\nDate: {date}\r\n\r\n"
            + "x" * pad + "\r\n").encode()


def _web_order(c: Any, box: int, sort: str, query: str = "") -> list[int]:
    out: list[int] = []
    params: dict[str, Any] = {"sort": sort, **({"q": query} if query else {})}
    while True:
        r = c.get(f"/mail/box/{box}", params=params)
        assert r.status_code == 200, r.text[:300]
        out += [int(u) for u in ROW.findall(r.text)]
        nxt = re.search(r'href="/mail/box/\d+\?start=(\d+)[^"]*" rel="next"', r.text)
        if nxt is None:
            return out
        params["start"] = nxt.group(1)


def test_orders_equal_imap_uid_sort_and_the_rfc(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    uid = {n: deliver(server, alice, _mail(n)) for n in MAIL}
    box = mailbox_id(server, alice)
    c = signed_in(server, ALICE, PW)
    expected = {  # worked out from RFC 5256 §2.1 (base subject), §2.2 (sent date), RFC 5957 (display name)
        "date": ["e", "b", "c", "a", "d"],  # newest sent first, in UTC: c (Jan 3 04:30Z) is older than b (10:00Z)
        "from": ["b", "c", "e", "d", "a"],  # "anna@example.net" (no name: the address), Bob, Carla, Dora, Zed
        "subject": ["b", "d", "a", "e", "c"],  # "apple pie" twice (Fwd: dropped) by UID, "banana", "banana split"
        "size": ["d", "b", "a", "c", "e"],
    }
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    try:
        imap.login(ALICE, PW)
        imap.select("INBOX", readonly=True)
        for sort, (_, _, criteria) in SORTS.items():
            if not sort:
                continue
            typ, data = imap.uid("SORT", f"({criteria})", "UTF-8", "ALL")
            assert typ == "OK", data
            over_imap = [int(u) for u in data[0].split()]
            web = _web_order(c, box, sort)
            assert web == over_imap, sort
            assert web == [uid[n] for n in expected[sort]], sort
        # A search's results, sorted: UID SORT with the same program.
        program = parse("subject:apple").imap_text
        typ, data = imap.uid("SORT", "(SUBJECT)", "UTF-8", program)
        assert _web_order(c, box, "subject", "subject:apple") == [int(u) for u in data[0].split()] == \
            [uid["b"], uid["d"]]
    finally:
        imap.logout()
    # An arrival after the order was kept: placed where it sorts.
    new = deliver(server, alice, b"From: x@example.net\r\nSubject: avocado\r\nDate: Fri, 05 Jan 2024 00:00:00 "
                                 b"+0000\r\n\r\ny\r\n")
    assert _web_order(c, box, "subject")[:3] == [uid["b"], uid["d"], new]
    assert _web_order(c, box, "date")[0] == new


def test_an_unknown_sort_is_the_plain_list(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    uids = [deliver(server, alice, _mail(n)) for n in "ab"]
    c = signed_in(server, ALICE, PW)
    r = c.get(f"/mail/box/{mailbox_id(server, alice)}", params={"sort": "'><script>", "start": "-5"})
    assert r.status_code == 200 and "<script>" not in r.text
    assert [int(u) for u in ROW.findall(r.text)] == uids[::-1]
