"""metapool.py: metadata computed in real worker processes, the time limit that kills them, and the one size
threshold below which the event loop computes it itself."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from postroom import metapool as pool
from postroom import metaworker
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


def test_worker_reads_a_staged_file_through_a_window_with_the_same_answer(tmp_path: Path) -> None:
    # The worker's file jobs parse the prefix and the file through `mime.staged.StagedMessage` (metaworker
    # invariant 3); over the whole MIME corpus the answers are those of `compute_meta` over bytes. Driven through
    # `metaworker.serve` itself.
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
    metaworker.serve(jobs, out)
    answers = out.getvalue()
    got, i = [], 0
    while i < len(answers):
        status, n = metaworker.ANSWER.unpack_from(answers, i)
        i += metaworker.ANSWER.size
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


def test_a_worker_imports_no_asyncio_nor_ssl() -> None:
    """metaworker.py invariant 1: what `python -m postroom.metaworker` imports (the module and its closure, read
    in a fresh interpreter) holds none of the server side's modules, so an idle worker stays small."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import sys, postroom.metaworker; print(' '.join(sys.modules))"],
                         capture_output=True, check=True).stdout.decode().split()
    assert "postroom.mime.meta" in out  # the worker's own code is there ...
    assert [m for m in out if m.split(".")[0] in ("asyncio", "ssl", "sqlite3", "subprocess", "logging")
            or m.startswith(("postroom.store", "postroom.metapool", "postroom.inbound"))] == []  # ... not these


def test_large_jobs_take_one_slot_in_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant 7: two large jobs at once in one pool of two workers run one after the other: one waited for
    the slot, and one worker did both (a second would have started had they run together)."""
    monkeypatch.setattr(pool, "LARGE_MIN", 100_000)
    raw = big_message(300_000)

    async def go() -> tuple[list[bytes], int, int]:
        p = pool._POOLS[asyncio.get_running_loop()] = pool.MetaPool(size=2)  # two workers, whatever the CPUs
        try:
            got = await asyncio.gather(pool.meta_bytes(raw, LIMITS), pool.meta_bytes(raw[:200_000], LIMITS))
            small = await asyncio.gather(pool.meta_bytes(raw[:50_000], LIMITS), pool.meta_bytes(raw[:60_000], LIMITS))
            return [*got, *small], p.large_waits, len({w.proc.pid for w in p._idle})
        finally:
            await pool.shutdown()

    got, waits, workers = asyncio.run(go())
    assert got == [compute_meta(m, LIMITS).to_bytes() for m in (raw, raw[:200_000], raw[:50_000], raw[:60_000])]
    assert waits == 1
    assert workers == 2  # the two small jobs (under LARGE_MIN) ran together: the second worker started for them


def test_large_job_waits_for_the_servers_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant 7 across processes: while another open file of `share_large_slot`'s path holds the flock (as
    another process of the server would), a large job waits without starting a worker; once it is released
    the job runs and answers as `compute_meta`. Small jobs do not wait."""
    import fcntl
    import os

    monkeypatch.setattr(pool, "LARGE_MIN", 100_000)
    lock = tmp_path / pool.LOCK_NAME
    raw = big_message(300_000)

    async def go() -> tuple[bytes, bytes, int, int, int]:
        pool.share_large_slot(lock)
        other = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)  # another open file: as another process's
        try:
            fcntl.flock(other, fcntl.LOCK_EX)
            p = pool.pool()
            job = asyncio.create_task(pool.meta_bytes(raw, LIMITS))
            while p.large_waits == 0:  # the job tried the flock and found it taken
                await asyncio.sleep(0.01)
            assert not job.done()
            small = await pool.meta_bytes(raw[:50_000], LIMITS)  # a small job goes on meanwhile
            started = len(p._idle)
            fcntl.flock(other, fcntl.LOCK_UN)
            data = await job
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises BlockingIOError if the job kept the slot
            return data, small, p.large_waits, started, len(p._idle)
        finally:
            os.close(other)
            pool.share_large_slot(None)
            await pool.shutdown()

    data, small, waits, started, idle = asyncio.run(go())
    assert data == compute_meta(raw, LIMITS).to_bytes()
    assert small == compute_meta(raw[:50_000], LIMITS).to_bytes()
    assert waits == 1 and started == 1 and idle == 1  # the small job's worker, reused by the large one


