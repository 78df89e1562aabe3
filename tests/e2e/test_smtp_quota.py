"""Quotas at SMTP (issue 13 item 6), end to end with smtplib: a user over quota is refused at RCPT with `452
4.2.2`, a message larger than the quota at the end of DATA with `552 5.2.2` (RFC 3463 §3.3 X.2.2 "mailbox
full"; RFC 5321 §4.2.2), a declared SIZE that cannot fit at RCPT (RFC 1870 §6.2), and another recipient of the
same message still gets it while the sender gets a failure report. Every refusal is logged with its reason.
Warning mails at 80 % and 95 %, once per crossing, from postmaster into the INBOX."""

from __future__ import annotations

import logging
import shutil
import smtplib
import subprocess
from typing import Any

import pytest

FULL = "full@example.org"
ROOMY = "roomy@example.org"
SENDER = "sender@example.org"
QUOTA = 20_000


def body(size: int, subject: str = "quota") -> bytes:
    head = f"From: someone@far.test\r\nTo: {FULL}\r\nSubject: {subject}\r\n\r\n".encode()
    line = b"q" * 98 + b"\r\n"
    return head + line * max(0, (size - len(head)) // len(line))


@pytest.fixture
def srv(server: Any) -> Any:
    for address in (FULL, ROOMY, SENDER):
        server.add_user(address)
    server.run(server.store.set_user_quota(FULL, storage=QUOTA))
    return server


def usage(srv: Any, address: str) -> tuple[int, int]:
    user = srv.run(srv.store.get_user(address))
    q = srv.run(srv.store.get_quota(user.id))
    return q.storage, q.messages


def inbox_subjects(srv: Any, address: str) -> list[bytes]:
    user = srv.run(srv.store.get_user(address))
    box = srv.run(srv.store.get_mailbox(user.id, "INBOX"))
    out = []
    for m in srv.run(srv.store.list_messages(box.id)):
        raw = srv.run(srv.store.read_message(m.blob_id))
        subject = next((line for line in raw.split(b"\r\n") if line.lower().startswith(b"subject:")), b"")
        out.append(subject[8:].strip())
    return out


def test_message_larger_than_the_quota_is_552_and_rcpt_of_a_full_user_is_452(
        srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as c:
        c.ehlo("client.test")
        # No SIZE: the RCPT is accepted (the user has room), the data alone exceeds the quota.
        c.mail("someone@far.test")
        assert c.rcpt(FULL)[0] == 250
        code, text = c.data(body(QUOTA + 5000))
        assert (code, text[:5]) == (552, b"5.2.2"), text
        # A declared SIZE larger than the quota: refused at RCPT, permanently (RFC 1870 §6.2).
        c.mail("someone@far.test", [f"SIZE={QUOTA + 1}"])
        code, text = c.rcpt(FULL)
        assert (code, text[:5]) == (552, b"5.2.2"), text
        c.rset()
        # Fill most of the mailbox, then a full user is refused at RCPT, temporarily.
        c.mail("someone@far.test")
        c.rcpt(FULL)
        assert c.data(body(QUOTA - 3000, "fills it"))[0] == 250  # and a warning (80 %) comes with it
        storage, _ = usage(srv, FULL)
        assert QUOTA - 3000 < storage < QUOTA
        c.mail("someone@far.test")
        assert c.rcpt(FULL)[0] == 250  # not full yet: some octets left
        code, text = c.data(body(4000, "one too many"))  # does not fit now: temporary
        assert (code, text[:5]) == (452, b"4.2.2"), text
    srv.run(srv.store.set_user_quota(FULL, storage=storage))  # exactly full now
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as c:
        c.ehlo("client.test")
        c.mail("someone@far.test")
        code, text = c.rcpt(FULL)
        assert (code, text[:5]) == (452, b"4.2.2"), text
        assert c.noop()[0] == 250
    assert usage(srv, FULL)[0] == storage  # nothing more was stored
    # the quota's own lines (the SMTP session's generic refusal line, "refused protocol=...", comes beside them)
    refused = [r.getMessage() for r in caplog.records
               if r.getMessage().startswith("refused ") and "protocol=" not in r.getMessage()]
    assert len(refused) == 4, refused
    assert all("reason=over-quota" in r and f"rcpt={FULL}" in r for r in refused), refused
    assert any("code=\"552 5.2.2\"" in r and "stage=data" in r for r in refused), refused
    assert any("code=\"452 4.2.2\"" in r and "stage=rcpt" in r for r in refused), refused


def test_other_recipients_still_get_it_and_the_sender_gets_a_failure_report(srv: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as c:
        c.ehlo("client.test")
        c.mail(SENDER)
        assert c.rcpt(FULL)[0] == 250
        assert c.rcpt(ROOMY)[0] == 250
        code, text = c.data(body(QUOTA + 1000, "for both"))
        assert code == 250, text
    assert b"for both" in inbox_subjects(srv, ROOMY)
    assert usage(srv, FULL) == (0, 0)
    reports = [s for s in inbox_subjects(srv, SENDER)]
    assert len(reports) == 1, reports  # one DSN, about the recipient over quota
    user = srv.run(srv.store.get_user(SENDER))
    box = srv.run(srv.store.get_mailbox(user.id, "INBOX"))
    dsn = srv.run(srv.store.read_message(srv.run(srv.store.list_messages(box.id))[0].blob_id))
    assert b"Action: failed" in dsn and b"Status: 5.2.2" in dsn and FULL.encode() in dsn, dsn


def test_warnings_at_80_and_95_percent_once_per_crossing(srv: Any) -> None:
    def send(size: int, subject: str) -> None:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as c:
            c.sendmail("someone@far.test", [FULL], body(size, subject))

    send(10_000, "half")  # ~50 %: no warning
    assert inbox_subjects(srv, FULL) == [b"half"]
    send(6_000, "past 80")  # ~83 %
    send(300, "still 80")  # still between 80 and 95: no second warning
    subjects = inbox_subjects(srv, FULL)
    assert [s for s in subjects if b"full" in s] == [b"Your mailbox is 80 % full"], subjects
    send(1_500, "past 95")  # ~97 %
    subjects = inbox_subjects(srv, FULL)
    assert [s for s in subjects if b"full" in s] == [b"Your mailbox is 80 % full", b"Your mailbox is 95 % full"]
    user = srv.run(srv.store.get_user(FULL))
    box = srv.run(srv.store.get_mailbox(user.id, "INBOX"))
    warning = srv.run(srv.store.read_message(srv.run(srv.store.list_messages(box.id))[-1].blob_id))
    assert b"From: postmaster@example.org" in warning and b"Return-Path: <>" in warning
    # Usage drops below 80 %: the next crossing warns again.
    first = [m.uid for m in srv.run(srv.store.list_messages(box.id))][:1]
    srv.run(srv.store.remove_messages(box.id, first))  # the 10 KB one
    send(7_000, "back up")  # ~85 %
    subjects = inbox_subjects(srv, FULL)
    assert sum(1 for s in subjects if s == b"Your mailbox is 80 % full") + sum(
        1 for s in subjects if s == b"Your mailbox is 95 % full") == 3, subjects


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (apt-get install swaks)")
def test_swaks_sees_552_for_a_message_larger_than_the_quota_and_452_once_full(srv: Any) -> None:
    def swaks(size: int) -> subprocess.CompletedProcess[str]:
        data = "Subject: via swaks\r\n\r\n" + ("s" * 98 + "\r\n") * (size // 100)
        return subprocess.run(
            ["swaks", "--server", "127.0.0.1", "--port", str(srv.port("smtp")), "--from", "someone@far.test",
             "--to", FULL, "--data", data],
            capture_output=True, text=True, timeout=60)

    result = swaks(QUOTA + 2000)
    assert result.returncode != 0 and "552 5.2.2" in result.stdout, result.stdout
    assert swaks(500).returncode == 0
    storage, _ = usage(srv, FULL)
    srv.run(srv.store.set_user_quota(FULL, storage=storage))  # now exactly full: RCPT is refused
    result = swaks(500)
    assert result.returncode != 0 and "<** 452 4.2.2" in result.stdout, result.stdout
    assert usage(srv, FULL) == (storage, 1)


def test_aliases_and_lists_leave_out_only_the_full_mailbox(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    from postroom.store.api import ListPolicy

    caplog.set_level(logging.INFO)
    srv.run(srv.store.add_alias("both@example.org", [FULL, ROOMY]))
    srv.run(srv.store.create_list("team@example.org", SENDER, ListPolicy.OPEN))
    for member in (FULL, ROOMY):
        srv.run(srv.store.add_list_member("team@example.org", member))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=30) as c:
        c.ehlo("client.test")
        c.mail(SENDER)
        assert c.rcpt("both@example.org")[0] == 250  # an alias of two: accepted, one of them has room
        assert c.data(body(QUOTA + 1000, "to the alias"))[0] == 250
        c.mail(SENDER)
        assert c.rcpt("team@example.org")[0] == 250
        assert c.data(body(QUOTA + 1000, "to the list"))[0] == 250
    roomy = inbox_subjects(srv, ROOMY)
    assert b"to the alias" in roomy and any(b"to the list" in s for s in roomy), roomy
    assert usage(srv, FULL) == (0, 0)
    assert len(inbox_subjects(srv, SENDER)) == 1  # the alias's failure report; the list's copy is the list's
    refused = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused ")]
    assert any("stage=data" in r for r in refused) and any("stage=list" in r for r in refused), refused
