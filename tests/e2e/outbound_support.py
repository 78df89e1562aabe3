"""Test peers for outbound delivery: a DNS server on a loopback UDP port, a scripted SMTP server, a fake clock.

`DnsServer` answers MX, A and AAAA from dictionaries (dnspython builds the wire messages), so the real
`DnsResolver` is exercised end to end. `SmtpPeer` is a small SMTP server whose replies a test scripts per
recipient and per message; it records every transaction it saw (envelope, parameters, bytes) and can offer
STARTTLS, PIPELINING, SIZE, 8BITMIME, SMTPUTF8 and DSN as asked.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        response = self.server.answer(query)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


class DnsServer:
    """Authoritative answers for the names in `mx`, `a` and `aaaa`; NXDOMAIN for the rest."""

    def __init__(self) -> None:
        self.mx: dict[str, list[tuple[int, str]]] = {}
        self.a: dict[str, list[str]] = {}
        self.aaaa: dict[str, list[str]] = {}
        self.txt: dict[str, str] = {}
        self.queries: list[tuple[str, str]] = []
        self.port = 0
        self._transport: asyncio.BaseTransport | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(lambda: _DnsProtocol(self),
                                                                 local_addr=("127.0.0.1", 0))
        self.port = self._transport.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _known(self, name: str) -> bool:
        return any(name in table for table in (self.mx, self.a, self.aaaa, self.txt))

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(q.rdtype)
        self.queries.append((name, rdtype))
        if not self._known(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
            return response
        values: list[str] = []
        if rdtype == "MX":
            values = [f"{pref} {host}." if host != "." else f"{pref} ." for pref, host in self.mx.get(name, [])]
        elif rdtype == "A":
            values = self.a.get(name, [])
        elif rdtype == "AAAA":
            values = self.aaaa.get(name, [])
        elif rdtype == "TXT" and name in self.txt:
            value = self.txt[name]
            values = [" ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))]
        if values:
            response.answer.append(dns.rrset.from_text(q.name, 60, "IN", rdtype, *values))
        return response


@dataclass
class Seen:
    mail_from: str
    mail_params: list[str]
    rcpts: list[str]
    rcpt_params: list[list[str]]
    data: bytes
    tls: bool
    client_port: int = 0  # the TCP port the transaction's connection came from


@dataclass
class SmtpPeer:
    """A scripted SMTP server. `rcpt_reply(address)` and `data_reply(data)` return the reply line to send."""

    extensions: list[str] = field(default_factory=lambda: ["PIPELINING", "SIZE 10000000", "8BITMIME",
                                                           "SMTPUTF8", "ENHANCEDSTATUSCODES"])
    rcpt_reply: Callable[[str], str] = lambda address: "250 2.1.5 OK"
    data_reply: Callable[[bytes], str] = lambda data: "250 2.0.0 queued"
    greeting: str = "220 peer.test ESMTP"
    tls: ssl.SSLContext | None = None
    seen: list[Seen] = field(default_factory=list)
    data_delay: float = 0.0  # seconds before the reply to "." (to hold transactions open)
    connections: int = 0
    active: int = 0
    max_active: int = 0
    grouped: int = 0  # times the next MAIL had already arrived with a message's "." (RFC 2920 §3.1)
    port: int = 0
    _server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def delivered(self) -> list[Seen]:
        return [s for s in self.seen if s.data]

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        tls = False
        client_port = int(writer.get_extra_info("peername")[1])

        def send(line: str) -> None:
            writer.write(line.encode() + b"\r\n")

        try:
            send(self.greeting)
            if not self.greeting.startswith("220"):
                await writer.drain()
                return
            txn: Seen | None = None
            while True:
                raw = await reader.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb = line[:4].upper()
                if verb == "EHLO":
                    exts = list(self.extensions) + (["STARTTLS"] if self.tls is not None and not tls else [])
                    lines = ["peer.test"] + exts
                    for i, text in enumerate(lines):
                        send(f"250{'-' if i < len(lines) - 1 else ' '}{text}")
                elif verb == "HELO":
                    send("250 peer.test")
                elif verb == "STAR" and self.tls is not None and not tls:
                    send("220 2.0.0 go ahead")
                    await writer.drain()
                    await writer.start_tls(self.tls)
                    tls = True
                elif verb == "MAIL":
                    addr, params = _parse_path(line[10:])
                    txn = Seen(addr, params, [], [], b"", tls, client_port)
                    self.seen.append(txn)
                    send("250 2.1.0 OK")
                elif verb == "RCPT" and txn is not None:
                    addr, params = _parse_path(line[8:])
                    reply = self.rcpt_reply(addr)
                    if reply.startswith("25"):
                        txn.rcpts.append(addr)
                        txn.rcpt_params.append(params)
                    send(reply)
                elif verb == "DATA":
                    if txn is None or not txn.rcpts:
                        send("554 5.5.1 no valid recipients")
                        continue
                    send("354 go ahead")
                    await writer.drain()
                    chunks = []
                    while True:
                        chunk = await reader.readline()
                        if not chunk:
                            return
                        if chunk == b".\r\n":
                            if bytes(getattr(reader, "_buffer", b"")).upper().startswith(b"MAIL"):
                                self.grouped += 1
                            break
                        chunks.append(chunk[1:] if chunk.startswith(b".") else chunk)
                    data = b"".join(chunks)
                    if self.data_delay:
                        await asyncio.sleep(self.data_delay)
                    reply = self.data_reply(data)
                    if reply.startswith("250"):
                        txn.data = data
                    send(reply)
                    txn = None
                elif verb == "RSET":
                    txn = None
                    send("250 2.0.0 OK")
                elif verb == "QUIT":
                    send("221 2.0.0 bye")
                    await writer.drain()
                    return
                else:
                    send("500 5.5.2 what?")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self.active -= 1
            writer.close()


def _parse_path(rest: str) -> tuple[str, list[str]]:
    """'<a@b> SIZE=10' -> ('a@b', ['SIZE=10'])."""
    rest = rest.strip()
    end = rest.find(">")
    return rest[1:end], rest[end + 1:].split()
