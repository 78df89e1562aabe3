"""SPF (RFC 7208): is this client address authorised to send for the MAIL FROM (or HELO) domain?

Theory of operation
-------------------
`check_host(ip, domain, sender)` is RFC 7208 §4: fetch the domain's TXT records, select the one `v=spf1`
record (§4.5), parse it whole (§4.6: any syntax error anywhere is `permerror` before anything is evaluated),
then evaluate its mechanisms left to right (§5); the first that matches gives its qualifier's result; none
matching follows `redirect=` (§6.1) or gives `neutral`. `include:` recurses (§5.2). A `fail` fetches the
`exp=` explanation (§6.2) when the record has one. `check_mail_from` and `check_helo` are the two identities of
§2.3/§2.4 (a null reverse-path is checked as `postmaster@<HELO>`, §2.4).

The evaluator does its own parsing and macro expansion (§7) and asks the injected `SpfDns` (TXT, A/AAAA, MX,
PTR) for everything it needs: the server passes `delivery.mx.DnsResolver` (dnspython, bounded lifetime), the
tests pass the same class pointed at a DNS server of their own on a loopback port. There is no other I/O.

Invariants
1. One evaluation makes at most `MAX_LOOKUPS` (10) DNS-querying terms (include, a, mx, ptr, exists, redirect;
   §4.6.4) and meets at most `MAX_VOID` (2) void answers (NXDOMAIN or no records); past either it is
   `permerror`. Each "mx" looks up at most 10 exchanges' addresses, each "ptr" (and the "p" macro) at most 10
   names (§4.6.4). So the work is bounded whatever the records say.
2. A DNS failure (time-out, SERVFAIL) on a lookup the result depends on is `temperror`, never an exception;
   the whole evaluation is further bounded by `DEADLINE` seconds (§4.6.4: "MAY ... impose a time limit").
3. Nothing a record holds raises: bad syntax, bad macros, bad CIDR lengths are `permerror` (§4.6, §7.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from postroom.delivery.mx import DnsNotFound, DnsTemporary

MAX_LOOKUPS = 10  # RFC 7208 §4.6.4
MAX_VOID = 2  # RFC 7208 §4.6.4 ("SHOULD ... default to 2")
MAX_NAMES = 10  # MX exchanges / PTR names looked up per term (§4.6.4, §5.5)
DEADLINE = 20.0  # seconds for one whole check_host (§4.6.4 suggests at least 20)

RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


class SpfDns(Protocol):
    """The DNS the evaluator reads. Each raises `DnsNotFound` for NXDOMAIN and `DnsTemporary` for a time-out or
    server failure; an empty list means the name exists without such records."""

    async def txt(self, name: str) -> list[bytes]: ...

    async def ips(self, name: str, rdtype: str) -> list[str]: ...

    async def mx(self, domain: str) -> list[tuple[int, str]]: ...

    async def ptr(self, ip: str) -> list[str]: ...


@dataclass(frozen=True)
class SpfResult:
    """One check: `result` (one of RESULTS), the `domain` checked, the identity (`mailfrom` or `helo`), a short
    `reason` for logs and Authentication-Results comments, and the `exp=` explanation of a fail (§6.2)."""

    result: str
    domain: str = ""
    identity: str = "mailfrom"
    reason: str = ""
    explanation: str | None = None


class PermError(Exception):
    """The record (or one it leads to) is wrong: `permerror` (§2.6.7)."""


class TempError(Exception):
    """A DNS lookup failed transiently: `temperror` (§2.6.6)."""


# --- syntax (RFC 7208 §12) -------------------------------------------------------------------------------------

_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")  # modifier name
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9])\Z")
_MACRO = re.compile(r"%(?:\{([A-Za-z])([0-9]*)(r?)([.\-+,/_=]*)\}|%|_|-)", re.IGNORECASE)
_CIDR4 = re.compile(r"/(0|[1-9][0-9]?)\Z")
_DUAL = re.compile(r"(?:/(0|[1-9][0-9]?))?(?://(0|[1-9][0-9]{0,2}))?\Z")
_MACRO_LETTERS = "slodiphcrtv"
_EXP_ONLY = "crt"  # §7.1: only in the explanation string


@dataclass
class Term:
    qualifier: str  # "+", "-", "~", "?"
    name: str  # mechanism name, lower case
    domain_spec: str | None = None  # unexpanded
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass
class Record:
    terms: list[Term] = field(default_factory=list)
    redirect: str | None = None
    exp: str | None = None


def _check_macro_string(text: str, *, explanation: bool = False) -> None:
    """Raise PermError unless `text` is a macro-string (§7.1)."""
    pos = 0
    while True:
        i = text.find("%", pos)
        if i < 0:
            break
        m = _MACRO.match(text, i)
        if m is None:
            raise PermError(f"bad macro in {text!r}")
        letter = m.group(1)
        if letter is not None:
            if letter.lower() not in _MACRO_LETTERS or (letter.lower() in _EXP_ONLY and not explanation):
                raise PermError(f"macro letter {letter!r} not allowed here")
        pos = m.end()
    if not explanation and any(not (0x21 <= ord(c) <= 0x7E) for c in text):
        raise PermError(f"bad character in {text!r}")


def _check_domain_spec(spec: str) -> None:
    """RFC 7208 §7.1: domain-spec = macro-string domain-end; domain-end = "." toplabel ["."] / macro-expand."""
    if not spec:
        raise PermError("empty domain-spec")
    _check_macro_string(spec)
    last = None
    for m in _MACRO.finditer(spec):
        last = m
    if last is not None and last.end() == len(spec):
        return  # ends with a macro-expand
    tail = spec[last.end():] if last is not None else spec
    if tail.endswith("."):
        tail = tail[:-1]
    dot = tail.rfind(".")
    if dot < 0 or not _TOPLABEL.match(tail[dot + 1:]):
        raise PermError(f"domain-spec {spec!r} does not end in a top label")


def parse_record(text: str) -> Record:
    """Parse a `v=spf1` record's text (§4.6, §12). Raises PermError for any syntax error."""
    if not re.match(r"v=spf1(?: |\Z)", text, re.IGNORECASE):
        raise PermError("not an SPF record")
    record = Record()
    for raw in text[6:].split(" "):
        if not raw:
            continue  # §4.6.1: terms are separated by one or more spaces
        term = raw
        qualifier = "+"
        if term[0] in QUALIFIERS:
            qualifier, term = term[0], term[1:]
        cut = min((i for i in (term.find(":"), term.find("/"), term.find("=")) if i >= 0), default=len(term))
        name = term[:cut]
        if cut < len(term) and term[cut] == "=":
            if qualifier != "+" or raw[0] == "+":
                raise PermError(f"qualifier on modifier {raw!r}")
            if not _NAME.match(name):
                raise PermError(f"bad modifier name {name!r}")
            value = term[cut + 1:]
            lname = name.lower()
            if lname in ("redirect", "exp"):
                if getattr(record, lname) is not None:
                    raise PermError(f"{lname}= given twice")  # §6: at most once each
                _check_domain_spec(value)
                setattr(record, lname, value)
            else:
                _check_macro_string(value)  # §6: unknown modifiers are ignored, but must be well-formed
            continue
        lname = name.lower()
        if lname not in _MECHANISMS:
            raise PermError(f"unknown mechanism {name!r}")
        record.terms.append(_mechanism(qualifier, lname, term[cut:]))
    return record


