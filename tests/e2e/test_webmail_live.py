"""Live updates of an open webmail page (issue 10 item 2; web/live.py): a message delivered by SMTP appears on
the open list without a reload, a flag set over IMAP shows, an expunge removes the row, the folder tree's unread
count follows; and the event stream itself over HTTP: session checked, another user's mailbox refused, the
stream's records, the cap on streams. Real clients: Playwright driving Debian's chromium, smtplib, imaplib,
httpx."""

from __future__ import annotations

import asyncio
import imaplib
import smtplib
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from web_support import base, client, deliver, mailbox_id, signed_in

from postroom.mime.meta import compute_meta
from postroom.store.api import AppendRequest
from postroom.store.hub import DEFAULT_MAXSIZE
from postroom.web import live

playwright_api = pytest.importorskip("playwright.sync_api")

ALICE, BOB, PW = "alice@example.org", "bob@example.org", "live-pass-1"



@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


def sign_in(page: Any, server: Any) -> None:
    page.goto(base(server) + "/")
    page.get_by_label("Email address").fill(ALICE)
    page.get_by_label("Password").fill(PW)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Inbox").wait_for()
    page.wait_for_load_state()  # the deferred scripts (keys.js) have run: a key pressed next is handled


def _listening(page: Any) -> None:
    """Wait until the page's event stream is open (the first event, `open`, has fired)."""
    page.wait_for_function("() => performance.getEntriesByType('resource')"
                           ".some(e => e.name.includes('/mail/events'))", timeout=5_000)


def test_smtp_delivery_imap_flag_and_expunge_show_on_the_open_page(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, b"From: carol@example.net\r\nSubject: already here\r\n\r\nbody\r\n")
    sign_in(page, server)
    folders = page.get_by_role("navigation", name="Folders")
    folders.get_by_role("link", name="Inbox 1 unread").wait_for()
    page.wait_for_timeout(300)  # the stream subscribes (a miss would still be caught by its `stale` check)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("dana@example.net", [ALICE],
                      b"From: Dana <dana@example.net>\r\nTo: alice@example.org\r\nSubject: Fresh news\r\n\r\nhi\r\n")
    # Within 2 s, without a reload: the row by role and accessible name, and the count in the folder tree.
    page.get_by_role("row", name="Fresh news").wait_for(timeout=2_000)
    folders.get_by_role("link", name="Inbox 2 unread").wait_for(timeout=2_000)
    page.get_by_role("status").filter(has_text="A new message arrived.").wait_for(timeout=2_000)
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload happened
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    try:
        imap.login(ALICE, PW)
        imap.select("INBOX")
        uids = imap.uid("SEARCH", "SUBJECT", "\"Fresh news\"")[1][0].split()
        assert len(uids) == 1
        imap.uid("STORE", uids[0], "+FLAGS", "(\\Flagged \\Seen)")
        page.get_by_role("row", name="Fresh news").get_by_role("img", name="Flagged").wait_for(timeout=2_000)
        folders.get_by_role("link", name="Inbox 1 unread").wait_for(timeout=2_000)
        imap.uid("STORE", uids[0], "+FLAGS", "(\\Deleted)")
        imap.expunge()
        page.get_by_role("row", name="Fresh news").wait_for(state="detached", timeout=2_000)
        assert page.get_by_role("link", name="already here").is_visible()
    finally:
        imap.logout()


def test_a_change_between_render_and_subscribe_is_not_lost(server: Any, page: Any) -> None:
    """The page's modseq is older than the mailbox's when its stream subscribes: `stale`, and the page refetches."""
    alice = server.add_user(ALICE, PW)
    page.route("**/mail/events*", lambda route: (deliver(server, alice, b"From: x@example.net\r\nSubject: in the "
                                                                       b"gap\r\n\r\nx\r\n"), route.continue_()))
    sign_in(page, server)
    page.get_by_role("link", name="in the gap").wait_for(timeout=2_000)


def _events(c: httpx.Client, path: str, until: bytes, limit: int = 64 * 1024) -> tuple[int, bytes]:
    got = b""
    with c.stream("GET", path) as r:
        if r.status_code != 200:
            return r.status_code, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-store"
        for chunk in r.iter_raw():
            got += chunk
            if until in got or len(got) > limit:
                break
    return 200, got


