"""Server CPU and memory per whole-mailbox IMAP command: the comparable figure on a loaded machine.

    .venv/bin/python bench/imap_cpu.py [--count 20000] [--reps 9] [--store DIR] [COMMAND ...]

Wall times move with whatever else the machine runs; the server's CPU time (all its processes, from /proc:
`common.cpu_seconds`) hardly does, so this compares two checkouts in the same hour: run it with each checkout's
own interpreter (`../before/.venv/bin/python ../before/bench/imap_cpu.py --store DIR`), on one store. The store
(--store, a folder holding `data/`) is filled once with `imap_mailbox.make_messages(--count)` if it has none,
and copied for each run, so every run starts from the same bytes. The server runs one worker process, so the
sessions share one event loop.

Each COMMAND (default: `FETCH 1:* (FLAGS)`, `UID SEARCH UNSEEN`, `FETCH 1:* (UID ENVELOPE BODYSTRUCTURE)`) is
sent once untimed (caches; an upgraded store writes its derived rows then), the server is left to go idle, and
then sent --reps times (with --change, after another session toggled \\Flagged on message 1 before each
run, untimed: what a command costs when nothing kept from the last one can be used); the table gives the mean
and median server CPU per command (a clock tick is 10 ms: the mean is the finer figure), the median wall time,
and the server's resident memory (all its processes) when idle after SELECT and at its peak while the commands
ran (sampled every 20 ms).
"""

from __future__ import annotations

import argparse
import imaplib
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import imap_mailbox  # bench/imap_mailbox.py
from common import PrivatePostroom, cpu_seconds, progress  # bench/common.py
from imap import PASSWORD, USER, rss_tree  # bench/imap.py

DEFAULT = ["FETCH 1:* (FLAGS)", "UID SEARCH UNSEEN", "FETCH 1:* (UID ENVELOPE BODYSTRUCTURE)"]
SETTINGS = "[auth]\nallow_plaintext = true\n"


def settle(pid: int) -> None:
    """Wait until the server used less than 20 ms of CPU in a second (background work done)."""
    prev = cpu_seconds(pid)
    while True:
        time.sleep(1.0)
        now = cpu_seconds(pid)
        if now - prev < 0.02:
            return
        prev = now


def send(c: imaplib.IMAP4, command: str) -> None:
    verb, _, rest = command.partition(" ")
    if verb == "UID":
        sub, _, args = rest.partition(" ")
        typ, data = c.uid(sub, *args.split(" ", 1)) if sub == "FETCH" else c.uid(sub, args)
    elif verb == "FETCH":
        seqset, _, items = rest.partition(" ")
        typ, data = c.fetch(seqset, items)
    else:
        typ, data = c.xatom(verb, rest) if rest else c.xatom(verb)
    if typ != "OK":
        raise RuntimeError(f"{command}: {typ} {data!r}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=20000, help="messages in a new store (default 20000)")
    ap.add_argument("--reps", type=int, default=9, help="timed runs per command (default 9)")
    ap.add_argument("--store", type=Path, default=None, help="folder of the store, filled if empty (default: new)")
    ap.add_argument("--change", action="store_true", help="another session changes a flag before each run")
    ap.add_argument("commands", nargs="*", default=DEFAULT)
    args = ap.parse_args()
    base = args.store or Path(tempfile.mkdtemp(prefix="imap-cpu-store-"))
    if not (base / "data" / "postroom.db").exists():
        PrivatePostroom(base, "imap", SETTINGS).create(
            user=USER, password=PASSWORD, messages=imap_mailbox.make_messages(args.count), with_meta=True)
    work = Path(tempfile.mkdtemp(prefix="imap-cpu-"))
    shutil.rmtree(work)
    shutil.copytree(base, work)
    pr = PrivatePostroom(work, "imap", SETTINGS, workers=1)
    port = pr.start(greeting=b"* OK", timeout=120)
    rows: list[str] = []
    try:
        c = imaplib.IMAP4("127.0.0.1", port)
        c.login(USER, PASSWORD)
        c.select("INBOX")
        other = imaplib.IMAP4("127.0.0.1", port)
        other.login(USER, PASSWORD)
        other.select("INBOX")
        settle(pr.pid)
        idle = peak = rss_tree(pr.pid)
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.wait(0.02):
                peak = max(peak, rss_tree(pr.pid))

        threading.Thread(target=sample, daemon=True).start()
        for command in args.commands:
            send(c, command)
            settle(pr.pid)
            cpu: list[float] = []
            wall: list[float] = []
            for r in range(args.reps):
                if args.change:
                    other.store("1", "+FLAGS.SILENT" if r % 2 == 0 else "-FLAGS.SILENT", "(\\Flagged)")
                    c.noop()  # the change reported before the timed command
                progress(f"\r  {command:<45} run {r + 1}/{args.reps}", end="")
                c0, t = cpu_seconds(pr.pid), time.perf_counter()
                send(c, command)
                wall.append(time.perf_counter() - t)
                cpu.append(cpu_seconds(pr.pid) - c0)
            rows.append(f"| {command} | {statistics.mean(cpu) * 1000:.0f} | {statistics.median(cpu) * 1000:.0f} | "
                        f"{statistics.median(wall):.3f} |")
        stop.set()
        progress("")
        c.logout()
        other.logout()
    finally:
        pr.stop()
        shutil.rmtree(work, ignore_errors=True)
    code = Path(sys.executable).absolute().parents[2].name  # the checkout whose interpreter (and server) ran
    changed = ", a flag changed before each" if args.change else ""
    print(f"\nServer CPU per command ({code}, one worker), {args.reps} runs each{changed}")
    print("| command | mean CPU ms | median CPU ms | median wall s |")
    print("| --- | ---: | ---: | ---: |")
    print("\n".join(rows))
    print(f"| server RSS, idle after SELECT / peak | {idle / (1 << 20):.0f} MB | {peak / (1 << 20):.0f} MB | "
          f"+{(peak - idle) / (1 << 20):.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
