"""The outbound SMTP client: one connection to one host, several transactions over it, a reply per recipient.

Theory of operation
-------------------
`SmtpClient.open(hop, ...)` connects, reads the greeting, says EHLO (HELO if EHLO is refused, RFC 5321
§3.2), upgrades with STARTTLS when the server offers it and a TLS context is given (opportunistic TLS, RFC 7435:
certificates are not checked, because an MX's name cannot be authenticated without DANE or MTA-STS), says EHLO
again (RFC 3207 §4.2: forget what was learnt before TLS), and authenticates with AUTH PLAIN (RFC 4954) when
credentials are given, only over TLS or to a loopback address. `send()` runs one mail transaction:

    MAIL FROM:<s> [SIZE=n] [BODY=8BITMIME] [SMTPUTF8] [RET=.. ENVID=..]   (RFC 1870, 6152, 6531, 3461)
    RCPT TO:<r> [NOTIFY=.. ORCPT=..]  for each recipient
    DATA, the message dot-stuffed, "."

With PIPELINING (RFC 2920 §3.1) MAIL, every RCPT and DATA go out in one write and the replies are read in order;
without it each command waits for its reply. When the caller names the transaction it sends next on the
connection (`send(tx, then=next)`), that one's MAIL, RCPT and DATA go in the same write as this message and its
"." (§3.1: "the actual transfer of message content is explicitly allowed to be the first 'command' in a group"),
so a message costs one round trip instead of two; the replies to them are read by `send(next)`. The result
holds the reply of every recipient: the RCPT reply when it was refused, else the reply to the final "." (RFC
5321 §4.2.5: that one reply covers every accepted recipient). After a failed transaction the next one starts
with RSET (§4.1.1.5), except one whose envelope went out with a "." (whatever its reply, "." ends the
transaction: §4.1.1.4).

Postroom writes its own client instead of driving aiosmtplib: aiosmtplib reads one reply per command it awaited
and drops replies that arrive before it asks (so it cannot pipeline), and it rewrites line endings of the
message (a bare LF becomes CRLF), which would change bytes after they were DKIM-signed. Here the message goes out
exactly as stored, with only the dot-stuffing of §4.5.2. Replies, reply lines and dot-stuffing are the server's
own (`smtp/syntax.py`, the one SMTP grammar module; a leaf the delivery layer may import).

Invariants
1. Every read has a limit: a reply line is at most `MAX_LINE` bytes, a reply at most `MAX_REPLY_LINES` lines,
   and each wait has the RFC 5321 §4.5.3.2 time-out given (`command_timeout`, 10 minutes at most for ".").
2. Message bytes are sent unchanged except for dot-stuffing (and a final CRLF added if missing), and never with
   a stray CR, LF or NUL: `send` refuses such data with `UnsafeContent` before the transaction starts (the last
   line of defence against SMTP smuggling; the router's door and the queue see to it before, mime/lineends.py).
3. A network failure or time-out raises `ConnectionLost`; a reply never raises: it is returned, so the caller
   decides per recipient. After `ConnectionLost` the client is closed and must not be used again.
4. A transaction opened with the last message (`opened`) is the next one sent, or the connection is closed
   (`quit` too closes without QUIT): the server reads message data after its DATA, and only a closed
   connection aborts that (RFC 5321 §3.8) without delivering anything. Its data was checked for
   invariant 2 before its envelope went out.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from dataclasses import dataclass, field

from postroom.delivery.mx import Hop
from postroom.mime.lineends import stray
from postroom.smtp.syntax import Reply, dot_stuff, parse_reply_line

MAX_LINE = 4096  # RFC 5321 §4.5.3.1.5 asks 512 for a reply line; be generous, but bounded
MAX_REPLY_LINES = 200
DATA_TIMEOUT = 600.0  # RFC 5321 §4.5.3.2.6: 10 minutes for the reply to "."


class ConnectionLost(Exception):
    """The connection failed (refused, reset, closed, timed out, TLS failed). The client is closed."""


class TlsFailed(ConnectionLost):
    """The STARTTLS handshake failed; the caller may try again without TLS."""


@dataclass(frozen=True)
class Transaction:
    """What `send` needs: the envelope with its ESMTP parameters and the message bytes."""

    mail_from: str
    recipients: tuple[str, ...]
    data: bytes
    mail_params: tuple[str, ...] = ()
    rcpt_params: tuple[tuple[str, ...], ...] = ()  # one tuple per recipient, or () for none


@dataclass
class Result:
    mail: Reply
    rcpt: dict[str, Reply] = field(default_factory=dict)  # final reply per recipient


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def opportunistic_tls_context() -> ssl.SSLContext:
    """TLS without certificate checks (RFC 7435 opportunistic security): better than plain text, and the
    only thing possible for MX hosts without DANE/MTA-STS. The client protocol's secure defaults (TLS 1.2 at
    least, no compression), without loading the system's CA certificates, which nothing here would check
    (`ssl.create_default_context` read them all in every process that delivers: a start-up cost and memory)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class SmtpClient:
    def __init__(self, hop: Hop, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 command_timeout: float) -> None:
        self.hop = hop
        self._reader = reader
        self._writer = writer
        self._timeout = command_timeout
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.greeting: Reply | None = None
        self.transactions = 0
        self.closed = False
        self._dirty = False  # a transaction was started and not completed: RSET first
        self._opened: Transaction | None = None  # its envelope went out with the last message (`send(then=)`)

    # --- connection -------------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, hop: Hop, helo_name: str, *, connect_timeout: float, command_timeout: float,
                   tls: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None) -> SmtpClient:
        """Connect, greet, EHLO, STARTTLS when offered, AUTH when asked. Raises ConnectionLost (TlsFailed for
        a failed handshake) or `Refused` for a negative greeting/EHLO/AUTH reply."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(hop.address, hop.port, limit=MAX_LINE * 2), connect_timeout)
        except (TimeoutError, OSError) as exc:
            raise ConnectionLost(f"connect to {hop.host}[{hop.address}]:{hop.port} failed: "
                                 f"{exc or type(exc).__name__}") from None
        client = cls(hop, reader, writer, command_timeout)
        try:
            client.greeting = await client.read_reply(min(command_timeout, 300.0))  # §4.5.3.2.1: 5 minutes
            if client.greeting.code != 220:
                raise Refused("greeting", client.greeting)
            await client._hello(helo_name)
            if tls is not None and "STARTTLS" in client.extensions:
                reply = await client.command(b"STARTTLS")
                if reply.code == 220:
                    try:
                        await asyncio.wait_for(writer.start_tls(tls, server_hostname=_sni(hop.host)),
                                               connect_timeout)
                    except (TimeoutError, OSError, ssl.SSLError) as exc:
                        client.close()
                        raise TlsFailed(f"TLS handshake with {hop.host}[{hop.address}] failed: {exc}") from None
                    client.tls = True
                    await client._hello(helo_name)
            if auth is not None:
                if not (client.tls or _is_loopback(hop.address)):
                    text = "4.7.0 the smart host offers no TLS; not sending the password in clear text"
                    raise Refused("AUTH", Reply(454, "", (text,)))
                token = base64.b64encode(b"\0" + auth[0].encode() + b"\0" + auth[1].encode()).decode("ascii")
                reply = await client.command(f"AUTH PLAIN {token}".encode("ascii"))
                if reply.code != 235:
                    raise Refused("AUTH", reply)
        except BaseException:
            client.close()
            raise
        return client

    async def _hello(self, name: str) -> None:
        reply = await self.command(b"EHLO " + name.encode("ascii", "replace"))
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params.strip()
            return
        if reply.code in (421,) or not reply.permanent:
            raise Refused("EHLO", reply)
        reply = await self.command(b"HELO " + name.encode("ascii", "replace"))  # RFC 5321 §3.2
        if reply.code != 250:
            raise Refused("HELO", reply)
        self.extensions = {}

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()

    async def quit(self) -> None:
        if self.closed:
            return
        if self._opened is not None:  # the server reads message data now: closing aborts that transaction
            self.close()
            return
        try:
            await asyncio.wait_for(self.command(b"QUIT"), 10.0)
        except (TimeoutError, ConnectionLost):
            pass
        finally:
            self.close()

    # --- I/O ---------------------------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionLost("connection already closed")
        self._writer.write(data)

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):  # no task per call, unlike wait_for (3.11)
                await self._writer.drain()
        except (TimeoutError, OSError) as exc:
            self.close()
            raise ConnectionLost(f"write to {self.hop.host} failed: {exc or type(exc).__name__}") from None

    async def read_reply(self, timeout: float | None = None) -> Reply:
        lines: list[str] = []
        code = 0
        try:
            while True:
                async with asyncio.timeout(timeout or self._timeout):  # per line, as before; no task per call
                    line = await self._reader.readuntil(b"\n")
                c, more, text = parse_reply_line(line)
                if lines and c != code:
                    raise ValueError("reply code changed within a multi-line reply")
                code = c
                lines.append(text)
                if not more:
                    return Reply(code, "", tuple(lines))
                if len(lines) >= MAX_REPLY_LINES:
                    raise ValueError("reply has too many lines")
        except asyncio.IncompleteReadError:
            self.close()
            raise ConnectionLost(f"{self.hop.host} closed the connection") from None
        except (asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            raise ConnectionLost(f"{self.hop.host} sent a bad reply: {exc}") from None
        except (TimeoutError, OSError) as exc:
            self.close()
            why = str(exc) or ("timed out" if isinstance(exc, TimeoutError) else type(exc).__name__)
            raise ConnectionLost(f"reading from {self.hop.host} failed: {why}") from None

    async def command(self, line: bytes, timeout: float | None = None) -> Reply:
        if b"\r" in line or b"\n" in line:
            raise ValueError("CR or LF in an SMTP command")
        self._write(line + b"\r\n")
        await self._drain()
        return await self.read_reply(timeout)

    # --- transactions -------------------------------------------------------------------------------------------
    def supports(self, extension: str) -> bool:
        return extension.upper() in self.extensions

    @property
    def size_limit(self) -> int:
        """RFC 1870 §4: SIZE with a number is the largest message accepted; 0 means no fixed limit."""
        value = self.extensions.get("SIZE", "")
        return int(value) if value.isdigit() else 0

    @property
    def opened(self) -> Transaction | None:
        """The transaction whose MAIL, RCPT and DATA went out with the last message (`send(..., then=)`): the
        next `send` must be of this one (invariant 4)."""
        return self._opened

    async def send(self, tx: Transaction, then: Transaction | None = None) -> Result:
        """One mail transaction (RFC 5321 §3.3), pipelined when the server offers PIPELINING (RFC 2920).
        `then`: the transaction the caller will send next on this connection. With PIPELINING, and when this
        one's message is sent, its MAIL, RCPT and DATA go out in the same write as the message and "." (RFC 2920
        §3.1: message content may be the first "command" of a group); their replies are read by `send(then)`,
        which must be the next call (`opened` says whether it was sent). Raises UnsafeContent, before sending
        anything, for data with a stray CR, LF or NUL (invariant 2); ConnectionLost (invariant 3)."""
        fault = stray(tx.data) if tx is not self._opened else None  # an opened one was checked before
        if fault is not None:
            # Last line of defence against SMTP smuggling: RFC 5321 §2.3.8, CR and LF only as CRLF.
            raise UnsafeContent(f"refusing to send a message with a {fault}")
        group = b""  # `then`'s envelope, to go with this message
        if then is not None and stray(then.data) is None and self.supports("PIPELINING"):
            try:
                group = _envelope(then)
            except ValueError:
                then = None  # sent on its own, and refused there
        else:
            then = None  # sent on its own (and refused by its own `send` if it must be)
        if self._opened is not None:
            opened, self._opened = self._opened, None
            if opened is not tx:  # its envelope is out and the server waits for data: only closing aborts it
                self.close()
                raise ConnectionLost(f"connection to {self.hop.host} closed: a pipelined transaction was dropped")
            # its MAIL, RCPT and DATA went out with the last message: read their replies
            result = Result(await self.read_reply())
            for r in tx.recipients:
                result.rcpt[r] = await self.read_reply()
            data_reply = await self.read_reply()
        else:
            if self._dirty:
                reply = await self.command(b"RSET")
                if reply.code != 250:
                    raise ConnectionLost(f"{self.hop.host} refused RSET: {reply}")
                self._dirty = False
            self._dirty = True
            self.transactions += 1
            if self.supports("PIPELINING"):
                # RFC 2920 §3.1: MAIL and RCPT may be grouped; DATA is the last command of the group.
                self._write(_envelope(tx))
                await self._drain()
                result = Result(await self.read_reply())
                for r in tx.recipients:
                    result.rcpt[r] = await self.read_reply()
                data_reply = await self.read_reply()
            else:
                mail, *rcpts = _envelope_lines(tx)
                result = Result(await self.command(mail))
                if result.mail.code != 250:
                    return self._refused_all(result, tx)
                for r, line in zip(tx.recipients, rcpts):
                    result.rcpt[r] = await self.command(line)
                if not any(reply.code in (250, 251) for reply in result.rcpt.values()):
                    return result
                data_reply = await self.command(b"DATA")
        if result.mail.code != 250:
            if data_reply.code == 354:  # a server that started DATA anyway gets an empty message and no more
                await self._end_data(b"")
            return self._refused_all(result, tx)
        accepted = [r for r in tx.recipients if result.rcpt[r].code in (250, 251)]
        if data_reply.code != 354:
            for r in accepted:
                result.rcpt[r] = data_reply
            return result
        if not accepted:
            # RFC 2920 §3.1: every RCPT failed but DATA was accepted: send "." alone and ignore the reply.
            await self._end_data(b"")
            return result
        final = await self._end_data(tx.data, then, group)
        for r in accepted:
            result.rcpt[r] = final  # RFC 5321 §4.2.5: the reply to "." speaks for every accepted recipient
        if final.code == 250 and then is None:
            self._dirty = False
        return result

    async def _end_data(self, data: bytes, then: Transaction | None = None, group: bytes = b"") -> Reply:
        """Send the message (dot-stuffed) or "." alone, with `then`'s envelope `group` in the same write, and
        read the reply to "." (`then`'s replies are left for its `send`)."""
        out = dot_stuff(data) if data else b".\r\n"
        if then is not None:
            # RFC 5321 §4.1.1.4: "." ends the transaction whatever its reply, so the next one needs no RSET.
            out += group
            self._opened = then
            self.transactions += 1
            self._dirty = True
        self._write(out)
        await self._drain()
        return await self.read_reply(max(self._timeout, DATA_TIMEOUT) if data else None)

    @staticmethod
    def _refused_all(result: Result, tx: Transaction) -> Result:
        for r in tx.recipients:
            result.rcpt[r] = result.mail
        return result


class UnsafeContent(ValueError):
    """The message has a stray CR, LF or NUL (`mime.lineends.stray`); it was not sent."""


class Refused(Exception):
    """The server answered the session set-up (greeting, EHLO, AUTH) negatively."""

    def __init__(self, stage: str, reply: Reply) -> None:
        super().__init__(f"{stage}: {reply}")
        self.stage = stage
        self.reply = reply


def _envelope_lines(tx: Transaction) -> list[bytes]:
    """MAIL and one RCPT per recipient, without line ends."""
    return [_command("MAIL FROM:", tx.mail_from, tx.mail_params),
            *(_command("RCPT TO:", r, tx.rcpt_params[i] if tx.rcpt_params else ())
              for i, r in enumerate(tx.recipients))]


def _envelope(tx: Transaction) -> bytes:
    """The pipelined group of `tx`: MAIL, every RCPT and DATA, the last command of a group (RFC 2920 §3.1)."""
    return b"".join(line + b"\r\n" for line in [*_envelope_lines(tx), b"DATA"])


def _command(verb: str, address: str, params: tuple[str, ...]) -> bytes:
    if any(c in address for c in "\r\n<>") or any(c in p for p in params for c in "\r\n "):
        raise ValueError(f"bad character in envelope {address!r} {params!r}")
    return (f"{verb}<{address}>" + "".join(" " + p for p in params)).encode("utf-8")


def _sni(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    return None  # RFC 6066 §3: no IP literals in SNI
