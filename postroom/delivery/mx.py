"""Routing: where the mail for a domain goes (static routes, smart host, DNS MX, implicit MX, null MX).

Theory of operation
-------------------
`RouteFinder.route(domain)` returns a `Route`: the ordered hosts (`Hop`: name, address to connect to, port) the SMTP
client tries one after the other, or raises `RouteFailure` (permanent: bounce now; temporary: retry later).
The order of precedence is:

1. an address literal (`user@[192.0.2.1]`, `user@[IPv6:2001:db8::1]`, RFC 5321 §4.1.3): that address;
2. the static routes table (`[delivery.routes]`, "domain" = "host[:port]"), exact domain match: the seeds'
   host-table idea, for tests and private networks;
3. the smart host (`delivery.smarthost`), which then gets all other remote mail (with AUTH if configured);
   a configured host name (2, 3) is looked up in DNS first and, when DNS does not know it, through the
   system resolver (`getaddrinfo`: /etc/hosts and whatever nsswitch.conf names), as Postfix does with
   `smtp_host_lookup = dns, native`, so `localhost` or a name in /etc/hosts works as a route; MX hosts (4)
   come from DNS only (RFC 5321 §5.1);
4. DNS (RFC 5321 §5.1): the MX records in preference order, equal preferences in random order (§5.1: "the
   sender-SMTP MUST randomize them to spread the load"); each MX host's A then AAAA addresses. No MX record at
   all (NOERROR, no data) means the domain itself is the only host ("implicit MX", §5.1). A null MX (RFC 7505
   §3: one MX record of preference 0 whose exchange is ".") means the domain takes no mail: a permanent
   failure at once (RFC 7505 §4.2: 556 5.1.10). A domain that does not exist (NXDOMAIN) fails permanently
   (5.1.2); a DNS time-out or SERVFAIL is temporary (4.4.3).

The resolver is injected (`Resolver` protocol): `DnsResolver` uses dnspython, optionally against given name
servers (the e2e tests run a DNS server of their own on a loopback port); unit tests pass a dictionary. The
system lookup of configured names is injected too (`HostLookup`, default `system_addresses`).

One resolver, one cache (issue 12 item 9): the server builds one `DnsResolver` with one `DnsCache` (app.py) and
hands it to outbound delivery, to the inbound checks (SPF, DKIM keys, DMARC: `with_lifetime` gives them their own
time limit over the same cache) and to the door (blocklists, reverse DNS). An answer is kept for its TTL (the
smallest TTL of the CNAME chain and the answer, RFC 1035 §3.2.1 / RFC 2181 §5.2); a negative answer (NXDOMAIN,
or the name exists without records of the type) for the SOA's negative TTL, min(SOA TTL, SOA MINIMUM) (RFC 2308
§5), or `NEGATIVE_TTL_NO_SOA` when the answer carries no SOA; nothing past the configured `max_ttl`. Failures
(time-out, SERVFAIL) are never cached: the next lookup asks again. Lookups of one name and type made while
that question is already out wait for its answer instead of asking again (so 50 sessions of one new client ask
once), each for at most its own time limit.

Invariants
1. A returned Route has at least one hop and at most `MAX_HOPS`.
2. Hops of a lower MX preference always come before hops of a higher one; shuffling only reorders equals.
3. Only a permanent DNS answer (NXDOMAIN, null MX, no address for an implicit MX) raises a permanent
   RouteFailure; anything that may be transient is temporary, so mail waits rather than bounces.
4. A cached answer is never served after its TTL, nor after `max_ttl`; the cache never holds more than its
   `size` entries (the least recently used goes first).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.resolver
import dns.reversename

from postroom.config import DeliveryConfig, split_hostport

MAX_HOPS = 10  # addresses tried per delivery attempt (Postfix: smtp_mx_address_limit = 5, per MX host)
DNS_LIFETIME = 20.0  # seconds for one lookup, retries included
NEGATIVE_TTL_NO_SOA = 60  # seconds a negative answer without an SOA record is kept (RFC 2308 §5 needs the SOA)


class DnsNotFound(Exception):
    """The name does not exist (NXDOMAIN): a permanent answer."""


class DnsTemporary(Exception):
    """The lookup failed in a way that may pass (time-out, SERVFAIL, no reachable name server)."""


class Resolver(Protocol):
    async def mx(self, domain: str) -> list[tuple[int, str]]:
        """(preference, exchange) records; [] when the name exists but has no MX. Exchange "." is a null MX.
        Raises DnsNotFound or DnsTemporary."""

    async def addresses(self, host: str) -> list[str]:
        """A then AAAA addresses as text; [] when the name exists but has neither. Raises like `mx`."""


@dataclass(frozen=True)
class Hop:
    host: str  # the name we were told (MX exchange, route host), for logs and TLS server name
    address: str  # IP address to connect to
    port: int
    smarthost: bool = False  # AUTH with the smart host credentials applies


@dataclass(frozen=True)
class Route:
    domain: str
    hops: tuple[Hop, ...]
    via: str  # "literal" | "static" | "smarthost" | "mx" | "implicit-mx"


class RouteFailure(Exception):
    def __init__(self, permanent: bool, code: int, status: str, text: str) -> None:
        super().__init__(f"{code} {status} {text}")
        self.permanent = permanent
        self.code = code  # the SMTP-like reply code reported in DSNs
        self.status = status  # RFC 3463 enhanced status code
        self.text = text


class DnsCache:
    """A bounded cache of DNS answers keyed by (lower-case name, type) (module doc, invariant 4).

    `size`: the most entries kept (0: nothing is kept); `max_ttl`: no entry outlives this many seconds, whatever
    its TTL; `clock`: seconds, monotonic (tests pass their own). A value is a dnspython Answer, None (the name
    exists, no records of the type) or `NXDOMAIN_ENTRY`."""

    def __init__(self, size: int = 10000, max_ttl: float = 3600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.max_ttl = max_ttl
        self.clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, object]] = OrderedDict()
        # Questions being asked now (of one event loop: the server's), so that concurrent lookups of one name
        # and type make one query; at most one entry per lookup in progress.
        self.inflight: dict[tuple[str, str], asyncio.Future[dns.resolver.Answer | None]] = {}

    def get(self, key: tuple[str, str]) -> tuple[bool, object]:
        """(True, value) for a live entry, else (False, None); an expired entry is dropped."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if self.clock() >= expires:
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, value

    def put(self, key: tuple[str, str], value: object, ttl: float) -> None:
        """Keep `value` for min(`ttl`, max_ttl) seconds; a TTL of 0 is not kept (RFC 1035 §3.2.1)."""
        ttl = min(ttl, self.max_ttl)
        if self.size <= 0 or ttl <= 0:
            return
        self._entries[key] = (self.clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


NXDOMAIN_ENTRY = object()  # the cached value of a name that does not exist


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an in-flight lookup's exception as seen (its waiters may all have gone)."""
    if not future.cancelled():
        future.exception()


def _negative_ttl(response: dns.message.Message | None) -> float:
    """RFC 2308 §5: a negative answer is kept for min(SOA TTL, SOA MINIMUM) of the SOA in its authority section;
    without one, `NEGATIVE_TTL_NO_SOA`."""
    if response is not None:
        for rrset in response.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                soa = rrset[0]
                assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
                return float(min(rrset.ttl, soa.minimum))
    return float(NEGATIVE_TTL_NO_SOA)


class DnsResolver:
    """`Resolver` over dnspython. `servers`: "ip" or "ip:port" strings; empty uses /etc/resolv.conf. `lifetime`:
    seconds one lookup may take, retries included. `cache`: the answers cache (module doc); None keeps nothing."""

    def __init__(self, servers: tuple[str, ...] = (), lifetime: float = DNS_LIFETIME,
                 cache: DnsCache | None = None) -> None:
        self._resolver = dns.asyncresolver.Resolver(configure=not servers)
        if servers:
            nameservers: list[dns.nameserver.Nameserver | str] = []
            for s in servers:
                if s.count(":") == 1 or s.startswith("["):
                    host, port = split_hostport(s)
                else:
                    host, port = s, 53
                nameservers.append(dns.nameserver.Do53Nameserver(host, port))
            self._resolver.nameservers = nameservers
        self._resolver.lifetime = lifetime
        self.lifetime = lifetime
        self.cache = cache

    def with_lifetime(self, lifetime: float) -> DnsResolver:
        """The same servers and the same cache, with another time limit per lookup (the inbound checks')."""
        other = DnsResolver.__new__(DnsResolver)
        other._resolver = self._resolver
        other.lifetime = lifetime
        other.cache = self.cache
        return other

    def uncached(self, lifetime: float) -> DnsResolver:
        """The same servers without the cache, with another time limit per lookup: the web admin's DNS page,
        which must see a record the moment it is published, not a negative answer cached for delivery."""
        other = self.with_lifetime(lifetime)
        other.cache = None
        return other

    async def _query(self, name: str, rdtype: str) -> dns.resolver.Answer | None:
        key = (name.lower().rstrip("."), rdtype)
        cache = self.cache
        if cache is None:
            return await self._ask(name, rdtype, key)
        hit, value = cache.get(key)
        if hit:
            if value is NXDOMAIN_ENTRY:
                raise DnsNotFound(f"{name}: no such domain")
            assert value is None or isinstance(value, dns.resolver.Answer)
            return value
        pending = cache.inflight.get(key)
        if pending is not None:  # the same question is being asked: wait for its answer (module doc)
            try:
                return await asyncio.wait_for(asyncio.shield(pending), self.lifetime)
            except TimeoutError:
                raise DnsTemporary(f"{name} {rdtype}: Timeout") from None
        future: asyncio.Future[dns.resolver.Answer | None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        cache.inflight[key] = future
        try:
            answer = await self._ask(name, rdtype, key)
        except (DnsNotFound, DnsTemporary) as exc:
            future.set_exception(exc)
            raise
        except BaseException:  # cancelled: the waiters ask again next time
            future.set_exception(DnsTemporary(f"{name} {rdtype}: abandoned"))
            raise
        else:
            future.set_result(answer)
            return answer
        finally:
            del cache.inflight[key]

    async def _ask(self, name: str, rdtype: str, key: tuple[str, str]) -> dns.resolver.Answer | None:
        """One question to the name servers; the answer (positive or negative) goes into the cache."""
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False, lifetime=self.lifetime)
        except dns.resolver.NXDOMAIN as exc:
            if self.cache is not None:
                responses = list(exc.kwargs.get("responses", {}).values())
                self.cache.put(key, NXDOMAIN_ENTRY, _negative_ttl(responses[-1] if responses else None))
            raise DnsNotFound(f"{name}: no such domain") from None
        except dns.resolver.NoAnswer as exc:
            if self.cache is not None:
                self.cache.put(key, None, _negative_ttl(exc.kwargs.get("response")))
            return None
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.YXDOMAIN) as exc:
            raise DnsTemporary(f"{name} {rdtype}: {type(exc).__name__}") from None
        except (dns.name.LabelTooLong, dns.name.EmptyLabel, dns.name.NameTooLong):
            raise DnsNotFound(f"{name}: not a valid name") from None
        except dns.exception.DNSException as exc:
            raise DnsTemporary(f"{name} {rdtype}: {exc}") from None
        if self.cache is not None:
            self.cache.put(key, answer, float(answer.chaining_result.minimum_ttl))
        return answer

    async def txt(self, name: str) -> list[bytes]:
        """Each TXT record at `name` as its strings joined (RFC 7208 §3.3); [] for none. Raises like `mx`."""
        answer = await self._query(name, "TXT")
        return [] if answer is None else [b"".join(r.strings) for r in answer]

    async def records(self, name: str, rdtype: str) -> list[str]:
        """Each record of `rdtype` at `name` as text: TXT as its strings joined (RFC 7208 §3.3), other types in
        zone-file form ("10 mail.example.org."); [] for none. Raises like `mx` (the web admin's DNS check)."""
        answer = await self._query(name, rdtype)
        if answer is None:
            return []
        if rdtype == "TXT":
            return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
        return [r.to_text() for r in answer]

    async def ips(self, name: str, rdtype: str) -> list[str]:
        """The "A" or "AAAA" addresses at `name` as text; [] for none. Raises like `mx` (DnsNotFound also for a
        name that is not a valid DNS name)."""
        answer = await self._query(name, rdtype)
        return [] if answer is None else [r.address for r in answer]

    async def ptr(self, ip: str) -> list[str]:
        """The PTR names of address `ip` (RFC 1035 §3.5 / RFC 3596 §2.5 reverse names), no final dot."""
        answer = await self._query(dns.reversename.from_address(ip).to_text(), "PTR")
        return [] if answer is None else [r.target.to_text(omit_final_dot=True) for r in answer]

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        answer = await self._query(domain, "MX")
        if answer is None:
            return []
        return [(int(r.preference), r.exchange.to_text(omit_final_dot=True) or ".") for r in answer]

    async def addresses(self, host: str) -> list[str]:
        out: list[str] = []
        found = False
        temporary: DnsTemporary | None = None
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self._query(host, rdtype)
            except DnsTemporary as exc:
                temporary = exc
                continue
            found = True
            if answer is not None:
                out += [r.address for r in answer]
        if not out and temporary is not None:
            raise temporary
        return out if found else []


