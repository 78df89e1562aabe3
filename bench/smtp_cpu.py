"""Server CPU per message of SMTP durable ingest: one checkout, one number, for before/after pairs.

    .venv/bin/python bench/smtp_cpu.py [--count 3000] [--workers 1] [--profile FILE]
    /path/to/other-checkout/.venv/bin/python /path/to/other-checkout/bench/smtp_cpu.py ...   # "before"

`bench/smtp.py` gives messages/s beside Postfix, which moves with whatever else the machine runs; the server's
CPU seconds per message (user + system of its whole process tree, from /proc) move much less, so alternating
two checkouts with this script (before, after, before, after) compares code on a loaded machine. The driver is
Postfix's smtp-source (20 sessions, ~5 KB messages) against `postroom serve` with only the smtp listener; the
clock stops when every message is durable in the INBOX. `--profile FILE` runs py-spy on the server for the
whole run (raw format, 200 Hz, subprocesses included; py-spy from the venv). The CPU is also split: the
server's event-loop threads (the main thread of each server process: sessions, router, metadata below the
pool's threshold) and the rest (the store's writer threads, metadata workers), so a change on one side shows
apart from the noise of the other; and the bytes the server wrote per message (`wchar`: the store's WAL,
checkpoints and any temporary file, and the replies). Then it goes on measuring for `--settle` seconds
(default 3): the CPU the server spends once the burst is over (the full-text rows the writer parked while
deliveries waited, store/sqlite/engine.py invariant 10), per message.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import smtp as S  # bench/smtp.py: the Postroom target and the smtp-source driver
from common import cpu_seconds, loop_cpu_seconds, written_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3000, help="messages (default 3000)")
    ap.add_argument("--size", type=int, default=5000, help="bytes per message (default 5000)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source sessions (default 20)")
    ap.add_argument("--workers", type=int, default=1, help="server.workers (default 1; 0: one per CPU)")
    ap.add_argument("--settle", type=float, default=3.0,
                    help="seconds to keep measuring after the last message is stored, for work the server does"
                         " once idle (the full-text index of a burst, parked by the store's writer); default 3")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of the server into FILE")
    args = ap.parse_args()
    if shutil.which("smtp-source", path="/usr/sbin:/usr/bin") is None:
        print("smtp_cpu: needs Postfix's smtp-source (apt-get install postfix)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="smtp-cpu-"))
    S.Postroom.workers = args.workers
    target = S.Postroom(work)
    try:
        port = target.start()
        spy = None
        if args.profile is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(target.server.proc.pid),
                 "-o", str(args.profile), "-f", "raw", "-r", "200", "--nonblocking", "--subprocesses"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        pid = target.server.proc.pid
        c0, l0, w0, t0 = cpu_seconds(pid), loop_cpu_seconds(pid), written_bytes(pid), time.perf_counter()
        S.drive_smtp_source(port, args.count, args.sessions, args.size)
        target.wait_delivered(args.count)
        wall, cpu, loop = time.perf_counter() - t0, cpu_seconds(pid) - c0, loop_cpu_seconds(pid) - l0
        wrote = written_bytes(pid) - w0
        time.sleep(args.settle)
        after = cpu_seconds(pid) - c0 - cpu
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        print(f"{args.count / wall:.0f} msg/s, {cpu / args.count * 1000:.2f} ms server CPU per message "
              f"(event-loop thread {loop / args.count * 1000:.2f}, rest {(cpu - loop) / args.count * 1000:.2f}), "
              f"{cpu / wall:.2f} cores (workers={args.workers}), {wrote / args.count / 1024:.0f} KiB written per "
              f"message (replies included); after the last: "
              f"{after / args.count * 1000:.2f} ms per message more in {args.settle:g} s")
    finally:
        target.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
