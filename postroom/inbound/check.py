"""The inbound checks of one message on the MX listener: SPF, DKIM, DMARC, ARC, and what follows from them.

Theory of operation
-------------------
`InboundChecks.check(...)` runs at the end of DATA/BDAT, before the message goes to the router:

1. SPF for the MAIL FROM identity and for the HELO identity (RFC 7208 §2.3, §2.4), DKIM for every
   signature (inbound/dkim.py: keys by DNS, cryptography in a worker process) and the ARC chain
   (inbound/arc.py, RFC 8617 §5.2), all concurrently.
2. DMARC (inbound/dmarc.py) from the From header's domains and the results of step 1. A failure whose
   policy would quarantine or reject is overridden (RFC 7489 §7.2 local policy, RFC 8617 §7.2) when the ARC
   chain passed, its newest sealer is in `inbound.arc_trusted_sealers` and the chain's i=1
   ARC-Authentication-Results recorded a pass for the From domain (`arc.trusted_pass`): the message is
   accepted, the field says `dmarc=fail (... arc override: ...) reason="arc"` and the log `dmarc_override=`.
3. The verdict: `action` "accept", "quarantine" (DMARC disposition quarantine, or reject when
   `inbound.dmarc_reject = "quarantine"`) or "reject" (DMARC disposition reject: the session answers
   `550 5.7.1`, RFC 7489 §7.3 / §10.3); the Authentication-Results field to prepend (inbound/authres.py);
   and the fields for the message's log line.

Every check is switched by `[inbound]` (config.py); DNS goes through `delivery.mx.DnsResolver` with the
`delivery.dns_servers` setting and `inbound.dns_timeout_seconds` per lookup, so a dead resolver costs at most
that long per lookup and ends in `temperror`, never in a refusal or a traceback.

Invariants
1. `check` never raises for anything the message, the client or DNS does: every failure is a result.
2. Only DMARC refuses or quarantines; SPF, DKIM and ARC results alone only inform (Authentication-Results,
   log). ARC can only lift a DMARC policy (step 2), never impose one.
3. The whole check is bounded: SPF by its lookup limits and deadline, DKIM by `MAX_SIGNATURES` and the
   worker's time limit, DMARC by two lookups per From domain (at most five domains), ARC by `arc.MAX_SETS` and
   `arc.MAX_KEYS` and the worker's time limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from postroom.config import Config
from postroom.delivery.dkim import from_domains
from postroom.delivery.mx import DnsResolver
from postroom.inbound import authres
from postroom.inbound.arc import ArcResult, trusted_pass, verify_chain
from postroom.inbound.dkim import DkimResult, header_block, verify_message
from postroom.inbound.dmarc import DmarcChecker, DmarcResult
from postroom.inbound.spf import SpfChecker, SpfDns, SpfResult


@dataclass(frozen=True)
class Verdict:
    """What the checks found (module doc, step 3). `header` is the Authentication-Results field to prepend."""

    action: str  # "accept" | "quarantine" | "reject"
    header: bytes
    spf: SpfResult | None = None
    helo_spf: SpfResult | None = None
    dkim: list[DkimResult] | None = None  # None: not checked
    dmarc: DmarcResult | None = None
    arc: ArcResult | None = None  # None: not checked

    def log_fields(self) -> list[tuple[str, object]]:
        """`key=value` pairs for the message's log line."""
        out: list[tuple[str, object]] = []
        if self.spf is not None:
            out.append(("spf", self.spf.result))
        if self.helo_spf is not None:
            out.append(("spf_helo", self.helo_spf.result))
        if self.dkim is not None:
            out.append(("dkim", ",".join(f"{r.result}:{r.domain or '-'}" for r in self.dkim) or "none"))
        if self.dmarc is not None:
            out.append(("dmarc", self.dmarc.result))
            if self.dmarc.policy:
                out.append(("dmarc_policy", f"{self.dmarc.policy}/{self.dmarc.disposition}"))
            if self.dmarc.domain:
                out.append(("header_from", self.dmarc.domain))
            if self.dmarc.override:
                out.append(("dmarc_override", f"arc: {self.dmarc.override}"))
        if self.arc is not None:
            out.append(("arc", self.arc.log_value()))
            if self.arc.result == "fail" and self.arc.reason:
                out.append(("arc_reason", self.arc.reason))
        if self.action != "accept":
            out.append(("action", self.action))
        return out


