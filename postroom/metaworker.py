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
3. A metadata job over a file never holds the file: `mime.staged.StagedMessage` reads it through one window
   (1 MiB) for the NUL check and `compute_meta_staged` (mime/meta.py invariant 6). Measured with 20 sessions x
   50 MB (bench/smtp_memory.py, bench/RESULTS.md 2026-12-01 "memory9"): a worker's peak went from ~72 MiB
   PSS (the message read into one bytearray) to ~13. A `work` job (DKIM, ARC: dkimpy takes bytes) still reads
   prefix + file whole; those are one at a time per server (metapool invariant 7).
4. It ends at EOF on stdin (metapool invariant 4) and answers every job it read whole; a job cut short (EOF
   mid-message) ends the worker without an answer.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path
from typing import IO

from postroom.config import LimitsConfig
from postroom.mime.meta import compute_meta, compute_meta_staged
from postroom.mime.staged import StagedMessage

ANSWER = struct.Struct(">cQ")  # status byte, payload length


def answer(out: IO[bytes], status: bytes, payload: bytes) -> None:
    """Write one answer: `status` (one byte: M, N or E), the payload's length, the payload."""
    out.write(ANSWER.pack(status, len(payload)))
    out.write(payload)
    out.flush()


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
                if "kind" not in job:  # a metadata job reads the file through a window (invariant 3)
                    with StagedMessage(prefix, Path(job["path"])) as staged:
                        if job.get("nul") and b"\x00" in staged:
                            answer(out, b"N", b"")
                            continue
                        data = compute_meta_staged(staged, limits).to_bytes()
                    answer(out, b"M", data)
                    continue
                raw = prefix + Path(job["path"]).read_bytes()  # a `work` job's code takes bytes
            else:
                n = int(job["n"])
                raw = inp.read(n)
                if len(raw) != n:
                    return
            if "kind" in job:
                data = run_job(str(job["kind"]), raw, dict(job["params"]))
            else:
                data = compute_meta(raw, limits).to_bytes()
        except Exception as e:  # noqa: BLE001 - an unreadable file; compute_meta* never raise otherwise
            answer(out, b"E", f"{type(e).__name__}: {e}".encode("utf-8", "replace"))
            continue
        finally:
            raw = b""  # invariant 2: not held while the worker waits for its next job
        answer(out, b"M", data)


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