class StaticResolver:
    """A `Resolver` from dictionaries, for tests: `mx_records[domain]` and `a_records[host]`. A name in
    `nxdomain` does not exist; one in `failing` times out."""

    def __init__(self, mx_records: Mapping[str, list[tuple[int, str]]] | None = None,
                 a_records: Mapping[str, list[str]] | None = None, nxdomain: set[str] | None = None,
                 failing: set[str] | None = None) -> None:
        self.mx_records = dict(mx_records or {})
        self.a_records = dict(a_records or {})
        self.nxdomain = set(nxdomain or ())
        self.failing = set(failing or ())
        self.queries: list[tuple[str, str]] = []

    def _check(self, name: str) -> None:
        if name in self.failing:
            raise DnsTemporary(f"{name}: timed out")
        if name in self.nxdomain or (name not in self.mx_records and name not in self.a_records):
            raise DnsNotFound(f"{name}: no such domain")

    async def mx(self, domain: str) -> list[tuple[int, str]]:
        self.queries.append((domain, "MX"))
        self._check(domain)
        return list(self.mx_records.get(domain, []))

    async def addresses(self, host: str) -> list[str]:
        self.queries.append((host, "A"))
        self._check(host)
        return list(self.a_records.get(host, []))


HostLookup = Callable[[str], Awaitable[list[str]]]
"""Addresses (text) of a configured host name from the system resolver; [] when it does not know the name.
Raises DnsTemporary when the lookup may succeed later."""


