"""DMARC (RFC 7489): does an authenticated identifier align with the From domain, and what does its owner ask?

Theory of operation
-------------------
`DmarcChecker.check(from_domains, spf, dkim)` is RFC 7489 §6.6:

1. The RFC5322.From domain (§6.6.1) comes from the header (`delivery.dkim.from_domains`). No From domain:
   `none` (nothing to check). Several different domains (one field with several addresses, or several
   fields): each is checked and the worst outcome is the message's, so a second From cannot dodge a policy.
2. Policy discovery (§6.6.3): the "v=DMARC1" TXT record at `_dmarc.<From domain>`, else at
   `_dmarc.<organisational domain>`; none, or more than one: `none`. A DNS failure: `temperror`.
3. The organisational domain (§3.2) is the registrable domain by the Public Suffix List (the maintained
   `publicsuffixlist` package; a name that is itself a public suffix is its own organisational domain).
4. Alignment (§3.1): a DKIM `pass` whose d= is the From domain (strict, `adkim=s`) or shares its
   organisational domain (relaxed, the default); an SPF `pass` whose checked domain (MAIL FROM's, or HELO's for
   the null sender) aligns the same way under `aspf`. A DKIM pass whose `l=` leaves part of the body unsigned
   does not count (RFC 6376 §8.2). Any aligned pass: `pass`; otherwise `fail`, or `temperror` when an
   identifier that would align failed only for now (then no policy is applied: the sender retries nothing,
   but refusing on a DNS hiccup would lose mail).
5. The policy (§6.3): `sp` when the record was found at the organisational domain for a subdomain From
   (default `p`), else `p`. `pct` (§6.6.4): the policy applies to that share of failing messages, chosen at
   random; the others get the next milder one (reject -> quarantine, quarantine -> none).

A record whose `p` is missing or unknown is not applied (§6.6.3), unless it names a syntactically valid `rua`
URI: then it acts as `p=none`. Unknown tags are ignored (§6.3). The result carries the record and where it was
found, for aggregate reports (`rua`, inbound/dmarc_reports.py, when `inbound.dmarc_reports` is on); failure
reports (`ruf`) are not sent.

Where DMARCbis (the draft that replaces the PSL by a DNS tree walk and adds `t=`) differs, RFC 7489 wins here:
the organisational domain is the PSL's, and `t=` is ignored like any unknown tag.

Invariants
1. At most two TXT lookups per From domain (the From domain and its organisational domain).
2. Nothing a record or a header holds raises; a DNS failure is `temperror`, never an exception.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Protocol

from publicsuffixlist import PublicSuffixList

from postroom.delivery.mx import DnsNotFound, DnsTemporary
from postroom.inbound.dkim import DkimResult
from postroom.inbound.spf import SpfResult

POLICIES = ("none", "quarantine", "reject")
MILDER = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class TxtDns(Protocol):
    async def txt(self, name: str) -> list[bytes]: ...


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # parses the package's copy of the list once (tens of ms)


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label ("mail.example.co.uk" -> "example.co.uk"); a name that is
    a public suffix, or that the list does not place, is its own."""
    d = domain.lower().rstrip(".")
    return _psl().privatesuffix(d) or d


def aligned(a: str, b: str, strict: bool) -> bool:
    """RFC 7489 §3.1: strict: the same name; relaxed: the same organisational domain."""
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    return a == b if strict else organizational_domain(a) == organizational_domain(b)


@dataclass(frozen=True)
class DmarcRecord:
    p: str  # "none" | "quarantine" | "reject"
    sp: str
    adkim_strict: bool = False
    aspf_strict: bool = False
    pct: int = 100
    rua: tuple[str, ...] = ()  # the aggregate report URIs as published (§6.3 "rua"), for inbound/dmarc_reports.py
    fo: str = "0"  # failure reporting options (§6.3), only repeated in aggregate reports


def parse_record(text: str) -> DmarcRecord | None:
    """RFC 7489 §6.3-6.4. None when the record is not to be applied (no valid p=, and no valid rua= to fall
    back to p=none with, §6.6.3)."""
    tags: dict[str, str] = {}
    if text.split("=", 1)[0].strip().lower() != "v":
        return None  # §6.3: "v" MUST be the first tag
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if eq and name and name not in tags:
            tags[name] = value
    if tags.get("v") != "DMARC1":
        return None
    p = tags.get("p", "").lower()
    rua = tuple(u.strip() for u in tags.get("rua", "").split(",") if u.strip())
    if p not in POLICIES:
        if not any(re.match(r"[A-Za-z][A-Za-z0-9+.-]*:\S+", u) for u in rua):
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    if sp not in POLICIES:
        sp = p  # §6.3: absent (or invalid) sp: the p policy applies to subdomains too
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    return DmarcRecord(p=p, sp=sp, adkim_strict=tags.get("adkim", "r").lower() == "s",
                       aspf_strict=tags.get("aspf", "r").lower() == "s", pct=pct, rua=rua,
                       fo=tags.get("fo", "0") or "0")


