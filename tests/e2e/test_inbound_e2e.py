"""Inbound trust end to end: smtplib to the MX listener, SPF/DKIM/DMARC records from a DNS server on a loopback
port (`delivery.dns_servers`), messages signed by dkimpy; the stored message's Authentication-Results, the
550 of a DMARC reject, quarantine into Junk, and the log line are checked.

Expected values come from the RFCs: RFC 7208 (an `ip4:` match is pass, a `-all` miss is fail), RFC 7489 (§3.1
relaxed alignment: a subdomain's signature aligns with its organisational domain's From; §6.3 `sp` for
subdomains; §6.6.4 pct=0 samples nothing: the next milder policy), RFC 8601 (§5 fields claiming our
authserv-id removed, others kept; §2.2 the field's syntax).
"""

from __future__ import annotations

import email
import email.policy
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
    # a.test: SPF allows the loopback client; DMARC reject; a DKIM key (relaxed alignment by default).
    z.add("a.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
    z.add("_dmarc.a.test", "TXT", "v=DMARC1; p=reject")
    z.add("sel._domainkey.a.test", "TXT", KEY.record)
    # evil.test: SPF names another host; DMARC reject. quar.test: quarantine. half.test: reject, pct=0.
    z.add("evil.test", "TXT", "v=spf1 ip4:192.0.2.1 -all")
    z.add("_dmarc.evil.test", "TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@evil.test")
    z.add("quar.test", "TXT", "v=spf1 -all")
    z.add("_dmarc.quar.test", "TXT", "v=DMARC1; p=quarantine")
    z.add("half.test", "TXT", "v=spf1 -all")
    z.add("_dmarc.half.test", "TXT", "v=DMARC1; p=reject; pct=0")
    # org.test: p=none for itself, sp=reject for its subdomains (RFC 7489 §6.3).
    z.add("_dmarc.org.test", "TXT", "v=DMARC1; p=none; sp=reject")
    z.add("sub.org.test", "TXT", "v=spf1 -all")
    z.add("org.test", "TXT", "v=spf1 -all")
    # slow.test: the SPF and DMARC lookups time out (temperror, never a refusal).
    z.dns.zone["slow.test"] = ["TIMEOUT"]
    z.dns.zone["_dmarc.slow.test"] = ["TIMEOUT"]
    yield z
    z.close()


@pytest.fixture
def dmarc_reject() -> str:
    return "reject"


@pytest.fixture
def relay_networks() -> list[str]:
    return []


@pytest.fixture
def dns_cache_size() -> int:
    return 10000


@pytest.fixture
def server_overrides(zone: ZoneThread, dmarc_reject: str, relay_networks: list[str],
                     dns_cache_size: int) -> dict[str, Any]:
    return {"server": {"hostname": HOST}, "auth": {"allow_plaintext": True},
            "smtp": {"relay_networks": relay_networks},
            "delivery": {"dns_servers": [f"127.0.0.1:{zone.dns.port}"], "dns_cache_size": dns_cache_size},
            "inbound": {"spf": True, "dkim": True, "dmarc": True, "dmarc_reject": dmarc_reject,
                        "dns_timeout_seconds": 1.0}}


@pytest.fixture
def srv(server: Any) -> Any:
    server.add_user("bob@b.test")
    return server


def mailbox(server: Any, address: str, name: str) -> list[bytes]:
    async def go() -> list[bytes]:
        user = await server.store.get_user(address)
        box = await server.store.get_mailbox(user.id, name)
        return [await server.store.read_message(m.blob_id) for m in await server.store.list_messages(box.id)]

    return list(server.run(go()))


def message(sender: str, extra: bytes = b"", body: bytes = b"Hello Bob.\r\n") -> bytes:
    return (extra + f"From: Sender <{sender}>\r\nTo: bob@b.test\r\nSubject: hi\r\n"
            f"Message-ID: <{id(body)}@x>\r\n\r\n".encode() + body)


def send(server: Any, mail_from: str, raw: bytes, helo: str = "client.a.test") -> None:
    with smtplib.SMTP("127.0.0.1", server.port("smtp"), local_hostname=helo) as c:
        c.sendmail(mail_from, ["bob@b.test"], raw)


def auth_results(stored: bytes) -> list[str]:
    msg = email.message_from_bytes(stored, policy=email.policy.compat32)
    return [" ".join(v.split()) for v in msg.get_all("Authentication-Results") or []]


def test_aligned_spf_and_dkim_pass_and_forged_results_removed(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    forged = (b"Authentication-Results: " + HOST.upper().encode() + b"; dkim=pass header.d=a.test\r\n"
              b"Authentication-Results: other.example;\r\n spf=fail smtp.mailfrom=a.test\r\n")
    signed = KEY.sign(message("alice@a.test"), "a.test")
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    send(srv, "alice@a.test", forged + signed)
    [stored] = mailbox(srv, "bob@b.test", "INBOX")
    results = auth_results(stored)
    ours = [r for r in results if r.startswith(HOST + ";")]
    assert len(ours) == 1, results  # the forged one claiming our authserv-id is gone (RFC 8601 §5)
    assert "other.example; spf=fail smtp.mailfrom=a.test" in results  # someone else's is kept
    r = ours[0]
    assert "spf=pass" in r and "smtp.mailfrom=alice@a.test" in r
    assert "spf=none" in r and "smtp.helo=client.a.test" in r  # the HELO name has no SPF record
    assert "dkim=pass header.d=a.test header.s=sel header.b=" in r
    assert "dmarc=pass (p=reject dis=none)" in r and "header.from=a.test" in r
    # The original message follows byte for byte (the signature still verifies below us).
    assert stored.endswith(signed)
    # Authentication-Results goes on top, above this hop's Received (RFC 8601 §5).
    lines = stored.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path:") and lines[1].startswith(b"Authentication-Results: " + HOST.encode())
    line = next(rec.getMessage() for rec in caplog.records if rec.name == "postroom.smtp.message")
    assert "spf=pass" in line and "dkim=pass:a.test" in line and "dmarc=pass" in line


def test_dmarc_reject_is_550_at_end_of_data(srv: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, "mallory@evil.test", message("ceo@evil.test"))
    assert info.value.smtp_code == 550 and info.value.smtp_error.startswith(b"5.7.1")
    assert mailbox(srv, "bob@b.test", "INBOX") == [] and mailbox(srv, "bob@b.test", "Junk") == []
    line = next(rec.getMessage() for rec in caplog.records if rec.name == "postroom.smtp.message")
    assert "refused=dmarc" in line and "dmarc=fail" in line and "spf=fail" in line


def test_a_bad_signature_does_not_save_a_forgery(srv: Any) -> None:
    # Signed by a.test's key, then changed: DKIM fails, SPF (evil.test's MAIL FROM) does not align: rejected.
    signed = KEY.sign(message("alice@a.test"), "a.test").replace(b"Hello Bob.", b"Pay Mallory.")
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, "mallory@evil.test", signed)
    assert info.value.smtp_code == 550


def test_quarantine_goes_to_junk(srv: Any) -> None:
    send(srv, "x@quar.test", message("x@quar.test"))
    assert mailbox(srv, "bob@b.test", "INBOX") == []
    [junk] = mailbox(srv, "bob@b.test", "Junk")
    [r] = [r for r in auth_results(junk) if r.startswith(HOST)]
    assert "dmarc=fail (p=quarantine dis=quarantine)" in r and "spf=fail" in r


def test_pct_zero_applies_the_milder_policy(srv: Any) -> None:
    send(srv, "x@half.test", message("x@half.test"))  # RFC 7489 §6.6.4: reject outside pct -> quarantine
    assert len(mailbox(srv, "bob@b.test", "Junk")) == 1


def test_subdomain_policy_and_relaxed_alignment(srv: Any) -> None:
    send(srv, "x@org.test", message("x@org.test"))  # p=none for org.test itself: delivered
    assert len(mailbox(srv, "bob@b.test", "INBOX")) == 1
    with pytest.raises(smtplib.SMTPDataError):
        send(srv, "x@sub.org.test", message("x@sub.org.test"))  # sp=reject for its subdomains
    # A From in a subdomain of a.test aligns (relaxed) with a.test's signature and SPF pass.
    send(srv, "alice@a.test", KEY.sign(message("news@mail.a.test"), "a.test"))
    assert len(mailbox(srv, "bob@b.test", "INBOX")) == 2


@pytest.mark.parametrize("dmarc_reject", ["quarantine"])
def test_dmarc_reject_configured_as_quarantine(srv: Any) -> None:
    send(srv, "mallory@evil.test", message("ceo@evil.test"))
    assert mailbox(srv, "bob@b.test", "INBOX") == []
    assert len(mailbox(srv, "bob@b.test", "Junk")) == 1


def test_dns_timeout_is_temperror_and_the_mail_is_accepted(srv: Any) -> None:
    send(srv, "x@slow.test", message("x@slow.test"))
    [stored] = mailbox(srv, "bob@b.test", "INBOX")
    [r] = [r for r in auth_results(stored) if r.startswith(HOST)]
    assert "spf=temperror" in r and "dkim=none" in r and "dmarc=temperror" in r


def test_null_sender_checks_the_helo_identity(srv: Any) -> None:
    send(srv, "", message("mailer-daemon@a.test"), helo="a.test")  # RFC 7208 §2.4: postmaster@a.test
    [stored] = mailbox(srv, "bob@b.test", "INBOX")
    [r] = [r for r in auth_results(stored) if r.startswith(HOST)]
    assert "spf=pass" in r and "smtp.helo=a.test" in r and "dmarc=pass" in r


def test_large_spilled_message_verified_and_cleaned(srv: Any) -> None:
    body = b"".join(b"line %07d of a long body, padded to make it past the staging threshold\r\n" % i
                    for i in range(20_000))
    signed = KEY.sign(message("alice@a.test", body=body), "a.test")
    forged = b"Authentication-Results: " + HOST.encode() + b";\r\n\tdmarc=pass header.from=evil.test\r\n"
    send(srv, "alice@a.test", forged + signed)
    [stored] = mailbox(srv, "bob@b.test", "INBOX")
    results = auth_results(stored)
    assert len(results) == 1 and "dkim=pass" in results[0] and "dmarc=pass" in results[0]
    assert stored.endswith(signed)


def test_submission_is_not_checked(srv: Any) -> None:
    srv.add_user("carol@b.test")
    with smtplib.SMTP("127.0.0.1", srv.port("submission")) as c:
        c.login("carol@b.test", "secret-password")
        c.sendmail("carol@b.test", ["bob@b.test"], message("carol@b.test"))
    [stored] = mailbox(srv, "bob@b.test", "INBOX")
    assert auth_results(stored) == []


@pytest.mark.parametrize("relay_networks", [["127.0.0.0/8"]])
def test_relay_network_clients_are_trusted_not_checked(srv: Any) -> None:
    # Like Postfix's mynetworks with OpenDMARC's IgnoreHosts: our own hosts' mail is not judged by DMARC.
    send(srv, "mallory@evil.test", message("ceo@evil.test"))
    [stored] = mailbox(srv, "bob@b.test", "INBOX")
    assert auth_results(stored) == []


@pytest.mark.parametrize("dns_cache_size", [0])  # no DNS cache: the session itself keeps the HELO result
def test_helo_identity_checked_once_per_session(srv: Any, zone: ZoneThread) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port("smtp"), local_hostname="client.a.test") as c:
        for n in range(3):
            c.sendmail("alice@a.test", ["bob@b.test"], KEY.sign(message("alice@a.test", body=b"%d\r\n" % n),
                                                                "a.test"))
    stored = mailbox(srv, "bob@b.test", "INBOX")
    assert len(stored) == 3
    assert all("smtp.helo=client.a.test" in " ".join(auth_results(m)) for m in stored)
    assert zone.dns.queries.count(("client.a.test", "TXT")) == 1
    assert zone.dns.queries.count(("a.test", "TXT")) == 3  # MAIL FROM: per message


