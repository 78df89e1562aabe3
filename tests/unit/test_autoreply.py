"""The out-of-office auto-reply's rules and message (delivery/autoreply.py; RFC 3834 §2, §3, §5), fed header
bytes whole."""

from __future__ import annotations

import email
import email.policy

import pytest

from postroom.delivery import autoreply
from postroom.store.api import UserSettings

OWN = ["alice@example.org", "al@example.org"]
BASE = (b"From: Carol <carol@example.net>\r\nTo: Alice <alice@example.org>\r\nSubject: Budget\r\n"
        b"Message-ID: <m2@example.net>\r\nReferences: <m0@example.net> <m1@example.net>\r\n\r\nbody\r\n")


def fields(extra: bytes = b"", base: bytes = BASE) -> list:
    return autoreply.header_fields(extra + base)


def test_a_personal_message_gets_a_reply() -> None:
    assert autoreply.skip_reason("carol@example.net", fields(), OWN) is None
    # "Auto-Submitted: no" is a person's message (RFC 3834 §5), parameters or not.
    assert autoreply.skip_reason("carol@example.net", fields(b"Auto-Submitted: No ; x=1\r\n"), OWN) is None
    # An alias of the user's in Cc, with a +detail, counts (§2: "explicitly included in a recipient field").
    cc = BASE.replace(b"To: Alice <alice@example.org>", b"To: team@example.net\r\nCc: AL+work@Example.ORG")
    assert autoreply.skip_reason("carol@example.net", fields(base=cc), OWN) is None
    assert autoreply.addressed_as(fields(base=cc), OWN) == "al@example.org"


@pytest.mark.parametrize("mail_from, extra, reason", [
    ("", b"", "null-sender"),  # §2: never to the null reverse-path
    ("Alice+x@example.org", b"", "own-address"),
    ("carol@example.net", b"Auto-Submitted: auto-generated\r\n", "auto-submitted"),  # §5
    ("carol@example.net", b"Auto-Submitted: auto-replied\r\n", "auto-submitted"),
    ("carol@example.net", b"List-Id: <budget.example.net>\r\n", "list"),  # RFC 2919
    ("carol@example.net", b"List-Unsubscribe: <mailto:u@example.net>\r\n", "list"),  # RFC 2369
    ("carol@example.net", b"Precedence: bulk\r\n", "precedence"),
    ("carol@example.net", b"Precedence:  List \r\n", "precedence"),
    ("carol@example.net", b"Precedence: junk\r\n", "precedence"),
    ("owner-budget@example.net", b"", "robot-sender"),
    ("budget-request@example.net", b"", "robot-sender"),
    ("MAILER-DAEMON@example.net", b"", "robot-sender"),
    ("budget-bounces@example.net", b"", "robot-sender"),  # Mailman's bounce address
    ("carol@example.net", b"Precedence: bulk (list)\r\n", "precedence"),  # the first word decides
    # An envelope sender no To field can carry (the header registry would decode the word into CR LF).
    ("=?utf-8?b?QQ0KWDogMQ==?=@r.example", b"", "odd-sender"),
])
def test_no_reply(mail_from: str, extra: bytes, reason: str) -> None:
    assert autoreply.skip_reason(mail_from, fields(extra), OWN) == reason


def test_not_addressed_to_the_user() -> None:
    bcc = BASE.replace(b"To: Alice <alice@example.org>", b"To: all-staff@example.net")
    assert autoreply.skip_reason("carol@example.net", fields(base=bcc), OWN) == "not-addressed"
    resent = BASE.replace(b"To: Alice <alice@example.org>", b"To: x@example.net\r\nResent-To: alice@example.org")
    assert autoreply.skip_reason("carol@example.net", fields(base=resent), OWN) is None


def test_active_between_the_times() -> None:
    s = UserSettings(vacation=True, vacation_start=100.0, vacation_end=200.0)
    assert [autoreply.active(s, t) for t in (99.0, 100.0, 199.9, 200.0)] == [False, True, True, False]
    assert not autoreply.active(UserSettings(vacation=False), 150.0)
    assert autoreply.active(UserSettings(vacation=True), 150.0)
    assert autoreply.window_start(UserSettings(vacation_days=7), 10 * 86400.0) == 3 * 86400.0