@dataclass(frozen=True)
class DmarcResult:
    """`result` ("none", "pass", "fail", "temperror"), the From `domain`, the `policy` its owner published for it
    ("" when none applies), the `disposition` after pct ("none", "quarantine", "reject"), a `reason`, and
    `override`: why local policy did not apply the owner's policy to a failure ("" when it was not overridden;
    inbound/check.py: a trusted ARC sealer, RFC 7489 §7.2)."""

    result: str
    domain: str = ""
    policy: str = ""
    disposition: str = "none"
    reason: str = ""
    override: str = ""
    record: DmarcRecord | None = None  # the record applied, for aggregate reports
    record_domain: str = ""  # where it was found: the From domain or its organisational domain
    dkim_aligned: bool = False  # an aligned DKIM pass was found (RFC 7489 Appendix C policy_evaluated/dkim)
    spf_aligned: bool = False  # an aligned SPF pass was found (policy_evaluated/spf)


class DmarcChecker:
    """RFC 7489 §6.6 over an injected TXT lookup; `rng` decides pct sampling (tests pass a seeded one)."""

    def __init__(self, dns: TxtDns, rng: Callable[[], float] = random.random) -> None:
        self.dns = dns
        self.rng = rng

    async def check(self, from_domains: Sequence[str], spf: SpfResult | None,
                    dkim: Sequence[DkimResult]) -> DmarcResult:
        """The message's DMARC result (module doc, step 1: the worst over its From domains). Never raises."""
        domains = list(dict.fromkeys(d.lower().rstrip(".") for d in from_domains if d))
        if not domains:
            return DmarcResult("none", reason="no From domain")
        results = [await self._check_one(d, spf, dkim) for d in domains[:5]]
        order = {"fail": 0, "temperror": 1, "pass": 2, "none": 3}
        return min(results, key=lambda r: (order.get(r.result, 9), -POLICIES.index(r.disposition)))

    async def _record(self, domain: str) -> tuple[str, DmarcRecord | None, str]:
        """("found" | "none" | "temperror", record, where) for `_dmarc.<domain>` (§6.6.3)."""
        try:
            texts = await self.dns.txt(f"_dmarc.{domain}")
        except DnsNotFound:
            return "none", None, domain
        except DnsTemporary:
            return "temperror", None, domain
        found = [t for t in texts if re.match(rb"v\s*=\s*DMARC1\s*(;|\Z)", t)]
        if len(found) != 1:
            return "none", None, domain  # none, or several: DMARC is not applied
        return "found", parse_record(found[0].decode("ascii", "replace")), domain

    async def _check_one(self, domain: str, spf: SpfResult | None, dkim: Sequence[DkimResult]) -> DmarcResult:
        org = organizational_domain(domain)
        state, record, where = await self._record(domain)
        at_org = False
        if state == "none" and org != domain:
            state, record, where = await self._record(org)  # invariant 1: the second and last lookup
            at_org = True
        if state == "temperror":
            return DmarcResult("temperror", domain, reason="DMARC record lookup failed")
        if record is None:
            return DmarcResult("none", domain, reason="no DMARC record")
        policy = record.sp if at_org and domain != org else record.p
        dkim_ok = [r for r in dkim if r.result == "pass" and r.whole_body
                   and aligned(r.domain, domain, record.adkim_strict)]
        spf_ok = spf is not None and spf.result == "pass" and aligned(spf.domain, domain, record.aspf_strict)
        found = DmarcResult("fail", domain, policy, record=record, record_domain=where, dkim_aligned=bool(dkim_ok),
                            spf_aligned=spf_ok)
        if dkim_ok or spf_ok:
            via = f"dkim {dkim_ok[0].domain}" if dkim_ok else f"spf {spf.domain if spf else ''}"
            return replace(found, result="pass", reason=f"aligned {via}")
        transient = [r for r in dkim if r.result == "temperror" and aligned(r.domain, domain, record.adkim_strict)]
        if transient or (spf is not None and spf.result == "temperror"
                         and aligned(spf.domain, domain, record.aspf_strict)):
            return replace(found, result="temperror", reason="an aligned identifier failed for now")
        disposition = policy
        if record.pct < 100 and self.rng() * 100 >= record.pct:
            disposition = MILDER[policy]  # §6.6.4: outside the sampled share, the next milder policy
        return replace(found, disposition=disposition, reason="no aligned pass")