@pytest.mark.parametrize("from_field", [
    b"From: <ceo@a.test> <x@evil.test>\r\n",  # two angle-addresses: not RFC 5322 syntax, no usable domain
    b"From: " + b"Ceo " * 2300 + b"<ceo@a.test>\r\n",  # longer than the 8 KiB a From field is read to
])
def test_an_unusable_from_cannot_skip_dmarc(srv: Any, from_field: bytes) -> None:
    """RFC 7489 §6.6.1: a From the policy cannot be evaluated on is refused, not waved through (the fresh review's
    finding: a malformed From gave dmarc=none and skipped a p=reject)."""
    raw = from_field + b"To: bob@b.test\r\nSubject: hi\r\nMessage-ID: <u@x>\r\n\r\nHello.\r\n"
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, "mallory@evil.test", raw)
    assert info.value.smtp_code == 550 and b"RFC 7489" in info.value.smtp_error
    assert mailbox(srv, "bob@b.test", "INBOX") == []


def test_a_header_longer_than_what_is_checked_is_refused(srv: Any) -> None:
    """RFC 8601 §5 asks forged Authentication-Results to be removed; a header past the 256 KiB that every check
    reads is refused on the MX too (it was half-checked: a forged field after the padding survived)."""
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 990) for i in range(300))
    raw = (padding + b"Authentication-Results: " + HOST.encode() + b"; dmarc=pass\r\n"
           + message("alice@a.test", body=b"x" * 1_200_000 + b"\r\n"))
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, "alice@a.test", raw)
    assert info.value.smtp_code == 552 and info.value.smtp_error.startswith(b"5.3.4")