def _mechanism(qualifier: str, name: str, rest: str) -> Term:
    t = Term(qualifier, name)
    if name == "all":
        if rest:
            raise PermError(f"all takes no argument: {rest!r}")
        return t
    if name in ("ip4", "ip6"):
        if not rest.startswith(":"):
            raise PermError(f"{name} needs a network")
        value = rest[1:]
        addr, slash, length = value.partition("/")
        try:
            if name == "ip4":
                if slash and not _CIDR4.match("/" + length):
                    raise PermError(f"bad ip4 cidr {value!r}")
                ipaddress.IPv4Address(addr)
            else:
                if slash and not re.match(r"(0|[1-9][0-9]{0,2})\Z", length):
                    raise PermError(f"bad ip6 cidr {value!r}")
                ipaddress.IPv6Address(addr)
            t.network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise PermError(f"bad {name} network {value!r}") from None
        return t
    spec, cidr = rest, ""
    if name in ("a", "mx"):
        m = re.search(r"(?:/[0-9]*)?(?://[0-9]*)?\Z", rest)
        if m is not None and m.start() < len(rest):
            # The domain-spec cannot hold "/": a trailing "/n" or "//n" is the dual-cidr-length (§5.3).
            cidr = rest[m.start():]
            spec = rest[:m.start()]
        if cidr:
            d = _DUAL.match(cidr)
            if d is None:
                raise PermError(f"bad cidr length {cidr!r}")
            if d.group(1) is not None:
                t.cidr4 = int(d.group(1))
            if d.group(2) is not None:
                t.cidr6 = int(d.group(2))
            if t.cidr4 > 32 or t.cidr6 > 128:
                raise PermError(f"cidr length out of range {cidr!r}")
    elif "/" in rest:
        raise PermError(f"{name} takes no cidr length")
    if spec:
        if not spec.startswith(":"):
            raise PermError(f"bad {name} argument {rest!r}")
        spec = spec[1:]
        _check_domain_spec(spec)
        t.domain_spec = spec
    elif name in ("include", "exists"):
        raise PermError(f"{name} needs a domain")
    return t


