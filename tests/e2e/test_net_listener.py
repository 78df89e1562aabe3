"""The connection driver over real loopback sockets: lines, limits, TLS, failures, graceful stop, the log line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from postroom.config import LimitsConfig
from postroom.metrics import Metrics
from postroom.net.connection import Connection, IdleTimeout, LineTooLong, PlaintextAfterStartTLS, ShuttingDown
from postroom.net.listener import ListenerSpec, NetServer, refusal
from postroom.net.tls import client_context_trusting, ensure_certificate, server_context

T = TypeVar("T")
LIMITS = LimitsConfig(line_length=1000)


def run(coro: Awaitable[T], timeout: float = 10.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    ensure_certificate(d / "cert.pem", d / "key.pem", "mail.example.test")
    return d / "cert.pem", d / "key.pem"


@contextlib.asynccontextmanager
async def serving(*specs: ListenerSpec, limits: LimitsConfig = LIMITS, tls: ssl.SSLContext | None = None,
                  metrics: Metrics | None = None, grace: float = 1.0) -> AsyncIterator[NetServer]:
    server = NetServer(specs, tls, limits, metrics)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace)


def spec(handler: Any, name: str = "t", **kw: Any) -> ListenerSpec:
    return ListenerSpec(name, "127.0.0.1", 0, handler, **kw)


async def connect(server: NetServer, name: str = "t", **kw: Any
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = server.addresses[name]
    return await asyncio.open_connection(host, port, **kw)


async def echo(conn: Connection) -> None:
    """Echo lines; "TOOLONG" handling like SMTP: 500 and go on; STARTTLS upgrades."""
    conn.log["greeted"] = "yes"
    conn.write(b"220 echo\r\n")
    while True:
        try:
            line = await conn.read_line()
        except LineTooLong:
            conn.write(b"500 5.5.2 line too long\r\n")
            continue
        if line.rstrip() == b"QUIT":
            conn.write(b"221 bye\r\n")
            return
        if line.rstrip() == b"STARTTLS":
            conn.write(b"220 go ahead\r\n")
            try:
                await conn.start_tls()
            except PlaintextAfterStartTLS:
                conn.write(b"554 5.5.1 plaintext pipelined after STARTTLS\r\n")
                conn.end = "starttls-injection"
                return
            continue
        if line.rstrip() == b"BOOM":
            raise ValueError("handler bug")
        conn.write(b"echo " + line)
        await conn.drain()


# --- lines over real sockets ----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["whole", "split", "bytes"])
def test_lines_whole_split_and_byte_by_byte(mode: str) -> None:
    wire = b"one\r\ntwo\nthree\r\n"

    async def main() -> list[bytes]:
        async with serving(spec(echo)) as server:
            reader, writer = await connect(server)
            assert await reader.readline() == b"220 echo\r\n"
            if mode == "whole":
                writer.write(wire)
            else:
                pieces = [wire[:2], wire[2:7], wire[7:]] if mode == "split" else [bytes([b]) for b in wire]
                for piece in pieces:
                    writer.write(piece)
                    await writer.drain()
                    await asyncio.sleep(0.001)
            got = [await reader.readline() for _ in range(3)]
            writer.close()
            return got
    assert run(main()) == [b"echo one\r\n", b"echo two\n", b"echo three\r\n"]


def test_overlong_line_gets_500_and_the_session_goes_on() -> None:
    async def main() -> list[bytes]:
        async with serving(spec(echo)) as server:
            reader, writer = await connect(server)
            await reader.readline()
            writer.write(b"x" * 3000)
            await writer.drain()
            first = await reader.readline()  # the reply comes before the long line has even ended
            writer.write(b"y" * 3000 + b"\r\nNOOP\r\nQUIT\r\n")
            rest = [await reader.readline(), await reader.readline()]
            writer.close()
            return [first] + rest
    assert run(main()) == [b"500 5.5.2 line too long\r\n", b"echo NOOP\r\n", b"221 bye\r\n"]


def test_idle_timeout_fires(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(conn: Connection) -> None:
        try:
            await conn.read_line()
        except IdleTimeout:
            conn.write(b"421 4.4.2 idle timeout\r\n")

    async def main() -> tuple[bytes, bytes, float]:
        async with serving(spec(handler, idle_timeout=0.2)) as server:
            reader, writer = await connect(server)
            t0 = time.monotonic()
            line = await reader.readline()
            tail = await reader.read()
            writer.close()
            return line, tail, time.monotonic() - t0
    caplog.set_level(logging.INFO, "postroom.net")
    line, tail, elapsed = run(main())
    assert line == b"421 4.4.2 idle timeout\r\n" and tail == b""
    assert 0.15 < elapsed < 2.0
    assert "end=timeout" in caplog.text


# --- limits -----------------------------------------------------------------------------------------------------

def test_per_ip_limit_refuses_with_the_protocol_line(caplog: pytest.LogCaptureFixture) -> None:
    limits = LimitsConfig(line_length=1000, connections_per_ip=2)
    line = refusal("smtp", "mx.example.test")
    metrics = Metrics()

    async def main() -> tuple[bytes, bytes]:
        async with serving(spec(echo, protocol="smtp", refuse=line), limits=limits, metrics=metrics) as server:
            held = [await connect(server) for _ in range(2)]
            for reader, _ in held:
                assert await reader.readline() == b"220 echo\r\n"
            reader, writer = await connect(server)
            refused = await reader.read()
            writer.close()
            assert server.connections_from("127.0.0.1") == 2
            held[0][1].close()  # one leaves: the next is admitted again
            for _ in range(100):
                if server.connections_from("127.0.0.1") < 2:
                    break
                await asyncio.sleep(0.01)
            reader, writer = await connect(server)
            again = await reader.readline()
            writer.close()
            held[1][1].close()
            return refused, again
    caplog.set_level(logging.INFO, "postroom.net")
    refused, again = run(main())
    assert refused == b"421 4.7.0 mx.example.test too many connections, try again later\r\n"
    assert again == b"220 echo\r\n"
    assert "end=refused reason=per-ip" in caplog.text
    body, _ = metrics.render()
    assert b'postroom_connections_refused_total{protocol="smtp"} 1.0' in body


def test_total_limit_without_refusal_text_just_closes() -> None:
    limits = LimitsConfig(line_length=1000, connections_total=1)

    async def main() -> bytes:
        async with serving(spec(echo), limits=limits) as server:
            reader1, writer1 = await connect(server)
            await reader1.readline()
            reader, writer = await connect(server)
            try:
                data = await reader.read()
            except ConnectionResetError:
                data = b""
            writer.close()
            writer1.close()
            return data
    assert run(main()) == b""


# --- TLS ---------------------------------------------------------------------------------------------------------

def test_implicit_tls(cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[bytes, bytes, str]:
        tls = server_context(*cert)
        async with serving(spec(echo, name="imaps", implicit_tls=True, protocol="imap"), tls=tls) as server:
            reader, writer = await connect(server, "imaps", ssl=client_context_trusting(cert[0]),
                                           server_hostname="localhost")
            greeting = await reader.readline()
            writer.write(b"hello\r\nQUIT\r\n")
            reply = await reader.readline()
            version = writer.get_extra_info("ssl_object").version()
            await reader.readline()
            writer.close()
            return greeting, reply, version
    caplog.set_level(logging.INFO, "postroom.net")
    greeting, reply, version = run(main())
    assert (greeting, reply) == (b"220 echo\r\n", b"echo hello\r\n")
    assert "listener=imaps" in caplog.text and f"tls={version}" in caplog.text


def test_implicit_tls_handshake_failure_is_logged_and_isolated(cert: tuple[Path, Path],
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> bytes:
        tls = server_context(*cert)
        async with serving(spec(echo, name="imaps", implicit_tls=True), tls=tls) as server:
            good_r, good_w = await connect(server, "imaps", ssl=client_context_trusting(cert[0]),
                                           server_hostname="localhost")
            await good_r.readline()
            bad_r, bad_w = await connect(server, "imaps")  # plaintext into a TLS port
            bad_w.write(b"A1 LOGIN alice secret\r\n" * 20)
            await bad_w.drain()
            with contextlib.suppress(ConnectionError):
                await bad_r.read()
            bad_w.close()
            good_w.write(b"still here\r\n")
            reply = await good_r.readline()
            good_w.close()
            return reply
    caplog.set_level(logging.INFO, "postroom.net")
    assert run(main()) == b"echo still here\r\n"
    tls_lines = [r.getMessage() for r in caplog.records if "end=tls" in r.getMessage()]
    assert len(tls_lines) == 1 and "error=" in tls_lines[0]
    assert "secret" not in caplog.text  # the driver logs no payload


def test_implicit_tls_refusal_travels_over_tls(cert: tuple[Path, Path]) -> None:
    limits = LimitsConfig(line_length=1000, connections_per_ip=1)
    line = refusal("imap", "mx.example.test")

    async def main() -> bytes:
        imaps = spec(echo, name="imaps", implicit_tls=True, protocol="imap", refuse=line)
        async with serving(imaps, limits=limits, tls=server_context(*cert)) as server:
            ctx = client_context_trusting(cert[0])
            held_r, held_w = await connect(server, "imaps", ssl=ctx, server_hostname="localhost")
            await held_r.readline()
            reader, writer = await connect(server, "imaps", ssl=ctx, server_hostname="localhost")
            refused = await reader.readline()
            writer.close()
            held_w.close()
            return refused
    assert run(main()) == b"* BYE [UNAVAILABLE] too many connections, try again later\r\n"


def test_idle_tls_connections_hold_no_read_buffer_of_their_own(cert: tuple[Path, Path]) -> None:
    """Invariant 9 of net/connection.py: the standard library's TLS layer allocates a 256 KiB read buffer per
    connection; the connection gives every layer of the loop one shared buffer instead. 20 idle sessions (10
    implicit TLS, 10 STARTTLS) must add far less than 256 KiB each to the memory Python allocated. The clients
    are blocking ssl sockets in a thread, so none of their memory is the loop's."""
    import tracemalloc

    count = 10

    def clients(implicit: int, plain: int, ready: Any, done: Any) -> list[bytes]:
        ctx = client_context_trusting(cert[0])
        socks, got = [], []
        try:
            for _ in range(count):
                s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", implicit)), server_hostname="localhost")
                socks.append(s)
                got.append(s.recv(100))
            for _ in range(count):
                raw = socket.create_connection(("127.0.0.1", plain))
                socks.append(raw)
                got.append(raw.recv(100))
                raw.sendall(b"STARTTLS\r\n")
                got.append(raw.recv(100))
                s = ctx.wrap_socket(raw, server_hostname="localhost")
                socks[-1] = s
                s.sendall(b"hello\r\n")
                got.append(s.recv(100))
            ready()
            done.wait(10)
        finally:
            for s in socks:
                s.close()
        return got

    async def main() -> tuple[int, list[bytes]]:
        tls = server_context(*cert)
        async with serving(spec(echo, name="imaps", implicit_tls=True), spec(echo), tls=tls) as server:
            loop = asyncio.get_running_loop()
            opened = loop.create_future()
            import threading

            done = threading.Event()
            base = tracemalloc.get_traced_memory()[0]
            task = asyncio.ensure_future(asyncio.to_thread(
                clients, server.addresses["imaps"][1], server.addresses["t"][1],
                lambda: loop.call_soon_threadsafe(opened.set_result, None), done))
            await opened
            await asyncio.sleep(0.2)  # the last echo written and its buffers released
            grown = tracemalloc.get_traced_memory()[0] - base
            done.set()
            return grown, await task

    tracemalloc.start()
    try:
        grown, got = run(main())
    finally:
        tracemalloc.stop()
    assert got == [b"220 echo\r\n"] * count + [b"220 echo\r\n", b"220 go ahead\r\n", b"echo hello\r\n"] * count
    per_connection = grown / (2 * count)
    assert per_connection < 64 * 1024, f"{per_connection / 1024:.0f} KiB per idle TLS connection"