def test_a_header_longer_than_what_is_checked_is_refused_in_a_small_message_too(srv: Any) -> None:
    """The same limit under the staging threshold (1 MiB): a message held in memory whose header runs past
    256 KiB is refused like a staged one, so whether it is taken does not depend on the body's size."""
    padding = b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 990) for i in range(300))
    raw = padding + message("alice@a.test", body=b"short\r\n")
    assert len(raw) < 1024 * 1024
    with pytest.raises(smtplib.SMTPDataError) as info:
        send(srv, "alice@a.test", raw)
    assert info.value.smtp_code == 552 and info.value.smtp_error.startswith(b"5.3.4")
    assert mailbox(srv, "bob@b.test", "INBOX") == []
    # just under the limit: taken
    send(srv, "alice@a.test", b"".join(b"X-Pad-%d: %s\r\n" % (i, b"p" * 990) for i in range(200))
         + message("alice@a.test", body=b"short\r\n"))
    assert len(mailbox(srv, "bob@b.test", "INBOX")) == 1


def test_one_cached_resolver_serves_every_session(srv: Any, zone: ZoneThread) -> None:
    """Issue 12 item 9: the checks of two sessions go through the server's one resolver; the records (TTL 60 s)
    are asked once (the clock cannot pass 60 s here: two SMTP sessions on loopback)."""
    for _ in range(2):
        send(srv, "alice@a.test", KEY.sign(message("alice@a.test"), "a.test"))
    assert len(mailbox(srv, "bob@b.test", "INBOX")) == 2
    asked = zone.dns.queries
    assert asked.count(("a.test", "TXT")) == 1, asked
    assert asked.count(("_dmarc.a.test", "TXT")) == 1, asked
    assert asked.count(("sel._domainkey.a.test", "TXT")) == 1, asked