def test_event_stream_checks_the_session_the_mailbox_and_sends_changes(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    inbox = mailbox_id(server, alice)
    assert client(server).get(f"/mail/events?box={inbox}").status_code == 403  # no session
    c = signed_in(server, ALICE, PW)
    assert c.get(f"/mail/events?box={mailbox_id(server, bob)}").status_code == 404  # Bob's: as if missing
    box = server.run(server.store.get_mailbox_by_id(inbox))
    with c.stream("GET", f"/mail/events?box={inbox}&modseq={box.highestmodseq}") as r:
        assert r.status_code == 200
        chunks = r.iter_raw()
        assert next(chunks).startswith(b"retry: ")
        uid = deliver(server, alice, b"From: x@example.net\r\nSubject: s\r\n\r\nx\r\n")
        got = b""
        while b"\n\n" not in got.partition(b"event: message")[2]:
            got += next(chunks)
    assert b'event: message\ndata: {"kind":"append","mailbox":%d,"uid":%d,"flags":0}\n\n' % (inbox, uid) in got
    # A page rendered before a change learns it at once (`stale`).
    status, got = _events(c, f"/mail/events?box={inbox}&modseq={box.highestmodseq}", b"event: stale")
    assert status == 200 and b"event: stale" in got


def test_streams_per_user_are_capped(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server.add_user(ALICE, PW)
    monkeypatch.setattr(live, "MAX_STREAMS_PER_USER", 1)
    c = signed_in(server, ALICE, PW)
    with c.stream("GET", "/mail/events") as r:
        assert r.status_code == 200
        chunks = r.iter_raw()  # kept: an iterator dropped at once would close the stream (httpx), racing the 429
        next(chunks)
        assert c.get("/mail/events").status_code == 429
    webmail = server.postroom.webmail
    assert webmail is not None
    # The closed stream is noticed at once (not at the next keepalive): the user may open another.
    for _ in range(100):
        if webmail.live.open_streams(None) == 0:
            break
        server.run(asyncio.sleep(0.02))
    assert webmail.live.open_streams(None) == 0
    with c.stream("GET", "/mail/events") as r:
        assert r.status_code == 200


def test_an_overflowed_subscription_ends_the_stream(server: Any) -> None:
    """More changes at once than a stream's subscription holds: `event: overflow`, then the stream ends (the page
    refetches the list and reconnects: live.js); the server keeps nothing of it."""
    alice = server.add_user(ALICE, PW)
    inbox = mailbox_id(server, alice)
    c = signed_in(server, ALICE, PW)
    server.store.hub.maxsize = 3  # read by each new subscription (hub.py)
    try:
        with c.stream("GET", f"/mail/events?box={inbox}") as r:
            assert r.status_code == 200
            chunks = r.iter_raw()
            assert next(chunks).startswith(b"retry: ")
            raw = b"From: x@example.net\r\nSubject: many\r\n\r\nx\r\n"
            reqs = [AppendRequest(raw, internal_date=time.time(), meta=compute_meta(raw).to_bytes())
                    for _ in range(5)]
            server.run(server.store.append_many(inbox, reqs))  # one commit: five changes published at once
            got = b"".join(chunks)  # to the end of the stream
    finally:
        server.store.hub.maxsize = DEFAULT_MAXSIZE
    assert got.endswith(b"event: overflow\ndata: {}\n\n")
    assert b"event: message" not in got
    webmail = server.postroom.webmail
    assert webmail is not None and webmail.live.open_streams(alice.id) == 0


def test_the_conversation_view_follows_too(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, b"From: a@example.net\r\nSubject: Trip\r\nMessage-ID: <t1@x>\r\n\r\nx\r\n")
    sign_in(page, server)
    page.get_by_role("navigation", name="View").get_by_role("link", name="Conversations").click()
    row = page.get_by_role("row", name="Trip")
    row.wait_for()
    assert row.locator("td.count-cell").inner_text() == "1 (1 unread)"
    page.wait_for_timeout(300)
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as smtp:
        smtp.sendmail("b@example.net", [ALICE], b"From: b@example.net\r\nTo: alice@example.org\r\nSubject: Re: Trip"
                                                b"\r\nMessage-ID: <t2@x>\r\nIn-Reply-To: <t1@x>\r\n\r\ny\r\n")
    page.get_by_role("row", name="Re: Trip").locator("td.count-cell").filter(has_text="2 (2 unread)").wait_for(
        timeout=2_000)
    assert page.get_by_role("row").count() == 2  # the header and the one conversation, now at its reply
