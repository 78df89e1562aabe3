"""The webmail's search box (issue 10 item 3; web/search.py) against IMAP: for each query the page lists exactly
the UIDs that imaplib's `UID SEARCH CHARSET UTF-8 <program>` answers over the same mailbox, and the expected
messages (chosen when the mail was made) are among them; results are paged; a malformed query is a sentence on
the page, never a 500; and in a real browser, the search box by role and name."""

from __future__ import annotations

import base64
import calendar
import imaplib
import re
from collections.abc import Iterator
from typing import Any

import pytest
from web_support import base, mailbox_id, signed_in

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest, Flag
from postroom.web import search
from postroom.web.search import parse

ALICE, PW = "alice@example.org", "search-pass-1"
ROW = re.compile(r'<tr class="[^"]*" data-uid="(\d+)"')


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"web": {"page_size": 3}}


def _day(text: str) -> float:
    return float(calendar.timegm(tuple(int(p) for p in text.split("-")) + (12, 0, 0)))  # type: ignore[arg-type]


ATTACHED = base64.encodebytes(b"\x00\x01 report data").replace(b"\n", b"\r\n")
MAIL = [  # (name, raw, received day, flags)
    ("anna1", b"From: Anna Smith <anna@example.net>\r\nTo: alice@example.org\r\nSubject: Weekly report\r\n\r\n"
              b"The numbers are in the spreadsheet.\r\n", "2024-01-10", Flag.SEEN),
    ("bob1", b"From: Bob <bob@example.com>\r\nTo: alice@example.org, team@example.org\r\nSubject: Lunch?\r\n\r\n"
             b"Pizza at noon, the weekly one.\r\n", "2024-02-15", 0),
    ("anna2", b"From: anna@example.net\r\nTo: alice@example.org\r\nSubject: =?utf-8?q?Caf=C3=A9_menu?=\r\n"
              b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n"
              b"Content-Type: text/plain; charset=utf-8\r\n\r\nSee the attached menu, caf\xc3\xa9 au lait.\r\n--b1\r\n"
              b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=menu.bin\r\n"
              b"Content-Transfer-Encoding: base64\r\n\r\n" + ATTACHED + b"--b1--\r\n", "2024-03-01", Flag.FLAGGED),
    ("carol", b"From: Carol <carol@example.org>\r\nTo: bob@example.com\r\nCc: alice@example.org\r\n"
              b"Subject: Re: Weekly report\r\n\r\nThanks Anna, \"quarterly numbers\" look fine.\r\n", "2024-03-20", 0),
    ("dave", b"From: dave@example.org\r\nTo: alice@example.org\r\nSubject: numbers\r\n\r\nquarterly numbers "
             b"attached? no.\r\n", "2024-04-02", Flag.SEEN | Flag.FLAGGED),
]
QUERIES = [  # query -> the names it must find (from the mail above, by reading it)
    ("from:anna", {"anna1", "anna2"}),
    ("to:team", {"bob1"}),
    ("subject:weekly", {"anna1", "carol"}),
    ('subject:"weekly report"', {"anna1", "carol"}),
    ("has:attachment", {"anna2"}),
    ("before:2024-02-15", {"anna1"}),
    ("after:2024-03-01", {"anna2", "carol", "dave"}),
    ("after:2024-02-01 before:2024-03-20", {"bob1", "anna2"}),
    ("is:unread", {"bob1", "anna2", "carol"}),
    ("is:flagged", {"anna2", "dave"}),
    ("is:flagged is:unread", {"anna2"}),
    ("numbers", {"anna1", "carol", "dave"}),
    ('"quarterly numbers"', {"carol", "dave"}),
    ("café", {"anna2"}),
    ("weekly from:bob", {"bob1"}),
    ("nothing-matches-this", set()),
]


@pytest.fixture
def mailbox(server: Any) -> Iterator[tuple[int, dict[str, int]]]:
    alice = server.add_user(ALICE, PW)
    box = mailbox_id(server, alice)
    uids = {}
    for name, raw, day, flags in MAIL:
        req = AppendRequest(raw, flags=int(flags), internal_date=_day(day), meta=compute_meta(raw).to_bytes())
        uids[name] = server.run(server.store.append(box, req)).uid
    yield box, uids


def _web_uids(c: Any, box: int, query: str) -> list[int]:
    """Every result of the query, page by page (3 a page), as the page lists them."""
    out: list[int] = []
    params: dict[str, Any] = {"q": query}
    while True:
        r = c.get(f"/mail/box/{box}", params=params)
        assert r.status_code == 200, r.text[:300]
        out += [int(u) for u in ROW.findall(r.text)]
        older = re.search(r'href="/mail/box/\d+\?below=(\d+)&amp;q=([^"]+)" rel="next"', r.text)
        if older is None:
            return out
        params = {"q": query, "below": older.group(1)}


