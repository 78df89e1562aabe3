"""The out-of-office auto-reply end to end (RFC 3834; delivery/autoreply.py, router invariant 16): smtplib into the
MX listener, the reply read back over IMAP (imaplib) from the sender's mailbox when the sender is local, or found
in the outbound queue from the null sender when it is remote.

What is checked: a personal message gets exactly one reply (Auto-Submitted: auto-replied, In-Reply-To, the subject,
To = the envelope sender); a second message from the same sender within the window gets none; mail with
`Precedence: bulk`, a `List-Id`, `Auto-Submitted: auto-generated`, or from the null sender gets none; a remote
sender's reply is queued from <> (RFC 3834 §3) to the envelope sender (§4).
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import smtplib
from typing import Any

import pytest

from postroom.store.api import UserSettings

ALICE, BOB, PW = "alice@example.org", "bob@example.org", "autoreply-e2e-1"
AWAY = UserSettings(display_name="Alice Liddell", vacation=True, vacation_text="Away until Monday.", vacation_days=7)


@pytest.fixture
def srv(server: Any) -> Any:
    alice = server.add_user(ALICE, PW)
    server.add_user(BOB, PW)
    server.run(server.store.set_user_settings(alice.id, AWAY))
    return server


def send(server: Any, mail_from: str, extra: str = "", subject: str = "Budget", n: int = 1) -> None:
    raw = (f"From: Bob <{BOB}>\r\nTo: Alice <{ALICE}>\r\nSubject: {subject}\r\n"
           f"Message-ID: <m{n}-{subject.replace(' ', '')}@example.org>\r\n{extra}\r\nHello Alice.\r\n").encode()
    with smtplib.SMTP("127.0.0.1", server.port("smtp")) as c:
        c.sendmail(mail_from, [ALICE], raw)


def inbox(server: Any, user: str) -> list[email.message.EmailMessage]:
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.port("imaps"), ssl_context=server.tls_client_context())
    try:
        imap.login(user, PW)
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("SEARCH", "ALL")
        assert typ == "OK"
        out = []
        for uid in data[0].decode().split():
            typ, got = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            assert typ == "OK" and isinstance(got[0], tuple)
            out.append(email.message_from_bytes(got[0][1], policy=email.policy.default))
        return out
    finally:
        imap.logout()


def test_one_reply_per_sender_within_the_window(srv: Any) -> None:
    send(srv, BOB, n=1)
    replies = inbox(srv, BOB)
    assert len(replies) == 1
    r = replies[0]
    assert r["Auto-Submitted"] == "auto-replied"  # RFC 3834 §5
    assert r["Return-Path"] == "<>"  # §3: sent from the null reverse-path
    assert r["To"] == BOB and r["From"] == f"Alice Liddell <{ALICE}>"
    assert r["Subject"] == "Auto: Budget"
    assert r["In-Reply-To"] == "<m1-Budget@example.org>"
    assert "Away until Monday." in r.get_content()
    # The message itself reached alice, and a second one within 7 days gets no second reply.
    send(srv, BOB, n=2, subject="Budget again")
    assert len(inbox(srv, BOB)) == 1
    assert len(inbox(srv, ALICE)) == 2


@pytest.mark.parametrize("extra", ["Precedence: bulk\r\n", "List-Id: <budget.example.org>\r\n",
                                   "Auto-Submitted: auto-generated\r\n"])
def test_no_reply_to_bulk_list_or_automatic_mail(srv: Any, extra: str) -> None:
    send(srv, BOB, extra)
    assert len(inbox(srv, ALICE)) == 1
    assert inbox(srv, BOB) == []


def test_no_reply_to_the_null_sender_and_remote_replies_are_queued_from_it(srv: Any) -> None:
    send(srv, "")
    assert len(inbox(srv, ALICE)) == 1
    assert srv.run(srv.store.queue_list()) == [] and inbox(srv, BOB) == []
    send(srv, "Carol@Remote.TEST", n=3)
    [entry] = srv.run(srv.store.queue_list())
    assert entry.mail_from == "" and [r.rcpt for r in entry.recipients] == ["Carol@remote.test"]
    raw = srv.run(srv.store.read_message(entry.blob_id))
    assert b"\r\nAuto-Submitted: auto-replied\r\n" in raw and b"\r\nTo: Carol@remote.test\r\n" in raw


def test_a_reply_that_cannot_be_stored_does_not_fail_the_delivery(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    srv.run(srv.store.set_user_quota(BOB, storage=1, messages=None))  # bob's mailbox cannot take the reply
    caplog.set_level("INFO", logger="postroom.delivery")
    send(srv, BOB)  # smtplib raises unless the message is accepted (250)
    assert len(inbox(srv, ALICE)) == 1 and inbox(srv, BOB) == []
    assert any("auto-reply" in r.getMessage() and "result=failed" in r.getMessage() for r in caplog.records)


def test_no_reply_to_this_servers_own_list_address(srv: Any) -> None:
    """RFC 3834 §2, no responses to list traffic: a message whose envelope sender is one of this server's lists
    (here forged, without List-* fields) or a list's bounce address gets no reply, which the list would
    otherwise post to every member."""
    from postroom.store.api import ListPolicy

    srv.run(srv.store.create_list("club@example.org", BOB, ListPolicy.OPEN, bounce_address="club-bounces@example.org"))
    srv.run(srv.store.add_list_member("club@example.org", BOB))
    send(srv, "club@example.org", n=1)
    send(srv, "club-bounces@example.org", n=2)
    assert len(inbox(srv, ALICE)) == 2
    assert not [m for m in inbox(srv, BOB) if str(m["Subject"]).startswith("Auto:")]
