"""SMTP end to end: a real server on loopback ports, driven by smtplib, aiosmtplib, swaks, curl and raw sockets;
every message read back from the store byte-exact below the headers the server prepends."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import email.utils
import hashlib
import hmac
import logging
import os
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time
from typing import Any

import aiosmtplib
import pytest
from smtp_support import inbox, smtps_dialogue

from postroom.store.api import ListPolicy, QueueEntry

PW = "correct horse battery"
BODY = (b"From: Bob <bob@remote.test>\r\nTo: alice@example.org\r\nSubject: hello\r\n\r\n"
        b"Hi Alice,\r\n.leading dot\r\n\r\n")
# What alice submits: her own From (submission refuses anyone else's, RFC 6409 §6.1).
SUBMITTED = BODY.replace(b"From: Bob <bob@remote.test>", b"From: Alice <alice@example.org>")


@pytest.fixture
def server_overrides() -> dict[str, Any]:
    return {"limits": {"message_size": 200_000, "recipients": 10, "errors_per_session": 8},
            "auth": {"max_failures_per_user": 3, "max_failures_per_ip": 100}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("alice@example.org", PW)
    server.add_user("carol@example.org", PW)
    return server


def queue(server: Any) -> list[QueueEntry]:
    return server.run(server.store.queue_list())


def split_prepended(stored: bytes) -> tuple[list[bytes], bytes]:
    """Return-Path and the Received header (folded lines), and the rest (what the client sent)."""
    assert stored.startswith(b"Return-Path: <")
    rp_end = stored.index(b"\r\n") + 2
    rest = stored[rp_end:]
    assert rest.startswith(b"Received: ")
    m = re.match(rb"Received: [^\r]*\r\n(?:\t[^\r]*\r\n)*", rest)
    assert m is not None
    return [stored[:rp_end], m.group(0)], rest[m.end():]


def completed(rest: bytes) -> bytes:
    """What a submission client sent, below the Date and Message-ID the server added (RFC 6409 §8.3, §8.4)."""
    m = re.match(rb"Date: [^\r]+\r\nMessage-ID: <[0-9a-f]{32}@localhost>\r\n", rest)
    assert m is not None, rest[:200]
    return rest[m.end():]


def raw_dialogue(port: int, data: bytes, until: bytes = b"221 ", tls: ssl.SSLContext | None = None) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        s: socket.socket = tls.wrap_socket(sock) if tls else sock
        s.sendall(data)
        out = b""
        while until not in out:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


# --------------------------------------------------------------------------------------------------------
# Inbound (MX)


def test_smtplib_to_local_user_byte_exact(srv: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        code, caps = c.ehlo("client.remote.test")
        assert code == 250
        for kw in (b"PIPELINING", b"SIZE 200000", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES",
                   b"CHUNKING", b"DSN", b"STARTTLS"):
            assert kw in caps
        assert b"AUTH" not in caps  # AUTH only on the submission listeners
        refused = c.sendmail("bob@remote.test", ["alice@example.org"], BODY)
        assert refused == {}
    [stored] = inbox(srv, "alice@example.org")
    (rp, received), rest = split_prepended(stored)
    assert rp == b"Return-Path: <bob@remote.test>\r\n"
    assert rest == BODY  # byte-exact, the dot-stuffed line restored
    assert received.startswith(b"Received: from client.remote.test ([127.0.0.1])\r\n\tby localhost (Postroom) "
                               b"with ESMTP id ")
    assert b"for <alice@example.org>; " in received


def test_aiosmtplib_starttls_and_multiple_recipients(srv: Any) -> None:
    async def send() -> Any:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port("smtp"), start_tls=True,
                                 tls_context=srv.tls_client_context(), timeout=10)
        async with client:
            return await client.sendmail("bob@remote.test", ["alice@example.org", "Carol@Example.ORG"], BODY)

    errors, reply = asyncio.run(send())
    assert errors == {} and reply.startswith("2.0.0 OK queued as")
    for who in ("alice@example.org", "carol@example.org"):
        [stored] = inbox(srv, who)
        (_, received), rest = split_prepended(stored)
        assert rest == BODY
        assert b"with ESMTPS id" in received and b"(using TLSv1." in received
        assert b"for <" not in received  # two recipients: none named (RFC 5321 §7.2)


def test_unknown_user_and_relay_refused_at_rcpt(srv: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("x")
        c.mail("bob@remote.test")
        assert c.rcpt("nobody@example.org") == (550, b"5.1.1 No such user here")
        assert c.rcpt("someone@elsewhere.test") == (550, b"5.7.1 Relaying denied")
        assert c.rcpt("alice@example.org")[0] == 250
        assert c.data(BODY)[0] == 250
    assert len(inbox(srv, "alice@example.org")) == 1
    assert queue(srv) == []


def test_bdat_8bit_raw_socket(srv: Any) -> None:
    octets = bytes(b for b in range(256) if b not in (0, 10, 13))
    payload = b"Subject: bin\r\n\r\n" + octets + b"\r\n.\r\nnot the end\r\n"
    script = (b"EHLO raw.test\r\nMAIL FROM:<bob@remote.test> BODY=8BITMIME\r\nRCPT TO:<alice@example.org>\r\n"
              b"BDAT 100\r\n" + payload[:100] + b"BDAT %d LAST\r\n" % (len(payload) - 100) + payload[100:] +
              b"QUIT\r\n")
    out = raw_dialogue(srv.port("smtp"), script)
    assert b"250 2.0.0 100 octets received\r\n" in out and b"250 2.0.0 OK queued as" in out
    [stored] = inbox(srv, "alice@example.org")
    assert split_prepended(stored)[1] == payload


@pytest.mark.parametrize("payload", [
    b"Subject: bin\r\n\r\n" + bytes(range(256)) + b"\r\n.\r\nnot the end\n",  # binary: NUL, bare CR and LF
    b"Subject: nul\r\n\r\nhi\r\n\x00.\r\n",  # issue 11 item 7: NUL before the dot
])
def test_bdat_stray_cr_lf_or_nul_refused(srv: Any, payload: bytes) -> None:
    # BINARYMIME is not offered, so BDAT carries 7bit/8bit lines (RFC 3030 §3; RFC 5322 §2.3, RFC 2045 §2.8).
    script = (b"EHLO raw.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.org>\r\n"
              b"BDAT %d LAST\r\n" % len(payload) + payload + b"QUIT\r\n")
    out = raw_dialogue(srv.port("smtp"), script)
    assert b"550 5.6.0" in out
    assert inbox(srv, "alice@example.org") == []


def test_data_nul_refused(srv: Any) -> None:
    # issue 11 item 7: "\r\n\x00.\r\n" was accepted and forwarded verbatim.
    script = (b"EHLO raw.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
              b"Subject: a\r\n\r\nx\r\n\x00.\r\n.\r\nQUIT\r\n")
    out = raw_dialogue(srv.port("smtp"), script)
    assert b"550 5.6.0 Message refused: NUL" in out
    assert inbox(srv, "alice@example.org") == []


def test_pipelined_batch_in_one_write(srv: Any) -> None:
    script = (b"EHLO raw.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.org>\r\n"
              b"RCPT TO:<nobody@example.org>\r\nDATA\r\nSubject: p\r\n\r\nx\r\n.\r\nQUIT\r\n")
    out = raw_dialogue(srv.port("smtp"), script)
    codes = [ln[:3] for ln in out.split(b"\r\n") if ln[3:4] == b" "]
    assert codes == [b"220", b"250", b"250", b"250", b"550", b"354", b"250", b"221"]


def test_smuggling_bare_lf_refused(srv: Any) -> None:
    script = (b"EHLO raw.test\r\nMAIL FROM:<bob@remote.test>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
              b"Subject: a\r\n\r\nx\n.\r\nMAIL FROM:<admin@example.org>\r\nRCPT TO:<carol@example.org>\r\n"
              b"DATA\r\nSubject: smuggled\r\n\r\n.\r\nQUIT\r\n")
    out = raw_dialogue(srv.port("smtp"), script)
    assert b"550 5.6.0" in out
    assert inbox(srv, "alice@example.org") == [] and inbox(srv, "carol@example.org") == []


def test_oversize_loop_and_error_limit(srv: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("x")
        assert c.mail("bob@remote.test", ["SIZE=300000"]) == (552, b"5.3.4 Message size exceeds the fixed maximum "
                                                                    b"message size")
        c.rset()
        c.mail("bob@remote.test")  # no SIZE: the limit is found in the data
        c.rcpt("alice@example.org")
        assert c.data(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 250)[0] == 552
        looped = b"".join(b"Received: from hop%d by x; Mon, 1 Jan 2024 00:00:00 +0000\r\n" % i for i in range(50))
        with pytest.raises(smtplib.SMTPDataError) as info:
            c.sendmail("bob@remote.test", ["alice@example.org"], looped + b"Subject: loop\r\n\r\nx\r\n")
        assert (info.value.smtp_code, info.value.smtp_error[:5]) == (554, b"5.4.6")
    assert inbox(srv, "alice@example.org") == []
    out = raw_dialogue(srv.port("smtp"), b"EHLO x\r\n" + b"BOGUS\r\n" * 20, until=b"421 ")
    assert out.count(b"500 5.5.2") == 8 and out.endswith(b"421 4.7.0 Too many errors, closing connection\r\n")


def test_starttls_with_pipelined_plaintext_refused(srv: Any) -> None:
    out = raw_dialogue(srv.port("smtp"), b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<a@b.test>\r\n", until=b"421 ")
    assert out.endswith(b"421 4.7.0 Plaintext pipelined after STARTTLS, closing connection\r\n")


def test_postmaster_without_domain(srv: Any) -> None:
    srv.run(srv.store.add_domain("localhost"))
    srv.add_user("postmaster@localhost", PW)
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("bob@remote.test", ["<Postmaster>"], BODY) == {}
    assert len(inbox(srv, "postmaster@localhost")) == 1


def test_postmaster_works_right_after_domain_add(srv: Any) -> None:
    """RFC 5321 §4.5.1: every domain MUST accept mail for postmaster, whose local part is case-insensitive
    (§2.4), and the bare `<Postmaster>` (§4.1.1.3); nobody has to add an alias first."""
    srv.run(srv.store.add_domain("example.test"))  # a new domain: no user, no alias

    def send(rcpt: str) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
            c.ehlo("client.remote.test")
            c.mail("")  # a bounce: the null sender, as mail to postmaster often is
            code, text = c.rcpt(rcpt)
            if code == 250:
                c.data(BODY)
            return code, text

    # no user in example.test: the server's administrator, the first user of the first domain (alice)
    for rcpt in ("postmaster@example.test", "PostMaster@EXAMPLE.test", "<Postmaster>"):
        assert send(rcpt)[0] == 250
    assert len(inbox(srv, "alice@example.org")) == 3
    srv.add_user("bob@example.test", PW)  # the domain's first user
    srv.add_user("dave@example.test", PW)
    assert send("POSTMASTER@example.test")[0] == 250
    assert len(inbox(srv, "bob@example.test")) == 1 and len(inbox(srv, "dave@example.test")) == 0
    srv.run(srv.store.add_alias("postmaster@example.test", ["dave@example.test"]))  # an explicit alias wins
    assert send("postmaster@example.test")[0] == 250
    assert len(inbox(srv, "dave@example.test")) == 1 and len(inbox(srv, "bob@example.test")) == 1


def test_postmaster_without_any_user_is_a_temporary_refusal(server: Any) -> None:
    # Nowhere to put it yet: 451 4.3.5 keeps the message with the sender (it retries), never lost or bounced.
    server.run(server.store.add_domain("example.test"))
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), timeout=10) as c:
        c.ehlo("client.remote.test")
        c.mail("bob@remote.test")
        code, text = c.rcpt("postmaster@example.test")
        assert (code, text[:5]) == (451, b"4.3.5")
        assert c.rcpt("nobody@example.test")[0] == 550


def test_quoted_local_parts_get_a_definite_answer(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    """RFC 5321 §4.1.2: a Quoted-string local part is valid. It is 250 when the mailbox exists and 550 5.1.1
    when it does not, never 451 (which makes senders retry for days) and never a traceback."""
    def rcpt(*paths: str) -> list[tuple[int, bytes]]:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
            c.ehlo("client.remote.test")
            c.mail("bob@remote.test")
            # docmd: smtplib.rcpt() would re-quote the path through email.utils
            return [c.docmd(f"RCPT TO:{p}") for p in paths]

    forms = ('<"john doe"@example.org>', '<"a\\ b"@example.org>')
    assert [(code, text[:5]) for code, text in rcpt(*forms)] == [(550, b"5.1.1")] * 2
    srv.add_user('"John Doe"@example.org', PW)
    srv.run(srv.store.add_alias('"a b"@example.org', ["carol@example.org"]))
    assert [code for code, _ in rcpt(*forms, '<"alice"@example.org>', '<"no body"@example.org>')] \
        == [250, 250, 250, 550]
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("client.remote.test")
        c.mail("bob@remote.test")
        assert c.docmd('RCPT TO:<"john\\ doe"@EXAMPLE.org>')[0] == 250  # the same mailbox, spelled otherwise
        assert c.data(BODY)[0] == 250
    assert len(inbox(srv, '"john doe"@example.org')) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --------------------------------------------------------------------------------------------------------
# Routing: +detail, aliases, catch-all, forwards


def test_detail_alias_catchall_and_forward(srv: Any) -> None:
    srv.run(srv.store.add_alias("info@example.org", ["alice@example.org", "carol@example.org"]))
    srv.run(srv.store.add_alias("fwd@example.org", ["someone@far.test"]))
    srv.run(srv.store.add_alias("carol@example.org", ["carol@example.org", "carol@home.test"]))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("bob@remote.test", ["alice+news@example.org"], BODY) == {}
        assert c.sendmail("bob@remote.test", ["info@example.org", "alice@example.org"], BODY) == {}
        assert c.sendmail("bob@remote.test", ["fwd@example.org"], BODY) == {}
        c.ehlo("x")
        c.mail("bob@remote.test")
        assert c.rcpt("whoever@example.org")[0] == 550
        c.rset()
    assert len(inbox(srv, "alice@example.org")) == 2  # +detail, then one copy although named twice
    assert len(inbox(srv, "carol@example.org")) == 1  # alias to herself keeps a local copy ...
    rcpts = sorted(r.rcpt for e in queue(srv) for r in e.recipients)
    assert rcpts == ["carol@home.test", "someone@far.test"]  # ... and forwards one
    srv.run(srv.store.add_alias("@example.org", ["carol@example.org"]))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("bob@remote.test", ["whoever@example.org"], BODY) == {}
    assert len(inbox(srv, "carol@example.org")) == 2


# --------------------------------------------------------------------------------------------------------
# Mailing lists


def test_list_open_members_and_headers(srv: Any) -> None:
    srv.run(srv.store.create_list("team@example.org", "alice@example.org", ListPolicy.MEMBERS))
    for m in ("alice@example.org", "carol@example.org", "dave@far.test"):
        srv.run(srv.store.add_list_member("team@example.org", m))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("x")
        c.mail("stranger@remote.test")
        assert c.rcpt("team@example.org") == (550, b"5.7.1 Only members may post to this list")
        c.rset()
        assert c.sendmail("dave@far.test", ["team@example.org"], BODY) == {}
    for who in ("alice@example.org", "carol@example.org"):
        [stored] = inbox(srv, who)
        assert stored.startswith(b"Return-Path: <team-bounces@example.org>\r\nList-Id: <team.example.org>\r\n"
                                 b"List-Post: <mailto:team@example.org>\r\nList-Unsubscribe: ")
        assert stored.endswith(BODY)
    [entry] = queue(srv)
    assert entry.mail_from == "team-bounces@example.org" and [r.rcpt for r in entry.recipients] == ["dave@far.test"]


def test_list_owner_may_post_to_members_only_list(srv: Any) -> None:
    # Issue 13: the owner of a members-only list was refused on their own list; owners may post (not members).
    srv.run(srv.store.create_list("staff@example.org", "Alice@example.org", ListPolicy.MEMBERS))
    srv.run(srv.store.add_list_member("staff@example.org", "carol@example.org"))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("alice@example.org", ["staff@example.org"], BODY) == {}  # owner, case aside
        c.ehlo("x")
        c.mail("bob@example.org")  # a local user who is neither owner nor member: still refused
        assert c.rcpt("staff@example.org") == (550, b"5.7.1 Only members may post to this list")
        c.rset()
    [stored] = inbox(srv, "carol@example.org")
    assert stored.endswith(BODY)


def test_list_owner_post_to_moderated_list_is_not_held(srv: Any) -> None:
    # The owner is the moderator: holding their post for their own approval would only add a round trip.
    srv.run(srv.store.create_list("mod2@example.org", "alice@example.org", ListPolicy.MODERATED))
    srv.run(srv.store.add_list_member("mod2@example.org", "carol@example.org"))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("alice@example.org", ["mod2@example.org"], BODY) == {}
    [stored] = inbox(srv, "carol@example.org")
    assert stored.endswith(BODY)
    assert inbox(srv, "alice@example.org") == []  # no approval request went to the owner


def test_list_moderated_hold_and_approve(srv: Any) -> None:
    srv.run(srv.store.create_list("mod@example.org", "alice@example.org", ListPolicy.MODERATED))
    srv.run(srv.store.add_list_member("mod@example.org", "carol@example.org"))
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("bob@remote.test", ["mod@example.org"], BODY) == {}
    assert inbox(srv, "carol@example.org") == []
    [notice] = inbox(srv, "alice@example.org")
    assert b"Approval needed: hello" in notice
    approve = re.search(rb"mod\+approve-[0-9a-f]{32}@example\.org", notice)
    reject = re.search(rb"mod\+reject-[0-9a-f]{32}@example\.org", notice)
    assert approve and reject
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        c.ehlo("x")
        c.mail("bob@remote.test")  # not the owner
        assert c.rcpt(approve.group(0).decode())[0] == 550
        c.rset()
        assert c.sendmail("alice@example.org", [approve.group(0).decode()], b"Subject: ok\r\n\r\nyes\r\n") == {}
        c.ehlo("x")
        c.mail("alice@example.org")
        assert c.rcpt(approve.group(0).decode())[0] == 550  # a token works once
        assert c.rcpt(reject.group(0).decode())[0] == 550
        c.rset()
    [post] = inbox(srv, "carol@example.org")
    assert b"List-Id: <mod.example.org>" in post and post.endswith(BODY)


# --------------------------------------------------------------------------------------------------------
# Submission


def test_submission_requires_tls_then_auth_then_own_sender(srv: Any) -> None:
    srv.run(srv.store.add_alias("sales@example.org", ["alice@example.org"]))
    with smtplib.SMTP("127.0.0.1", srv.port("submission"), timeout=10) as c:
        code, caps = c.ehlo("laptop")
        assert b"STARTTLS" in caps and b"AUTH" not in caps
        assert c.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUub3JnAHg=")[0] == 530
        assert c.mail("alice@example.org")[0] == 530
        c.starttls(context=srv.tls_client_context())
        code, caps = c.ehlo("laptop")
        assert b"AUTH PLAIN LOGIN SCRAM-SHA-256" in caps and b"STARTTLS" not in caps
        assert c.mail("alice@example.org") == (530, b"5.7.0 Authentication required")
        c.rset()
        c.login("alice@example.org", PW)
        assert c.mail("carol@example.org")[0] == 553
        c.rset()
        assert c.mail("")[0] == 553
        c.rset()
        for sender in ("alice@example.org", "Alice+x@example.org", "sales@example.org"):
            assert c.sendmail(sender, ["carol@example.org"], SUBMITTED) == {}
        errors = c.sendmail("alice@example.org", ["far@remote.test"], SUBMITTED,
                            mail_options=["RET=HDRS", "ENVID=abc+2B1"],
                            rcpt_options=["NOTIFY=FAILURE,DELAY", "ORCPT=rfc822;far@remote.test"])
        assert errors == {}
    stored = inbox(srv, "carol@example.org")
    assert len(stored) == 3
    (_, received), rest = split_prepended(stored[0])
    assert re.match(rb"Date: [^\r]+\r\nMessage-ID: <[0-9a-f]{32}@localhost>\r\n", rest)  # RFC 6409 §8.3/8.4
    assert rest.endswith(SUBMITTED)
    assert b"with ESMTPSA id" in received and b"authenticated as alice@example.org" in received
    [entry] = queue(srv)
    assert (entry.mail_from, entry.ret, entry.envid) == ("alice@example.org", "HDRS", "abc+2B1")
    [r] = entry.recipients
    assert (r.rcpt, r.notify, r.orcpt) == ("far@remote.test", "FAILURE,DELAY", "rfc822;far@remote.test")


def test_submission_completes_date_and_message_id(srv: Any, india_time: None) -> None:
    """RFC 6409 §8.3 (Date) and §8.4 (Message-ID): an MSA adds what a submitted message lacks, before it is
    delivered or queued; the Date is in the server's zone with its real offset (RFC 5322 §3.3), the Message-ID
    has the server's host name. Mail arriving on the MX port is not changed."""
    bare = b"From: alice@example.org\r\nTo: carol@example.org\r\nSubject: no date\r\n\r\nbody\r\n"
    dated = b"Date: Mon, 1 Jan 2024 10:00:00 +0100\r\nMessage-ID: <given@x.test>\r\n" + bare
    with smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), timeout=10,
                          context=srv.tls_client_context()) as c:
        c.login("alice@example.org", PW)
        before = time.time()
        assert c.sendmail("alice@example.org", ["carol@example.org", "far@remote.test"], bare) == {}
        after = time.time()
        assert c.sendmail("alice@example.org", ["carol@example.org"], dated) == {}
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("bob@remote.test", ["carol@example.org"], bare) == {}
    first, second, mx = [split_prepended(m)[1] for m in inbox(srv, "carol@example.org")]
    m = re.match(rb"Date: ([^\r]+)\r\nMessage-ID: <[0-9a-f]{32}@localhost>\r\n", first)
    assert m is not None and first[m.end():] == bare
    date = email.utils.parsedate_to_datetime(m.group(1).decode())
    assert m.group(1).endswith(b" +0530") and before - 1 <= date.timestamp() <= after + 1
    assert second == dated and mx == bare  # complete messages and MX mail: not a byte changed
    [entry] = queue(srv)  # the queued copy (to be DKIM-signed when sent) is the completed one
    queued = srv.run(srv.store.read_message(entry.blob_id))
    assert split_prepended(b"Return-Path: <x>\r\n" + queued)[1] == first


