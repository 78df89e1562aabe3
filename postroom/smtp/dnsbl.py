"""What DNS says about an MX client: DNS blocklists and forward-confirmed reverse DNS (issue 12 item 7).

Theory of operation
-------------------
`look_up_client(dns, ip, zones, timeout, rdns)` runs, concurrently and each bounded by `timeout` seconds:

* **DNS blocklists** (RFC 5782): for each zone in `smtp.dnsbl_zones`, the client's address reversed (IPv4: the
  four octets in reverse order, §2.1; IPv6: the 32 nibbles in reverse order, §2.4) followed by the zone, type A.
  An A record in 127.0.0.0/8 means listed (§2.1: DNSxL values are 127.0.0.0/8 addresses), except
  127.255.255.0/24, which Spamhaus documents as query errors (e.g. 127.255.255.254: "query via a public
  resolver"): treating those as listings would refuse every client. No record, NXDOMAIN, a time-out or any
  failure means not listed: a blocklist that cannot be asked must not stop mail.
* **Forward-confirmed reverse DNS** (FCrDNS, "iprev" of RFC 8601 §3): the PTR names of the address (at most
  `MAX_PTR_NAMES`, as RFC 7208 §4.6.4 bounds SPF's `ptr`), then each name's A (IPv4) or AAAA (IPv6) records; the
  first name whose addresses contain the client's is the client's name, else "unknown". The outcome is also
  the iprev result of RFC 8601 §3 (`iprev`): "pass" with a name; "fail" when every lookup answered and none
  confirmed; "temperror" when none confirmed and some lookup failed for now (time-out, SERVFAIL). The session
  puts it in Authentication-Results (`iprev=... policy.iprev=<ip>`, RFC 8601 §2.7.3).

The session (smtp/session.py) starts this at connect, beside the pregreet wait, and reads the result where it
needs it: the blocklist verdict at RCPT (see there), the name for the Received field and the session log line.
Lookups go through the server's one resolver and cache (delivery/mx.py), so a client seen again is not asked
about again within the answers' TTL.

Invariants
1. `look_up_client` never raises for anything DNS does, and returns within about `timeout` seconds.
2. Only an answer in 127.0.0.0/8 (outside 127.255.255.0/24) lists a client.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from postroom.delivery.mx import DnsNotFound

MAX_PTR_NAMES = 10  # PTR names tried for FCrDNS (RFC 7208 §4.6.4 uses 10 for SPF's ptr)
LISTED = ipaddress.ip_network("127.0.0.0/8")
ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")  # Spamhaus: query refused / bad query, not a listing

T = TypeVar("T")


class ClientDns(Protocol):
    async def ips(self, name: str, rdtype: str) -> list[str]:
        """"A" or "AAAA" addresses of `name`; raises on NXDOMAIN or failure."""

    async def ptr(self, ip: str) -> list[str]:
        """PTR names of `ip`, no final dot; raises on NXDOMAIN or failure."""


@dataclass(frozen=True)
class ClientInfo:
    """The result: `rdns` the forward-confirmed name, "unknown", or None when not looked up; `listed` the
    (zone, answer) of the first blocklist (in configured order) that lists the client, else None; `scored`
    every score zone's listing (they add to the built-in score, inbound/score.py, and refuse nothing)."""

    rdns: str | None = None
    listed: tuple[str, str] | None = None
    scored: tuple[tuple[str, str], ...] = ()  # (zone, answer) of each `inbound.score.dnsbl_zones` listing
    iprev: str = ""  # RFC 8601 §3 result of the FCrDNS check ("pass", "fail", "temperror"); "" not looked up


def dnsbl_name(ip: str, zone: str) -> str:
    """The query name of `ip` in blocklist `zone` (RFC 5782 §2.1, §2.4): '192.0.2.99', 'bl.example' ->
    '99.2.0.192.bl.example'. Raises ValueError for a bad address."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if isinstance(addr, ipaddress.IPv4Address):
        labels = str(addr).split(".")
    else:
        labels = list(addr.exploded.replace(":", ""))
    return ".".join(reversed(labels)) + "." + zone.strip(".")


async def _bounded(job: Awaitable[T], timeout: float) -> T | None:
    try:
        return await asyncio.wait_for(job, timeout)
    except asyncio.CancelledError:
        raise
    except Exception:  # time-out, NXDOMAIN, SERVFAIL, a bad name: no answer (invariant 1)
        return None


async def listed_in(dns: ClientDns, ip: str, zone: str, timeout: float) -> str | None:
    """The A record that lists `ip` in `zone` (invariant 2), else None."""
    try:
        name = dnsbl_name(ip, zone)
    except ValueError:
        return None
    answers = await _bounded(dns.ips(name, "A"), timeout) or []
    for value in answers:
        addr = ipaddress.ip_address(value)
        if addr in LISTED and addr not in ERROR_CODES:
            return value
    return None


async def _answer(job: Awaitable[list[str]], timeout: float, failures: list[bool]) -> list[str]:
    """`_bounded`, noting in `failures` a lookup that failed for now (time-out, SERVFAIL: not a DnsNotFound)."""
    try:
        return await asyncio.wait_for(job, timeout)
    except asyncio.CancelledError:
        raise
    except DnsNotFound:
        return []
    except Exception:  # invariant 1
        failures.append(True)
        return []


async def iprev(dns: ClientDns, ip: str, timeout: float) -> tuple[str, str]:
    """(name, result) of the FCrDNS check of `ip` (module doc): the confirmed name and "pass", or "unknown" and
    "fail" (no PTR name whose A/AAAA records hold the address) or "temperror" (a lookup failed for now and none
    confirmed): the iprev results of RFC 8601 §3 (§2.7.3 for the Authentication-Results method)."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "unknown", "permerror"
    failures: list[bool] = []
    names = (await _answer(dns.ptr(ip), timeout, failures))[:MAX_PTR_NAMES]
    rdtype = "A" if isinstance(addr, ipaddress.IPv4Address) else "AAAA"
    forward = await asyncio.gather(*(_answer(dns.ips(n, rdtype), timeout, failures) for n in names))
    for name, addresses in zip(names, forward, strict=True):
        try:
            if addresses and any(ipaddress.ip_address(a) == addr for a in addresses):
                return name.lower(), "pass"
        except ValueError:
            continue
    return "unknown", "temperror" if failures else "fail"



async def look_up_client(dns: ClientDns, ip: str, zones: tuple[str, ...], timeout: float,
                         rdns: bool, score_zones: tuple[str, ...] = ()) -> ClientInfo:
    """Blocklists `zones` and `score_zones` and (when `rdns`) FCrDNS of client `ip`, all at once (module doc).
    Never raises."""
    async def no_name() -> tuple[str | None, str]:
        return None, ""

    name_job = iprev(dns, ip, timeout) if rdns else no_name()
    every = (*zones, *score_zones)
    name_task = asyncio.ensure_future(name_job)
    answers = await asyncio.gather(*(listed_in(dns, ip, z, timeout) for z in every))
    name, result = await name_task
    found = list(zip(every, answers, strict=True))
    listed = next(((z, a) for z, a in found[:len(zones)] if a is not None), None)
    scored = tuple((z, a) for z, a in found[len(zones):] if a is not None)
    return ClientInfo(name, listed, scored, result)
