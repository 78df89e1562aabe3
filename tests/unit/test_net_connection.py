"""Connection reader/writer fed through a fake transport: every reader whole, split, byte by byte (STYLE habit 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postroom.config import LimitsConfig
from postroom.net.connection import (
    Connection,
    ConnectionClosed,
    IdleTimeout,
    LineTooLong,
    LiteralTooLarge,
    PlaintextAfterStartTLS,
    ShuttingDown,
)

T = TypeVar("T")
LIMITS = LimitsConfig(line_length=1000)


def run(coro: Awaitable[T], timeout: float = 5.0) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(main())


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading_paused = False
        self.closed = False
        self.protocol: Connection | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("::ffff:192.0.2.7", 5555, 0, 0), "sockname": ("::1", 25, 0, 0)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.written += c

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            assert self.protocol is not None
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()


def make(limits: LimitsConfig = LIMITS, idle: float | None = 5.0) -> tuple[Connection, FakeTransport]:
    conn = Connection(listener="test", protocol="smtp", limits=limits, idle_timeout=idle, session_id="t1",
                      high_water=4096)
    tr = FakeTransport()
    tr.protocol = conn
    conn.connection_made(tr)
    return conn, tr


async def feed_later(conn: Connection, chunks: list[bytes], eof: bool = False) -> None:
    for chunk in chunks:
        await asyncio.sleep(0)
        conn.data_received(chunk)
    if eof:
        await asyncio.sleep(0)
        conn.eof_received()


async def read_lines(conn: Connection, n: int) -> list[bytes]:
    return [await conn.read_line() for _ in range(n)]


def with_conn(fn: Callable[[Connection, FakeTransport], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        conn, tr = make(**kw)
        return await fn(conn, tr)
    return run(main())


# --- addresses ------------------------------------------------------------------------------------------------

def test_peer_and_local_are_normalised() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        assert conn.peer == ("192.0.2.7", 5555)  # IPv4-mapped shown as IPv4, so per-IP limits see one address
        assert conn.local == ("::1", 25)
        assert not conn.tls and conn.tls_version is None
    with_conn(body)


# --- read_line ------------------------------------------------------------------------------------------------

WIRE = b"EHLO a\r\nMAIL FROM:<x@y>\nRCPT TO:<z@w>\r\n"
LINES = [b"EHLO a\r\n", b"MAIL FROM:<x@y>\n", b"RCPT TO:<z@w>\r\n"]


def test_read_line_whole_buffer_crlf_and_lf() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> list[bytes]:
        conn.data_received(WIRE)
        return await read_lines(conn, 3)
    assert with_conn(body) == LINES


def test_read_line_byte_by_byte() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> list[bytes]:
        feeder = asyncio.ensure_future(feed_later(conn, [WIRE[i:i + 1] for i in range(len(WIRE))]))
        lines = await read_lines(conn, 3)
        await feeder
        return lines
    assert with_conn(body) == LINES


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=8))
def test_read_line_random_splits(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks = [WIRE[a:b] for a, b in zip([0] + points, points + [len(WIRE)]) if WIRE[a:b]]

    async def body(conn: Connection, tr: FakeTransport) -> list[bytes]:
        feeder = asyncio.ensure_future(feed_later(conn, chunks))
        lines = await read_lines(conn, 3)
        await feeder
        return lines
    assert with_conn(body) == LINES


def test_line_of_exactly_the_limit_is_accepted_one_more_is_not() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        ok = b"a" * 998 + b"\r\n"  # 1000 bytes with CRLF
        conn.data_received(ok)
        assert await conn.read_line() == ok
        conn.data_received(b"a" * 999 + b"\r\nNEXT\r\n")
        with pytest.raises(LineTooLong):
            await conn.read_line()
        assert await conn.read_line() == b"NEXT\r\n"
    with_conn(body)


def test_overlong_line_in_one_chunk_then_next_line() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"x" * 5000 + b"\r\nNOOP\r\n")
        with pytest.raises(LineTooLong) as info:
            await conn.read_line()
        assert info.value.limit == 1000
        assert await conn.read_line() == b"NOOP\r\n"
    with_conn(body)


def test_overlong_line_discarded_as_it_arrives() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"x" * 1200)
        with pytest.raises(LineTooLong):
            await conn.read_line()
        # The rest of the long line arrives in pieces, never buffered; the line after it is intact.
        for _ in range(10):
            conn.data_received(b"y" * 3000)
            assert conn.pending == 0
        feeder = asyncio.ensure_future(feed_later(conn, [b"zz", b"z\r", b"\nQUI", b"T\r\n"]))
        assert await conn.read_line() == b"QUIT\r\n"
        await feeder
    with_conn(body)


def test_per_call_limit() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"A" * 2000 + b"\r\n")
        assert await conn.read_line(limit=12288) == b"A" * 2000 + b"\r\n"  # RFC 4954 §4: AUTH lines are longer
    with_conn(body)


def test_complete_lines_survive_eof_partial_line_does_not() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"QUIT\r\npartial")
        conn.eof_received()
        assert await conn.read_line() == b"QUIT\r\n"
        with pytest.raises(ConnectionClosed):
            await conn.read_line()
        assert conn.ended_by == "eof"
    with_conn(body)


def test_eof_while_waiting() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        asyncio.get_running_loop().call_soon(conn.connection_lost, None)
        with pytest.raises(ConnectionClosed):
            await conn.read_line()
    with_conn(body)


def test_concurrent_reads_are_a_bug() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        first = asyncio.ensure_future(conn.read_line())
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError):
            await conn.read_line()
        conn.data_received(b"x\n")
        assert await first == b"x\n"
    with_conn(body)


# --- timeouts and shutdown ------------------------------------------------------------------------------------

def test_idle_timeout() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        with pytest.raises(IdleTimeout):
            await conn.read_line()
        assert conn.timed_out
    with_conn(body, idle=0.05)


def test_idle_timer_restarts_on_data() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> bytes:
        async def trickle() -> None:
            # 6 x 0.1 s = 0.6 s in total, longer than the 0.3 s idle timeout; each gap well inside it, so a
            # loaded machine's late wake-ups do not end the line early
            for _ in range(6):
                await asyncio.sleep(0.1)
                conn.data_received(b"a")
            conn.data_received(b"\n")
        task = asyncio.ensure_future(trickle())
        line = await conn.read_line()
        await task
        return line
    assert with_conn(body, idle=0.3) == b"aaaaaa\n"


def test_shutdown_interrupts_a_read_between_commands_only() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        waiting = asyncio.ensure_future(conn.read_line())
        await asyncio.sleep(0)
        conn.request_shutdown()
        with pytest.raises(ShuttingDown):
            await waiting
        assert conn.shutting_down

    async def mid_line(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"MAIL FR")
        waiting = asyncio.ensure_future(conn.read_line())
        await asyncio.sleep(0)
        conn.request_shutdown()  # half a command is buffered: let it finish
        await asyncio.sleep(0.01)
        assert not waiting.done()
        conn.data_received(b"OM:<a@b>\r\n")
        assert await waiting == b"MAIL FROM:<a@b>\r\n"
        with pytest.raises(ShuttingDown):  # and the next wait between commands ends the session
            await conn.read_line()
        with pytest.raises(ShuttingDown):
            await conn.read_some(interruptible=True)

    with_conn(body)
    with_conn(mid_line)


# --- read_exact / read_some / skip -----------------------------------------------------------------------------

def test_read_exact_across_chunks_and_after_a_line() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"A1 APPEND INBOX {10}\r\n0123")
        assert await conn.read_line() == b"A1 APPEND INBOX {10}\r\n"
        feeder = asyncio.ensure_future(feed_later(conn, [b"45", b"6", b"789\r\nA2 NOOP\r\n"]))
        assert await conn.read_exact(10) == b"0123456789"
        assert await conn.read_line() == b"\r\n"
        assert await conn.read_line() == b"A2 NOOP\r\n"
        await feeder
    with_conn(body)


def test_read_exact_large_with_backpressure() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        payload = bytes(range(256)) * 100  # 25,600 bytes, well over the 4 KiB high-water mark
        conn.data_received(payload[:10000])
        assert tr.reading_paused  # invariant 3
        task = asyncio.ensure_future(conn.read_exact(len(payload)))
        await asyncio.sleep(0)
        assert not tr.reading_paused
        for i in range(10000, len(payload), 777):
            conn.data_received(payload[i:i + 777])
            await asyncio.sleep(0)
        assert await task == payload
    with_conn(body)


def test_read_exact_limit() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"abc")
        with pytest.raises(LiteralTooLarge) as info:
            await conn.read_exact(101, max_size=100)
        assert (info.value.size, info.value.limit) == (101, 100)
        assert conn.pending == 3  # nothing consumed
        with pytest.raises(LiteralTooLarge):
            await conn.read_exact(LIMITS.literal_size + 1)
        assert await conn.read_exact(3) == b"abc"
        assert await conn.read_exact(0) == b""
    with_conn(body)


def test_skip_and_read_some() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"0123456789tail")
        feeder = asyncio.ensure_future(feed_later(conn, [b"more"]))
        await conn.skip(10)
        assert await conn.read_some(2) == b"ta"
        assert await conn.read_some() == b"il"
        assert await conn.read_some() == b"more"
        await feeder
    with_conn(body)


# --- writing --------------------------------------------------------------------------------------------------

def test_write_counts_and_drops_after_close() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.write(b"220 hi\r\n")
        conn.writelines([b"a", b"bc"])
        await conn.drain()
        assert bytes(tr.written) == b"220 hi\r\nabc" and conn.bytes_out == 11
        await conn.close()
        conn.write(b"late")
        assert bytes(tr.written) == b"220 hi\r\nabc"
        with pytest.raises(ConnectionClosed):
            await conn.drain()
    with_conn(body)


def test_drain_waits_for_resume_and_times_out() -> None:
    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.pause_writing()
        task = asyncio.ensure_future(conn.drain())
        await asyncio.sleep(0.01)
        assert not task.done()
        conn.resume_writing()
        await task
        conn.pause_writing()
        with pytest.raises(IdleTimeout):  # the peer stopped reading our output
            await conn.drain()
    with_conn(body, idle=0.05)


# --- STARTTLS --------------------------------------------------------------------------------------------------

def test_start_tls_refuses_pipelined_plaintext() -> None:
    import ssl

    async def body(conn: Connection, tr: FakeTransport) -> None:
        conn.data_received(b"STARTTLS\r\nRSET\r\n")
        assert await conn.read_line() == b"STARTTLS\r\n"
        assert conn.pending == 6
        with pytest.raises(PlaintextAfterStartTLS) as info:
            await conn.start_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        assert info.value.pending == 6
        assert not conn.tls and conn.pending == 6  # not upgraded, nothing silently dropped
    with_conn(body)


# --- a read another source may wake (invariant 10: IMAP IDLE and its change feed) -------------------------------
def test_read_woken_by_the_feed_returns_nothing_then_data() -> None:
    from postroom.store.api import Change, ChangeKind
    from postroom.store.hub import Hub

    async def body(conn: Connection, tr: FakeTransport) -> list[Any]:
        hub = Hub()
        sub = hub.subscribe(7)
        change = Change(ChangeKind.APPEND, user_id=7, mailbox_id=1, uid=1, modseq=1)
        asyncio.get_running_loop().call_soon(hub.publish, [change])
        got: list[Any] = [await conn.read_some(wake=sub)]  # woken by the feed: nothing from the client
        got.append(sub.get_nowait())
        asyncio.get_running_loop().call_soon(conn.data_received, b"DONE\r\n")
        got.append(await conn.read_some(wake=sub))  # the client's bytes
        hub.publish([change])
        got.append(await conn.read_some(wake=sub))  # already queued: no wait at all
        got.append(len(sub))
        return got

    assert with_conn(body) == [b"", Change(ChangeKind.APPEND, user_id=7, mailbox_id=1, uid=1, modseq=1),
                               b"DONE\r\n", b"", 1]


def test_idle_timeout_counts_from_quiet_since_across_feed_wakes() -> None:
    """IDLE calls again after each change; the client's silence is what times out (connection invariant 4)."""
    from postroom.store.hub import Hub

    async def body(conn: Connection, tr: FakeTransport) -> None:
        sub = Hub().subscribe(7)
        loop = asyncio.get_running_loop()
        quiet = loop.time() - 10.0  # the client was last heard from 10 s ago; the idle timeout is 5 s
        with pytest.raises(IdleTimeout):
            await conn.read_some(wake=sub, quiet_since=quiet)
        assert conn.timed_out

    with_conn(body, idle=5.0)


