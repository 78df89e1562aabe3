"""Feeding one command to the sans-I/O framer whole, byte by byte and at random splits (for the tests of each
command's syntax)."""

from __future__ import annotations

import random

from postroom.imap import parser as P


def events(chunks: list[bytes]) -> list[object]:
    """The framer's events for `chunks` fed one after another, every literal accepted."""
    f = P.Framer(max_line=1000, max_command=10_000)
    out: list[object] = []
    for chunk in chunks:
        f.feed(chunk)
        while (ev := f.next_event()) is not P.NEED_DATA:
            out.append(ev)
            if isinstance(ev, P.LiteralRequest):
                f.accept_literal()
    return out


def splits(data: bytes, seed: int) -> list[bytes]:
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 10))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def chunkings(data: bytes, seeds: int = 20) -> list[list[bytes]]:
    """Whole, byte by byte, and `seeds` random splits."""
    return [[data], [data[i:i + 1] for i in range(len(data))], *(splits(data, s) for s in range(seeds))]


def parsed(data: bytes) -> list[P.Command]:
    """The command framed from every chunking of `data` and parsed; each must be the same whole command."""
    out = []
    for chunks in chunkings(data):
        raw = [e for e in events(chunks) if isinstance(e, P.RawCommand)]
        assert [r.data for r in raw] == [data]
        out.append(P.parse_command(raw[0].data))
    return out
