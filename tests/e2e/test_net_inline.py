"""`Connection.read_some(inline=...)` over real loopback sockets (net/connection.py invariant 12): whole lines
that arrive while the read waits are answered from the transport's callback without ending the read; anything
else is buffered as before; the idle timer counts from the last chunk answered inline; a deadline armed for an
unfinished line that the handler then completed does not fire; EOF right after a hand-over loses nothing.

Each test runs a `Connection` behind `loop.create_server` on 127.0.0.1:0 and a real client socket
(`asyncio.open_connection`) in the same loop. Timings are generous multiples of the timeouts they test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from postroom.config import LimitsConfig
from postroom.net.connection import Connection, ConnectionClosed, DeadlineExceeded, IdleTimeout, ShuttingDown

T = TypeVar("T")


class Echo:
    """An inline handler: answers each whole line "X\\n" with "ok X\\n"; a line "WAIT" is handed to the reader
    (returns False) and kept in `held`."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.calls: list[bytes] = []
        self.held: list[bytes] = []

    def __call__(self, data: bytes) -> bool:
        self.calls.append(data)
        out = []
        for line in data.splitlines():
            if line == b"WAIT":
                self.held.append(line)
                if out:
                    self.conn.writelines(out)
                return False
            out.append(b"ok " + line + b"\n")
        self.conn.writelines(out)
        return True


def with_pair(body: Callable[[Connection, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[T]], *,
              idle: float | None = 30.0, limits: LimitsConfig | None = None, timeout: float = 30.0) -> T:
    async def main() -> T:
        loop = asyncio.get_running_loop()
        made: asyncio.Future[Connection] = loop.create_future()

        def factory() -> Connection:
            conn = Connection(listener="test", protocol="pop3", limits=limits or LimitsConfig(), idle_timeout=idle,
                              session_id="inline-test")
            if not made.done():
                made.set_result(conn)
            return conn

        server = await loop.create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            conn = await made
            return await asyncio.wait_for(body(conn, reader, writer), timeout)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
    return asyncio.run(main())


async def read_line(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readline(), 10)


def test_whole_lines_are_answered_inline_and_the_read_goes_on() -> None:
    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo = Echo(conn)
        read = asyncio.ensure_future(conn.read_some(inline=echo))
        for i in range(5):
            writer.write(b"line %d\n" % i)
            assert await read_line(reader) == b"ok line %d\n" % i
        writer.write(b"a\nb\nc\n")
        assert [await read_line(reader) for _ in range(3)] == [b"ok a\n", b"ok b\n", b"ok c\n"]
        assert not read.done()  # every line was answered from the callback: the reader was never woken
        writer.write(b"WAIT\n")
        assert await asyncio.wait_for(read, 10) == b""  # handed over: the bytes are the handler's, not the buffer's
        assert echo.held == [b"WAIT"]
        assert conn.pending == 0
    with_pair(body)


def test_an_unfinished_line_is_buffered_for_the_reader() -> None:
    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo = Echo(conn)
        writer.write(b"no end yet")
        await writer.drain()
        got = await asyncio.wait_for(conn.read_some(inline=echo), 10)
        while not got.endswith(b"yet"):  # TCP may deliver it in pieces
            got += await asyncio.wait_for(conn.read_some(inline=echo), 10)
        assert got == b"no end yet" and echo.calls == []
        # The rest of that line ends with LF and arrives into an empty buffer: the handler gets it (its core
        # holds the start); the reader goes on waiting.
        read = asyncio.ensure_future(conn.read_some(inline=echo))
        writer.write(b" - now\n")
        assert await read_line(reader) == b"ok  - now\n"
        assert echo.calls == [b" - now\n"] and not read.done()
        read.cancel()
    with_pair(body)


def test_a_read_without_inline_is_unchanged() -> None:
    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"plain\n")
        got = b""
        while not got.endswith(b"\n"):
            got += await asyncio.wait_for(conn.read_some(), 10)
        assert got == b"plain\n"
    with_pair(body)


def test_eof_right_after_a_hand_over_loses_nothing() -> None:
    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo = Echo(conn)
        read = asyncio.ensure_future(conn.read_some(inline=echo))
        writer.write(b"WAIT\n")
        writer.write_eof()  # the FIN comes right behind the command
        assert await asyncio.wait_for(read, 10) == b""  # not ConnectionClosed: the held command is carried out
        assert echo.held == [b"WAIT"]
        conn.write(b"done\n")  # the write side is still open (a half-closed peer gets its reply)
        assert await read_line(reader) == b"done\n"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(conn.read_some(inline=echo), 10)
    with_pair(body)


def test_idle_timeout_counts_from_the_last_line_answered_inline() -> None:
    idle = 1.0

    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
        loop = asyncio.get_running_loop()
        echo = Echo(conn)
        read = asyncio.ensure_future(conn.read_some(inline=echo))
        started = loop.time()
        i = 0
        while loop.time() - started < 3 * idle:  # activity for three idle timeouts, a line every fifth of one
            writer.write(b"tick %d\n" % i)
            assert await read_line(reader) == b"ok tick %d\n" % i
            assert not read.done()  # answered inline, and the idle timer has not ended the read
            await asyncio.sleep(idle / 5)
            i += 1
        quiet = loop.time()
        with pytest.raises(IdleTimeout):
            await asyncio.wait_for(read, 10 * idle)
        return loop.time() - quiet
    waited = with_pair(body, idle=idle)
    assert waited < 10 * idle  # silence ends it (the exact moment depends on the machine's load)


