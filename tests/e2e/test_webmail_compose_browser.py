"""Writing in the webmail in a real browser (issue 10 item 5, "Must show"): Playwright driving Debian's chromium,
headless, controls found by role and accessible name. What was sent is read back over IMAP (imaplib), as another
client of the same server would see it."""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_support import base, deliver

import postroom.web.compose

playwright_api = pytest.importorskip("playwright.sync_api")

ALICE, BOB, PW = "alice@example.org", "bob@example.org", "compose-browser-1"
ATTACHED = bytes(range(256)) * 40 + b"\x00\r\n\r\nend"
ORIGINAL = (b"From: Bob <bob@example.org>\r\nTo: alice@example.org\r\nSubject: Lunch?\r\n"
            b"Date: Mon, 02 Nov 2026 10:00:00 +0000\r\nMessage-ID: <lunch-2@example.org>\r\n"
            b"References: <lunch-1@example.org>\r\nIn-Reply-To: <lunch-1@example.org>\r\n\r\n"
            b"Noon at the caf\xc3\xa9?\r\n")



@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


def _sign_in(page: Any, server: Any) -> None:
    page.goto(base(server) + "/")
    page.get_by_label("Email address").fill(ALICE)
    page.get_by_label("Password").fill(PW)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Inbox").wait_for()
    page.wait_for_load_state()  # the deferred scripts (keys.js) have run: a key pressed next is handled


def _imap(server: Any, user: str) -> imaplib.IMAP4_SSL:
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    imap.login(user, PW)
    return imap


def _fetch(imap: imaplib.IMAP4_SSL, mailbox: str, uid: str, item: str) -> bytes:
    imap.select(mailbox)
    typ, data = imap.uid("FETCH", uid, f"({item})")
    assert typ == "OK" and data and isinstance(data[0], tuple), data
    return bytes(data[0][1])


def _flags(imap: imaplib.IMAP4_SSL, mailbox: str, uid: str) -> str:
    imap.select(mailbox)
    typ, data = imap.uid("FETCH", uid, "(FLAGS)")
    assert typ == "OK"
    return data[0].decode() if isinstance(data[0], bytes) else ""


def _uids(imap: imaplib.IMAP4_SSL, mailbox: str) -> list[str]:
    imap.select(mailbox)
    typ, data = imap.uid("SEARCH", "ALL")
    assert typ == "OK"
    return data[0].decode().split()


def test_compose_with_attachment_to_a_local_user_read_back_over_imap(server: Any, page: Any,
                                                                      tmp_path: Path) -> None:
    server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    upload = tmp_path / "données.bin"
    upload.write_bytes(ATTACHED)
    _sign_in(page, server)
    page.get_by_role("link", name="Write").click()
    page.get_by_role("heading", name="Write a message").wait_for()
    assert page.get_by_label("From").input_value() == ALICE
    page.get_by_label("To").fill(BOB)
    page.get_by_label("Subject").fill("Numbers for Zoë")
    page.get_by_label("Message").fill("Hello Bob,\n\nthe file is attached.\n")
    page.get_by_label("Attach files").set_input_files(str(upload))
    page.get_by_role("button", name="Send").click()
    page.get_by_role("heading", name="Sent").wait_for()
    with _imap(server, BOB) as imap:
        (uid,) = _uids(imap, "INBOX")
        raw = _fetch(imap, "INBOX", uid, "BODY.PEEK[]")
        assert _fetch(imap, "INBOX", uid, "BINARY.PEEK[2]") == ATTACHED  # RFC 3516: the part decoded, exact
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "Numbers for Zoë" and msg["From"] == ALICE
    (part,) = list(msg.iter_attachments())
    assert part.get_filename() == "données.bin" and part.get_content() == ATTACHED
    with _imap(server, ALICE) as imap:  # the Sent copy, \Seen
        (sent,) = _uids(imap, "Sent")
        assert "\\Seen" in _flags(imap, "Sent", sent)
        assert _fetch(imap, "Sent", sent, "BINARY.PEEK[2]") == ATTACHED