def test_tls_connections_sharing_a_read_buffer_keep_their_bytes_apart(cert: tuple[Path, Path]) -> None:
    """Many TLS connections of one loop read through one shared buffer (invariant 9 of net/connection.py):
    large echoes on several at once each come back whole and in order."""
    async def one(server: NetServer, n: int) -> bool:
        reader, writer = await connect(server, "imaps", ssl=client_context_trusting(cert[0]),
                                       server_hostname="localhost")
        await reader.readline()
        lines = [b"%d-%06d " % (n, i) + bytes([65 + n]) * 900 + b"\r\n" for i in range(400)]
        writer.write(b"".join(lines))
        ok = all([await reader.readline() == b"echo " + line for line in lines])
        writer.close()
        return ok

    async def main() -> list[bool]:
        async with serving(spec(echo, name="imaps", implicit_tls=True), tls=server_context(*cert)) as server:
            return list(await asyncio.gather(*(one(server, n) for n in range(5))))
    assert run(main(), timeout=30) == [True] * 5


def test_starttls_upgrade(cert: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> list[bytes]:
        async with serving(spec(echo), tls=server_context(*cert)) as server:
            reader, writer = await connect(server)
            got = [await reader.readline()]
            writer.write(b"plain\r\nSTARTTLS\r\n")
            got += [await reader.readline(), await reader.readline()]
            await writer.start_tls(client_context_trusting(cert[0]), server_hostname="127.0.0.1")
            writer.write(b"secret\r\nQUIT\r\n")
            got += [await reader.readline(), await reader.readline()]
            writer.close()
            return got
    caplog.set_level(logging.INFO, "postroom.net")
    assert run(main()) == [b"220 echo\r\n", b"echo plain\r\n", b"220 go ahead\r\n", b"echo secret\r\n",
                           b"221 bye\r\n"]
    assert "tls=TLSv1." in caplog.text and "end=quit" in caplog.text


def test_starttls_with_pipelined_plaintext_is_refused(cert: tuple[Path, Path],
                                                       caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> bytes:
        async with serving(spec(echo), tls=server_context(*cert)) as server:
            reader, writer = await connect(server)
            await reader.readline()
            writer.write(b"STARTTLS\r\nMAIL FROM:<attacker@example>\r\n")  # CVE-2011-0411 injection
            data = await reader.read()
            writer.close()
            return data
    caplog.set_level(logging.INFO, "postroom.net")
    assert run(main()) == b"220 go ahead\r\n554 5.5.1 plaintext pipelined after STARTTLS\r\n"
    assert "end=starttls-injection" in caplog.text


# --- isolation, shutdown, the log line ----------------------------------------------------------------------------

def test_handler_exception_does_not_affect_other_connections(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[bytes, bytes]:
        async with serving(spec(echo)) as server:
            a_r, a_w = await connect(server)
            b_r, b_w = await connect(server)
            await a_r.readline()
            await b_r.readline()
            b_w.write(b"BOOM\r\n")
            b_tail = await b_r.read()
            a_w.write(b"alive\r\n")
            a_reply = await a_r.readline()
            a_w.close()
            b_w.close()
            return b_tail, a_reply
    caplog.set_level(logging.INFO, "postroom.net")
    b_tail, a_reply = run(main())
    assert b_tail == b"" and a_reply == b"echo alive\r\n"
    tracebacks = [r.exc_info[1] for r in caplog.records if r.exc_info and r.name == "postroom.net"]
    assert len(tracebacks) == 1 and "handler bug" in str(tracebacks[0])
    assert "end=error error=\"ValueError:handler bug\"" in caplog.text


def test_graceful_stop_waits_for_a_running_session() -> None:
    async def slow(conn: Connection) -> None:
        await conn.read_line()
        await asyncio.sleep(0.3)  # e.g. committing a message
        conn.write(b"250 done\r\n")

    async def main() -> tuple[bytes, float]:
        server = NetServer([spec(slow)], None, LIMITS)
        await server.start()
        reader, writer = await connect(server)
        writer.write(b"DATA\r\n")
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await server.stop(grace=3.0)
        elapsed = time.monotonic() - t0
        data = await reader.read()
        writer.close()
        with pytest.raises(OSError):  # the listener is gone
            await asyncio.open_connection(*server.addresses["t"])
        return data, elapsed
    data, elapsed = run(main())
    assert data == b"250 done\r\n"
    assert 0.15 < elapsed < 2.0


def test_graceful_stop_cuts_at_the_deadline_and_ends_idle_sessions(caplog: pytest.LogCaptureFixture) -> None:
    async def stuck(conn: Connection) -> None:
        await conn.read_line()
        await asyncio.sleep(30)

    async def polite(conn: Connection) -> None:
        try:
            await conn.read_line()
        except ShuttingDown:
            conn.write(b"* BYE shutting down\r\n")

    async def main() -> tuple[bytes, bytes, float]:
        server = NetServer([spec(stuck, "stuck"), spec(polite, "polite")], None, LIMITS)
        await server.start()
        s_r, s_w = await connect(server, "stuck")
        p_r, p_w = await connect(server, "polite")
        s_w.write(b"go\r\n")
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await server.stop(grace=0.3)
        elapsed = time.monotonic() - t0
        stuck_data = await s_r.read()
        polite_data = await p_r.read()
        s_w.close()
        p_w.close()
        return stuck_data, polite_data, elapsed
    caplog.set_level(logging.INFO, "postroom.net")
    stuck_data, polite_data, elapsed = run(main())
    assert stuck_data == b"" and polite_data == b"* BYE shutting down\r\n"
    assert 0.25 < elapsed < 2.0
    ends = sorted(r.getMessage().split("end=")[1].split()[0] for r in caplog.records
                  if r.name == "postroom.net.session")
    assert ends == ["shutdown", "shutdown"]  # the polite one said goodbye; the stuck one was cut


def test_session_log_line_fields(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(conn: Connection) -> None:
        line = await conn.read_line()
        conn.log["user"] = "alice@example.org"
        conn.log["client"] = "Thunder bird"
        conn.log["end"] = "forged"  # collides with a built-in field: dropped
        conn.write(b"+OK " + line)
        conn.end = "quit"

    metrics = Metrics()

    async def main() -> int:
        async with serving(spec(handler, name="pop3", protocol="pop3"), metrics=metrics) as server:
            reader, writer = await connect(server, "pop3")
            writer.write(b"USER alice PASS hunter2\r\n")
            await reader.read()
            writer.close()
            return writer.get_extra_info("sockname")[1]
    caplog.set_level(logging.INFO, "postroom.net")
    port = run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "postroom.net.session"]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("session protocol=pop3 listener=pop3 id=")
    assert f"peer=127.0.0.1:{port} tls=no duration=" in line
    assert "bytes_in=25 bytes_out=29 end=quit user=alice@example.org client=\"Thunder bird\"" in line
    assert "forged" not in line and "hunter2" not in line
    body, _ = metrics.render()
    assert b'postroom_sessions_total{protocol="pop3"} 1.0' in body
    assert b'postroom_sessions_open{protocol="pop3"} 0.0' in body


def test_bind_failure_names_the_listener() -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = NetServer([spec(echo, "ok"), ListenerSpec("imap", "127.0.0.1", port, echo)], None, LIMITS)
            with pytest.raises(OSError, match="listener imap"):
                await server.start()
            assert server.addresses.get("ok") is not None and server._servers == {}
    run(main())