def test_a_line_completed_inline_leaves_no_deadline_behind() -> None:
    limits = LimitsConfig(command_deadline_seconds=1.0)

    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        echo = Echo(conn)
        writer.write(b"NO")
        await writer.drain()
        got = b""
        while got != b"NO":
            got += await asyncio.wait_for(conn.read_some(inline=echo), 10)
        read = asyncio.ensure_future(conn.read_some(inline=echo))  # armed with the unfinished line's deadline
        writer.write(b"OP\n")
        assert await read_line(reader) == b"ok OP\n"
        await asyncio.sleep(3 * limits.command_deadline_seconds)  # well past the deadline of "NO"
        assert not read.done()  # the line was completed: no DeadlineExceeded
        writer.write(b"NOOP\n")
        assert await read_line(reader) == b"ok NOOP\n"
        read.cancel()
    with_pair(body, limits=limits)


def test_no_inline_answer_while_output_is_paused() -> None:
    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        echo = Echo(conn)
        conn.pause_writing()  # as the transport does when its buffer is over the high-water mark
        writer.write(b"x\n")
        got = b""
        while not got.endswith(b"\n"):
            got += await asyncio.wait_for(conn.read_some(inline=echo), 10)
        assert got == b"x\n" and echo.calls == []  # buffered for the reader, which drains first
        conn.resume_writing()
    with_pair(body)


class Data(Echo):
    """An inline handler for a message's data: a line "DATA" starts the data phase (net invariant 7) and is
    answered; every line after it is taken without an answer until "." ends the data phase again."""

    def __call__(self, data: bytes) -> bool:
        self.calls.append(data)
        for line in data.splitlines():
            if line == b"DATA":
                self.conn.data_phase(True)
                self.conn.write(b"354 go ahead\n")
            elif line == b".":
                self.conn.data_phase(False)
                self.conn.write(b"250 taken\n")
        return True


def test_data_taken_inline_is_held_to_the_minimum_rate() -> None:
    limits = LimitsConfig(min_data_rate=200.0, data_rate_grace_seconds=1.0, command_deadline_seconds=60.0)

    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
        handler = Data(conn)
        read = asyncio.ensure_future(conn.read_some(inline=handler))
        writer.write(b"DATA\n")
        assert await read_line(reader) == b"354 go ahead\n"
        # A line of 10 bytes every 0.25 s: 40 bytes/s, a fifth of the minimum rate. Each line is whole, so the
        # handler takes it and the read never wakes; the data phase's deadline must end it all the same.
        lines = 0
        while not read.done() and lines < 200:
            writer.write(b"slow line\n")
            lines += 1
            await asyncio.sleep(0.25)
        assert len(handler.calls) > 2  # lines were taken inline after the data began
        with pytest.raises(DeadlineExceeded) as info:
            await asyncio.wait_for(read, 10)
        return info.value.reason, conn.log.get("timeout")
    assert with_pair(body, limits=limits) == ("min-data-rate", "min-data-rate")


def test_data_taken_inline_fast_enough_moves_the_deadline() -> None:
    limits = LimitsConfig(min_data_rate=200.0, data_rate_grace_seconds=1.0, command_deadline_seconds=60.0)

    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        handler = Data(conn)
        read = asyncio.ensure_future(conn.read_some(inline=handler))
        writer.write(b"DATA\n")
        assert await read_line(reader) == b"354 go ahead\n"
        started = loop.time()
        # 2 KB every 0.1 s (20 KB/s, a hundred times the minimum) for three grace periods: the deadline armed
        # when the data began has passed, and moved with every line taken.
        while loop.time() - started < 3 * limits.data_rate_grace_seconds:
            writer.write(b"x" * 2047 + b"\n")
            await asyncio.sleep(0.1)
        assert not read.done()
        writer.write(b".\n")
        assert await read_line(reader) == b"250 taken\n"
        assert not read.done()
        read.cancel()
    with_pair(body, limits=limits)


def test_a_shutdown_does_not_end_a_wait_inside_data_taken_inline() -> None:
    async def body(conn: Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = Data(conn)
        read = asyncio.ensure_future(conn.read_some(inline=handler))
        writer.write(b"DATA\nfirst line\n")
        assert await read_line(reader) == b"354 go ahead\n"
        await asyncio.sleep(0.2)
        conn.request_shutdown()  # the peer is inside a message: let it finish (as with a buffered read)
        await asyncio.sleep(0.2)
        assert not read.done()
        writer.write(b".\n")
        # While the server stops nothing is answered inline (invariant 12): the data's end wakes the reader.
        assert await asyncio.wait_for(read, 10) == b".\n"
        conn.data_phase(False)
        with pytest.raises(ShuttingDown):  # between commands now: the next wait ends at once
            await asyncio.wait_for(conn.read_some(inline=handler, interruptible=True), 10)
    with_pair(body)
