"""metapool.py: metadata computed in real worker processes, the time limit that kills them, and the one size
threshold below which the event loop computes it itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from postroom import metapool as pool
from postroom.config import LimitsConfig
from postroom.mime.meta import MessageMeta, compute_meta

LIMITS = LimitsConfig()


def big_message(size: int) -> bytes:
    head = b"From: Ann <ann@example.org>\r\nSubject: big\r\nContent-Type: text/html\r\n\r\n"
    unit = b"<p>para &amp; <b>bold</b></p>\r\n"
    return head + unit * (size // len(unit))


def test_large_message_in_a_worker_same_answer() -> None:
    raw = big_message(300_000)

    async def go() -> tuple[bytes, MessageMeta, int]:
        try:
            data = await pool.meta_bytes(raw, LIMITS)
            meta = await pool.meta_of(raw, LIMITS)
            return data, meta, len(pool.pool()._idle)
        finally:
            await pool.shutdown()

    data, meta, idle = asyncio.run(go())
    assert data == compute_meta(raw, LIMITS).to_bytes()
    assert meta == compute_meta(raw, LIMITS)
    assert idle == 1  # the worker was used twice and kept


def test_small_message_never_starts_a_worker() -> None:
    raw = big_message(pool.INLINE_MAX - 100)

    async def go() -> int:
        await pool.meta_bytes(raw, LIMITS)
        n = len(pool.pool()._idle)
        await pool.shutdown()
        return n

    assert asyncio.run(go()) == 0


def test_timeout_kills_the_worker_and_keeps_the_message() -> None:
    raw = big_message(3_000_000)

    async def go() -> tuple[MessageMeta, int, MessageMeta, int | None]:
        p = pool.pool()
        p.seconds = 0.05  # compute_meta of 3 MB of HTML takes far longer than 50 ms
        slow = await pool.meta_of(raw, LIMITS)
        assert not p._idle  # the worker that ran past the limit is gone ...
        p.seconds = 60.0
        small = raw[:100_000]
        ok = await pool.meta_of(small, LIMITS)  # ... and the next job gets a new one
        worker = p._idle[0]
        await pool.shutdown()
        return slow, p.timeouts, ok, worker.proc.returncode

    slow, timeouts, ok, code = asyncio.run(go())
    assert timeouts == 1
    assert slow.defects == ((0, "meta-timeout"),) and slow.size == len(raw)
    assert slow.envelope.startswith(b'(NIL "big" (("Ann" NIL "ann" "example.org"))')
    assert ok == compute_meta(raw[:100_000], LIMITS)
    assert code == 0  # shutdown closed stdin and the worker ended on its own


def test_staged_file(tmp_path: Path) -> None:
    raw = big_message(200_000)
    good = tmp_path / "good"
    good.write_bytes(raw)
    nul = tmp_path / "nul"
    nul.write_bytes(raw + b"\x00")

    async def go() -> MessageMeta:
        try:
            meta = await pool.meta_of_file(good, len(raw), LIMITS, allow_nul=False)
            with pytest.raises(pool.NulInLiteral):
                await pool.meta_of_file(nul, len(raw) + 1, LIMITS, allow_nul=False)
            await pool.meta_of_file(nul, len(raw) + 1, LIMITS, allow_nul=True)  # a literal8 may hold a NUL
            return meta
        finally:
            await pool.shutdown()

    assert asyncio.run(go()) == compute_meta(raw, LIMITS)


def test_staged_message_with_a_prefix(tmp_path: Path) -> None:
    # An SMTP message staged in a file, with its trace fields as a prefix (delivery/local.py invariant 5): the
    # same metadata as of the joined bytes (offsets count the prefix), from the worker, a small one inline, and
    # after a worker time-out the minimal metadata of the whole message.
    prefix = b"Return-Path: <a@example.org>\r\nReceived: from x by y; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    raw = big_message(200_000)
    path = tmp_path / "staged"
    path.write_bytes(raw)
    small = tmp_path / "small"
    small.write_bytes(raw[:2000])

    async def go() -> tuple[bytes, bytes, bytes]:
        try:
            data = await pool.meta_bytes_of_file(prefix, path, LIMITS)
            inline = await pool.meta_bytes_of_file(prefix, small, LIMITS)
            pool.pool().seconds = 0.0001
            slow = await pool.meta_bytes_of_file(prefix, path, LIMITS)
            return data, inline, slow
        finally:
            await pool.shutdown()

    data, inline, slow = asyncio.run(go())
    assert data == compute_meta(prefix + raw, LIMITS).to_bytes()
    assert inline == compute_meta(prefix + raw[:2000], LIMITS).to_bytes()
    meta = MessageMeta.from_bytes(slow)
    assert meta.defects == ((0, "meta-timeout"),) and meta.size == len(prefix) + len(raw)


def test_worker_reads_a_staged_file_into_one_buffer_with_the_same_answer(tmp_path: Path) -> None:
    # The worker's file jobs parse a bytearray (`metapool._read`: prefix and file in one buffer); over the whole
    # MIME corpus the answers are those of `compute_meta` over bytes. Driven through `_serve` itself.
    import io
    import json

    corpus = sorted((Path(__file__).resolve().parents[1] / "data" / "mime" / "msgs").iterdir())
    assert len(corpus) > 50
    prefix = b"Return-Path: <a@example.org>\r\n"
    jobs, want = io.BytesIO(), []
    for path in corpus:
        raw = path.read_bytes()
        jobs.write(json.dumps({"depth": LIMITS.mime_depth, "parts": LIMITS.mime_parts, "path": str(path),
                               "n": len(prefix)}).encode() + b"\n" + prefix)
        want.append(compute_meta(prefix + raw, LIMITS).to_bytes())
    jobs.seek(0)
    out = io.BytesIO()
    pool._serve(jobs, out)
    answers = out.getvalue()
    got, i = [], 0
    while i < len(answers):
        status, n = pool._ANSWER.unpack_from(answers, i)
        i += pool._ANSWER.size
        assert status == b"M"
        got.append(answers[i:i + n])
        i += n
    assert got == want


def test_message_in_memory_with_a_prefix() -> None:
    # `meta_bytes(raw, prefix=...)` (delivery/local.py: Return-Path carried as a prefix, issue 17 item 5): the
    # metadata of the joined bytes, whether parsed here (at most INLINE_MAX bytes in all) or in a worker that
    # is sent the two pieces one after the other; after a worker time-out, the whole message's minimal metadata.
    prefix = b"Return-Path: <a@example.org>\r\nReceived: from x by y; Tue, 1 Dec 2026 10:00:00 +0000\r\n"
    raw = big_message(200_000)
    small = raw[:pool.INLINE_MAX - len(prefix)]  # the joined message is exactly INLINE_MAX: parsed here

    async def go() -> tuple[bytes, bytes, int, bytes]:
        try:
            inline = await pool.meta_bytes(small, LIMITS, prefix=prefix)
            idle = len(pool.pool()._idle)
            data = await pool.meta_bytes(raw, LIMITS, prefix=prefix)
            pool.pool().seconds = 0.0001
            slow = await pool.meta_bytes(raw, LIMITS, prefix=prefix)
            return inline, data, idle, slow
        finally:
            await pool.shutdown()

    inline, data, idle, slow = asyncio.run(go())
    assert idle == 0  # no worker for the small one
    assert inline == compute_meta(prefix + small, LIMITS).to_bytes()
    assert data == compute_meta(prefix + raw, LIMITS).to_bytes()
    meta = MessageMeta.from_bytes(slow)
    assert meta.defects == ((0, "meta-timeout"),) and meta.size == len(prefix) + len(raw)


def test_an_idle_worker_does_not_hold_its_last_message(tmp_path: Path) -> None:
    """Invariant 6: after answering, the worker is back to about its own size; before, it held its last message
    (here 40 MB) until the next job replaced it."""
    staged = tmp_path / "staged"
    staged.write_bytes(b"Subject: large\r\n\r\n" + b"x" * 76 * 10 + (b"y" * 76 + b"\r\n") * 520_000)

    def rss(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) * 1024

    async def go() -> tuple[int, int]:
        try:
            await pool.meta_bytes(big_message(20_000), LIMITS)  # a worker, started and warm
            pid = pool.pool()._idle[0].proc.pid
            before = rss(pid)
            await pool.meta_bytes_of_file(b"Return-Path: <a@example.org>\r\n", staged, LIMITS)
            assert pool.pool()._idle[0].proc.pid == pid
            return before, rss(pid)
        finally:
            await pool.shutdown()

    before, after = asyncio.run(go())
    assert after - before < 16 * 1024 * 1024, (before, after)
