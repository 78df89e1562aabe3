"""How many copies of a message the SMTP path holds at once, from the socket to the store (issue 17 item 5).

    .venv/bin/python bench/smtp_copies.py [--sizes 100000,800000,8000000] [--dir PATH]

`app.Postroom` runs in this process (an event loop on a thread, as tests/e2e/conftest.py runs it: only the `smtp`
listener, inbound checks off) under `tracemalloc`; for each size, a client in a subprocess (smtplib, so its own
copies are not traced) sends one message of that many bytes to a local user, and the table gives the peak of
Python allocations during that transaction above what was allocated before it, in multiples of the message
size: about the number of copies of the message alive at the worst moment (the receive buffer, the unstuffed
body, the message with its trace fields, the bytes given to the store). Metadata workers (metapool.py) are other
processes and are not counted; messages past `STAGING_THRESHOLD` (1 MiB) go to a staging file, so their copies
in memory are the bounded pieces in flight. Each size is sent three times; the table keeps the lowest peak.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from postroom import config as config_mod  # noqa: E402
from postroom.app import Postroom  # noqa: E402
from postroom.auth.passwords import make_credentials  # noqa: E402

USER = "sink@example.org"
CLIENT = """
import smtplib, sys
size, port, user = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
line = b"x" * 76 + b"\\r\\n"
msg = b"From: a@remote.test\\r\\nSubject: copies\\r\\n\\r\\n" + line * (size // len(line))
with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
    s.sendmail("a@remote.test", [user], msg)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,800000,8000000")
    ap.add_argument("--dir", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="smtp-copies-", dir=args.dir))
    listeners = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")
    cfg = config_mod.load(None, {
        "server": {"data_dir": str(work / "data"), "shutdown_grace_seconds": 2.0, "workers": 1},
        "listeners": {n: ("127.0.0.1:0" if n == "smtp" else "") for n in listeners},
        "delivery": {"enabled": False},
        "inbound": {"spf": False, "dkim": False, "dmarc": False, "arc": False},
        "smtp": {"reverse_dns": False},
    })
    server = Postroom(cfg)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)  # type: ignore[arg-type]

    async def setup() -> int:
        await server.start()
        store = server.store
        assert store is not None
        await store.add_domain("example.org")
        h, scram = await asyncio.to_thread(make_credentials, "bench-password")
        await store.add_user(USER, h, scram)
        return server.addresses["smtp"][1]

    rows = []
    try:
        port = run(setup())
        tracemalloc.start()
        for size in (int(s) for s in args.sizes.split(",")):
            peaks = []
            for _ in range(3):
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
                subprocess.run([sys.executable, "-c", CLIENT, str(size), str(port), USER], check=True)
                peaks.append(tracemalloc.get_traced_memory()[1] - base)
            rows.append((size, min(peaks)))
        tracemalloc.stop()
    finally:
        run(server.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        shutil.rmtree(work, ignore_errors=True)
    print("\nSMTP copies: peak Python allocations of the server during one message, above those before it\n")
    print("| message bytes | peak above before | x message size |")
    print("|---:|---:|---:|")
    for size, peak in rows:
        print(f"| {size:,} | {peak / 1e6:.1f} MB | {peak / size:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
