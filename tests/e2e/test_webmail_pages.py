"""A page people like to use (issue 10 items 3 and 7): organising (archive, junk, empty Trash, drag and drop,
subscribe), keyboard shortcuts, the help dialog, zero axe-core violations (axe-playwright-python, which ships
axe's script) on the sign-in, list, search, conversation and message pages, dark mode from the system setting, a
phone layout, static files compressed and cached; and the screenshots the README shows (docs/screenshots/).
Playwright drives Debian's chromium; controls are found by role and accessible name."""

from __future__ import annotations

import gzip
import imaplib
import os
import re
from pathlib import Path
from typing import Any

import pytest
from web_support import base, client, deliver, mailbox_id, signed_in

from postroom.store.api import Flag

playwright_api = pytest.importorskip("playwright.sync_api")
axe_api = pytest.importorskip("axe_playwright_python.sync_playwright")



def shots(tmp_path: Path) -> Path:
    """Where screenshots go: $POSTROOM_SCREENSHOTS when set (the README's: POSTROOM_SCREENSHOTS=docs/screenshots),
    else the test's own folder, so a test run never rewrites the repository's files."""
    out = Path(os.environ.get("POSTROOM_SCREENSHOTS", "") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    return out

ALICE, PW = "alice@example.org", "pages-pass-1"



def _page(browser: Any, **options: Any) -> Any:
    context = browser.new_context(**{"viewport": {"width": 1200, "height": 800}, **options})
    context.set_default_timeout(15_000)
    return context.new_page()


def sign_in(page: Any, server: Any) -> None:
    page.goto(base(server) + "/")
    page.get_by_label("Email address").fill(ALICE)
    page.get_by_label("Password").fill(PW)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Inbox").wait_for()


def _mail(subject: str, sender: str = "Carol <carol@example.net>", extra: str = "") -> bytes:
    return (f"From: {sender}\r\nTo: alice@example.org\r\nSubject: {subject}\r\n"
            f"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n{extra}\r\nHello Alice,\r\n\r\nsee you at https://example.org/"
            "\r\n\r\n> quoted line\r\n").encode()


def _imap(server: Any) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    imap.login(ALICE, PW)
    return imap


def _subjects(imap: imaplib.IMAP4_SSL, mailbox: str) -> list[bytes]:
    typ, _ = imap.select(mailbox, readonly=True)
    assert typ == "OK", mailbox
    typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    return sorted(d[1].strip() for d in data if isinstance(d, tuple))


def test_archive_junk_drag_and_drop_and_empty_trash(server: Any, browser: Any) -> None:
    alice = server.add_user(ALICE, PW)
    for s in ("To archive", "To junk", "To drag", "To delete"):
        deliver(server, alice, _mail(s))
    server.run(server.store.create_mailbox(alice.id, "Projects"))
    page = _page(browser)
    sign_in(page, server)
    page.get_by_role("checkbox", name="Select: To archive").check()
    page.get_by_role("button", name="Archive", exact=True).click()
    page.get_by_role("heading", name="Inbox").wait_for()
    page.get_by_role("checkbox", name="Select: To junk").check()
    page.get_by_role("button", name="Junk", exact=True).click()
    page.get_by_role("heading", name="Inbox").wait_for()
    # Drag a row onto a folder of the tree (the list's Move, enhanced).
    row = page.get_by_role("row", name="To drag")
    row.drag_to(page.get_by_role("navigation", name="Folders").get_by_role("link", name="Projects"))
    page.get_by_role("link", name="To drag").wait_for(state="detached")
    page.get_by_role("checkbox", name="Select: To delete").check()
    page.get_by_role("button", name="Delete", exact=True).click()
    page.get_by_role("heading", name="Inbox").wait_for()
    imap = _imap(server)
    try:
        assert _subjects(imap, "Archive") == [b"Subject: To archive"]
        assert _subjects(imap, "Junk") == [b"Subject: To junk"]
        assert _subjects(imap, "Projects") == [b"Subject: To drag"]
        assert _subjects(imap, "Trash") == [b"Subject: To delete"]
        imap.select("Junk", readonly=True)
        assert b"$Junk" in imap.uid("FETCH", "1:*", "(FLAGS)")[1][0]
        imap.list()
        assert any(b"\\Archive" in line and b"Archive" in line for line in imap.list()[1])  # RFC 6154 marker
    finally:
        imap.logout()
    # Empty Trash: refused without the tick, done with it.
    page.get_by_role("navigation", name="Folders").get_by_role("link", name="Trash").click()
    page.get_by_role("heading", name="Trash").wait_for()
    page.get_by_role("checkbox", name="Yes, delete them for good").check()
    page.get_by_role("button", name="Empty Trash").click()
    page.get_by_text("No messages here.").wait_for()
    imap = _imap(server)
    try:
        assert _subjects(imap, "Trash") == []
    finally:
        imap.logout()
    page.context.close()


def test_empty_trash_needs_the_confirmation_and_subscribe_toggles(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    trash = server.run(server.store.get_mailbox(alice.id, "Trash"))  # every user has one
    deliver(server, alice, _mail("in trash"), mailbox="Trash")
    c = signed_in(server, ALICE, PW)
    token = re.search(r'name="csrf" value="([^"]+)"', c.get(f"/mail/box/{trash.id}").text).group(1)  # type: ignore[union-attr]
    r = c.post(f"/mail/box/{trash.id}/empty", data={"csrf": token})
    assert r.status_code == 400 and "Yes, delete them for good" in r.text
    assert server.run(server.store.mailbox_status(trash.id)).messages == 1
    inbox = mailbox_id(server, alice)
    assert c.post(f"/mail/box/{inbox}/empty", data={"csrf": token, "confirm": "1"}).status_code == 404  # not Trash
    assert c.post(f"/mail/box/{trash.id}/empty", data={"confirm": "1"}).status_code == 403  # no CSRF token
    # Subscribe / unsubscribe: the IMAP subscription (LSUB / LIST (SUBSCRIBED)).
    box = server.run(server.store.create_mailbox(alice.id, "Lists"))
    assert c.post("/mail/folders", data={"csrf": token, "action": "subscribe", "mailbox": box.id}).status_code == 303
    imap = _imap(server)
    try:
        assert any(b'"Lists"' in x or b" Lists" in x for x in imap.lsub()[1] if x)
        assert c.post("/mail/folders", data={"csrf": token, "action": "unsubscribe",
                                             "mailbox": box.id}).status_code == 303
        assert not any(x and (b'"Lists"' in x or x.endswith(b" Lists")) for x in imap.lsub()[1])
    finally:
        imap.logout()


def test_keyboard_shortcuts_and_help(server: Any, browser: Any) -> None:
    alice = server.add_user(ALICE, PW)
    for s in ("First message", "Second message", "Third message"):
        deliver(server, alice, _mail(s))
    page = _page(browser)
    sign_in(page, server)
    page.keyboard.press("?")
    dialog = page.get_by_role("dialog", name="Keyboard shortcuts")
    dialog.wait_for()
    assert dialog.get_by_text("Next / previous message").is_visible()
    page.keyboard.press("Escape")
    dialog.wait_for(state="hidden")
    page.keyboard.press("j")  # the newest first: Third
    page.keyboard.press("j")
    page.keyboard.press("k")
    page.keyboard.press("j")
    assert page.evaluate("document.activeElement.textContent") == "Second message"
    page.keyboard.press("o")
    page.get_by_role("heading", name="Second message").wait_for()
    page.keyboard.press("e")  # archive from the reading page
    page.get_by_role("heading", name="Inbox").wait_for()
    assert page.get_by_role("link", name="Second message").count() == 0
    page.keyboard.press("j")
    page.keyboard.press("#")  # delete the row under the cursor: Third
    page.get_by_role("heading", name="Inbox").wait_for()
    page.get_by_role("link", name="Third message").wait_for(state="detached")
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("j")  # typed into the box, not a shortcut
    assert page.get_by_role("searchbox", name="Search").input_value() == "j"
    page.context.close()


def test_answer_and_write_shortcuts(server: Any, browser: Any) -> None:
    """r, a, f on a message's page open its reply, reply-all and forward forms; c opens an empty one."""
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, _mail("Lunch plans"))
    page = _page(browser)
    sign_in(page, server)
    for key, heading, mode in (("r", "Reply", "reply"), ("a", "Reply", "all"), ("f", "Forward", "forward")):
        page.get_by_role("link", name="Lunch plans").click()
        page.get_by_role("heading", name="Lunch plans").wait_for()
        page.keyboard.press(key)
        page.get_by_role("heading", name=heading, exact=True).wait_for()
        assert f"mode={mode}&" in page.url
        assert page.get_by_role("textbox", name="Subject").input_value().endswith("Lunch plans")
        page.go_back()
        page.go_back()
    page.keyboard.press("c")
    page.get_by_role("heading", name="Write a message").wait_for()
    assert page.get_by_role("textbox", name="Subject").input_value() == ""
    page.context.close()


def _no_violations(page: Any, what: str) -> None:
    results = axe_api.Axe().run(page)
    assert results.violations_count == 0, (what, results.generate_report())


def test_pages_have_no_axe_violations_light_and_dark_and_screenshots(server: Any, browser: Any,
                                                                     tmp_path: Path) -> None:
    alice = server.add_user(ALICE, PW)
    server.run(server.store.create_mailbox(alice.id, "Projects"))
    deliver(server, alice, _mail("Quarterly numbers", "Dana Reyes <dana@example.net>",
                                 "Message-ID: <q1@example.net>\r\n"), flags=int(Flag.SEEN))
    deliver(server, alice, _mail("Re: Quarterly numbers", "Sam Okafor <sam@example.net>",
                                 "Message-ID: <q2@example.net>\r\nIn-Reply-To: <q1@example.net>\r\n"))
    deliver(server, alice, _mail("Lunch on Friday?", "Bob <bob@example.com>"), flags=int(Flag.FLAGGED))
    deliver(server, alice, _mail("Your parcel is on its way", "Parcels <track@example.org>"))
    out = shots(tmp_path)
    for scheme in ("light", "dark"):
        page = _page(browser, color_scheme=scheme)
        page.goto(base(server) + "/")
        _no_violations(page, f"sign-in {scheme}")
        sign_in(page, server)
        bg = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert bg == ("rgb(255, 255, 255)" if scheme == "light" else "rgb(23, 24, 28)")  # style.css --bg
        _no_violations(page, f"list {scheme}")
        if scheme == "light":
            page.screenshot(path=str(out / "inbox.png"))
        page.get_by_role("searchbox", name="Search").fill("from:dana")
        page.keyboard.press("Enter")
        page.get_by_role("status").filter(has_text="found").wait_for()
        _no_violations(page, f"search {scheme}")
        page.get_by_role("link", name="Conversations").click()
        page.get_by_role("table", name="Conversations in Inbox, newest first").wait_for()
        _no_violations(page, f"conversations {scheme}")
        page.get_by_role("link", name="Re: Quarterly numbers").click()
        _no_violations(page, f"thread {scheme}")
        page.get_by_role("link", name="Sam Okafor <sam@example.net>: Re: Quarterly numbers").click()
        page.get_by_role("heading", name="Re: Quarterly numbers").wait_for()
        _no_violations(page, f"message {scheme}")
        if scheme == "light":
            page.screenshot(path=str(out / "message.png"))
        page.keyboard.press("?")
        page.get_by_role("dialog", name="Keyboard shortcuts").wait_for()
        _no_violations(page, f"help {scheme}")
        page.context.close()


def test_phone_layout(server: Any, browser: Any, tmp_path: Path) -> None:
    alice = server.add_user(ALICE, PW)
    for i in range(4):
        deliver(server, alice, _mail(f"Message number {i} with a subject long enough to be cut on a phone",
                                     "Someone With A Long Name <someone@example.net>"))
    page = _page(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                 device_scale_factor=2)
    sign_in(page, server)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    for name in ("Mark read", "Archive", "Delete"):
        box = page.get_by_role("button", name=name, exact=True).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, name
    assert page.get_by_role("searchbox", name="Search").is_visible()
    link = page.get_by_role("link", name="Message number 3", exact=False)
    assert link.is_visible()
    _no_violations(page, "phone list")
    out = shots(tmp_path)
    page.screenshot(path=str(out / "phone.png"))
    link.click()
    page.get_by_role("heading", name="Message number 3", exact=False).wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.context.close()


def test_static_files_are_compressed_versioned_and_cached(server: Any) -> None:
    server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    html = c.get(f"/mail/box/{mailbox_id(server, server.run(server.store.get_user(ALICE)))}").text
    urls = re.findall(r'(?:href|src)="(/mail/static/[a-z]+\.(?:css|js)\?v=[0-9a-f]{16})"', html)
    assert {u.split("?")[0] for u in urls} == {"/mail/static/style.css", "/mail/static/keys.js",
                                               "/mail/static/live.js"}
    plain = client(server)
    for url in urls:
        name = url.split("?")[0].rsplit("/", 1)[1]
        on_disk = (Path(__file__).resolve().parents[2] / "postroom" / "web" / "static" / name).read_bytes()
        r = plain.get(url, headers={"Accept-Encoding": "gzip"})
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["vary"] == "Accept-Encoding" and r.content == on_disk  # httpx undoes the gzip
        raw = plain.build_request("GET", url, headers={"Accept-Encoding": "gzip"})
        with plain.stream(raw.method, raw.url, headers=raw.headers) as s:
            body = b"".join(s.iter_raw())
        assert gzip.decompress(body) == on_disk and len(body) < len(on_disk)
        ident = plain.get(url, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in ident.headers and ident.content == on_disk
        # Unversioned: revalidated, 304 while unchanged (RFC 9110 §13.1.2).
        bare = plain.get(url.split("?")[0], headers={"Accept-Encoding": "gzip;q=0"})
        assert bare.headers["cache-control"] == "no-cache" and "content-encoding" not in bare.headers
        again = plain.get(url.split("?")[0], headers={"If-None-Match": bare.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    assert plain.get("/mail/static/../mail.py").status_code == 404
    assert plain.get("/mail/static/nothing.js").status_code == 404


def test_sort_and_conversations_in_the_browser(server: Any, browser: Any) -> None:
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, _mail("Banana", extra="Message-ID: <b1@x>\r\n"))
    deliver(server, alice, _mail("Apple", extra="Message-ID: <a1@x>\r\n"))
    deliver(server, alice, _mail("Re: Banana", extra="Message-ID: <b2@x>\r\nIn-Reply-To: <b1@x>\r\n"))
    page = _page(browser)
    sign_in(page, server)
    page.get_by_role("combobox", name="Sort by").select_option(label="Subject")
    page.get_by_role("button", name="Sort", exact=True).click()
    table = page.get_by_role("table", name="Messages in Inbox, subject")
    table.wait_for()
    subjects = table.locator("td.subject").all_inner_texts()
    assert subjects == ["Apple", "Banana", "Re: Banana"]  # RFC 5256 §2.1: "Re:" is not part of the base subject
    page.get_by_role("navigation", name="View").get_by_role("link", name="Conversations").click()
    rows = page.get_by_role("table", name="Conversations in Inbox, newest first").get_by_role("row")
    assert rows.count() == 3  # the header and two conversations
    assert page.get_by_role("row", name="Re: Banana").locator("td.count-cell").inner_text() == "2 (2 unread)"
    page.get_by_role("link", name="Re: Banana").click()
    page.get_by_role("heading", name="Re: Banana").wait_for()
    assert page.get_by_role("listitem").filter(has_text="Banana").count() == 2
    page.context.close()