def test_submissions_implicit_tls_aiosmtplib(srv: Any) -> None:
    async def send() -> Any:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=srv.port("submissions"), use_tls=True,
                                 tls_context=srv.tls_client_context(), timeout=10)
        async with client:
            await client.login("alice@example.org", PW)
            return await client.sendmail("alice@example.org", ["carol@example.org"], SUBMITTED)

    errors, _ = asyncio.run(send())
    assert errors == {}
    [stored] = inbox(srv, "carol@example.org")
    assert completed(split_prepended(stored)[1]) == SUBMITTED


def test_auth_lockout_per_user(srv: Any) -> None:
    ctx = srv.tls_client_context()
    with smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), timeout=10, context=ctx) as c:
        c.ehlo("x")

        def plain(password: str) -> tuple[int, bytes]:
            return c.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0alice@example.org\0{password}".encode()).decode())

        for _ in range(3):
            assert plain("wrong") == (535, b"5.7.8 Authentication credentials invalid")
        assert plain(PW)[0] == 535  # locked out: the right password fails too
    with smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), timeout=10, context=ctx) as c:
        c.login("carol@example.org", PW)  # another user is not affected


def _scram_client(srv: Any, user: str, password: str) -> bytes:
    with smtps_dialogue(srv) as (s, reply):
        s.sendall(b"EHLO scram\r\n")
        reply()
        nonce = base64.b64encode(os.urandom(12)).decode()
        first_bare = f"n={user},r={nonce}"
        s.sendall(b"AUTH SCRAM-SHA-256 " + base64.b64encode(f"n,,{first_bare}".encode()) + b"\r\n")
        server_first = base64.b64decode(reply()[4:].strip()).decode()
        attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{first_bare},{server_first},{without_proof}".encode()
        sig = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, sig))).decode()
        s.sendall(base64.b64encode(f"{without_proof},p={proof}".encode()) + b"\r\n")
        final = reply()
        assert final.startswith(b"334 ")
        server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
        expected = b"v=" + base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
        assert base64.b64decode(final[4:].strip()) == expected
        s.sendall(b"\r\n")  # RFC 4954 §4: an empty response to the server's additional data
        return reply()