def valid_domain(domain: str) -> bool:
    """§4.3: a multi-label name, no empty label (a final dot aside), labels of 1-63 octets, at most 253."""
    d = domain[:-1] if domain.endswith(".") else domain
    labels = d.split(".")
    return (len(labels) >= 2 and all(0 < len(label) <= 63 for label in labels) and len(d) <= 253
            and not d.replace(".", "").isdigit())


# --- evaluation --------------------------------------------------------------------------------------------------

@dataclass
class _Context:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    ip_text: str  # as given
    sender: str  # local@domain
    helo: str
    receiver: str
    now: float
    lookups: int = 0
    void: int = 0
    depth: int = 0

    def count(self) -> None:
        self.lookups += 1
        if self.lookups > MAX_LOOKUPS:  # invariant 1
            raise PermError(f"more than {MAX_LOOKUPS} DNS-querying terms")

    def count_void(self) -> None:
        self.void += 1
        if self.void > MAX_VOID:
            raise PermError(f"more than {MAX_VOID} void lookups")


class SpfChecker:
    """`check_host` over an injected `SpfDns`. `receiver` is this host's name (the "r" macro)."""

    def __init__(self, dns: SpfDns, receiver: str = "unknown", clock: Callable[[], float] = time.time) -> None:
        self.dns = dns
        self.receiver = receiver
        self.clock = clock

    async def check_mail_from(self, ip: str, helo: str, mail_from: str) -> SpfResult:
        """RFC 7208 §2.4: the MAIL FROM identity; the null reverse-path is checked as postmaster@<HELO>."""
        if not mail_from:
            r = await self.check_helo(ip, helo)
            return SpfResult(r.result, r.domain, "mailfrom", r.reason, r.explanation)
        local, _, domain = mail_from.rpartition("@")
        return await self.check_host(ip, domain, f"{local or 'postmaster'}@{domain}", helo, "mailfrom")

    async def check_helo(self, ip: str, helo: str) -> SpfResult:
        """RFC 7208 §2.3: the HELO identity, `postmaster@<HELO>`. An address literal is `none`."""
        return await self.check_host(ip, helo, f"postmaster@{helo}", helo, "helo")

    async def check_host(self, ip: str, domain: str, sender: str, helo: str = "",
                         identity: str = "mailfrom") -> SpfResult:
        """RFC 7208 §4. Never raises for anything DNS or the records hold (invariants 2 and 3)."""
        try:
            addr: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(ip)
        except ValueError:
            return SpfResult("none", domain, identity, "client address unknown")
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # an IPv4 client seen through an IPv6 socket is checked as IPv4
        if not valid_domain(domain):
            return SpfResult("none", domain, identity, "not a valid domain name")  # §4.3
        local, _, _ = sender.rpartition("@")
        ctx = _Context(addr, ip, f"{local or 'postmaster'}@{domain}", helo, self.receiver,
                       self.clock())
        try:
            async with asyncio.timeout(DEADLINE):  # invariant 2
                result, reason, exp = await self._check(ctx, domain.rstrip("."))
        except PermError as e:
            return SpfResult("permerror", domain, identity, str(e))
        except (TempError, TimeoutError) as e:
            return SpfResult("temperror", domain, identity, str(e) or "DNS time-out")
        return SpfResult(result, domain, identity, reason, exp)

    async def _txt(self, domain: str) -> list[bytes] | None:
        """TXT records of `domain`; None for NXDOMAIN. Raises TempError."""
        try:
            return await self.dns.txt(domain)
        except DnsNotFound:
            return None
        except DnsTemporary as e:
            raise TempError(str(e)) from None

    async def _record(self, domain: str) -> str | None:
        """§4.5: the one record starting "v=spf1"; None when there is none. PermError for two or more."""
        records = await self._txt(domain)
        found = [r for r in records or [] if re.match(rb"v=spf1(?: |\Z)", r, re.IGNORECASE)]
        if len(found) > 1:
            raise PermError(f"{domain}: {len(found)} SPF records")
        if not found:
            return None
        try:
            return found[0].decode("ascii")
        except UnicodeDecodeError:
            raise PermError(f"{domain}: non-ASCII SPF record") from None

    async def _check(self, ctx: _Context, domain: str) -> tuple[str, str, str | None]:
        """(result, reason, explanation) of check_host for `domain`. Raises PermError / TempError."""
        text = await self._record(domain)
        if text is None:
            return "none", f"no SPF record at {domain}", None
        record = parse_record(text)
        for term in record.terms:
            if await self._matches(ctx, term, domain):
                result = QUALIFIERS[term.qualifier]
                exp = await self._explain(ctx, record, domain) if result == "fail" else None
                return result, f"matched {term.name} at {domain}", exp
        if record.redirect is not None and not any(t.name == "all" for t in record.terms):  # §6.1
            ctx.count()
            target = await self._expand_domain(ctx, record.redirect, domain)
            if not valid_domain(target):
                raise PermError(f"redirect to invalid domain {target!r}")
            ctx.depth += 1
            result, reason, exp = await self._check(ctx, target)
            ctx.depth -= 1
            if result == "none":
                raise PermError(f"redirect to {target}: no SPF record")  # §6.1
            return result, reason, exp  # §6.2: the target's explanation, not ours
        return "neutral", f"no mechanism matched at {domain}", None

    async def _matches(self, ctx: _Context, term: Term, domain: str) -> bool:
        name = term.name
        if name == "all":
            return True
        if name in ("ip4", "ip6"):
            net = term.network
            assert net is not None
            return ctx.ip.version == net.version and ctx.ip in net
        ctx.count()  # include, a, mx, ptr, exists: invariant 1
        target = domain if term.domain_spec is None else await self._expand_domain(ctx, term.domain_spec, domain)
        if name == "include":
            if not valid_domain(target):
                raise PermError(f"include of invalid domain {target!r}")
            ctx.depth += 1
            result, _, _ = await self._check(ctx, target)  # §6.2: its explanation is not used
            ctx.depth -= 1
            if result == "pass":
                return True
            if result in ("fail", "softfail", "neutral"):
                return False
            if result == "none":
                raise PermError(f"include:{target} has no SPF record")  # §5.2
            raise TempError(f"include:{target}: {result}")  # pragma: no cover - the others raise themselves
        if name == "exists":
            return bool(await self._ips(ctx, target, "A", void=True))  # §5.7: always an A query
        if name == "a":
            return self._in(ctx, term, await self._ips(ctx, target, _rdtype(ctx), void=True))
        if name == "mx":
            return await self._mx(ctx, term, target)
        if name == "ptr":
            names = await self._validated_names(ctx, void=True)
            t = target.lower().rstrip(".")
            return any(n == t or n.endswith("." + t) for n in names)
        raise PermError(f"unknown mechanism {name}")  # pragma: no cover - parse_record refuses them

    def _in(self, ctx: _Context, term: Term, addresses: list[str]) -> bool:
        length = term.cidr4 if ctx.ip.version == 4 else term.cidr6
        for a in addresses:
            try:
                net = ipaddress.ip_network(f"{a}/{length}", strict=False)
            except ValueError:
                continue
            if net.version == ctx.ip.version and ctx.ip in net:
                return True
        return False

    async def _ips(self, ctx: _Context, name: str, rdtype: str, *, void: bool) -> list[str]:
        if not valid_domain(name):
            if void:
                ctx.count_void()
            return []
        try:
            found = await self.dns.ips(name, rdtype)
        except DnsNotFound:
            found = []
        except DnsTemporary as e:
            raise TempError(str(e)) from None
        if not found and void:
            ctx.count_void()
        return found

    async def _mx(self, ctx: _Context, term: Term, target: str) -> bool:
        if not valid_domain(target):
            ctx.count_void()
            return False
        try:
            records = await self.dns.mx(target)
        except DnsNotFound:
            records = []
        except DnsTemporary as e:
            raise TempError(str(e)) from None
        if not records:
            ctx.count_void()
            return False
        if len(records) > MAX_NAMES:
            raise PermError(f"mx:{target}: more than {MAX_NAMES} MX records")  # §4.6.4
        for _, host in sorted(records):
            if host in (".", ""):
                continue  # a null MX (RFC 7505) names no host
            if self._in(ctx, term, await self._ips(ctx, host, _rdtype(ctx), void=False)):
                return True
        return False

    async def _validated_names(self, ctx: _Context, *, void: bool) -> list[str]:
        """§5.5: the client's PTR names (at most 10) whose forward lookup gives the client's address back.
        DNS errors make names drop out rather than the check fail."""
        try:
            names = await self.dns.ptr(str(ctx.ip))
        except (DnsNotFound, DnsTemporary):
            names = []
        if not names and void:
            ctx.count_void()
        out: list[str] = []
        for n in names[:MAX_NAMES]:
            try:
                if str(ctx.ip) in [str(ipaddress.ip_address(a)) for a in await self.dns.ips(n, _rdtype(ctx))]:
                    out.append(n.lower().rstrip("."))
            except (DnsNotFound, DnsTemporary, ValueError):
                continue
        return out

    async def _explain(self, ctx: _Context, record: Record, domain: str) -> str | None:
        """§6.2: the explanation of a fail; None when there is none or anything about it goes wrong."""
        if record.exp is None:
            return None
        try:
            target = await self._expand_domain(ctx, record.exp, domain)
            if not valid_domain(target):
                return None
            texts = await self._txt(target)
            if not texts or len(texts) != 1:
                return None
            text = texts[0].decode("ascii")
            _check_macro_string(text, explanation=True)
            exp = await self._expand(ctx, text, domain, explanation=True)
            return exp if all(0x20 <= ord(c) <= 0x7E for c in exp) else None
        except (PermError, TempError, UnicodeDecodeError):
            return None

    async def _expand_domain(self, ctx: _Context, spec: str, domain: str) -> str:
        """Expand a domain-spec; §7.3: longer than 253 octets, left labels go until it fits."""
        out = (await self._expand(ctx, spec, domain)).rstrip(".")
        while len(out) > 253 and "." in out:
            out = out.split(".", 1)[1]
        return out

    async def _expand(self, ctx: _Context, text: str, domain: str, *, explanation: bool = False) -> str:
        """RFC 7208 §7.3-7.4 macro expansion."""
        out: list[str] = []
        pos = 0
        for m in _MACRO.finditer(text):
            out.append(text[pos:m.start()])
            pos = m.end()
            whole = m.group(0)
            if whole == "%%":
                out.append("%")
                continue
            if whole == "%_":
                out.append(" ")
                continue
            if whole == "%-":
                out.append("%20")
                continue
            letter, digits, reverse, delims = m.group(1), m.group(2), m.group(3), m.group(4)
            value = await self._macro_value(ctx, letter.lower(), domain, explanation)
            parts = re.split("[" + re.escape(delims or ".") + "]", value)
            if reverse:
                parts.reverse()
            if digits:
                n = int(digits)
                if n == 0:
                    raise PermError("macro digit transformer of zero")  # §7.3: "MUST be nonzero"
                parts = parts[-n:]
            value = ".".join(parts)
            if letter.isupper():
                value = urllib.parse.quote(value, safe="-._~")  # §7.3: URL-escaped (RFC 3986 unreserved kept)
            out.append(value)
        out.append(text[pos:])
        return "".join(out)

    async def _macro_value(self, ctx: _Context, letter: str, domain: str, explanation: bool) -> str:
        local, _, sender_domain = ctx.sender.rpartition("@")
        if letter in _EXP_ONLY and not explanation:
            raise PermError(f"macro {letter} outside exp")
        if letter == "s":
            return ctx.sender
        if letter == "l":
            return local
        if letter == "o":
            return sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if ctx.ip.version == 4:
                return str(ctx.ip)
            # §7.3: dot-separated nibbles, in the case the address was given in (a socket's is lower case, as
            # in §7.4's example; the RFC 7208 test suite gives one in upper case and expects it kept).
            nibbles = ".".join(ctx.ip.exploded.replace(":", ""))
            return nibbles.upper() if ctx.ip_text.isupper() else nibbles
        if letter == "c":
            return str(ctx.ip)
        if letter == "v":
            return "in-addr" if ctx.ip.version == 4 else "ip6"
        if letter == "h":
            return ctx.helo
        if letter == "r":
            return ctx.receiver
        if letter == "t":
            return str(int(ctx.now))
        if letter == "p":
            # §7.3: a validated name, preferring one equal to or under <domain>; "unknown" when none.
            names = await self._validated_names(ctx, void=False)
            d = domain.lower()
            for n in names:
                if n == d or n.endswith("." + d):
                    return n
            return names[0] if names else "unknown"
        raise PermError(f"unknown macro letter {letter}")


def _rdtype(ctx: _Context) -> str:
    return "A" if ctx.ip.version == 4 else "AAAA"
