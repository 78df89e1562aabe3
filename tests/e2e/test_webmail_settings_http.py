"""The webmail's settings over HTTP (issue 10 item 6; web/settings.py), driven with httpx as a browser without
script: CSRF and ownership, the password change (sessions, IMAP, the shared lockout), name and signature in what
compose sends (RFC 3676 §4.3 "-- " kept by format=flowed), identities, the out-of-office form's limits, and the
blocked senders the MX then refuses at RCPT."""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import hmac
import imaplib
import smtplib
from typing import Any

import httpx
import pytest
from web_support import client, deliver, mailbox_id, page_csrf, sign_in, signed_in

from postroom.store.api import UserSettings

ALICE, BOB, PW, NEW = "alice@example.org", "bob@example.org", "settings-pass-1", "settings-pass-2"


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"auth": {"max_failures_per_ip": 1000, "max_failures_per_user": 3}}


def _post(c: httpx.Client, **fields: str) -> httpx.Response:
    return c.post("/mail/settings", data={"csrf": page_csrf(c, "/mail/settings"), **fields})


def _imap_login(server: Any, user: str, password: str) -> bool:
    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context()) as imap:
        try:
            imap.login(user, password)
        except imaplib.IMAP4.error:
            return False
        return True


def _scram_login(server: Any, user: str, password: str) -> bool:
    """IMAP AUTHENTICATE SCRAM-SHA-256 (RFC 7677, RFC 5802 §3) with imaplib: the verifiers, not the hash."""
    first_bare = f"n={user},r=settings-test-nonce"
    state: dict[str, str] = {}

    def step(challenge: bytes) -> bytes:
        if not challenge and "server_first" not in state:
            return ("n,," + first_bare).encode()
        if "server_first" not in state:
            state["server_first"] = challenge.decode()
            attrs = dict(kv.split("=", 1) for kv in state["server_first"].split(","))
            salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
            client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
            without_proof = f"c=biws,r={attrs['r']}"
            auth_msg = f"{first_bare},{state['server_first']},{without_proof}".encode()
            sig = hmac.new(hashlib.sha256(client_key).digest(), auth_msg, hashlib.sha256).digest()
            proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
            return f"{without_proof},p={proof}".encode()
        return b""

    with imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context()) as imap:
        try:
            return imap.authenticate("SCRAM-SHA-256", step)[0] == "OK"
        except imaplib.IMAP4.error:
            return False