def test_auth_scram_sha256(srv: Any) -> None:
    assert _scram_client(srv, "alice@example.org", PW) \
        .startswith(b"235 2.7.0")


def test_vrfy_expn_anonymous(srv: Any) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.verify("alice@example.org")[0] == 252
        assert c.expn("team@example.org")[0] == 502
        assert c.help().startswith(b"2.0.0 Commands: HELO EHLO")


class TestVrfyEnabled:
    @pytest.fixture
    def server_overrides(self) -> dict[str, Any]:
        return {"smtp": {"vrfy_expn": True}}

    def test_vrfy_expn_and_mail_from_with_quoted_local_parts(self, srv: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
        srv.add_user('"john doe"@example.org', PW)
        srv.run(srv.store.create_list('"the team"@example.org', "alice@example.org", ListPolicy.OPEN))
        srv.run(srv.store.add_list_member('"the team"@example.org', '"john doe"@example.org'))
        with smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), timeout=10,
                              context=srv.tls_client_context()) as c:
            c.login("alice@example.org", PW)
            assert c.docmd('VRFY "john doe"@example.org') == (250, b'2.1.5 <"john doe"@example.org>')
            assert c.docmd('VRFY "a\\ b"@example.org')[0] == 550
            assert c.docmd('VRFY "john"b@example.org')[0] == 550
            assert c.docmd('EXPN "the team"@example.org') == (250, b'2.1.5 <"john doe"@example.org>')
            assert c.docmd('EXPN "no team"@example.org')[0] == 550
            c.ehlo_or_helo_if_needed()
            # RFC 6409 §6.1: not alice's address: 553, whatever its form
            assert c.docmd('MAIL FROM:<"john doe"@example.org>')[0] == 553
            assert c.docmd('MAIL FROM:<"x+y"@example.org>')[0] == 553
            assert c.docmd('MAIL FROM:<"alice"@example.org>')[0] == 250
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]

    def test_vrfy_expn_authenticated(self, srv: Any) -> None:
        srv.run(srv.store.create_list("team@example.org", "alice@example.org", ListPolicy.OPEN))
        srv.run(srv.store.add_list_member("team@example.org", "carol@example.org"))
        with smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), timeout=10,
                              context=srv.tls_client_context()) as c:
            assert c.verify("alice@example.org")[0] == 252  # anonymous still learns nothing
            c.login("alice@example.org", PW)
            assert c.verify("alice@example.org") == (250, b"2.1.5 <alice@example.org>")
            assert c.verify("nobody@example.org")[0] == 550
            assert c.expn("team@example.org") == (250, b"2.1.5 <carol@example.org>")