@pytest.mark.parametrize(("window", "narrow_from"), [(search.FIRST_WINDOW, search.NARROW_FROM), (1, 1000), (2, 0),
                                                    (search.FIRST_WINDOW, 0)])
def test_web_search_answers_equal_imap_uid_search(server: Any, mailbox: tuple[int, dict[str, int]], window: int,
                                                  narrow_from: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the usual first window (one step covers the mailbox) and with windows of 1 and 2 UIDs growing by
    doubling (many steps, pages cut inside and across windows), each read whole or narrowed by the full-text
    index (`narrow_from` 0): the same answers."""
    monkeypatch.setattr(search, "FIRST_WINDOW", window)
    monkeypatch.setattr(search, "NARROW_FROM", narrow_from)
    box, uids = mailbox
    c = signed_in(server, ALICE, PW)
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    try:
        imap.login(ALICE, PW)
        imap._mode_utf8()  # send the program as UTF-8 (what CHARSET UTF-8 announces)
        imap.select("INBOX", readonly=True)
        for query, names in QUERIES:
            program = parse(query).imap_text
            typ, data = imap.uid("SEARCH", "CHARSET", "UTF-8", program)
            assert typ == "OK", (query, data)
            over_imap = sorted(int(u) for u in data[0].split())
            web = _web_uids(c, box, query)
            assert web == sorted(web, reverse=True), query  # newest first
            assert sorted(web) == over_imap, (query, program)
            assert set(web) == {uids[n] for n in names}, query
    finally:
        imap.logout()


def test_results_are_paged_and_counted(server: Any, mailbox: tuple[int, dict[str, int]]) -> None:
    box, uids = mailbox
    c = signed_in(server, ALICE, PW)
    first = c.get(f"/mail/box/{box}", params={"q": "is:unread numbers"})  # carol only
    assert "1 message found<" in first.text  # all of it on the first page: the total is known
    page1 = c.get(f"/mail/box/{box}", params={"q": "after:2024-01-01"})
    assert "3 messages found here, more on the next page" in page1.text
    assert [int(u) for u in ROW.findall(page1.text)] == [uids["dave"], uids["carol"], uids["anna2"]]
    assert 'rel="next"' in page1.text and 'rel="prev"' not in page1.text
    page2 = c.get(f"/mail/box/{box}", params={"q": "after:2024-01-01", "below": uids["anna2"]})
    assert [int(u) for u in ROW.findall(page2.text)] == [uids["bob1"], uids["anna1"]]
    assert 'rel="prev"' in page2.text and 'rel="next"' not in page2.text
    assert "2 messages found here<" in page2.text
    # Back to the newer results: the page above the newest of page 2.
    newer = re.search(r'href="/mail/box/\d+\?above=(\d+)&amp;q=[^"]+" rel="prev"', page2.text)
    assert newer and int(newer.group(1)) == uids["bob1"]
    back = c.get(f"/mail/box/{box}", params={"q": "after:2024-01-01", "above": newer.group(1)})
    assert [int(u) for u in ROW.findall(back.text)] == [uids["dave"], uids["carol"], uids["anna2"]]
    assert 'rel="next"' in back.text and 'rel="prev"' not in back.text
    # The actions on a result page come back to it (the search is kept).
    form_q = re.search(r'<input type="hidden" name="q" value="([^"]*)">', page2.text)
    assert form_q and form_q.group(1) == "after:2024-01-01"


@pytest.mark.parametrize("query", ['"open', "before:someday", "is:vip", "x" * 600, "from:"])
def test_a_malformed_query_is_a_sentence_not_an_error(server: Any, mailbox: tuple[int, dict[str, int]],
                                                      query: str) -> None:
    box, _ = mailbox
    c = signed_in(server, ALICE, PW)
    r = c.get(f"/mail/box/{box}", params={"q": query})
    assert r.status_code == 200
    assert re.search(r'<p class="error" role="alert">[^<]+\.</p>', r.text)
    assert ROW.findall(r.text) == []


def test_search_box_in_the_browser(server: Any, mailbox: tuple[int, dict[str, int]], browser: Any) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(base(server) + "/")
        page.get_by_label("Email address").fill(ALICE)
        page.get_by_label("Password").fill(PW)
        page.get_by_role("button", name="Sign in").click()
        search = page.get_by_role("search", name="Search Inbox").get_by_role("searchbox", name="Search")
        search.fill('subject:"weekly report" from:anna')
        search.press("Enter")
        page.get_by_role("status").filter(has_text="1 message found").wait_for()
        assert page.get_by_role("link", name="Weekly report", exact=True).is_visible()
        assert page.get_by_role("link", name="Re: Weekly report").count() == 0
        search.fill("before:someday")
        search.press("Enter")
        page.get_by_role("alert").filter(has_text="not a date").wait_for()
    finally:
        context.close()
