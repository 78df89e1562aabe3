"""A DNS server on a loopback port answering from zone data, over UDP and TCP, for the inbound-trust tests.

`ZoneDns.zone` maps a lower-case name to its records, in the shape of the RFC 7208 test suite's `zonedata`
(http://www.open-spf.org/Test_Suite/Schema/): a list of `{TYPE: value}` maps and the bare string "TIMEOUT".
Types: A, AAAA, MX (`[preference, exchange]`), TXT and SPF (a string or a list of strings), PTR, CNAME.
The answers follow the suite's own driver (pyspf's testspf.py):

* a name not in the zone is NXDOMAIN, except names under `error.` which time out;
* "TIMEOUT" in a name's list: a query of a type with no record listed before it gets no answer (the client
  times out); a record whose value is "TIMEOUT" makes queries of its type time out;
* a CNAME is answered with the CNAME and the target's records of the asked type (one level);
* SPF (type 99) records are also served as TXT unless the name lists TXT records of its own;
* a TXT or SPF value "NONE" is no record.

Every record has TTL `ttl` (60 seconds unless a test changes it); when `soa` is set ((owner, TTL, MINIMUM)),
negative answers (NXDOMAIN, no records of the type) carry that SOA in their authority section (RFC 2308 §3).

dnspython builds the wire messages, so the client side (`delivery.mx.DnsResolver`) is the real one. A dropped
query is simply not answered; the test's resolver lifetime decides how long that takes.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset


class _Drop(Exception):
    """Do not answer (a time-out for the client)."""


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: ZoneDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        wire = self.server.respond(data, udp=True)
        if wire is not None and self.transport is not None:
            self.transport.sendto(wire, addr)


class ZoneDns:
    def __init__(self, zone: dict[str, list[Any]] | None = None) -> None:
        self.zone: dict[str, list[Any]] = {k.lower().rstrip("."): v for k, v in (zone or {}).items()}
        self.queries: list[tuple[str, str]] = []
        self.ttl = 60
        self.soa: tuple[str, int, int] | None = None
        self.port = 0
        self._udp: asyncio.BaseTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None

    def add(self, name: str, rdtype: str, value: Any) -> None:
        self.zone.setdefault(name.lower().rstrip("."), []).append({rdtype: value})

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # the UDP port's TCP twin may be taken by another test: then take another pair
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), local_addr=("127.0.0.1", 0))
            self.port = self._udp.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._tcp_client, "127.0.0.1", self.port)
                return
            except OSError:
                self._udp.close()
        raise OSError("no free UDP+TCP port pair on 127.0.0.1")

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = struct.unpack(">H", await reader.readexactly(2))
                wire = self.respond(await reader.readexactly(n), udp=False)
                if wire is None:
                    continue
                writer.write(struct.pack(">H", len(wire)) + wire)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def respond(self, data: bytes, udp: bool) -> bytes | None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return None
        try:
            response = self.answer(query)
        except _Drop:
            return None
        wire: bytes = response.to_wire(max_size=512 if udp and query.edns < 0 else 65535)
        return wire

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        q = query.question[0]
        # The labels as sent (the suite has names with spaces and "%", which to_text() would escape).
        name = b".".join(q.name.labels).decode("utf-8", "replace").lower().rstrip(".")
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rdtype))
        entries = self.zone.get(name)
        if entries is None:
            if name.startswith("error."):
                raise _Drop()
            response.set_rcode(dns.rcode.NXDOMAIN)
            self._negative(response)
            return response
        for rrset in self._records(q.name, name, rdtype, entries, follow=True):
            response.answer.append(rrset)
        if not response.answer:
            self._negative(response)
        return response

    def _negative(self, response: dns.message.Message) -> None:
        if self.soa is not None:
            owner, ttl, minimum = self.soa
            rrset = dns.rrset.from_text(f"{owner}.", ttl, "IN", "SOA",
                                        f"ns.{owner}. hostmaster.{owner}. 1 3600 600 86400 {minimum}")
            response.authority.append(rrset)

    def _records(self, qname: dns.name.Name, name: str, rdtype: str, entries: list[Any],
                 follow: bool) -> list[dns.rrset.RRset]:
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        out: dict[tuple[str, str], dns.rrset.RRset] = {}
        nothing_yet = True
        cnames: list[str] = []
        for e in entries:
            if e == "TIMEOUT":
                if nothing_yet:
                    raise _Drop()
                break
            if not isinstance(e, dict):
                continue
            for t, v in e.items():
                if t in ("TXT", "SPF") and (v == "NONE" or v == ["NONE"]):
                    continue  # no record (the driver skips it before looking at its type)
                served = [t]
                if t == "SPF" and not has_txt:
                    served.append("TXT")  # the suite driver's "auto-magic duplication"
                for st in served:
                    if st != rdtype and t != "CNAME":
                        continue
                    if st == rdtype:
                        nothing_yet = False
                        if v == "TIMEOUT":
                            raise _Drop()
                    rdata = _rdata(st, v)
                    if rdata is None:
                        continue
                    key = (name, st)
                    if key not in out:
                        out[key] = dns.rrset.RRset(qname, dns.rdataclass.IN, rdata.rdtype)
                        out[key].ttl = self.ttl
                    out[key].add(rdata)
                    if st == "CNAME" and rdtype != "CNAME":
                        cnames.append(str(v))
        result = list(out.values())
        if follow:
            for target in cnames:
                t = target.lower().rstrip(".")
                if t in self.zone:
                    result += self._records(dns.name.from_text(t), t, rdtype, self.zone[t], follow=False)
        return result


def _rdata(rdtype: str, value: Any) -> dns.rdata.Rdata | None:
    """One record's rdata from the zone's value; None for "NONE" or a value that is not one."""
    try:
        if rdtype in ("TXT", "SPF"):
            strings = [value] if isinstance(value, str) else list(value)
            if strings == ["NONE"]:
                return None
            chunks: list[bytes] = []
            for s in strings:
                b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
                chunks += [b[i:i + 255] for i in range(0, len(b), 255)] or [b""]
            text = " ".join('"' + "".join(f"\\{c:03d}" for c in chunk) + '"' for chunk in chunks)
            return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
        if rdtype == "MX":
            pref, host = value
            exchange = f"{host}." if host and host != "." else "."
            return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.MX, f"{int(pref)} {exchange}")
        if rdtype in ("PTR", "CNAME"):
            return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), f"{value}.")
        return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), str(value))
    except Exception:
        return None


class ZoneThread:
    """A ZoneDns in an event loop of its own (the server runs in another thread)."""

    def __init__(self) -> None:
        self.dns = ZoneDns()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.dns.start(), self.loop).result(10)

    def add(self, name: str, rdtype: str, value: Any) -> None:
        self.dns.add(name, rdtype, value)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.dns.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
