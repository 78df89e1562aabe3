"""The metadata worker process of `metapool`: `python -m postroom.metaworker`, one job at a time on stdin/stdout.

Theory of operation
-------------------
`metapool` (the server side, asyncio) starts these processes and speaks to them over two pipes; this module is
the other end, kept apart so that a worker imports only what a job needs: the MIME code (`mime.meta`), json and
the standard library's plain I/O. Measured (bench/RESULTS.md 2026-12-01): a worker started as
`python -m postroom.metapool` imported asyncio, ssl, subprocess and logging for the server side it never runs,
15.9 MiB PSS idle; this module alone, 11.7. The workers of a server are 2 to 8 processes, so that is paid
per worker.

The wire (metapool.py describes it from the server's side): a JSON header line (`n`: message bytes that
follow, or `path`: a file to read, or both: `n` bytes then the file; `depth`/`parts`: the MIME limits; `nul`:
refuse a NUL; `kind`/`params`: a content job other than metadata, `metapool.work`) then the message; the
answer is one status byte (`M` payload follows, `N` the file held a NUL, `E` an error text follows), an 8-byte
big-endian length and the payload.

Invariants
1. Nothing here imports asyncio, ssl or the store (tests/unit/test_metapool.py reads a fresh worker's modules);
   the code of a `work` job (DKIM, ARC) is imported on its first job, in that worker only.
2. A worker holds a message only while it works on it (metapool invariant 6): the buffer is dropped before it
   answers, so an idle worker is back to its own size.
3. A metadata job over a file reads it into one buffer with its prefix (`read_file`), never prefix + bytes.
4. It ends at EOF on stdin (metapool invariant 4) and answers every job it read whole; a job cut short (EOF
   mid-message) ends the worker without an answer.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path
from typing import IO, cast

from postroom.config import LimitsConfig
from postroom.mime.meta import compute_meta

ANSWER = struct.Struct(">cQ")  # status byte, payload length


def answer(out: IO[bytes], status: bytes, payload: bytes) -> None:
    """Write one answer: `status` (one byte: M, N or E), the payload's length, the payload."""
    out.write(ANSWER.pack(status, len(payload)))
    out.write(payload)
    out.flush()


def read_file(prefix: bytes, path: Path) -> bytearray:
    """`prefix` + the file's bytes in one buffer, the file read straight into it (`prefix + read_bytes()` would
    hold the message twice: a 50 MB staged SMTP message took a worker to 95 MiB, this to 50). `compute_meta` is
    typed for bytes and reads a bytearray the same way (only reads, slices, find/count, decode; no hashing):
    the caller casts, and tests/unit/test_metapool.py compares the answers over the MIME corpus. Raises OSError
    for an unreadable file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(len(prefix) + size)
        buf[:len(prefix)] = prefix
        view = memoryview(buf)[len(prefix):]
        got = 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:  # the file shrank meanwhile: keep what is there
                del view
                del buf[len(prefix) + got:]
                return buf
            got += n
        del view
    return buf


def run_job(kind: str, raw: bytes, params: dict[str, object]) -> bytes:
    """A `metapool.work` job: its code is imported on first use (invariant 1). Raises ValueError for an unknown
    kind, and whatever the job raises (answered `E`)."""
    if kind == "dkim":
        from postroom.inbound.dkim import verify_in_worker

        return verify_in_worker(raw, params)
    if kind == "arc":
        from postroom.inbound.arc import verify_in_worker as verify_arc

        return verify_arc(raw, params)
    if kind == "arc_seal":
        from postroom.delivery.arc import seal_in_worker

        return seal_in_worker(raw, params)
    raise ValueError(f"unknown job kind {kind!r}")


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """One job after another until EOF (invariant 4)."""
    while True:
        line = inp.readline()
        if not line:
            return
        job = json.loads(line)
        limits = LimitsConfig(mime_depth=int(job["depth"]), mime_parts=int(job["parts"]))
        try:
            if "path" in job:
                prefix = b""
                if "n" in job:  # the start of a staged message, then its file
                    n = int(job["n"])
                    prefix = inp.read(n)
                    if len(prefix) != n:
                        return
                # One buffer for a metadata job (invariant 3); a `work` job's code takes bytes.
                raw = prefix + Path(job["path"]).read_bytes() if "kind" in job \
                    else cast(bytes, read_file(prefix, Path(job["path"])))
                if job.get("nul") and b"\x00" in raw:
                    answer(out, b"N", b"")
                    continue
            else:
                n = int(job["n"])
                raw = inp.read(n)
                if len(raw) != n:
                    return
            if "kind" in job:
                data = run_job(str(job["kind"]), raw, dict(job["params"]))
            else:
                data = compute_meta(raw, limits).to_bytes()
        except Exception as e:  # noqa: BLE001 - an unreadable file; compute_meta itself never raises
            answer(out, b"E", f"{type(e).__name__}: {e}".encode("utf-8", "replace"))
            continue
        finally:
            raw = b""  # invariant 2: not held while the worker waits for its next job
        answer(out, b"M", data)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