def test_post_without_csrf_token_is_refused_and_changes_nothing(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    r = c.post("/mail/settings", data={"action": "profile", "display_name": "Mallory", "signature": "x"})
    assert r.status_code == 403
    r = c.post("/mail/settings", data={"csrf": "not-the-token", "action": "rule-add", "pattern": "a@b.example"})
    assert r.status_code == 403
    assert server.run(server.store.get_user_settings(alice.id)) == UserSettings()
    assert server.run(server.store.list_sender_rules(ALICE)) == []
    # Signed out: the page sends to the sign-in form, a POST is refused.
    assert client(server).get("/mail/settings").status_code == 303
    assert client(server).post("/mail/settings", data={"action": "profile"}).status_code == 403


def test_each_user_sees_and_changes_only_their_own(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    a, b = signed_in(server, ALICE, PW), signed_in(server, BOB, PW)
    assert _post(a, action="profile", display_name="Alice Liddell", signature="Alice\nDown the hole").status_code == 303
    assert _post(a, action="rule-add", kind="block", pattern="pest@spam.example").status_code == 303
    page = b.get("/mail/settings").text
    assert "Alice Liddell" not in page and "Down the hole" not in page and "pest@spam.example" not in page
    # Bob naming alice's address as his default identity is refused; his own change touches only his row.
    r = _post(b, action="identities", default=ALICE)
    assert r.status_code == 400 and "not one of your addresses" in r.text
    assert _post(b, action="profile", display_name="Bob").status_code == 303
    assert server.run(server.store.get_user_settings(alice.id)).display_name == "Alice Liddell"
    assert server.run(server.store.get_user_settings(bob.id)).display_name == "Bob"
    assert [r.pattern for r in server.run(server.store.list_sender_rules(BOB))] == []


def test_password_change_keeps_this_session_ends_others_and_works_over_imap(server: Any) -> None:
    before = server.add_user(ALICE, PW)
    here, elsewhere = signed_in(server, ALICE, PW), signed_in(server, ALICE, PW)
    r = _post(here, action="password", current=PW, new=NEW, again=NEW)
    assert r.status_code == 303 and r.headers["location"] == "/mail/settings?done=password"
    page = here.get("/mail/settings")  # the new cookie of the redirect: still signed in
    assert page.status_code == 200 and "this one stays signed in" in page.text
    assert elsewhere.get("/mail/settings").status_code == 303  # the other browser is signed out
    assert _imap_login(server, ALICE, NEW) and not _imap_login(server, ALICE, PW)
    # The SCRAM verifiers were written with the hash (both new), as `postroom user passwd` writes them.
    user = server.run(server.store.get_user(ALICE))
    assert user.password_hash.startswith("$argon2") and user.password_hash != before.password_hash
    assert user.scram and user.scram != before.scram
    assert _scram_login(server, ALICE, NEW) and not _scram_login(server, ALICE, PW)
    # Mismatched or short new passwords are refused with the reason; nothing changes.
    r = _post(here, action="password", current=NEW, new="another-one-1", again="another-one-2")
    assert r.status_code == 400 and "differ" in r.text
    r = _post(here, action="password", current=NEW, new="short", again="short")
    assert r.status_code == 400 and "at least" in r.text
    # Blanks only, or a control character (SASLprep, RFC 4013 §2.3, prohibits them: SCRAM could not send it).
    for bad in (" " * 12, "tab\there-123"):
        r = _post(here, action="password", current=NEW, new=bad, again=bad)
        assert r.status_code == 400 and "cannot be used" in r.text, bad
    assert _imap_login(server, ALICE, NEW)


def test_wrong_current_password_counts_toward_the_shared_lockout(server: Any) -> None:
    server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    for _ in range(3):  # auth.max_failures_per_user = 3
        r = _post(c, action="password", current="wrong", new=NEW, again=NEW)
        assert r.status_code == 403 and "current password is wrong" in r.text
    # The (alice, 127.0.0.1) pair is locked: IMAP and the web sign-in refuse even the right password.
    assert not _imap_login(server, ALICE, PW)
    assert sign_in(client(server), ALICE, PW).status_code == 401


def test_name_signature_and_default_identity_in_compose_and_what_is_sent(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    bob = server.add_user(BOB, PW)
    server.run(server.store.add_alias("al@example.org", [ALICE]))
    server.run(server.store.add_alias("@example.org", [ALICE]))  # a catch-all: never an identity
    c = signed_in(server, ALICE, PW)
    page = c.get("/mail/settings").text
    assert '<th scope="row">al@example.org</th>' in page and '<th scope="row">@example.org</th>' not in page
    r = _post(c, action="profile", display_name="Alice Liddell", signature="Alice L.\r\nRabbit hole")
    assert r.status_code == 303
    assert _post(c, action="identities", default="al@example.org", identity=["al@example.org", ALICE],
                 name=["Al", ""]).status_code == 303
    form = c.get("/mail/compose").text
    assert '<option value="al@example.org" selected>' in form
    assert "\n\n-- \nAlice L.\nRabbit hole</textarea>" in form  # below the body, after "-- " (RFC 3676 §4.3)
    uid = deliver(server, alice, b"From: bob@example.org\r\nTo: alice@example.org\r\nSubject: Hi\r\n"
                                 b"Message-ID: <hi@example.org>\r\n\r\nHello\r\n")
    reply = c.get(f"/mail/compose?mode=reply&box={mailbox_id(server, alice)}&uid={uid}").text
    assert f'<option value="{ALICE}" selected>' in reply  # a reply goes from the address it was sent to
    assert "-- \nAlice L.\nRabbit hole</textarea>" in reply
    token = page_csrf(c, "/mail/compose")
    r = c.post("/mail/compose", data={"csrf": token, "action": "send", "from": "al@example.org", "to": BOB,
                                      "subject": "Signed", "body": "Hello Bob\n\n-- \nAlice L.\nRabbit hole"},
               files={"files": ("", b"", "application/octet-stream")})
    assert r.status_code == 303, r.text[:1000]
    box = server.run(server.store.get_mailbox(bob.id, "INBOX"))
    (info,) = server.run(server.store.list_messages(box.id))
    raw = server.run(server.store.read_message(info.blob_id))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["From"] == "Al <al@example.org>"  # the identity's own display name
    assert b"\r\n-- \r\nAlice L.\r\nRabbit hole\r\n" in raw  # format=flowed keeps the separator's space


def test_out_of_office_form_limits_and_dates(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    base = {"action": "vacation", "vacation": "1", "subject": "", "text": "Away.", "days": "7"}
    assert _post(c, **{**base, "days": "0"}).status_code == 400
    assert _post(c, **{**base, "text": ""}).status_code == 400
    assert _post(c, **{**base, "text": "x" * 10_001}).status_code == 400
    assert _post(c, **{**base, "start": "2026-12-10", "end": "2026-12-01"}).status_code == 400
    assert _post(c, **{**base, "start": "not a day"}).status_code == 400
    assert server.run(server.store.get_user_settings(alice.id)) == UserSettings()
    assert _post(c, **{**base, "start": "2026-12-01", "end": "2026-12-24", "days": "3"}).status_code == 303
    s = server.run(server.store.get_user_settings(alice.id))
    # Whole days in UTC, the last one included: 2026-12-01T00:00Z to 2026-12-25T00:00Z.
    assert (s.vacation, s.vacation_text, s.vacation_days) == (True, "Away.", 3)
    assert (s.vacation_start, s.vacation_end) == (1796083200.0, 1798156800.0)
    page = c.get("/mail/settings").text
    assert 'value="2026-12-01"' in page and 'value="2026-12-24"' in page


def test_blocked_sender_is_refused_at_rcpt_and_can_be_removed(server: Any) -> None:
    alice = server.add_user(ALICE, PW)
    c = signed_in(server, ALICE, PW)
    uid = deliver(server, alice, b"From: Pest <pest@spam.example>\r\nTo: alice@example.org\r\n"
                                 b"Subject: Buy\r\n\r\nx\r\n")
    page = c.get(f"/mail/box/{mailbox_id(server, alice)}/{uid}").text
    assert 'name="pattern" value="pest@spam.example"' in page  # the reading page's "Block sender"
    assert _post(c, action="rule-add", kind="block", pattern="pest@spam.example").status_code == 303
    assert _post(c, action="rule-add", kind="block", pattern="not an address").status_code == 400
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as s:
        s.ehlo()
        s.mail("pest@spam.example")
        code, text = s.rcpt(ALICE)
        assert code == 550 and text.startswith(b"5.7.1")
    assert _post(c, action="rule-remove", pattern="pest@spam.example").status_code == 303
    assert server.run(server.store.list_sender_rules(ALICE)) == []