def test_the_reply() -> None:
    s = UserSettings(display_name="Alice Liddell", identity_names={"al@example.org": "Al Ice"}, vacation=True,
                     vacation_text="Away until Monday.\nÇa va.")
    raw = autoreply.build(s, from_address="alice@example.org", to="carol@example.net", fields=fields(),
                          hostname="mx.example.org", now=1_800_000_000.0)
    assert raw.isascii() and b"\n" not in raw.replace(b"\r\n", b"")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Auto-Submitted"] == "auto-replied"  # RFC 3834 §5
    assert msg["To"] == "carol@example.net"  # §4: the envelope sender
    assert msg["From"] == "Alice Liddell <alice@example.org>"
    assert msg["Subject"] == "Auto: Budget"  # §3
    assert msg["In-Reply-To"] == "<m2@example.net>"
    assert msg["References"] == "<m0@example.net> <m1@example.net> <m2@example.net>"
    assert msg.get_content().replace("\r\n", "\n") == "Away until Monday.\nÇa va.\n"
    other = autoreply.build(UserSettings(display_name="Alice", identity_names={"al@example.org": "Al Ice"},
                                         vacation_subject="Out of office"),
                            from_address="al@example.org", to="carol@example.net", fields=fields(b"Subject: x\r\n"),
                            hostname="mx.example.org", now=1_800_000_000.0)
    parsed = email.message_from_bytes(other, policy=email.policy.default)
    assert parsed["From"] == "Al Ice <al@example.org>" and parsed["Subject"] == "Out of office"


def test_an_encoded_subject_is_answered_decoded_and_encoded_again() -> None:
    head = BASE.replace(b"Subject: Budget", b"Subject: =?utf-8?q?Caf=C3=A9_budget?=")
    raw = autoreply.build(UserSettings(vacation=True, vacation_text="Away."), from_address="alice@example.org",
                          to="carol@example.net", fields=fields(base=head), hostname="mx.example.org", now=1.0e9)
    assert raw.isascii()  # RFC 2047 on the wire
    assert email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == "Auto: Café budget"


def test_a_subject_encoded_twice_stays_one_field() -> None:
    """RFC 2047 words inside a decoded subject are not decoded again (invariant 3): the sender of a subject
    encoded twice, whose inner text holds CR LF and new fields, cannot add a field or a body to the reply, which
    leaves DKIM-signed for the user's domain (RFC 5322 §2.2: a field body has no CR or LF)."""
    import base64

    inner = "=?utf-8?b?" + base64.b64encode(
        b"Hi\r\nReply-To: evil@evil.example\r\nContent-Type: text/html\r\n\r\n<a href=x>click</a>").decode() + "?="
    outer = "=?utf-8?b?" + base64.b64encode(inner.encode()).decode() + "?="
    head = BASE.replace(b"Subject: Budget", b"Subject: " + outer.encode())
    settings = UserSettings(vacation=True, vacation_text="Away.", display_name="=?utf-8?b?QQ0KWDogMQ==?=")
    raw = autoreply.build(settings, from_address="alice@example.org", to="carol@example.net", fields=fields(base=head),
                          hostname="mx.example.org", now=1_700_000_000.0)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Reply-To"] is None and msg["X"] is None
    assert msg["Auto-Submitted"] == "auto-replied" and msg.get_content_type() == "text/plain"
    assert msg.get_content().strip() == "Away."
    subject = str(msg["Subject"])  # the inner word kept as text, decoded once only
    assert subject.startswith("Auto: =") and "utf-8?b?SGkNCl" in subject and "\n" not in subject


def test_a_message_id_holding_an_encoded_word_is_left_out() -> None:
    """The original's Message-ID is decoded once; an id that still holds an RFC 2047 word is no msg-id (RFC 5322
    §3.6.4) and would be decoded again into new fields of the reply: it is left out (`compose.msg_ids`)."""
    import base64

    inner = "=?utf-8?b?" + base64.b64encode(b"x\r\nX-Injected: yes\r\n\r\nbody").decode() + "?="
    outer = "=?utf-8?b?" + base64.b64encode(f"<{inner}@evil.example>".encode()).decode() + "?="
    head = BASE.replace(b"Message-ID: <m2@example.net>", b"Message-ID: " + outer.encode())
    raw = autoreply.build(UserSettings(vacation=True, vacation_text="Away."), from_address="alice@example.org",
                          to="carol@example.net", fields=fields(base=head), hostname="mx.example.org",
                          now=1_700_000_000.0)
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["X-Injected"] is None and msg["In-Reply-To"] is None and msg.get_content().strip() == "Away."
