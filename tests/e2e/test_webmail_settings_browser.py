"""The webmail's settings in a real browser (issue 10 item 6, "Must show"): Playwright driving Debian's chromium,
headless, controls found by role and accessible name. The effects are checked with the clients a user would run:
the new password over IMAP (imaplib), the blocked sender at the MX's RCPT (smtplib); zero axe-core violations
on the page."""

from __future__ import annotations

import imaplib
import os
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from web_support import base

playwright_api = pytest.importorskip("playwright.sync_api")
axe_api = pytest.importorskip("axe_playwright_python.sync_playwright")

ALICE, PW, NEW = "alice@example.org", "settings-browser-1", "settings-browser-2"


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(15_000)
    pg = context.new_page()
    yield pg
    context.close()


def _sign_in(page: Any, server: Any, password: str = PW) -> None:
    page.goto(base(server) + "/")
    page.get_by_label("Email address").fill(ALICE)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Inbox").wait_for()


def test_settings_page_password_signature_out_of_office_and_block(server: Any, page: Any, tmp_path: Path) -> None:
    alice = server.add_user(ALICE, PW)
    _sign_in(page, server)
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("heading", name="Settings", exact=True).wait_for()
    results = axe_api.Axe().run(page)
    assert results.violations_count == 0, results.generate_report()

    # Password: the page says so, stays signed in, and IMAP takes the new one only.
    page.get_by_role("textbox", name="Current password").fill(PW)
    page.get_by_role("textbox", name="New password", exact=True).fill(NEW)
    page.get_by_role("textbox", name="New password again").fill(NEW)
    page.get_by_role("button", name="Change password").click()
    page.get_by_role("status").filter(has_text="this one stays signed in").wait_for()
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context()) as imap:
        assert imap.login(ALICE, NEW)[0] == "OK"

    # Signature: in a new message, below the separator.
    page.get_by_role("textbox", name="Signature").fill("Alice Liddell\nRabbit hole 1")
    page.get_by_role("button", name="Save name and signature").click()
    page.get_by_role("status").filter(has_text="signature saved").wait_for()
    page.get_by_role("link", name="Write").click()
    body = page.get_by_role("textbox", name="Message")
    body.wait_for()
    assert body.input_value().endswith("\n-- \nAlice Liddell\nRabbit hole 1")

    # Out of office, on.
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("checkbox", name="Send an out-of-office reply").check()
    page.get_by_role("textbox", name="Reply text").fill("Away until Monday.")
    page.get_by_role("button", name="Save out-of-office reply").click()
    page.get_by_role("status").filter(has_text="Out-of-office reply saved").wait_for()
    assert page.get_by_role("checkbox", name="Send an out-of-office reply").is_checked()
    s = server.run(server.store.get_user_settings(alice.id))
    assert s.vacation and s.vacation_text == "Away until Monday." and s.vacation_days == 7

    # A blocked sender, refused at RCPT by the MX.
    page.get_by_role("textbox", name="Sender to block").fill("pest@spam.example")
    page.get_by_role("button", name="Block", exact=True).click()
    page.get_by_role("button", name="Remove pest@spam.example from blocked senders").wait_for()
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as c:
        c.ehlo()
        c.mail("pest@spam.example")
        code, text = c.rcpt(ALICE)
    assert code == 550 and text.startswith(b"5.7.1")
    for scheme in ("light", "dark"):  # dark mode follows the system (style.css)
        page.emulate_media(color_scheme=scheme)
        results = axe_api.Axe().run(page)
        assert results.violations_count == 0, (scheme, results.generate_report())
    # The README's screenshot when $POSTROOM_SCREENSHOTS is set (as the compose test does), else the test's tmp.
    page.emulate_media(color_scheme="light")
    page.screenshot(path=str(Path(os.environ.get("POSTROOM_SCREENSHOTS", "") or tmp_path) / "settings.png"),
                    full_page=True)
