"""net/receivebuffer.py, the one receive buffer of the SMTP, POP3 and IMAP cores: the same lines, blocks and
refusals whether the input comes whole, byte by byte or at random splits (invariant 3), and never more held
than one line's limit (invariant 1)."""

from __future__ import annotations

import random

import pytest

from postroom.net.receivebuffer import NEED_DATA, TOO_LONG, ReceiveBuffer

LIMIT = 16
STREAM = b"HELO a\r\n" + b"x" * 40 + b"{5+}\r\n" + b"NOOP\n" + b"y" * 16 + b"\r\n" + b"BLOCK" + b"QUIT\r\n"
# a reader taking lines of at most LIMIT bytes, and one block of 5 bytes at the fifth step
STEPS = ["line", "line", "line", "line", "block", "line"]
WANT = [b"HELO a\r\n", TOO_LONG, b"NOOP\n", TOO_LONG, b"BLOCK", b"QUIT\r\n"]


def _read(chunks: list[bytes], keep_tail: int = 0) -> tuple[list[object], list[bytes], int]:
    """Run STEPS over `chunks` fed one at a time when a step needs more; (results, dropped lines' tails, the
    most bytes the buffer held)."""
    buf = ReceiveBuffer(keep_tail)
    pending = list(chunks)
    out: list[object] = []
    tails: list[bytes] = []
    most = 0
    for step in STEPS:
        while True:
            got: object = (buf.take(5) if len(buf) >= 5 else NEED_DATA) if step == "block" else buf.take_line(LIMIT)
            if got is not NEED_DATA:
                break
            if buf.feed(pending.pop(0)):  # a dropped line ended in this chunk
                tails.append(buf.tail)
            most = max(most, len(buf))
        out.append(got)
        if got is TOO_LONG and not buf.discarding:  # its end was already here
            tails.append(buf.tail)
    assert not pending or all(not c for c in pending)
    return out, tails, most


def _splits(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@pytest.mark.parametrize("how", ["whole", "bytes", *[f"random{i}" for i in range(20)]])
def test_same_result_however_split(how: str) -> None:
    if how == "whole":
        chunks = [STREAM]
    elif how == "bytes":
        chunks = [STREAM[i:i + 1] for i in range(len(STREAM))]
    else:
        chunks = _splits(STREAM, random.Random(how))
    out, tails, most = _read(chunks, keep_tail=8)
    assert out == WANT
    # the end of each dropped line is kept for a core that looks at it (IMAP: a literal announced there)
    assert tails == [b"xx{5+}\r\n", b"y" * 6 + b"\r\n"]
    assert most <= LIMIT + 5 + max(len(c) for c in chunks)  # invariant 1: never a whole long line


def test_take_drop_clear_and_scanned() -> None:
    buf = ReceiveBuffer()
    buf.feed(b"abc")
    assert buf.take_line(10) is NEED_DATA and buf.scanned == 3  # searched once (invariant 2)
    buf.feed(b"def\nrest")
    assert buf.take_line(10) == b"abcdef\n" and buf.scanned == 0
    assert buf.take(2) == b"re" and len(buf) == 2
    buf.drop(1)
    assert bytes(buf.data) == b"t"
    buf.feed(b"x" * 20)
    assert buf.take_line(10) is TOO_LONG and buf.discarding
    buf.clear()
    assert not buf.discarding and len(buf) == 0
    buf.feed(b"after\n")
    assert buf.take_line(10) == b"after\n"


def test_the_cores_share_the_marker() -> None:
    from postroom.imap import framer
    from postroom.pop3 import protocol as pop3
    from postroom.smtp import protocol as smtp

    assert smtp.NEED_DATA is pop3.NEED_DATA is framer.NEED_DATA is NEED_DATA