def test_reply_keeps_threading_headers_and_sets_answered(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    deliver(server, alice, ORIGINAL)
    _sign_in(page, server)
    page.get_by_role("link", name="Lunch?").click()
    page.get_by_role("link", name="Reply", exact=True).click()
    page.get_by_role("heading", name="Reply").wait_for()
    assert page.get_by_label("To").input_value() == "Bob <bob@example.org>"
    assert page.get_by_label("Subject").input_value() == "Re: Lunch?"
    body = page.get_by_label("Message")
    assert "> Noon at the café?" in body.input_value()
    assert "Bob <bob@example.org> wrote:" in body.input_value()
    body.press("Control+Home")
    body.type("Yes, noon works.")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("heading", name="Sent").wait_for()
    with _imap(server, BOB) as imap:
        (uid,) = _uids(imap, "INBOX")
        header = _fetch(imap, "INBOX", uid, "BODY.PEEK[HEADER]")
        text = _fetch(imap, "INBOX", uid, "BODY.PEEK[TEXT]")
    msg = email.message_from_bytes(header, policy=email.policy.default)
    assert msg["In-Reply-To"] == "<lunch-2@example.org>"  # RFC 5322 §3.6.4
    assert msg["References"] == "<lunch-1@example.org> <lunch-2@example.org>"
    assert msg["Subject"] == "Re: Lunch?"
    assert text.startswith(b"Yes, noon works.") and b"> Noon at the caf" in text
    with _imap(server, ALICE) as imap:
        (orig,) = _uids(imap, "INBOX")
        assert "\\Answered" in _flags(imap, "INBOX", orig)


def test_forward_as_attachment_carries_the_original_bytes(server: Any, page: Any) -> None:
    alice = server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    deliver(server, alice, ORIGINAL)
    _sign_in(page, server)
    page.get_by_role("link", name="Lunch?").click()
    page.get_by_role("link", name="Forward as attachment").click()
    page.get_by_role("heading", name="Forward").wait_for()
    assert page.get_by_label("Subject").input_value() == "Fwd: Lunch?"
    page.get_by_label("To").fill(BOB)
    page.get_by_label("Message").fill("FYI")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("heading", name="Sent").wait_for()
    with _imap(server, ALICE) as imap:
        (orig,) = _uids(imap, "INBOX")
        stored = _fetch(imap, "INBOX", orig, "BODY.PEEK[]")
        assert "$Forwarded" in _flags(imap, "INBOX", orig)
    with _imap(server, BOB) as imap:
        (uid,) = _uids(imap, "INBOX")
        assert b"message/rfc822" in _fetch(imap, "INBOX", uid, "BODY.PEEK[2.MIME]")
        assert _fetch(imap, "INBOX", uid, "BODY.PEEK[2]") == stored  # RFC 2046 §5.2.1: the bytes as they were


def test_draft_saved_reopened_and_sent(server: Any, page: Any, tmp_path: Path) -> None:
    server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    upload = tmp_path / "plan.txt"
    upload.write_bytes(b"step 1\r\nstep 2\r\n")
    _sign_in(page, server)
    page.get_by_role("link", name="Write").click()
    page.get_by_label("To").fill(BOB)
    page.get_by_label("Subject").fill("The plan")
    page.get_by_label("Message").fill("Half written")
    page.get_by_label("Attach files").set_input_files(str(upload))
    page.get_by_role("button", name="Save draft").click()
    page.get_by_role("status").filter(has_text="Draft saved.").wait_for()
    with _imap(server, ALICE) as imap:
        (draft_uid,) = _uids(imap, "Drafts")
        assert "\\Draft" in _flags(imap, "Drafts", draft_uid)
    # Reopen it from the Drafts folder, as a user would.
    page.get_by_role("navigation", name="Folders").get_by_role("link", name="Drafts").click()
    page.get_by_role("link", name="The plan").click()
    page.get_by_role("link", name="Edit draft").click()
    assert page.get_by_label("Subject").input_value() == "The plan"
    assert page.get_by_label("Message").input_value() == "Half written"
    assert page.get_by_role("checkbox", name=re.compile("plan.txt")).is_checked()
    page.get_by_label("Message").fill("Now finished")
    page.get_by_role("button", name="Send").click()
    page.get_by_role("heading", name="Sent").wait_for()
    with _imap(server, BOB) as imap:
        (uid,) = _uids(imap, "INBOX")
        assert _fetch(imap, "INBOX", uid, "BINARY.PEEK[2]") == b"step 1\r\nstep 2\r\n"
        assert _fetch(imap, "INBOX", uid, "BODY.PEEK[1]").startswith(b"Now finished")
    with _imap(server, ALICE) as imap:
        assert _uids(imap, "Drafts") == []
        assert len(_uids(imap, "Sent")) == 1


def test_autosave_and_completion_with_script(server: Any, page: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postroom.web.compose, "AUTOSAVE_SECONDS", 1)
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, b"From: Frank Friend <frank@example.net>\r\nTo: alice@example.org\r\n"
                           b"Subject: hi\r\n\r\nx\r\n")
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    _sign_in(page, server)
    page.get_by_role("link", name="Write").click()
    # The handlers are in a deferred script: keys typed before it ran would be lost (as a person's would).
    page.wait_for_load_state()
    page.get_by_label("To").press_sequentially("fra")
    page.locator("#c-people option").first.wait_for(state="attached")  # (no wait_for_function: the CSP forbids eval)
    assert page.locator("#c-people option").first.get_attribute("value") == "Frank Friend <frank@example.net>"
    page.get_by_label("Subject").fill("Autosaved")
    page.get_by_label("Message").press_sequentially("typing away")
    page.get_by_role("status").filter(has_text="Draft saved at").wait_for()
    with _imap(server, ALICE) as imap:
        (first,) = _uids(imap, "Drafts")
        assert b"typing away" in _fetch(imap, "Drafts", first, "BODY.PEEK[TEXT]")
    page.get_by_label("Message").press_sequentially(", more")
    playwright_api.expect(page.locator("input[name=draft]")).not_to_have_value(first)
    with _imap(server, ALICE) as imap:
        (second,) = _uids(imap, "Drafts")  # the first draft was replaced, not kept beside it
        assert second != first and b"typing away, more" in _fetch(imap, "Drafts", second, "BODY.PEEK[TEXT]")
    assert errors == []  # no CSP violation, no script error