class InboundChecks:
    """The configured checks (module doc). `dns` is injected (tests point a `DnsResolver` at a loopback DNS)."""

    def __init__(self, config: Config, dns: SpfDns | None = None) -> None:
        self.config = config
        self.inbound = config.inbound
        self.dns: SpfDns = dns or DnsResolver(config.delivery.dns_servers,
                                              lifetime=config.inbound.dns_timeout_seconds)
        self.authserv_id = config.server.hostname
        self.spf = SpfChecker(self.dns, receiver=config.server.hostname)
        self.dmarc = DmarcChecker(self.dns)

    async def check(self, *, ip: str, helo: str, mail_from: str, head: bytes, raw: bytes | None = None,
                    path: Path | None = None, helo_known: SpfResult | None = None,
                    iprev: tuple[str, str] | None = None) -> Verdict:
        """Check the message `raw` (or the file `path`) whose first bytes are `head`, from client `ip` that said
        `helo` and gave `mail_from` ("" for the null reverse-path). `helo_known`: the HELO identity's result
        from an earlier message of the session (the same client and name: not looked up again). `iprev`: the
        door's reverse DNS result and name (smtp/dnsbl.py), reported as RFC 8601 §3 iprev; None: not looked
        up. Never raises (invariant 1)."""
        spf_job = self._spf(ip, helo, mail_from, helo_known) if self.inbound.spf else _nothing_spf()
        dkim_job = verify_message(self.dns, head, raw=raw, path=path) if self.inbound.dkim else _no_dkim()
        arc_job = verify_chain(self.dns, head, raw=raw, path=path) if self.inbound.arc else _no_arc()
        (spf, helo_spf), dkim, arc = await asyncio.gather(spf_job, dkim_job, arc_job)
        dmarc: DmarcResult | None = None
        action = "accept"
        if self.inbound.dmarc:
            block = header_block(head)
            domains = from_domains(block)
            if not domains and _FROM_FIELD.search(block):
                # RFC 7489 §6.6.1: a From field that yields no usable domain (two angle-addresses, no domain, a
                # field too long to read) cannot be checked; such messages are "typically rejected". Skipping the
                # policy would let anyone avoid a domain's p=reject by malforming the field.
                dmarc = DmarcResult("permerror", reason="From header field without a single usable domain")
                action = "reject"
            else:
                dmarc = await self.dmarc.check(domains or [], spf, dkim)
            if dmarc.result == "fail" and dmarc.disposition != "none":
                why = trusted_pass(arc, dmarc.domain, self.inbound.arc_trusted_sealers)
                if why:  # step 2: a trusted sealer vouches for what the first hop saw
                    dmarc = dataclasses.replace(dmarc, disposition="none", override=why)
            if dmarc.result == "fail" and dmarc.disposition == "reject":
                action = "reject" if self.inbound.dmarc_reject == "reject" else "quarantine"
            elif dmarc.result == "fail" and dmarc.disposition == "quarantine":
                action = "quarantine"
        checked = dkim if self.inbound.dkim else None
        header = authres.header(self.authserv_id, spf=spf, helo_spf=helo_spf, mail_from=mail_from, helo=helo,
                                dkim=checked, dmarc=dmarc, arc=arc, remote_ip=ip,
                                iprev=(iprev[0], ip, iprev[1]) if iprev is not None else None)
        return Verdict(action, header, spf, helo_spf, checked, dmarc, arc)

    async def _spf(self, ip: str, helo: str, mail_from: str,
                   helo_known: SpfResult | None) -> tuple[SpfResult, SpfResult | None]:
        """(MAIL FROM result, HELO result). The HELO identity is checked when it is a domain name (RFC 7208
        §2.3: an address literal has no SPF); for the null sender the MAIL FROM result is the HELO one."""
        helo_name = helo.strip("[]")
        is_literal = helo.startswith("[") or _is_ip(helo_name)
        if not mail_from:
            if is_literal:
                return SpfResult("none", helo, "helo", "HELO is an address literal"), None
            r = await self.spf.check_mail_from(ip, helo, "")
            return r, None
        if is_literal:
            return await self.spf.check_mail_from(ip, helo, mail_from), None
        if helo_known is not None and helo_known.domain == helo:
            return await self.spf.check_mail_from(ip, helo, mail_from), helo_known
        mf, hl = await asyncio.gather(self.spf.check_mail_from(ip, helo, mail_from), self.spf.check_helo(ip, helo))
        return mf, hl


_FROM_FIELD = re.compile(rb"(?im)^from[ \t]*:")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.removeprefix("IPv6:"))
        return True
    except ValueError:
        return False


async def _nothing_spf() -> tuple[SpfResult | None, SpfResult | None]:
    return None, None


async def _no_dkim() -> list[DkimResult]:
    return []


async def _no_arc() -> ArcResult | None:
    return None
