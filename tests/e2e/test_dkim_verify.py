"""DKIM verification (postroom/inbound/dkim.py): dkimpy signs, a loopback DNS server publishes the keys, the
verifier fetches them through the server's resolver and checks in a worker process.

Expected results are the RFC's: a good signature passes (RFC 6376 §6.1.3), a changed body or signed header fails,
RSA keys under 1024 bits and SHA-1 are refused (RFC 8301 §3.1, §3.2), Ed25519 verifies (RFC 8463 §3, with its
Appendix A example), an expired `x=` or a future `t=` is not accepted (RFC 6376 §3.5), `l=` is noted and a
signature that covers only part of the body does not count for the whole of it (RFC 6376 §8.2).
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from dkim_support import RFC8463_KEYS, RFC8463_MESSAGE, SigningKey
from dns_support import ZoneDns

from postroom import metapool as pool
from postroom.delivery.mx import DnsResolver
from postroom.inbound.dkim import DkimResult, signature_tags, verify_message

MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: bob@b.test\r\nSubject: lunch\r\n"
           b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@a.test>\r\n\r\n"
           b"Shall we meet at noon?\r\n\r\n  Alice  \r\n")

RSA = SigningKey.rsa(2048)
ED = SigningKey.ed25519()


async def _verify(raw: bytes, zone: dict[str, Any]) -> list[DkimResult]:
    server = ZoneDns(zone)
    await server.start()
    try:
        return await verify_message(DnsResolver((f"127.0.0.1:{server.port}",), lifetime=1.0), raw, raw=raw)
    finally:
        server.close()
        await pool.shutdown()


def _zone(key: SigningKey, name: str = "sel._domainkey.a.test") -> dict[str, Any]:
    return {name: [{"TXT": key.record}]}


@pytest.mark.parametrize("canon", [b"relaxed/relaxed", b"simple/simple", b"relaxed/simple", b"simple/relaxed"])
@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa-sha256", "ed25519-sha256"])
async def test_signed_message_passes(key: SigningKey, canon: bytes) -> None:
    [r] = await _verify(key.sign(MESSAGE, "a.test", canon=canon), _zone(key))
    assert (r.result, r.domain, r.selector, r.whole_body) == ("pass", "a.test", "sel", True)
    assert len(r.b) == 8


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa-sha256", "ed25519-sha256"])
async def test_tampering_fails(key: SigningKey) -> None:
    signed = key.sign(MESSAGE, "a.test")
    zone = _zone(key)
    body = signed.replace(b"at noon", b"at one")
    header = signed.replace(b"Subject: lunch", b"Subject: dinner")
    [rb] = await _verify(body, zone)
    [rh] = await _verify(header, zone)
    assert (rb.result, rb.reason) == ("fail", "body hash did not verify")
    assert (rh.result, rh.reason) == ("fail", "signature did not verify")
    # An unsigned header field may be added (RFC 6376 §5.4): still a pass.
    [ok] = await _verify(b"X-Added: by a list\r\n" + signed, zone)
    assert ok.result == "pass"


async def test_signature_with_another_key_fails() -> None:
    [r] = await _verify(RSA.sign(MESSAGE, "a.test"), _zone(SigningKey.rsa(2048)))
    assert r.result == "fail"


async def test_length_limit_noted_and_extra_content_not_covered() -> None:
    signed = RSA.sign(MESSAGE, "a.test", length=True)
    [whole] = await _verify(signed, _zone(RSA))
    assert whole.result == "pass" and whole.whole_body and "l=" in whole.reason
    [partial] = await _verify(signed + b"Unsigned text appended on the way.\r\n", _zone(RSA))
    assert partial.result == "pass" and not partial.whole_body
    assert "covers" in partial.reason


async def test_key_under_1024_bits_is_refused() -> None:
    weak = SigningKey.rsa(512)
    [r] = await _verify(weak.sign(MESSAGE, "a.test"), _zone(weak))
    assert r.result == "policy"  # RFC 8301 §3.2
    assert "1024" in r.reason


async def test_rsa_sha1_is_refused() -> None:
    signed = RSA.sign(MESSAGE, "a.test")
    sha1 = signed.replace(b"a=rsa-sha256", b"a=rsa-sha1", 1)
    [r] = await _verify(sha1, _zone(RSA))
    assert r.result == "policy"  # RFC 8301 §3.1


async def test_expired_and_future_signatures() -> None:
    now = int(time.time())
    expired = RSA.sign(MESSAGE, "a.test", at=now - 3 * 86400, expires=now - 2 * 86400)
    future = RSA.sign(MESSAGE, "a.test", at=now + 3 * 86400)
    fresh = RSA.sign(MESSAGE, "a.test", at=now - 60, expires=now + 86400)
    [e] = await _verify(expired, _zone(RSA))
    [f] = await _verify(future, _zone(RSA))
    [ok] = await _verify(fresh, _zone(RSA))
    assert (e.result, e.reason) == ("policy", "signature expired")
    assert (f.result, f.reason) == ("policy", "signature dated in the future")
    assert ok.result == "pass"


async def test_key_missing_malformed_or_dns_failing() -> None:
    signed = RSA.sign(MESSAGE, "a.test")
    [missing] = await _verify(signed, {})
    [bad] = await _verify(signed, {"sel._domainkey.a.test": [{"TXT": "v=DKIM1; k=foo; p=bm90IGEga2V5"}]})
    [temp] = await _verify(signed, {"sel._domainkey.a.test": ["TIMEOUT"]})
    assert missing.result == "permerror" and "no key" in missing.reason
    assert bad.result == "permerror"
    assert temp.result == "temperror"


async def test_rfc8463_appendix_a_example_verifies() -> None:
    zone = {name: [{"TXT": [record[i:i + 255] for i in range(0, len(record), 255)]}]
            for name, record in RFC8463_KEYS.items()}
    results = await _verify(RFC8463_MESSAGE, zone)
    assert [(r.result, r.selector, r.domain) for r in results] == [
        ("pass", "brisbane", "football.example.com"), ("pass", "test", "football.example.com")]


async def test_every_signature_gets_a_result_in_order() -> None:
    other = SigningKey.ed25519()
    twice = other.sign(RSA.sign(MESSAGE, "a.test"), "b.test", selector="s2")
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=c.test\r\n" + twice
    zone = {**_zone(RSA), "s2._domainkey.b.test": [{"TXT": other.record}]}
    results = await _verify(broken, zone)
    assert [(r.result, r.domain) for r in results] == [("neutral", "c.test"), ("pass", "b.test"),
                                                        ("pass", "a.test")]


def test_signature_tags_parse() -> None:
    head = (b"Received: x\r\nDKIM-Signature: v=1; a=rsa-sha256;\r\n d=a.test; s=sel;\r\n\tb=abc\r\n"
            b"DKIM-Signature: v=1; v=2\r\nSubject: DKIM-Signature: no\r\n\r\nDKIM-Signature: body\r\n")
    assert signature_tags(head) == [{"v": "1", "a": "rsa-sha256", "d": "a.test", "s": "sel", "b": "abc"}, None]
