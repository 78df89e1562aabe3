"""The webmail in a real browser (issue 10 "Must show"): Playwright from PyPI driving Debian's chromium, headless.
Controls are found by role and accessible name, as a screen reader finds them. One browser for the module;
each test gets its own server and browser context."""

from __future__ import annotations

import base64
import http.server
import imaplib
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_support import base, deliver, mailbox_id

playwright_api = pytest.importorskip("playwright.sync_api")

ALICE, PW = "alice@example.org", "browser-pass-1"
ATTACHED = bytes(range(256)) * 40 + b"\x00\r\n\r\nend"



@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    viewport = getattr(request, "param", {"width": 1200, "height": 900})
    context = browser.new_context(viewport=viewport)
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


class Canary:
    """An HTTP server on loopback that counts every request: where hostile mail points its remote content."""

    def __init__(self) -> None:
        hits = self.hits = []  # type: list[str]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sign_in(page: Any, server: Any) -> None:
    page.goto(base(server) + "/")
    page.get_by_label("Email address").fill(ALICE)
    page.get_by_label("Password").fill(PW)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Inbox").wait_for()
    page.wait_for_load_state()  # the deferred scripts (keys.js) have run: a key pressed next is handled


def _html_mail(subject: str, html: str, extra_parts: bytes = b"") -> bytes:
    return (f"From: Dana <dana@example.net>\r\nTo: {ALICE}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\n"
            "plain version\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n").encode() + \
        html.encode() + b"\r\n--alt--\r\n"


def test_sign_in_list_and_open_a_plain_and_an_html_message(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, b"From: Carol <carol@example.net>\r\nSubject: =?utf-8?q?Caf=C3=A9_plans?=\r\n"
                           b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nSee https://example.org/menu \xe0 "
                           b"midi\r\n")
    deliver(server, alice, _html_mail("Weekly letter", "<h2>News</h2><p style='color:green'>All <b>good</b></p>"))
    sign_in(page, server)
    rows = page.get_by_role("row")
    assert rows.count() == 3  # the header row and two messages
    page.get_by_role("link", name="Café plans").click()
    page.get_by_role("heading", name="Café plans").wait_for()
    assert "à midi" in page.locator("pre").inner_text()
    link = page.get_by_role("link", name="https://example.org/menu")
    assert link.get_attribute("rel") == "noopener noreferrer"
    page.get_by_role("link", name="Back to Inbox").click()
    page.get_by_role("link", name="Weekly letter").click()
    frame = page.frame_locator("iframe[title='Message content']")
    frame.get_by_role("heading", name="News").wait_for()
    assert frame.locator("b").inner_text() == "good"


def test_hostile_html_runs_nothing_and_loads_nothing_remote(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    canary = Canary()
    remote = f"http://127.0.0.1:{canary.port}"
    try:
        hostile = (
            f"<script>alert('script'); parent.document.body.dataset.pwned = 1; fetch('{remote}/fetch')</script>"
            f"<img src='{remote}/img.png' onerror=\"alert('onerror')\">"
            f"<img src=x onerror=\"alert('onerror2')\">"
            f"<a href=\"javascript:alert('js-link')\">click me</a>"
            f"<form action='{remote}/form' method='post'><input name=q value=1><button>Send form</button></form>"
            f"<div style=\"background:url('{remote}/css.png')\">styled</div>"
            f"<style>body {{ background: url('{remote}/style.png') }}</style>"
            f"<link rel=stylesheet href='{remote}/sheet.css'>"
            f"<iframe src='{remote}/frame'></iframe>"
            f"<svg onload=\"alert('svg')\"></svg><body onload=\"alert('body')\">"
            "<p>visible text</p>")
        deliver(server, alice, _html_mail("Totally safe", hostile))
        dialogs: list[str] = []
        requests: list[str] = []
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: requests.append(r.url))
        sign_in(page, server)
        page.get_by_role("link", name="Totally safe").click()
        frame = page.frame_locator("iframe[title='Message content']")
        frame.get_by_text("visible text").wait_for()
        frame.get_by_text("click me").click()  # a dead link once cleaned: nothing runs
        page.wait_for_load_state("networkidle")
        own = urllib.parse.urlsplit(base(server)).netloc
        assert dialogs == []
        assert page.evaluate("document.body.dataset.pwned") is None
        assert [u for u in requests if urllib.parse.urlsplit(u).netloc != own and not u.startswith("data:")] == []
        assert canary.hits == []
        assert frame.locator("body form, body script, body input, body iframe, body style, body link").count() == 0
        assert frame.locator("a").get_attribute("href") is None  # javascript: removed
    finally:
        canary.close()


