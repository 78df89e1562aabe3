"""ARC end to end, Postroom to Postroom (issue 12 item 4): list.test runs a list and a forward, b.test is the
next hop. A loopback DNS server publishes what `postroom dns list.test` prints (MX, SPF, DKIM keys, DMARC) and
the author's domain origin.test (SPF for the loopback client, a DKIM key, DMARC p=reject); list.test's queue
delivers to b.test's MX.

Expected values come from RFC 8617: the copy list.test sends on carries one ARC Set, i=1, cv=none (§5.1.1), by
d=list.test, whose AAR repeats list.test's Authentication-Results (§4.1.1: dmarc=pass for origin.test, or
auth=pass for a post that came by submission); it verifies at b.test (arc=pass, oldest-pass 0, smtp.remote-ip:
§10.1) and with dkimpy's own verifier on the bytes b.test stored. When the list's change breaks the author's
DKIM signature (the author over-signs List-Id, RFC 6376 §8.15, which the list then adds), DMARC fails at
b.test: with list.test a trusted sealer the message is delivered (RFC 7489 §7.2 local policy, reason "arc"),
otherwise origin.test's policy applies.
"""

from __future__ import annotations

import email
import email.policy
import logging
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dkim
import pytest
from conftest import LISTENERS, ServerHandle
from dkim_support import SigningKey
from dns_support import ZoneThread

from postroom import config as config_mod
from postroom.delivery.dkim import dns_records, generate_keys
from postroom.store.api import ListPolicy

AUTHOR_KEY = SigningKey.rsa(2048)
EXT_KEY = SigningKey.rsa(2048)  # ext.test: a list server elsewhere that seals what it sends (dkimpy)
BODY = b"Lunch at noon?\r\n"


def start(tmp: Path, name: str, extra: dict[str, Any]) -> ServerHandle:
    base: dict[str, Any] = {
        "server": {"data_dir": str(tmp / name), "shutdown_grace_seconds": 1.0, "hostname": f"mx.{name}"},
        "listeners": {n: "127.0.0.1:0" for n in LISTENERS},
        "auth": {"allow_plaintext": True},
        "smtp": {"reverse_dns": False},
        "delivery": {"poll_seconds": 3600, "retry_seconds": [3600]},
    }
    handle = ServerHandle(config_mod.load(None, config_mod.merge(base, extra)))
    try:
        handle.run(handle.postroom.start())
    except BaseException:
        handle.stop()
        raise
    return handle


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


