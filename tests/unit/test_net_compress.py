"""The connection's deflate layer (RFC 4978 COMPRESS=DEFLATE, net/connection.py invariant 8) through a fake
transport: compressed input fed whole, byte by byte and at random splits; every write a sync-flushed burst; a
decompression bomb inflated a buffer at a time; corrupt input ends the connection."""

from __future__ import annotations

import asyncio
import random
import zlib

import pytest
from test_net_connection import FakeTransport, make, run

from postroom.net.connection import Connection, ConnectionClosed, LineTooLong

LINES = [b"a1 LOGIN ann secret\r\n", b"a2 SELECT INBOX\r\n", b"a3 FETCH 1:* (FLAGS)\r\n" * 3, b"a4 LOGOUT\r\n"]


def deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)


def compressed() -> tuple[Connection, FakeTransport]:
    conn, tr = make()
    conn.start_compression()
    return conn, tr


async def feed_and_read(chunks: list[bytes], count: int) -> list[bytes]:
    conn, _ = compressed()

    async def feed() -> None:
        for c in chunks:
            await asyncio.sleep(0)
            conn.data_received(c)

    task = asyncio.ensure_future(feed())
    out = [await conn.read_line() for _ in range(count)]
    await task
    return out


def expected() -> list[bytes]:
    return [line for block in LINES for line in block.splitlines(keepends=True)]


def test_inflated_whole() -> None:
    data = deflate(b"".join(LINES))
    assert run(feed_and_read([data], len(expected()))) == expected()


def test_inflated_byte_by_byte() -> None:
    data = deflate(b"".join(LINES))
    assert run(feed_and_read([data[i:i + 1] for i in range(len(data))], len(expected()))) == expected()


@pytest.mark.parametrize("seed", range(20))
def test_inflated_at_random_splits(seed: int) -> None:
    data = deflate(b"".join(LINES))
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 10))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    assert run(feed_and_read(chunks, len(expected()))) == expected()


def test_each_write_is_one_sync_flushed_burst() -> None:
    async def go() -> bytes:
        conn, tr = compressed()
        conn.write(b"* OK one\r\n")
        first = bytes(tr.written)
        assert first.endswith(b"\x00\x00\xff\xff")  # RFC 1951 empty stored block: the sync flush marker
        conn.writelines([b"* 1 EXISTS\r\n", b"a1 OK done\r\n"])
        assert tr.written.endswith(b"\x00\x00\xff\xff")
        assert conn.bytes_out == len(tr.written)
        return zlib.decompressobj(-15).decompress(bytes(tr.written))

    assert run(go()) == b"* OK one\r\n* 1 EXISTS\r\na1 OK done\r\n"


def test_bomb_is_inflated_a_buffer_at_a_time() -> None:
    """8 MiB of one line in about 8 KB: the buffer never holds more than high_water (4096 in `make`), the
    line limit refuses the line, and the next line is read."""
    async def go() -> tuple[int, bytes]:
        conn, _ = compressed()
        z = zlib.compressobj(9, zlib.DEFLATED, -15)
        bomb = z.compress(b"x" * (8 << 20)) + z.compress(b"\r\na2 NOOP\r\n") + z.flush(zlib.Z_SYNC_FLUSH)
        assert len(bomb) < 16 << 10
        conn.data_received(bomb)
        biggest = len(conn._buffer)
        with pytest.raises(LineTooLong):
            await conn.read_line()
        line = await conn.read_line()
        return biggest, line

    biggest, line = run(go())
    assert biggest <= 4096
    assert line == b"a2 NOOP\r\n"


def test_corrupt_input_ends_the_connection() -> None:
    async def go() -> tuple[bool, object]:
        conn, tr = compressed()
        conn.data_received(b"\xff\xff\xff\xff not deflate")
        with pytest.raises(ConnectionClosed):
            await conn.read_line()
        return tr.closed, conn.log.get("compress")

    assert run(go()) == (True, "corrupt")


def test_start_compression_twice_is_a_bug() -> None:
    async def go() -> None:
        conn, _ = compressed()
        with pytest.raises(RuntimeError):
            conn.start_compression()

    run(go())
