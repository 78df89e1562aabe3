"""The built-in spam score end to end (inbound/score.py, session invariant 11): smtplib to the MX listener, SPF,
DKIM and DMARC records and a score blocklist zone from a DNS server on a loopback port, messages signed by dkimpy.

Expected scores are the documented default weights summed over the signs each message shows: RFC 7208 §2.6.4
(`-all` miss: fail), RFC 7489 §6.6 (p=none: nothing applied, so the score counts the fail), RFC 5782 §2.1 (the
client 127.0.0.1 is listed as 1.0.0.127.<zone>), RFC 5321 §4.1.3 (a bare IP as HELO) and §4.1.1.1 (a HELO
without a dot).
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterator
from typing import Any

import pytest
from dkim_support import SigningKey
from dns_support import ZoneThread

HOST = "mx.postroom.test"
KEY = SigningKey.rsa(2048)


@pytest.fixture
def zone() -> Iterator[ZoneThread]:
    z = ZoneThread()
    z.add("a.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")  # authenticated senders: SPF pass, DKIM key, DMARC
    z.add("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")
    z.add("sel._domainkey.a.test", "TXT", KEY.record)
    z.add("lax.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")  # SPF fails from here, DMARC p=none
    z.add("_dmarc.lax.test", "TXT", "v=DMARC1; p=none")
    z.add("1.0.0.127.score.bl.test", "A", "127.0.0.2")  # the client is listed in the score zone
    yield z
    z.close()


@pytest.fixture
def score_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def server_overrides(zone: ZoneThread, score_overrides: dict[str, Any]) -> dict[str, Any]:
    return {"server": {"hostname": HOST},
            "smtp": {"screen_exempt": [], "greet_delay_seconds": 0, "reverse_dns": True},
            "delivery": {"dns_servers": [f"127.0.0.1:{zone.dns.port}"]},
            "inbound": {"spf": True, "dkim": True, "dmarc": True, "dns_timeout_seconds": 1.0,
                        "score": {"dnsbl_zones": ["score.bl.test"], **score_overrides}}}


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


def message(sender: str, extra: bytes = b"") -> bytes:
    return extra + f"From: <{sender}>\r\nTo: bob@b.test\r\nSubject: hi\r\n\r\nHello.\r\n".encode()


def send(server: Any, mail_from: str, raw: bytes, helo: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), local_hostname=helo) as c:
        c.sendmail(mail_from, ["bob@b.test", "carol@b.test"], raw)


def score_field(raw: bytes) -> str:
    return next(line for line in raw.decode().split("\r\n") if line.startswith("X-Postroom-Score:"))


def message_line(caplog: pytest.LogCaptureFixture) -> str:
    return next(r.getMessage() for r in caplog.records if r.name == "postroom.smtp.message")


def test_unauthenticated_mail_over_the_threshold_goes_to_junk(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    forged = b"X-Postroom-Score: -50 (trust me)\r\n"  # a sender's own score field is removed
    send(srv, "news@lax.test", message("news@lax.test", forged), helo="desktop")
    [(raw, keywords)] = stored(srv, "bob@b.test", "Junk")
    assert "$Junk" in keywords and stored(srv, "bob@b.test", "INBOX") == []
    # 2.5 spf_fail + 0.5 dkim_none + 2 dmarc_fail (p=none) + 3 dnsbl + 1 rdns_none + 1 helo_not_fqdn = 10
    assert score_field(raw) == ("X-Postroom-Score: 10 (spf_fail=2.5, dkim_none=0.5, dmarc_fail=2, dnsbl=3, "
                                "rdns_none=1, helo_not_fqdn=1)")
    assert b"trust me" not in raw and raw.count(b"X-Postroom-Score") == 1
    line = message_line(caplog)
    assert "score=10" in line and "score_parts=spf_fail:2.5,dkim_none:0.5,dmarc_fail:2,dnsbl:3" in line
    assert len(stored(srv, "carol@b.test", "Junk")) == 1


def test_an_authenticated_allow_skips_the_score_junk_filing(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    srv.run(srv.store.add_sender_rule("bob@b.test", "allow", "@a.test"))
    srv.run(srv.store.add_sender_rule("carol@b.test", "allow", "@lax.test"))  # never authenticated from here
    caplog.set_level(logging.INFO, logger="postroom.delivery")
    # SPF, DKIM and DMARC pass, but 3 dnsbl + 1 rdns_none + 2 helo_bare_ip = 6: over 5.
    send(srv, "alice@a.test", KEY.sign(message("alice@a.test"), "a.test"), helo="127.0.0.1")
    [(raw, keywords)] = stored(srv, "bob@b.test", "INBOX")
    assert "$Junk" not in keywords and score_field(raw) == "X-Postroom-Score: 6 (dnsbl=3, rdns_none=1, helo_bare_ip=2)"
    assert len(stored(srv, "carol@b.test", "Junk")) == 1 and stored(srv, "carol@b.test", "INBOX") == []
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("inbox "))
    assert "rcpt=bob@b.test" in line and "reason=sender-allowed" in line and "rule=@a.test" in line
    # the unauthenticated allow of carol's counts for nothing
    send(srv, "news@lax.test", message("news@lax.test"), helo="mx.lax.test")
    assert len(stored(srv, "carol@b.test", "Junk")) == 2


def test_under_the_threshold_the_inbox(srv: Any) -> None:
    # 3 dnsbl + 1 rdns_none: 4, not over 5.
    send(srv, "alice@a.test", KEY.sign(message("alice@a.test"), "a.test"), helo="mail.a.test")
    [(raw, keywords)] = stored(srv, "bob@b.test", "INBOX")
    assert "$Junk" not in keywords and score_field(raw) == "X-Postroom-Score: 4 (dnsbl=3, rdns_none=1)"


@pytest.mark.parametrize("score_overrides", [{"reject_threshold": 8.0}])
def test_reject_threshold(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, "news@lax.test", message("news@lax.test"), helo="desktop")  # 10, over 8
    assert info.value.smtp_code == 550 and info.value.smtp_error.startswith(b"5.7.1 Message refused as spam")
    assert stored(srv, "bob@b.test", "INBOX") == [] and stored(srv, "bob@b.test", "Junk") == []
    line = message_line(caplog)
    assert "refused=score" in line and "score=10" in line


@pytest.mark.parametrize("score_overrides", [{"enabled": False}])
def test_score_off(srv: Any) -> None:
    send(srv, "news@lax.test", message("news@lax.test", b"X-Postroom-Score: -50\r\n"), helo="desktop")
    [(raw, _)] = stored(srv, "bob@b.test", "INBOX")
    assert b"X-Postroom-Score" not in raw  # none of ours, and the sender's is still removed