def test_connection_has_no_instance_dict() -> None:
    """Slots (a few hundred bytes for every connection, idle ones included): no __dict__ sneaks back in."""
    async def body(conn: Connection, tr: FakeTransport) -> bool:
        return hasattr(conn, "__dict__")
    assert with_conn(body) is False


# --- the loop's one receive buffer (invariant 13) -----------------------------------------------------------------

def test_buffered_reads_give_the_same_lines_and_share_one_buffer() -> None:
    async def main() -> None:
        conn, _ = make()
        other, _ = make()
        assert conn.get_buffer(-1) is other.get_buffer(-1)  # one buffer per loop, none per connection
        data = b"EHLO a.test\r\nMAIL FROM:<a@b>\r\n" + b"x" * 3000 + b"\r\n"
        for start in range(0, len(data), 7):  # as a transport would: read into the buffer, then say how much
            piece = data[start:start + 7]
            buf = conn.get_buffer(-1)
            buf[:len(piece)] = piece
            conn.buffer_updated(len(piece))
            other.get_buffer(-1)[:5] = b"NOISE"  # the next read of another connection reuses the buffer
            other.buffer_updated(5)
        lines = [await conn.read_line(limit=4000) for _ in range(3)]
        assert b"".join(lines) == data
        assert conn.bytes_in == len(data) and other.bytes_in == 5 * len(range(0, len(data), 7))
    run(main())


def test_a_real_socket_reads_through_the_shared_buffer() -> None:
    async def main() -> list[bytes]:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[Connection] = loop.create_future()

        def factory() -> Connection:
            conn = Connection(listener="test", protocol="smtp", limits=LIMITS, idle_timeout=5.0, session_id="b1")
            made.set_result(conn)
            return conn

        server = await loop.create_server(factory, "127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        try:
            conn = await made
            writer.write(b"one\r\n" + b"two " * 100_000 + b"\r\nthree\r\n")  # more than one read's worth
            return [await conn.read_line(limit=500_000) for _ in range(3)]
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
    assert run(main()) == [b"one\r\n", b"two " * 100_000 + b"\r\n", b"three\r\n"]
