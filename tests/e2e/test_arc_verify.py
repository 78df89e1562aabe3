"""ARC chain verification (postroom/inbound/arc.py): dkimpy's `arc_sign` seals (as a forwarder would), a loopback
DNS server publishes the sealers' keys, the verifier fetches them through the server's resolver and checks in a
worker process.

Expected results are RFC 8617's: a chain whose newest AMS and every AS verify passes (§5.2), with `oldest-pass`
0 when every AMS still verifies and the instance of the oldest that does otherwise (§5.2 step 5); a body changed
after sealing fails the newest AMS (step 4); a missing instance, a duplicated field, more than 50 sets, an
instance outside 1..50 (§4.2.1), an AS whose cv= is not none for i=1 / pass later (§5.1.1) and a newest AS with
cv=fail (step 2) fail; a message without ARC fields is `none` (step 1).
"""

from __future__ import annotations

import re
from typing import Any

from dkim_support import SigningKey
from dns_support import ZoneDns

from postroom import metapool as pool
from postroom.delivery.mx import DnsResolver
from postroom.inbound.arc import ArcResult, verify_chain

MESSAGE = (b"From: Alice <alice@a.test>\r\nTo: list@l1.test\r\nSubject: lunch\r\n"
           b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <1@a.test>\r\n\r\n"
           b"Shall we meet at noon?\r\n")

K1 = SigningKey.rsa(2048)
K2 = SigningKey.rsa(2048)
ZONE: dict[str, Any] = {"s1._domainkey.l1.test": [{"TXT": K1.record}], "s2._domainkey.l2.test": [{"TXT": K2.record}]}


def seal(raw: bytes, key: SigningKey, domain: str, selector: str, results: str) -> bytes:
    """`raw` with one more ARC set by dkimpy, as the sealer `domain` whose own Authentication-Results were
    `results` (the A-R field is what dkimpy reads the AAR and cv= from; it is not kept in the output)."""
    import dkim

    ar = f"Authentication-Results: mx.{domain}; {results}\r\n".encode()
    fields = dkim.arc_sign(ar + raw, selector.encode(), domain.encode(), key.private, f"mx.{domain}".encode(),
                           include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    assert fields, "dkimpy declined to seal"
    return b"".join(fields) + raw


def one_hop() -> bytes:
    return seal(MESSAGE, K1, "l1.test", "s1", "spf=pass smtp.mailfrom=alice@a.test; dmarc=pass header.from=a.test")


def two_hops() -> bytes:
    return seal(one_hop(), K2, "l2.test", "s2", "arc=pass; spf=fail smtp.mailfrom=bounce@l1.test")


async def verify(raw: bytes) -> ArcResult:
    server = ZoneDns(ZONE)
    await server.start()
    try:
        return await verify_chain(DnsResolver((f"127.0.0.1:{server.port}",), lifetime=1.0), raw, raw=raw)
    finally:
        server.close()
        await pool.shutdown()


async def test_one_and_two_sealers_pass() -> None:
    r = await verify(one_hop())
    assert (r.result, r.n, r.sealer, r.oldest_pass) == ("pass", 1, "l1.test", 0)
    assert ("dmarc", "pass", {"header.from": "a.test"}) in r.origin  # what the first hop saw (its AAR)
    r = await verify(two_hops())
    assert (r.result, r.n, r.sealer, r.oldest_pass) == ("pass", 2, "l2.test", 0)
    assert ("spf", "pass", {"smtp.mailfrom": "alice@a.test"}) in r.origin  # always the i=1 AAR


async def test_no_chain_is_none() -> None:
    assert (await verify(MESSAGE)).result == "none"


async def test_body_changed_after_sealing_fails() -> None:
    r = await verify(one_hop().replace(b"at noon", b"at one"))
    assert r.result == "fail" and "ARC-Message-Signature" in r.reason


async def test_change_between_hops_is_oldest_pass() -> None:
    # The second sealer received a changed message: i=1's AMS no longer verifies, i=2's (the newest) does;
    # the chain passes with oldest-pass 2 (RFC 8617 §5.2 step 5).
    changed = one_hop().replace(b"Subject: lunch", b"Subject: [list] lunch")
    sealed = seal(changed, K2, "l2.test", "s2", "arc=pass")
    r = await verify(sealed)
    assert (r.result, r.oldest_pass) == ("pass", 2)


async def test_header_of_a_seal_changed_fails() -> None:
    raw = two_hops()
    tampered = raw.replace(b"i=1; mx.l1.test;", b"i=1; mx.l1.test; dkim=pass header.d=a.test;")
    assert tampered != raw
    assert (await verify(tampered)).result == "fail"  # the AS of i=1 and i=2 cover the AAR


async def test_broken_instance_sequence_fails() -> None:
    raw = two_hops()
    gap = re.sub(rb"(ARC-[A-Za-z-]+: )i=2;", rb"\1i=3;", raw)  # sets 1 and 3: no 2
    r = await verify(gap)
    assert r.result == "fail" and "i=2 missing" in r.reason
    dup = raw.replace(b"ARC-Seal: i=2;", b"ARC-Seal: i=1;")  # two seals for i=1, none for i=2
    assert (await verify(dup)).result == "fail"
    lonely = re.sub(rb"ARC-Message-Signature: i=2;[^\r]*\r\n(?:[ \t][^\r]*\r\n)*", b"", raw)
    r = await verify(lonely)
    assert r.result == "fail" and "lacks arc-message-signature" in r.reason


async def test_more_than_fifty_sets_fail() -> None:
    # 51 sets (i=2..51 on top of a real one): refused from the header alone, before any key lookup.
    raw = one_hop()
    extra = b"".join(b"ARC-Seal: i=%d; cv=pass; a=rsa-sha256; d=l1.test; s=s1; b=AAAA\r\n"
                     b"ARC-Message-Signature: i=%d; a=rsa-sha256; d=l1.test; s=s1; h=from; bh=AAAA; b=AAAA\r\n"
                     b"ARC-Authentication-Results: i=%d; mx.l1.test; arc=pass\r\n" % (i, i, i) for i in range(2, 52))
    r = await verify(extra + raw)
    assert r.result == "fail" and "outside 1..50" in r.reason
    assert r.n == 0


async def test_cv_rules() -> None:
    raw = two_hops()
    first_not_none = raw.replace(b"cv=none", b"cv=pass")
    r = await verify(first_not_none)
    assert r.result == "fail" and "i=1 says cv=pass" in r.reason
    newest_fail = raw.replace(b"ARC-Seal: i=2; cv=pass", b"ARC-Seal: i=2; cv=fail")
    r = await verify(newest_fail)
    assert r.result == "fail" and "cv=fail" in r.reason


async def test_missing_key_fails() -> None:
    raw = seal(MESSAGE, K1, "nokey.test", "s1", "dmarc=pass header.from=a.test")
    assert (await verify(raw)).result == "fail"
