"""Peak memory of the SMTP server while many sessions each send one large message (issue 17 items 5 and "Must show").

    .venv/bin/python bench/smtp_memory.py [--sessions 20] [--size 50000000] [--dir PATH] [--workers N]

`postroom serve` (bench/common.py `PrivatePostroom`, the `smtp` listener, `limits.message_size` 60 MiB) on a fresh
data directory with one user; SESSIONS asyncio clients connect at once and each sends one message of SIZE
bytes (78-byte lines, a few headers) with MAIL / RCPT / DATA, written in 1 MiB pieces, and waits for the 250
(the message is then durable in the user's INBOX). Meanwhile the RSS and the PSS of every process of the
server's tree are read from /proc/PID/smaps_rollup every 20 ms (bench/common.py `memory_of`: RSS counts a page
shared by forked processes once in each, PSS charges it 1/n to each of the n, so PSS summed is what the tree
really holds). The table gives the peak of each sum over the server processes (the parent and its
`server.workers` children) and over its metadata workers (`python -m postroom.metaworker`, metapool.py), and the
peak of the whole tree; with the figures before the load for reference. Sampling can miss a
peak shorter than 20 ms; each process's own VmHWM (exact, but not simultaneous) is summed too, as an upper
bound for the processes still alive at the end. The server's CPU seconds for the load (all its processes) are
printed too: a memory setting that costs CPU shows there.

Work happens under --dir (default bench/results/): SESSIONS x SIZE bytes are written there (staging files, then
the store). Every process started here is stopped by its PID. Progress goes to stderr, the table to stdout.
Linux only (/proc).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import PrivatePostroom, cpu_seconds, memory_of, progress  # noqa: E402  (bench/common.py)

USER = "sink@example.org"
MB = 1_000_000


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _kib(value: str) -> int:
    return int(value.split()[0]) if value else 0


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(p.name))
    return out


def tree(root: int) -> list[int]:
    kids = _children()
    todo, seen = [root], []
    while todo:
        pid = todo.pop()
        seen.append(pid)
        todo += kids.get(pid, [])
    return seen


def _is_meta_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"postroom.metaworker" in cmdline or b"postroom.metapool" in cmdline  # now, and before 2026-12-01


class Sampler(threading.Thread):
    """Sums RSS and PSS (KiB) over the server's process tree every `interval` seconds; keeps the peaks:
    `peak[(what, part)]` for what in ("rss", "pss") and part in ("server", "workers", "total")."""

    def __init__(self, root: int, interval: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.stop_event = threading.Event()
        self.peak: dict[tuple[str, str], int] = {}
        self.hwm: dict[int, int] = {}

    def sample(self) -> dict[tuple[str, str], int]:
        """One reading: {(what, part): KiB} as `peak`."""
        out = {(w, p): 0 for w in ("rss", "pss") for p in ("server", "workers", "total")}
        for pid in tree(self.root):
            st = _status(pid)
            self.hwm[pid] = max(self.hwm.get(pid, 0), _kib(st.get("VmHWM", "")))
            rss, pss = memory_of(pid)
            part = "workers" if _is_meta_worker(pid) else "server"
            for what, value in (("rss", rss // 1024), ("pss", pss // 1024)):
                out[(what, part)] += value
                out[(what, "total")] += value
        return out

    def run(self) -> None:
        while not self.stop_event.is_set():
            for key, value in self.sample().items():
                self.peak[key] = max(self.peak.get(key, 0), value)
            time.sleep(self.interval)


def message(size: int) -> bytes:
    head = (b"From: bench@remote.test\r\nTo: " + USER.encode() + b"\r\nSubject: a large message\r\n"
            b"Message-ID: <large@remote.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\r\n")
    line = b"x" * 76 + b"\r\n"
    return head + line * ((size - len(head)) // len(line))


async def _send(port: int, body: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def reply() -> bytes:
        while True:
            line = await reader.readline()
            if not line or line[3:4] != b"-":
                return line

    await reply()
    for cmd in (b"EHLO bench.remote.test", b"MAIL FROM:<bench@remote.test>", b"RCPT TO:<" + USER.encode() + b">",
                b"DATA"):
        writer.write(cmd + b"\r\n")
        answer = await reply()
        if answer[:1] not in (b"2", b"3"):
            raise RuntimeError(f"{cmd!r}: {answer!r}")
    view = memoryview(body)
    for i in range(0, len(body), 1 << 20):
        writer.write(view[i:i + (1 << 20)])
        await writer.drain()
    writer.write(b".\r\n")
    answer = await reply()
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()
    return answer


async def drive(port: int, sessions: int, body: bytes) -> list[bytes]:
    return list(await asyncio.gather(*(_send(port, body) for _ in range(sessions))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=50 * MB)
    ap.add_argument("--dir", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--workers", type=int, default=None, help="server.workers (default: one per CPU)")
    args = ap.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smtp-memory-", dir=args.dir))
    body = message(args.size)
    server = PrivatePostroom(work / "postroom", "smtp", "[limits]\nconnections_per_ip = 200\n"
                             f"message_size = {60 * 1024 * 1024}\n"
                             "[inbound]\nspf = false\ndkim = false\ndmarc = false\narc = false\n",
                             log_level="warning", workers=args.workers)
    try:
        server.create(user=USER, password="bench-password")
        port = server.start()
        time.sleep(1.0)  # let the workers settle
        sampler = Sampler(server.pid)
        idle = sampler.sample()
        sampler.start()
        progress(f"{args.sessions} sessions x {len(body):,} bytes ...")
        start, cpu0 = time.monotonic(), cpu_seconds(server.pid)
        answers = asyncio.run(drive(port, args.sessions, body))
        elapsed, cpu = time.monotonic() - start, cpu_seconds(server.pid) - cpu0
        sampler.stop_event.set()
        sampler.join()
        alive = tree(server.pid)
        hwm_alive = sum(v for pid, v in sampler.hwm.items() if pid in alive)
    finally:
        server.stop(60)
        shutil.rmtree(work, ignore_errors=True)
    ok = sum(a.startswith(b"250") for a in answers)
    print(f"\nSMTP memory: {args.sessions} sessions each sending one {len(body) / MB:.0f} MB message at once "
          f"({ok}/{args.sessions} answered 250, {elapsed:.1f} s)\n")
    print("| MiB | before the load: PSS | RSS | peak (sampled every 20 ms): PSS | RSS |")
    print("|---|---:|---:|---:|---:|")
    for part, label in (("server", "server processes"), ("workers", "metadata workers"), ("total", "whole tree")):
        cells = " | ".join(f"{d[(w, part)] / 1024:.0f}" for d in (idle, sampler.peak) for w in ("pss", "rss"))
        print(f"| {label} (summed) | {cells} |")
    print(f"\nVmHWM summed over the {len(alive)} processes alive at the end: {hwm_alive / 1024:.0f} MiB")
    print(f"Server CPU (user + system of its process tree, bench/common.py `cpu_seconds`): {cpu:.1f} s")
    return 0 if ok == args.sessions else 1


if __name__ == "__main__":
    raise SystemExit(main())