def test_a_worker_killed_and_a_caller_cancelled_mid_job_leave_the_slot_free(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Invariant 7 when large jobs end badly: of three at once (the server's lock file shared), the worker of the
    running one is killed with SIGKILL (its message gets minimal metadata with `meta-worker-failed`,
    invariant 5) and a waiting caller is cancelled (an SMTP client gone); the slot is then free in this process
    and in the lock file: the next large jobs run and answer as `compute_meta`."""
    import gc
    import os
    import signal

    monkeypatch.setattr(pool, "LARGE_MIN", 100_000)
    part = b"--b\r\nContent-Type: text/html\r\n\r\n" + b"<p>para &amp; <b>bold</b></p>\r\n" * 300 + b"\r\n"
    raw = (b'From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n'
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + part * 200 + b"--b--\r\n")
    pool.share_large_slot(tmp_path / pool.LOCK_NAME)

    async def go() -> tuple[list[object], list[bytes], bool]:
        p = pool._POOLS[asyncio.get_running_loop()] = pool.MetaPool(size=2)
        try:
            await pool.meta_bytes(raw[:150_000], LIMITS)  # a worker started and idle: the next job takes it
            jobs = [asyncio.ensure_future(pool.meta_bytes(raw, LIMITS)) for _ in range(3)]
            for _ in range(1000):  # until the first job is with a worker (it has left the idle list)
                await asyncio.sleep(0.005)
                busy = [w for w in gc.get_objects() if isinstance(w, pool._Worker) and w.proc.poll() is None
                        and w not in p._idle]
                if busy:
                    break
            assert len(busy) == 1  # one large job at a time
            os.kill(busy[0].proc.pid, signal.SIGKILL)
            jobs[2].cancel()
            ended = await asyncio.gather(*jobs, return_exceptions=True)
            again = await asyncio.gather(pool.meta_bytes(raw, LIMITS), pool.meta_bytes(raw, LIMITS))
            return ended, again, p._large.locked()
        finally:
            await pool.shutdown()
            pool.share_large_slot(None)

    ended, again, locked = asyncio.run(go())
    assert isinstance(ended[0], bytes) and MessageMeta.from_bytes(ended[0]).defects == ((0, "meta-worker-failed"),)
    assert ended[1] == compute_meta(raw, LIMITS).to_bytes()
    assert isinstance(ended[2], asyncio.CancelledError)
    assert again == [compute_meta(raw, LIMITS).to_bytes()] * 2
    assert not locked


def test_meta_pair_gives_the_decoded_form_only_when_parsed_here() -> None:
    # `meta_pair` (delivery/local.py, for `AppendRequest.parsed`): the bytes of `meta_bytes`, and with them the
    # `MessageMeta` they serialise when it was computed on the loop, equal to decoding them (mime/meta.py
    # invariant 2); None when a worker computed it (only bytes cross the pipe).
    prefix = b"Return-Path: <a@example.org>\r\n"
    raw = big_message(200_000)
    small = raw[:pool.INLINE_MAX - len(prefix)]

    async def go() -> tuple[tuple[bytes, MessageMeta | None], tuple[bytes, MessageMeta | None]]:
        try:
            return (await pool.meta_pair(small, LIMITS, prefix=prefix),
                    await pool.meta_pair(raw, LIMITS, prefix=prefix))
        finally:
            await pool.shutdown()

    (here, here_meta), (there, there_meta) = asyncio.run(go())
    assert here == compute_meta(prefix + small, LIMITS).to_bytes()
    assert here_meta is not None and MessageMeta.from_bytes(here) == here_meta
    assert there == compute_meta(prefix + raw, LIMITS).to_bytes()
    assert there_meta is None