def test_download_an_attachment_byte_exact(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    data = base64.encodebytes(ATTACHED).replace(b"\n", b"\r\n")
    deliver(server, alice, b"From: carol@example.net\r\nSubject: the data\r\nMIME-Version: 1.0\r\n"
                           b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n"
                           b"\r\nattached\r\n--b1\r\nContent-Type: application/octet-stream; name=\"=?utf-8?b?"
                           + base64.b64encode("données.bin".encode()) + b"?=\"\r\nContent-Disposition: attachment\r\n"
                           b"Content-Transfer-Encoding: base64\r\n\r\n" + data + b"--b1--\r\n")
    sign_in(page, server)
    page.get_by_role("link", name="the data").click()
    with page.expect_download() as info:
        page.get_by_role("link", name="données.bin").click()
    download = info.value
    assert download.suggested_filename == "données.bin"
    assert Path(download.path()).read_bytes() == ATTACHED


def test_mark_read_in_the_browser_is_seen_over_imap(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    uid = deliver(server, alice, b"From: eve@example.net\r\nSubject: unread one\r\n\r\nbody\r\n")
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    try:
        imap.login(ALICE, PW)
        imap.select("INBOX")
        assert b"\\Seen" not in imap.uid("FETCH", str(uid), "(FLAGS)")[1][0]
        sign_in(page, server)
        page.get_by_role("checkbox", name="Select: unread one").check()
        page.get_by_role("button", name="Mark read").click()
        page.get_by_role("heading", name="Inbox").wait_for()
        flags = imap.uid("FETCH", str(uid), "(FLAGS)")[1][0]
        assert b"\\Seen" in flags
        page.get_by_role("checkbox", name="Select: unread one").check()
        page.get_by_role("button", name="Flag", exact=True).click()
        page.get_by_role("heading", name="Inbox").wait_for()
        assert b"\\Flagged" in imap.uid("FETCH", str(uid), "(FLAGS)")[1][0]
        page.get_by_role("checkbox", name="Select: unread one").check()
        page.get_by_role("button", name="Delete", exact=True).click()
        page.get_by_role("heading", name="Inbox").wait_for()
        assert page.get_by_text("No messages here.").is_visible()
        imap.select("Trash")
        assert imap.uid("SEARCH", "ALL")[1][0].split() != []
    finally:
        imap.logout()
    assert mailbox_id(server, alice, "Trash")


@pytest.mark.parametrize("page", [{"width": 390, "height": 844}], indirect=True)
def test_a_phone_sized_viewport_renders_the_list(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    for i in range(3):
        deliver(server, alice, b"From: Someone With A Long Name <someone@example.net>\r\nSubject: message "
                               b"number %d with a subject long enough to need cutting on a phone\r\n\r\nx\r\n" % i)
    sign_in(page, server)
    link = page.get_by_role("link", name="message number 2", exact=False)
    assert link.is_visible()
    box = link.bounding_box()
    assert box is not None and box["x"] + 1 < 390
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    assert page.get_by_role("button", name="Mark read").is_visible()
    assert page.get_by_role("navigation", name="Folders").get_by_role("link", name="Inbox").is_visible()