@contextmanager
def pair(tmp: Path, trusted: list[str], dmarc_reject: str = "reject") -> Iterator[tuple[ServerHandle, ServerHandle,
                                                                                       ZoneThread]]:
    zone = ZoneThread()
    dns = {"dns_servers": [f"127.0.0.1:{zone.dns.port}"]}
    checks = {"spf": True, "dkim": True, "dmarc": True, "arc": True, "dns_timeout_seconds": 2.0}
    b = start(tmp, "b.test", {"delivery": {**dns, "enabled": False},
                              "inbound": {**checks, "arc_trusted_sealers": trusted, "dmarc_reject": dmarc_reject}})
    a = None
    try:
        zone.add("b.test", "MX", [10, "mx.b.test"])
        zone.add("mx.b.test", "A", "127.0.0.1")
        zone.add("origin.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        zone.add("_dmarc.origin.test", "TXT", "v=DMARC1; p=reject")
        zone.add("sel._domainkey.origin.test", "TXT", AUTHOR_KEY.record)
        zone.add("ext.test", "TXT", "v=spf1 ip4:127.0.0.1 -all")
        zone.add("arc._domainkey.ext.test", "TXT", EXT_KEY.record)
        a = start(tmp, "list.test", {"delivery": {**dns, "mx_port": b.port("smtp")}, "inbound": checks})
        a.add_user("alice@list.test")
        b.add_user("bob@b.test")
        keys = generate_keys()
        a.run(a.store.set_dkim("list.test", keys.rsa_selector, keys.rsa_pem, keys.ed25519_selector,
                               keys.ed25519_pem))
        ml = a.run(a.store.create_list("news@list.test", "alice@list.test", ListPolicy.OPEN))
        a.run(a.store.add_list_member(ml.address, "bob@b.test"))
        a.run(a.store.add_alias("fwd@list.test", ["bob@b.test"]))
        domain = a.run(a.store.get_domain("list.test"))
        assert domain is not None
        for name, rtype, value in dns_records(domain, "mx.list.test"):
            if rtype == "MX":
                pref, host = value.split()
                zone.add(name, "MX", [int(pref), host.rstrip(".")])
            else:
                zone.add(name, rtype, [value[i:i + 255] for i in range(0, len(value), 255)])
        zone.add("mx.list.test", "A", "127.0.0.1")
        yield a, b, zone
    finally:
        if a is not None:
            a.stop()
        b.stop()
        zone.close()


def authored(to: str, sign_list_id: bool = False, body: bytes = BODY) -> bytes:
    """A message by alice@origin.test, DKIM-signed by origin.test (dkimpy); `sign_list_id`: List-Id is in h=
    although absent, so a list that adds it breaks the signature (RFC 6376 §8.15 over-signing)."""
    raw = (f"From: Alice <alice@origin.test>\r\nTo: {to}\r\nSubject: lunch\r\n"
           f"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{time.monotonic_ns()}@origin.test>\r\n\r\n"
           ).encode() + body
    names = [b"from", b"to", b"subject"] + ([b"list-id"] if sign_list_id else [])
    sig = dkim.sign(raw, b"sel", b"origin.test", AUTHOR_KEY.private, include_headers=names)
    return bytes(sig) + raw


def send_mx(a: ServerHandle, rcpt: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", a.port("smtp"), local_hostname="mail.origin.test", timeout=30) as c:
        assert c.sendmail("alice@origin.test", [rcpt], raw) == {}


def mailbox(b: ServerHandle, name: str) -> list[bytes]:
    async def go() -> list[bytes]:
        user = await b.store.get_user("bob@b.test")
        assert user is not None
        box = await b.store.get_mailbox(user.id, name)
        if box is None:
            return []
        return [await b.store.read_message(m.blob_id) for m in await b.store.list_messages(box.id)]

    return b.run(go())


def fields(raw: bytes, name: str) -> list[str]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return [" ".join(v.split()) for v in msg.get_all(name) or []]


def zone_dnsfunc(zone: ZoneThread) -> Callable[..., bytes]:
    """dkimpy's DNS, answered from the test zone (what a receiver's resolver would get)."""
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes:
        for entry in zone.dns.zone.get(name.decode().rstrip(".").lower(), []):
            if isinstance(entry, dict) and "TXT" in entry:
                value = entry["TXT"]
                return ("".join(value) if isinstance(value, list) else value).encode()
        return b""

    return dnsfunc


def check_sealed_copy(stored: bytes, zone: ZoneThread, *aar_has: str) -> None:
    """One ARC Set by list.test, i=1, cv=none, verifying at b.test and with dkimpy on the stored bytes."""
    [ours] = [r for r in fields(stored, "Authentication-Results") if r.startswith("mx.b.test;")]
    assert "arc=pass" in ours and "header.oldest-pass=0" in ours and "smtp.remote-ip=127.0.0.1" in ours, ours
    [seal] = fields(stored, "ARC-Seal")
    assert "i=1;" in seal and "cv=none;" in seal and "d=list.test;" in seal
    [aar] = fields(stored, "ARC-Authentication-Results")
    assert aar.startswith("i=1; mx.list.test;") and all(x in aar for x in aar_has), aar
    cv, results, reason = dkim.arc_verify(stored, dnsfunc=zone_dnsfunc(zone))
    assert cv == dkim.CV_Pass, reason
    assert stored.endswith(BODY)


def test_list_post_is_sealed_and_verifies_at_the_next_postroom(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.arc")
    with pair(tmp_path, []) as (a, b, zone):
        send_mx(a, "news@list.test", authored("news@list.test"))
        [stored] = wait_for(lambda: mailbox(b, "INBOX"))
        check_sealed_copy(stored, zone, "dmarc=pass", "header.from=origin.test", "arc=none")
        [ams] = fields(stored, "ARC-Message-Signature")
        assert "list-id" in ams  # the seal covers the list's own fields (made after them)
        [ours] = [r for r in fields(stored, "Authentication-Results") if r.startswith("mx.b.test;")]
        assert "dmarc=pass" in ours  # the author's signature survived the list here
        assert "arc sealed domain=list.test i=1 cv=none" in [r.getMessage() for r in caplog.records]


def test_forward_is_sealed_and_verifies_at_the_next_postroom(tmp_path: Path) -> None:
    with pair(tmp_path, []) as (a, b, zone):
        raw = authored("fwd@list.test")
        send_mx(a, "fwd@list.test", raw)
        [stored] = wait_for(lambda: mailbox(b, "INBOX"))
        check_sealed_copy(stored, zone, "dkim=pass header.d=origin.test")
        assert stored.endswith(raw)  # forwarded bytes untouched below the prepended fields


def test_submitted_list_post_is_sealed_with_auth_pass(tmp_path: Path) -> None:
    with pair(tmp_path, []) as (a, b, zone):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", a.port("submission"), timeout=30) as s:
            s.starttls(context=ctx)
            s.login("alice@list.test", "secret-password")
            s.sendmail("alice@list.test", ["news@list.test"],
                       b"From: Alice <alice@list.test>\r\nTo: news@list.test\r\nSubject: hello\r\n\r\n" + BODY)
        [stored] = wait_for(lambda: mailbox(b, "INBOX"))
        check_sealed_copy(stored, zone, "auth=pass")


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-sealer", "untrusted-sealer"])
def test_dmarc_failure_after_the_list_changed_the_message(tmp_path: Path, trusted: bool,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="postroom.smtp.message")
    with pair(tmp_path, ["list.test"] if trusted else [], dmarc_reject="quarantine") as (a, b, zone):
        send_mx(a, "news@list.test", authored("news@list.test", sign_list_id=True))
        box = "INBOX" if trusted else "Junk"
        [stored] = wait_for(lambda: mailbox(b, box))
        assert mailbox(b, "Junk" if trusted else "INBOX") == []
        [ours] = [r for r in fields(stored, "Authentication-Results") if r.startswith("mx.b.test;")]
        assert "dkim=fail" in ours and "header.d=origin.test" in ours  # the list's List-Id broke it
        assert "arc=pass" in ours
        line = wait_for(lambda: [r.getMessage() for r in caplog.records
                                 if r.name == "postroom.smtp.message" and "mx.b.test" not in r.getMessage()
                                 and "header_from=origin.test" in r.getMessage() and "arc=pass:list.test" in
                                 r.getMessage()])
        assert line, [r.getMessage() for r in caplog.records if r.name == "postroom.smtp.message"]
        if trusted:
            assert 'dmarc=fail (p=reject dis=none; arc override: sealer list.test, i=1 dmarc=pass) reason="arc"' \
                in ours, ours
            assert any("dmarc_override=" in x and "sealer list.test" in x for x in line), line
        else:
            assert "dmarc=fail (p=reject dis=reject)" in ours and "arc override" not in ours, ours
            assert all("dmarc_override" not in x for x in line) and any("action=quarantine" in x for x in line)


def ext_sealed(raw: bytes, results: str) -> bytes:
    """`raw` sealed by ext.test with dkimpy, ext.test's own Authentication-Results being `results`."""
    ar = f"Authentication-Results: mx.ext.test; {results}\r\n".encode()
    sealed = dkim.arc_sign(ar + raw, b"arc", b"ext.test", EXT_KEY.private, b"mx.ext.test",
                           include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert sealed
    return b"".join(sealed) + raw


def test_incoming_chain_is_extended_with_cv_pass(tmp_path: Path) -> None:
    # ext.test sealed (i=1); list.test verifies it (arc=pass) and seals i=2 with cv=pass (RFC 8617 §5.1.1).
    with pair(tmp_path, []) as (a, b, zone):
        send_mx(a, "fwd@list.test", ext_sealed(authored("fwd@list.test"), "dmarc=pass header.from=origin.test"))
        [stored] = wait_for(lambda: mailbox(b, "INBOX"))
        seals = fields(stored, "ARC-Seal")
        assert len(seals) == 2 and any("i=2; cv=pass;" in x and "d=list.test;" in x for x in seals), seals
        [ours] = [r for r in fields(stored, "Authentication-Results") if r.startswith("mx.b.test;")]
        assert "arc=pass (i=2 sealer=list.test)" in ours, ours
        assert dkim.arc_verify(stored, dnsfunc=zone_dnsfunc(zone))[0] == dkim.CV_Pass


def test_broken_incoming_chain_is_sealed_cv_fail_and_not_after(tmp_path: Path) -> None:
    with pair(tmp_path, []) as (a, b, zone):
        # ext.test's AAR changed after it sealed (the seal covers it; the author's DKIM signature does not, so
        # DMARC still passes everywhere): list.test finds arc=fail and seals with cv=fail (§5.1.2), so b.test
        # sees a failed chain.
        sealed = ext_sealed(authored("fwd@list.test"), "dmarc=pass header.from=origin.test")
        broken = sealed.replace(b"header.from=origin.test", b"header.from=origin.test (edited)", 1)
        assert broken != sealed
        send_mx(a, "fwd@list.test", broken)
        [stored] = wait_for(lambda: mailbox(b, "INBOX"))
        assert any("i=2; cv=fail;" in x for x in fields(stored, "ARC-Seal")), fields(stored, "ARC-Seal")
        [ours] = [r for r in fields(stored, "Authentication-Results") if r.startswith("mx.b.test;")]
        assert "arc=fail" in ours, ours
        # A chain whose newest seal says cv=fail gets no further set (§5.1).
        send_mx(a, "fwd@list.test", stored.split(b"\r\n", 1)[1])  # as b.test got it, less Return-Path
        got = wait_for(lambda: mailbox(b, "INBOX")[1:])
        assert got and len(fields(got[0], "ARC-Seal")) == 2


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted-sealer", "untrusted-sealer"])
def test_subject_tag_and_footer_by_a_trusted_list_elsewhere(tmp_path: Path, trusted: bool) -> None:
    # ext.test's list tags the subject and adds a footer (breaking origin.test's DKIM), then seals with what it
    # saw before: dmarc=pass. At b.test DMARC fails (p=reject); ARC passes.
    with pair(tmp_path, ["ext.test"] if trusted else [], dmarc_reject="reject") as (a, b, zone):
        changed = authored("list@ext.test").replace(b"Subject: lunch", b"Subject: [ext] lunch") + b"-- \r\next\r\n"
        raw = ext_sealed(changed, "dkim=pass header.d=origin.test; dmarc=pass header.from=origin.test")
        with smtplib.SMTP("127.0.0.1", b.port("smtp"), local_hostname="mx.ext.test", timeout=30) as c:
            if trusted:
                assert c.sendmail("list-bounces@ext.test", ["bob@b.test"], raw) == {}
            else:
                with pytest.raises(smtplib.SMTPDataError) as info:
                    c.sendmail("list-bounces@ext.test", ["bob@b.test"], raw)
                assert info.value.smtp_code == 550  # origin.test's p=reject applies
        if trusted:
            [stored] = mailbox(b, "INBOX")
            [ours] = [r for r in fields(stored, "Authentication-Results") if r.startswith("mx.b.test;")]
            assert "dkim=fail" in ours and 'reason="arc"' in ours and "arc=pass (i=1 sealer=ext.test)" in ours
        else:
            assert mailbox(b, "INBOX") == [] and mailbox(b, "Junk") == []


def test_large_forward_is_verified_and_sealed_from_its_staging_file(tmp_path: Path) -> None:
    # Over STAGING_THRESHOLD (1 MiB) the message is staged in a file on arrival: list.test verifies ext.test's
    # chain from that file and seals the forward from its start plus the file (metapool: raw + path).
    big = b"".join(b"line %07d of a long report\r\n" % i for i in range(60_000))  # about 1.7 MB
    with pair(tmp_path, []) as (a, b, zone):
        raw = ext_sealed(authored("fwd@list.test", body=big), "dmarc=pass header.from=origin.test")
        assert len(raw) > 1 << 20
        send_mx(a, "fwd@list.test", raw)
        [stored] = wait_for(lambda: mailbox(b, "INBOX"))
        assert stored.endswith(raw)
        [ours] = [r for r in fields(stored, "Authentication-Results") if r.startswith("mx.b.test;")]
        assert "arc=pass (i=2 sealer=list.test)" in ours, ours
        assert any("i=2; cv=pass;" in x for x in fields(stored, "ARC-Seal"))
        assert dkim.arc_verify(stored, dnsfunc=zone_dnsfunc(zone))[0] == dkim.CV_Pass