def test_files_dropped_on_the_form_are_attached(server: Any, page: Any) -> None:
    server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    _sign_in(page, server)
    page.get_by_role("link", name="Write").click()
    page.get_by_label("To").fill(BOB)
    page.get_by_label("Subject").fill("Dropped")
    # A drag from the desktop, as the browser delivers it: a drop event whose DataTransfer holds a File.
    dropped = page.evaluate_handle("""() => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array([0, 1, 2, 254, 255, 13, 10])], "drop.bin",
                              {type: "application/octet-stream"}));
        return dt; }""")
    page.get_by_label("Message").dispatch_event("drop", {"dataTransfer": dropped})
    page.get_by_role("status").filter(has_text="1 file to attach").wait_for()
    assert page.get_by_label("Message").input_value() == ""  # the browser's own drop did not type the name in
    page.get_by_role("button", name="Send").click()
    page.get_by_role("heading", name="Sent").wait_for()
    with _imap(server, BOB) as imap:
        (uid,) = _uids(imap, "INBOX")
        assert _fetch(imap, "INBOX", uid, "BINARY.PEEK[2]") == bytes([0, 1, 2, 254, 255, 13, 10])


def test_compose_on_a_phone_fits_and_screenshots(server: Any, page: Any, tmp_path: Path) -> None:
    # Screenshots go to $POSTROOM_SCREENSHOTS when set (the README's come from there), else to the test's tmp.
    out = Path(os.environ.get("POSTROOM_SCREENSHOTS", "") or tmp_path)
    alice = server.add_user(ALICE, PW)
    deliver(server, alice, ORIGINAL)
    _sign_in(page, server)
    page.get_by_role("link", name="Lunch?").click()
    page.get_by_role("link", name="Reply", exact=True).click()
    page.get_by_role("heading", name="Reply").wait_for()
    page.screenshot(path=str(out / "compose.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    for label in ("From", "To", "Cc", "Bcc", "Subject", "Message", "Attach files"):
        box = page.get_by_label(label, exact=True).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, label  # no sideways scroll
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.get_by_role("button", name="Send").scroll_into_view_if_needed()
    page.screenshot(path=str(out / "compose-phone.png"), full_page=True)
