"""Submission: an authenticated user sends only as themselves, in the envelope and in the header (RFC 6409 §6.1),
so the queue never DKIM-signs someone else's From with our domain. smtplib with STARTTLS and AUTH; BDAT over a
raw TLS socket (smtplib has no CHUNKING)."""

from __future__ import annotations

import base64
import smtplib
from typing import Any

import pytest
from smtp_support import smtps_dialogue, submission_login

from postroom.store.api import ListPolicy

PW = "correct horse battery"
FORGED = (b"From: Bob <bob@example.test>\r\nTo: far@remote.test\r\nSubject: pay this invoice\r\n\r\n"
          b"Please pay.\r\n")


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("alice@example.test", PW)
    server.add_user("bob@example.test", PW)
    server.add_user("carol@example.test", PW)
    return server


def submit(srv: Any) -> smtplib.SMTP:
    return submission_login(srv, "alice@example.test", PW)


def nothing_stored(srv: Any) -> None:
    async def go() -> tuple[int, int]:
        user = await srv.store.get_user("carol@example.test")
        box = await srv.store.get_mailbox(user.id, "INBOX")
        return len(await srv.store.list_messages(box.id)), len(await srv.store.queue_list())

    assert srv.run(go()) == (0, 0)


def test_header_from_of_another_user_is_refused_at_end_of_data(srv: Any) -> None:
    with submit(srv) as c:
        for rcpts in (["far@remote.test"], ["carol@example.test"]):
            with pytest.raises(smtplib.SMTPDataError) as info:
                c.sendmail("alice@example.test", rcpts, FORGED)
            assert info.value.smtp_code == 553
            assert info.value.smtp_error.startswith(b"5.7.1 From address <bob@example.test> does not belong")
        # Several From addresses (RFC 5322 §3.6.2): every one must be hers, and so must the Sender.
        for head in (b"From: alice@example.test, bob@example.test\r\nSender: alice@example.test\r\n",
                     b"From: alice@example.test\r\nSender: bob@example.test\r\n"):
            with pytest.raises(smtplib.SMTPDataError) as info:
                c.sendmail("alice@example.test", ["carol@example.test"], head + b"Subject: x\r\n\r\nhi\r\n")
            assert info.value.smtp_code == 553
    nothing_stored(srv)


def test_own_detail_alias_and_owned_list_are_accepted(srv: Any) -> None:
    srv.run(srv.store.add_alias("billing@example.test", ["alice@example.test"]))
    srv.run(srv.store.create_list("news@example.test", "alice@example.test", ListPolicy.OPEN))
    with submit(srv) as c:
        for head in (b"From: Alice <alice@example.test>\r\n", b"From: alice+shop@example.test\r\n",
                     b"From: Billing <billing@example.test>\r\nSender: alice@example.test\r\n",
                     b"From: News <news@example.test>\r\n"):
            assert c.sendmail("alice@example.test", ["carol@example.test"], head + b"Subject: x\r\n\r\nhi\r\n") == {}


def test_catch_all_makes_no_address_hers_to_send_as(srv: Any) -> None:
    srv.run(srv.store.add_alias("@example.test", ["alice@example.test"]))
    with submit(srv) as c:
        code, text = c.mail("ceo@example.test")  # the envelope rule: the same answer as the header's
        assert (code, text) == (553, b"5.7.1 Sender address does not belong to the authenticated user")
        c.rset()
        with pytest.raises(smtplib.SMTPDataError) as info:
            c.sendmail("alice@example.test", ["carol@example.test"],
                       b"From: CEO <ceo@example.test>\r\nSubject: x\r\n\r\nhi\r\n")
        assert info.value.smtp_code == 553
    nothing_stored(srv)


def test_bdat_with_forged_from_is_refused_at_last_chunk(srv: Any) -> None:
    token = base64.b64encode(f"\0alice@example.test\0{PW}".encode()).decode()
    with smtps_dialogue(srv) as (s, reply):
        for line in (b"EHLO laptop", f"AUTH PLAIN {token}".encode(), b"MAIL FROM:<alice@example.test>",
                     b"RCPT TO:<carol@example.test>"):
            s.sendall(line + b"\r\n")
            assert reply()[:1] == b"2"
        head, rest = FORGED[:20], FORGED[20:]
        s.sendall(b"BDAT %d\r\n%s" % (len(head), head))
        assert reply().startswith(b"250")
        s.sendall(b"BDAT %d LAST\r\n%s" % (len(rest), rest))
        assert reply().startswith(b"553 5.7.1 From address <bob@example.test>")
    nothing_stored(srv)


# ---- large submissions are staged in a file (issue 11 item 2): the header is still checked and completed

def large(head: bytes, size: int = 3 * 1024 * 1024) -> bytes:
    """`head` (header fields and the blank line) and a body of `size` bytes: past the staging threshold."""
    return head + (b"line of a large attachment, base64 or not\r\n" * (size // 43 + 1))


def test_large_submission_with_forged_from_is_refused(srv: Any) -> None:
    with submit(srv) as c:
        with pytest.raises(smtplib.SMTPDataError) as info:
            c.sendmail("alice@example.test", ["carol@example.test"], large(FORGED.split(b"\r\n\r\n")[0] + b"\r\n\r\n"))
        assert info.value.smtp_code == 553
    nothing_stored(srv)


def test_large_submission_is_completed_and_a_huge_header_refused(srv: Any) -> None:
    # RFC 6409 §8.3/§8.4: Date and Message-ID are added to a staged message too, as a prefix of the file's bytes.
    own = b"From: Alice <alice@example.test>\r\nTo: carol@example.test\r\nSubject: big\r\n\r\n"
    with submit(srv) as c:
        c.sendmail("alice@example.test", ["carol@example.test"], large(own))
        # A From the server could not see (past the 256 KiB it keeps of a staged message's start) is refused.
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 900) for i in range(300))
        with pytest.raises(smtplib.SMTPDataError) as info:
            c.sendmail("alice@example.test", ["carol@example.test"],
                       large(filler + b"From: Bob <bob@example.test>\r\n\r\n"))
        assert (info.value.smtp_code, info.value.smtp_error[:5]) == (552, b"5.3.4")

    async def stored() -> list[bytes]:
        user = await srv.store.get_user("carol@example.test")
        box = await srv.store.get_mailbox(user.id, "INBOX")
        return [await srv.store.read_message(m.blob_id) for m in await srv.store.list_messages(box.id)]

    [raw] = srv.run(stored())
    header = raw[:raw.index(b"\r\n\r\n")]
    assert b"\r\nDate: " in header and b"\r\nMessage-ID: <" in header
    assert raw.endswith(large(own)[-1000:]) and raw.index(b"Message-ID: <") < raw.index(b"From: Alice")
