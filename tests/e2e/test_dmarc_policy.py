"""DMARC policy evaluation (postroom/inbound/dmarc.py `DmarcChecker`) against records served by a loopback DNS
server, with SPF and DKIM results given. Expected values are RFC 7489's: §3.1 alignment (strict / relaxed,
through the Public Suffix List), §6.3 `p` / `sp` / `pct`, §6.6.3 discovery (From domain, then organisational
domain; several records: not applied), §6.6.4 pct sampling (outside the sample: the next milder policy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from dns_support import ZoneDns

from postroom.delivery.mx import DnsResolver
from postroom.inbound.dkim import DkimResult
from postroom.inbound.dmarc import DmarcChecker, DmarcResult
from postroom.inbound.spf import SpfResult

ZONE: dict[str, Any] = {
    "_dmarc.example.com": [{"TXT": "v=DMARC1; p=reject; sp=quarantine"}],
    "_dmarc.strict.example": [{"TXT": "v=DMARC1; p=reject; adkim=s; aspf=s"}],
    "_dmarc.example.co.uk": [{"TXT": "v=DMARC1; p=quarantine"}],
    "_dmarc.sample.example": [{"TXT": "v=DMARC1; p=reject; pct=50"}],
    "_dmarc.twice.example": [{"TXT": "v=DMARC1; p=reject"}, {"TXT": "v=DMARC1; p=none"}],
    "_dmarc.own.sub.example.com": [{"TXT": "v=DMARC1; p=none"}],
    "_dmarc.slow.example": ["TIMEOUT"],
}


async def check(from_domains: Sequence[str], spf: SpfResult | None, dkim: Sequence[DkimResult],
                rng: float = 0.0) -> DmarcResult:
    server = ZoneDns(ZONE)
    await server.start()
    try:
        checker = DmarcChecker(DnsResolver((f"127.0.0.1:{server.port}",), lifetime=0.5), rng=lambda: rng)
        return await checker.check(from_domains, spf, dkim)
    finally:
        server.close()


def dkim_pass(domain: str, whole: bool = True) -> DkimResult:
    return DkimResult("pass", domain, "sel", "abcdefgh", whole_body=whole)


FAIL_SPF = SpfResult("fail", "elsewhere.example")


async def test_relaxed_alignment_through_the_organisational_domain() -> None:
    r = await check(["example.com"], FAIL_SPF, [dkim_pass("mail.example.com")])
    assert (r.result, r.policy) == ("pass", "reject")
    r = await check(["news.example.co.uk"], SpfResult("pass", "bounce.example.co.uk"), [])
    assert r.result == "pass"  # SPF of another name under example.co.uk aligns (relaxed)
    r = await check(["example.co.uk"], SpfResult("pass", "other.co.uk"), [])
    assert (r.result, r.disposition) == ("fail", "quarantine")  # co.uk is a public suffix: no alignment


async def test_strict_alignment() -> None:
    r = await check(["strict.example"], SpfResult("pass", "mail.strict.example"), [dkim_pass("a.strict.example")])
    assert (r.result, r.disposition) == ("fail", "reject")
    r = await check(["strict.example"], FAIL_SPF, [dkim_pass("strict.example")])
    assert r.result == "pass"


async def test_subdomain_policy_and_own_record() -> None:
    r = await check(["a.example.com"], FAIL_SPF, [])
    assert (r.result, r.policy, r.disposition) == ("fail", "quarantine", "quarantine")  # sp from example.com
    r = await check(["own.sub.example.com"], FAIL_SPF, [])
    assert (r.result, r.policy) == ("fail", "none")  # its own record wins over the organisational one


async def test_pct_sampling() -> None:
    inside = await check(["sample.example"], FAIL_SPF, [], rng=0.2)  # 20 < 50: in the sample
    outside = await check(["sample.example"], FAIL_SPF, [], rng=0.7)
    assert (inside.disposition, outside.disposition) == ("reject", "quarantine")


async def test_no_record_several_records_and_dns_failure() -> None:
    assert (await check(["nothing.example"], FAIL_SPF, [])).result == "none"
    assert (await check(["twice.example"], FAIL_SPF, [])).result == "none"  # §6.6.3: several records
    assert (await check(["slow.example"], FAIL_SPF, [])).result == "temperror"
    assert (await check([], FAIL_SPF, [])).result == "none"


async def test_partial_body_signature_and_transient_failures() -> None:
    r = await check(["example.com"], FAIL_SPF, [dkim_pass("example.com", whole=False)])
    assert r.result == "fail"  # RFC 6376 §8.2: l= left content unsigned
    r = await check(["example.com"], FAIL_SPF, [DkimResult("temperror", "example.com", "sel")])
    assert (r.result, r.disposition) == ("temperror", "none")  # no policy on a DNS hiccup


@pytest.mark.parametrize("order", [0, 1])
async def test_several_from_domains_worst_counts(order: int) -> None:
    domains = ["example.com", "strict.example"]
    if order:
        domains.reverse()
    r = await check(domains, FAIL_SPF, [dkim_pass("example.com")])
    assert (r.result, r.domain, r.disposition) == ("fail", "strict.example", "reject")