class TestRelayNetworksAndPopBeforeSmtp:
    @pytest.fixture
    def server_overrides(self) -> dict[str, Any]:
        return {"smtp": {"relay_networks": ["127.0.0.0/8"]}}

    def test_relay_network_may_relay(self, srv: Any) -> None:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
            assert c.sendmail("app@example.org", ["far@remote.test"], BODY) == {}
        assert [r.rcpt for e in queue(srv) for r in e.recipients] == ["far@remote.test"]


class TestPopBeforeSmtp:
    @pytest.fixture
    def server_overrides(self) -> dict[str, Any]:
        return {"smtp": {"pop_before_smtp_minutes": 5}}

    def test_recent_mailbox_login_may_relay(self, srv: Any) -> None:
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
            c.ehlo("x")
            c.mail("alice@example.org")
            assert c.rcpt("far@remote.test")[0] == 550
        srv.run(srv.postroom.services.auth.note_login("127.0.0.1"))  # what a POP3/IMAP login does
        with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
            assert c.sendmail("alice@example.org", ["far@remote.test"], BODY) == {}


# --------------------------------------------------------------------------------------------------------
# Third-party clients: swaks and curl (Debian packages swaks, curl)


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (apt-get install swaks)")
def test_swaks_submission_with_tls_and_auth(srv: Any) -> None:
    body = "Subject: via swaks\r\n\r\nsent by swaks"  # swaks ends the data with CRLF . CRLF itself
    result = subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(srv.port("submission")), "--tls",
         "--auth", "PLAIN", "--auth-user", "alice@example.org", "--auth-password", PW,
         "--from", "alice@example.org", "--to", "carol@example.org", "--data", body, "--pipeline"],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    [stored] = inbox(srv, "carol@example.org")
    (_, received), rest = split_prepended(stored)
    # swaks sent no From: the server adds the (checked) envelope sender's (RFC 5322 §3.6)
    assert completed(rest) == b"From: <alice@example.org>\r\n" + body.encode() + b"\r\n"
    assert b"ESMTPSA" in received


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (apt-get install curl)")
def test_curl_smtp_to_mx(srv: Any, tmp_path: Any) -> None:
    msg = tmp_path / "msg.eml"
    msg.write_bytes(BODY)
    result = subprocess.run(
        ["curl", "-sS", f"smtp://127.0.0.1:{srv.port('smtp')}/client.test", "--mail-from", "bob@remote.test",
         "--mail-rcpt", "alice@example.org", "--upload-file", str(msg)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [stored] = inbox(srv, "alice@example.org")
    assert split_prepended(stored)[1] == BODY


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (apt-get install curl)")
def test_curl_smtps_submission(srv: Any, tmp_path: Any) -> None:
    msg = tmp_path / "msg.eml"
    msg.write_bytes(SUBMITTED)
    result = subprocess.run(
        ["curl", "-sS", "-k", f"smtps://127.0.0.1:{srv.port('submissions')}", "--user", f"alice@example.org:{PW}",
         "--mail-from", "alice@example.org", "--mail-rcpt", "carol@example.org", "--upload-file", str(msg)],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    [stored] = inbox(srv, "carol@example.org")
    assert completed(split_prepended(stored)[1]) == SUBMITTED


def test_notify_success_over_the_mx_port_brings_a_delivered_report(srv: Any) -> None:
    """RFC 3461 §6.2.7 / RFC 3464 §2.3.3 (router invariant 11): a remote sender asks NOTIFY=SUCCESS for a local
    mailbox; after the 250 the report to it is already queued (durable): Action delivered, its ORCPT and ENVID,
    the header only, from the null sender. Without SUCCESS in NOTIFY nothing is queued."""
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), timeout=10) as c:
        assert c.sendmail("bob@remote.test", ["carol@example.org"], BODY) == {}
        assert queue(srv) == []  # default NOTIFY: no success report
        assert c.sendmail("bob@remote.test", ["alice@example.org"], BODY, mail_options=["RET=FULL", "ENVID=q+2B1"],
                          rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice+2Bdsn@example.org"]) == {}
    assert len(inbox(srv, "alice@example.org")) == 1
    [entry] = queue(srv)
    assert entry.mail_from == "" and [r.rcpt for r in entry.recipients] == ["bob@remote.test"]
    raw = srv.run(srv.store.read_message(entry.blob_id))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["To"] == "bob@remote.test" and msg["Subject"] == "Successful Mail Delivery Report"
    text, status, returned = msg.get_payload()  # type: ignore[misc]
    per_message, per_rcpt = ({k: str(v) for k, v in block.items()} for block in status.get_payload())
    assert per_message["Original-Envelope-Id"] == "q+1"
    assert per_rcpt == {"Original-Recipient": "rfc822;Alice+dsn@example.org",
                        "Final-Recipient": "rfc822;alice@example.org", "Action": "delivered", "Status": "2.0.0"}
    assert returned.get_content_type() == "text/rfc822-headers"  # RFC 3461 §4.3: RET=FULL is for failures
    assert b"Subject: hello" in raw and b"Hi Alice" not in raw