async def system_addresses(host: str) -> list[str]:
    """`HostLookup` through `getaddrinfo` (/etc/hosts, then what nsswitch.conf names), in its order, no repeats."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise DnsTemporary(f"{host}: system resolver: {exc.strerror}") from None
        return []  # EAI_NONAME and the like: the system does not know the name
    out: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and str(sockaddr[0]) not in out:
            out.append(str(sockaddr[0]))
    return out


def _literal(domain: str) -> str | None:
    """'[192.0.2.1]' -> '192.0.2.1'; '[IPv6:2001:db8::1]' -> '2001:db8::1' (RFC 5321 §4.1.3); else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class RouteFinder:
    """Finds the Route of a destination domain (see the module doc)."""

    def __init__(self, config: DeliveryConfig, resolver: Resolver,
                 shuffle: Callable[[list[str]], None] = random.shuffle,
                 hosts: HostLookup = system_addresses) -> None:
        self.config = config
        self.resolver = resolver
        self.shuffle = shuffle
        self.hosts = hosts  # configured host names DNS does not know (module doc, item 3)
        self.routes = {k.lower().rstrip("."): v for k, v in config.routes.items()}

    async def route(self, domain: str) -> Route:
        domain = domain.lower().rstrip(".")
        literal = _literal(domain)
        if literal is not None:
            return Route(domain, (Hop(literal, literal, self.config.mx_port),), "literal")
        if domain.startswith("["):
            raise RouteFailure(True, 550, "5.1.2", f"bad address literal {domain}")
        target = self.routes.get(domain)
        if target is not None:
            host, port = _host_port(target, 25)
            return Route(domain, await self._hops(host, port, smarthost=False), "static")
        if self.config.smarthost:
            host, port = split_hostport(self.config.smarthost)
            return Route(domain, await self._hops(host, port, smarthost=True), "smarthost")
        return await self._mx(domain)

    async def _hops(self, host: str, port: int, smarthost: bool) -> tuple[Hop, ...]:
        if _is_ip(host):
            return (Hop(host, host, port, smarthost),)
        try:
            addrs = await self.resolver.addresses(host)
        except DnsNotFound:
            addrs = []
        except DnsTemporary as exc:
            raise RouteFailure(False, 451, "4.4.3", f"DNS lookup of configured host {host} failed: {exc}") from None
        if not addrs:
            # Not in DNS: the system resolver (/etc/hosts), as Postfix's smtp_host_lookup = dns, native.
            try:
                addrs = await self.hosts(host)
            except DnsTemporary as exc:
                raise RouteFailure(False, 451, "4.4.3", f"lookup of configured host {host} failed: {exc}") from None
        if not addrs:
            # The operator's mistake, which may be fixed: wait (temporary), and say how to fix it.
            raise RouteFailure(False, 451, "4.4.3", f"configured host {host} has no address in DNS or in the "
                               "system resolver (/etc/hosts); configure an IP address (\"192.0.2.1:25\", "
                               "\"[2001:db8::1]:25\") or a name that resolves")
        return tuple(Hop(host, a, port, smarthost) for a in addrs[:MAX_HOPS])

    async def _mx(self, domain: str) -> Route:
        port = self.config.mx_port
        try:
            records = await self.resolver.mx(domain)
        except DnsNotFound:
            raise RouteFailure(True, 550, "5.1.2", f"domain {domain} does not exist (DNS NXDOMAIN)") from None
        except DnsTemporary as exc:
            raise RouteFailure(False, 451, "4.4.3", f"DNS lookup of MX {domain} failed: {exc}") from None
        if not records:
            # RFC 5321 §5.1: no MX records -> the domain is its own MX, preference 0 ("implicit MX").
            try:
                addrs = await self.resolver.addresses(domain)
            except DnsNotFound:
                raise RouteFailure(True, 550, "5.1.2", f"domain {domain} does not exist (DNS NXDOMAIN)") from None
            except DnsTemporary as exc:
                raise RouteFailure(False, 451, "4.4.3", f"DNS lookup of {domain} failed: {exc}") from None
            if not addrs:
                raise RouteFailure(True, 550, "5.1.2", f"domain {domain} has no MX and no address record")
            return Route(domain, tuple(Hop(domain, a, port) for a in addrs[:MAX_HOPS]), "implicit-mx")
        real = [(pref, host.lower().rstrip(".")) for pref, host in records if host.rstrip(".")]
        if not real:
            # RFC 7505 §3 null MX; §4.2: reject with 556 and 5.1.10 (RFC 7505 §3.2 registers the code).
            raise RouteFailure(True, 556, "5.1.10", f"domain {domain} accepts no mail (null MX, RFC 7505)")
        by_pref: dict[int, list[str]] = {}
        for pref, host in sorted(real):
            if host not in by_pref.setdefault(pref, []):
                by_pref[pref].append(host)
        hops: list[Hop] = []
        temporary: str = ""
        for pref in sorted(by_pref):  # invariant 2
            hosts = by_pref[pref]
            self.shuffle(hosts)
            for host in hosts:
                if _is_ip(host):  # RFC 5321 §5.1 forbids it, but a literal address is all we can use
                    hops.append(Hop(host, host, port))
                    continue
                try:
                    addrs = await self.resolver.addresses(host)
                except (DnsNotFound, DnsTemporary) as exc:
                    temporary = temporary or str(exc)
                    continue
                hops += [Hop(host, a, port) for a in addrs]
                if len(hops) >= MAX_HOPS:
                    break
            if len(hops) >= MAX_HOPS:
                break
        if not hops:
            # The MX hosts exist in DNS but none resolves: a misconfiguration that may be fixed; retry until
            # expiry (Postfix also defers here).
            raise RouteFailure(False, 451, "4.4.3",
                               f"no MX host of {domain} has an address{': ' + temporary if temporary else ''}")
        return Route(domain, tuple(hops[:MAX_HOPS]), "mx")  # invariant 1


def _host_port(value: str, default_port: int) -> tuple[str, int]:
    """'host' -> (host, default); 'host:26' -> (host, 26); '[::1]:26' -> ('::1', 26); '::1' stays an IP."""
    if _is_ip(value):
        return value, default_port
    if ":" in value.rsplit("]", 1)[-1]:
        return split_hostport(value)
    return value.strip("[]"), default_port
