"""Steady SMTP traffic against `postroom serve` and the parked full-text index (store/sqlite/engine.py invariant
10): N sessions send for 25 s (a pause of P seconds after each message); every 2.5 s the backlog is sampled;
then one IMAP SEARCH BODY is timed while traffic still runs, and the server's CPU per message (bench/common.py
`cpu_seconds`, the whole process tree, through the drain) is printed.

    .venv/bin/python bench/fts_parked_sustained.py WORKDIR PAUSE SESSIONS     # e.g. /tmp/x 0 50
"""

from __future__ import annotations

import smtplib
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
import test_fts_parked as t  # noqa: E402 - the e2e helpers: set-up, serve, IMAP session

from bench.common import cpu_seconds  # noqa: E402


def main() -> None:
    tmp, pause, sessions = Path(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    tmp.mkdir(parents=True, exist_ok=True)
    conf, data = t._setup(tmp)
    proc, ports = t.start_serve(conf, 90, 1, log=tmp / "serve.log")
    stop = threading.Event()
    sent = [0]

    def sender(s: int) -> None:
        with smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=60) as c:
            n = 0
            while not stop.is_set():
                c.sendmail("x@remote.test", [t.ADDR], t._message(s, n))
                n += 1
                sent[0] += 1
                time.sleep(pause)

    def timed() -> tuple[float, int]:
        box.c.noop()
        a = time.monotonic()
        hits = box.search("BODY", "zebra7x3q")
        return time.monotonic() - a, len(hits)

    try:
        threads = [threading.Thread(target=sender, args=(s,)) for s in range(sessions)]
        c0 = cpu_seconds(proc.pid)
        for th in threads:
            th.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 25:
            time.sleep(2.5)
            print(f"{time.monotonic() - t0:5.1f}s sent {sent[0]:6d} backlog "
                  f"{t._count(data, 'SELECT count(*) FROM fts_backlog')}", flush=True)
        box = t.Mailbox(ports["imap"])
        print("SEARCH during traffic (s, hits):", timed(), timed(), "backlog",
              t._count(data, "SELECT count(*) FROM fts_backlog"), flush=True)
        stop.set()
        for th in threads:
            th.join()
        t0 = time.monotonic()
        t._wait_backlog_empty(data)
        print(f"drained in {time.monotonic() - t0:.1f}s after traffic stopped")
        time.sleep(0.5)
        print(f"CPU ms/message {1000 * (cpu_seconds(proc.pid) - c0) / sent[0]:.3f} over {sent[0]}")
        box.close()
    finally:
        t._stop(proc)


if __name__ == "__main__":
    main()
