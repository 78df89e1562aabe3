"""Sender allow and block lists end to end (inbound/senders.py, router invariant 15, session invariant 10): smtplib to
the MX listener, SPF/DKIM/DMARC records from a DNS server on a loopback port, rules written through the store API
the CLI and the webmail use.

What is checked: a blocked envelope sender is refused at RCPT for that recipient only (550 5.7.1, the refusal
line naming the rule's scope), by a user's rule and by a domain's `@.domain` rule; a blocked From address is
filed into that user's Junk with `$Junk` while the other recipient gets the INBOX; an allow rule skips
greylisting only when SPF passes for the MAIL FROM domain (RFC 7208 §2.6.3), never for a sender SPF fails.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
from dns_support import ZoneThread

HOST = "mx.postroom.test"


@pytest.fixture
def zone() -> Iterator[ZoneThread]:
    z = ZoneThread()
    z.add("a.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")  # the loopback client may send for a.test
    z.add("evil.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")  # ... and not for evil.test
    yield z
    z.close()


@pytest.fixture
def greylist_seconds() -> int:
    return 0


@pytest.fixture
def server_overrides(zone: ZoneThread, greylist_seconds: int) -> dict[str, Any]:
    return {"server": {"hostname": HOST},
            "smtp": {"screen_exempt": [], "greet_delay_seconds": 0, "greylist_seconds": greylist_seconds},
            "delivery": {"dns_servers": [f"127.0.0.1:{zone.dns.port}"]},
            "inbound": {"spf": True, "dkim": True, "dmarc": True, "dns_timeout_seconds": 1.0}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("bob@b.test")
    server.add_user("carol@b.test")
    return server


def stored(server: Any, address: str, name: str) -> list[tuple[bytes, frozenset[str]]]:
    async def go() -> list[tuple[bytes, frozenset[str]]]:
        user = await server.store.get_user(address)
        box = await server.store.get_mailbox(user.id, name)
        return [(await server.store.read_message(m.blob_id), m.keywords)
                for m in await server.store.list_messages(box.id)]

    return list(server.run(go()))


def rule(server: Any, scope: str, kind: str, pattern: str) -> None:
    server.run(server.store.add_sender_rule(scope, kind, pattern))


def message(header_from: str) -> bytes:
    return f"From: <{header_from}>\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n".encode()


def test_blocked_envelope_sender_refused_for_that_recipient(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    rule(srv, "bob@b.test", "block", "pest@a.test")
    caplog.set_level(logging.INFO, logger="postroom.refusal")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), local_hostname="client.a.test") as c:
        c.ehlo()
        c.mail("pest@a.test")
        code, text = c.rcpt("bob@b.test")
        assert code == 550 and text.startswith(b"5.7.1 ") and b"block rule of the recipient" in text
        assert c.rcpt("carol@b.test")[0] == 250
        c.data(message("pest@a.test"))
    assert stored(srv, "bob@b.test", "INBOX") == [] and stored(srv, "bob@b.test", "Junk") == []
    assert len(stored(srv, "carol@b.test", "INBOX")) == 1
    line = next(r.getMessage() for r in caplog.records if "sender-blocked" in r.getMessage())
    assert "what=rcpt" in line and "code=550" in line and "scope=bob@b.test" in line and "rule=pest@a.test" in line
    assert "recipient=bob@b.test" in line


def test_domain_rule_for_subdomains(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    rule(srv, "b.test", "block", "@.evil.test")
    caplog.set_level(logging.INFO, logger="postroom.refusal")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), local_hostname="client.a.test") as c:
        c.ehlo()
        c.mail("x@mail.evil.test")
        code, text = c.rcpt("bob@b.test")
        assert code == 550 and b"block rule of the domain b.test" in text
        assert c.rcpt("carol@b.test")[0] == 550
        c.rset()
        c.mail("x@evil.test")  # "@.evil.test" is the subdomains only
        assert c.rcpt("bob@b.test")[0] == 250
    assert any("scope=b.test" in r.getMessage() for r in caplog.records)
    # The user's own allow rule beats the domain's block (inbound/senders.py: the user's scope first).
    rule(srv, "bob@b.test", "allow", "@mail.evil.test")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), local_hostname="client.a.test") as c:
        c.ehlo()
        c.mail("x@mail.evil.test")
        assert c.rcpt("bob@b.test")[0] == 250
        assert c.rcpt("carol@b.test")[0] == 550


def test_blocked_from_header_goes_to_that_users_junk(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    rule(srv, "bob@b.test", "block", "@newsletter.test")
    caplog.set_level(logging.INFO, logger="postroom.delivery")
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), local_hostname="client.a.test") as c:
        assert c.sendmail("bounces@a.test", ["bob@b.test", "carol@b.test"], message("news@newsletter.test")) == {}
    [(junk, keywords)] = stored(srv, "bob@b.test", "Junk")
    assert "$Junk" in keywords and b"From: <news@newsletter.test>" in junk
    assert stored(srv, "bob@b.test", "INBOX") == []
    [(inbox, inbox_keywords)] = stored(srv, "carol@b.test", "INBOX")
    assert "$Junk" not in inbox_keywords and stored(srv, "carol@b.test", "Junk") == []
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("junk "))
    assert "rcpt=bob@b.test" in line and "reason=sender-blocked" in line and "rule=@newsletter.test" in line


@pytest.mark.parametrize("greylist_seconds", [300])
def test_allow_skips_greylisting_only_when_spf_passes(srv: Any) -> None:
    rule(srv, "bob@b.test", "allow", "friend@a.test")
    rule(srv, "bob@b.test", "allow", "@evil.test")  # allowed, but SPF fails for it from here
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), local_hostname="client.a.test") as c:
        c.ehlo()
        c.mail("friend@a.test")
        assert c.rcpt("bob@b.test")[0] == 250  # SPF pass: the allow rule counts
        assert c.rcpt("carol@b.test")[0] == 450  # carol has no rule: greylisted
        c.rset()
        c.mail("friend@evil.test")
        code, text = c.rcpt("bob@b.test")
        assert code == 450 and text.startswith(b"4.7.1 Greylisted")  # an unauthenticated allow counts for nothing
        c.rset()
        c.mail("stranger@a.test")  # SPF passes, but bob allows only friend@
        assert c.rcpt("bob@b.test")[0] == 450
