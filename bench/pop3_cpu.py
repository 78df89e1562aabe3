"""Server CPU per RETR, one command at a time: one checkout, one number, for before/after pairs.

    .venv/bin/python bench/pop3_cpu.py [--count 5000] [--rounds 5] [--window 1] [--workers 1] [--profile FILE]
    /path/to/other-checkout/.venv/bin/python bench/pop3_cpu.py ...    # "before": that checkout's server
    .venv/bin/python bench/pop3_cpu.py --dovecot ...                   # the same rounds against Dovecot

`bench/pop3.py` gives messages/s beside Dovecot, which move with whatever else the machine runs; the server's
CPU per message (user + system, from /proc) moves much less, so alternating two checkouts with this script
(before, after, before, after) compares code on a loaded machine. The maildrop and the client are bench/pop3.py's
(5,000 messages around 4 KiB, USER/PASS, RETR 1..N; --window 1 is its "one at a time": send, wait for the whole
reply). The server is `postroom serve` with only the pop3 listener and one worker process by default, so its
main thread is the event loop: the CPU is also split into that thread and the rest (the store's reader
threads), so a change on one side shows apart from the noise of the other. The clock and the CPU run from after
each login to the last reply (the login's argon2id check is left out). Each round prints a line; the last line
is the mean of the rounds, the figure to compare. One at a time, the client also times each RETR from its send
to the last byte of the reply: the median of those round trips moves less with the machine's load than msg/s
(a preempted client or server makes a few long trips, not many slow ones); the mean line adds the mean trip,
the 90th and 99th percentiles and the trips over 500 us per pass (the slow tail the mean rate pays for).
--dovecot runs the same rounds against Dovecot's POP3 server instead (bench/dovecot.py; its per-session
process's CPU counted as a tree), to alternate with the two checkouts in one series.

The server runs from the interpreter's own checkout (`postroom` beside `sys.executable`), while the maildrop is
filled by this checkout's store code: run it with another checkout's interpreter for that checkout's server, as
long as the two share the schema.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pop3 as P  # bench/pop3.py: the maildrop and the client
from common import PrivatePostroom, Server, cpu_seconds, progress, thread_cpu_seconds


def one_at_a_time(c: P.Client, count: int) -> tuple[float, list[float]]:
    """RETR 1..count, each sent when the last reply is whole: (seconds, each round trip in seconds)."""
    trips = []
    clock = time.perf_counter
    started = clock()
    for n in range(1, count + 1):
        t0 = clock()
        c.sock.sendall(b"RETR %d\r\n" % n)
        c._multi()
        trips.append(clock() - t0)
    return clock() - started, trips


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=5000, help="messages in the maildrop (default 5000)")
    ap.add_argument("--size", type=int, default=4096, help="average message size in bytes (default 4096)")
    ap.add_argument("--rounds", type=int, default=5, help="timed retrieve-alls (default 5)")
    ap.add_argument("--window", type=int, default=1, help="RETRs in flight (default 1: one at a time)")
    ap.add_argument("--workers", type=int, default=1, help="server.workers (default 1; 0: one per CPU)")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw profile of the timed rounds into FILE")
    ap.add_argument("--dovecot", action="store_true", help="measure Dovecot's POP3 server instead")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="pop3-cpu-"))
    messages = P.make_messages(args.count, args.size)
    server: Server
    try:
        if args.dovecot:
            server, port = P.start_dovecot(work, messages)
            name = "Dovecot"
        else:
            server = PrivatePostroom(work / "postroom", "pop3", "[auth]\nallow_plaintext = true\n",
                                     workers=args.workers)
            server.create(user=P.USER, password=P.PASSWORD, messages=messages, with_meta=True)
            port = server.start(greeting=b"+OK", timeout=30)
            name = f"Postroom, workers={args.workers}, {sys.executable}"
        pid = server.pid
        c = P.Client(port)
        assert c.login() == args.count
        c.retrieve_all(args.count, 50, "warm-up")
        c.quit()
        spy = None
        if args.profile is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(pid), "-o", str(args.profile),
                 "-f", "raw", "-r", "500", "--nonblocking", "--subprocesses"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        totals = [0.0, 0.0, 0.0]  # wall, tree CPU, loop-thread CPU: seconds over every round
        trips: list[float] = []
        for r in range(args.rounds):
            c = P.Client(port)
            c.login()
            c0, l0 = cpu_seconds(pid), thread_cpu_seconds(pid)
            if args.window == 1:
                progress(f"round {r + 1}/{args.rounds}")
                wall, each = one_at_a_time(c, args.count)
                trips += each
            else:
                wall, _ = c.retrieve_all(args.count, args.window, f"round {r + 1}/{args.rounds}")
                each = []
            cpu, loop = cpu_seconds(pid) - c0, thread_cpu_seconds(pid) - l0
            c.quit()
            for i, v in enumerate((wall, cpu, loop)):
                totals[i] += v
            median = f", median round trip {statistics.median(each) * 1e6:.1f} us" if each else ""
            split = "" if args.dovecot else f" (event-loop thread {loop / args.count * 1e6:.1f})"
            print(f"round {r + 1}: {args.count / wall:,.0f} msg/s, {cpu / args.count * 1e6:.1f} us server CPU per "
                  f"RETR{split}{median}", flush=True)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait()
        n = args.count * args.rounds
        wall, cpu, loop = totals
        split = "" if args.dovecot else f" (event-loop thread {loop / n * 1e6:.1f}, rest {(cpu - loop) / n * 1e6:.1f})"
        median = ""
        if trips:
            cuts = statistics.quantiles(trips, n=100)
            median = (f", round trip median {statistics.median(trips) * 1e6:.1f} us, "
                      f"mean {statistics.fmean(trips) * 1e6:.1f}, p90 {cuts[89] * 1e6:.0f}, "
                      f"p99 {cuts[98] * 1e6:.0f}, over 500 us "
                      f"{sum(t > 500e-6 for t in trips) / args.rounds:.0f} a pass")
        print(f"mean: {n / wall:,.0f} msg/s, {cpu / n * 1e6:.1f} us server CPU per RETR{split}{median}, "
              f"window {args.window}, {name}")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        progress()
    return 0


if __name__ == "__main__":
    sys.exit(main())
