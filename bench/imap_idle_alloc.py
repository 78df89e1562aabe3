"""What one idle IMAP session allocates in Python, to the byte: tracemalloc over 1,000 sessions in one process.

    .venv/bin/python bench/imap_idle_alloc.py [--sessions 1000] [--messages 2000] [--top 25]

Postroom runs in this process (its event loop on a thread of its own, as tests/e2e/conftest.py runs it; no
worker processes), one user with `--messages` messages in INBOX. A client process of its own (this script with
`--client`, so none of its allocations are counted) opens the sessions, each LOGIN, SELECT INBOX, IDLE, first
over `imap` (plaintext), then, once those are closed, over `imaps` (implicit TLS). tracemalloc snapshots taken
before and after each batch (after a warm-up batch of 20, and a collection) give the bytes per session, in all
and by the line of code that allocated them (the `--top` largest).

This is the deterministic companion of `bench/imap.py --idle-only` (PSS of a real `postroom serve` tree, which
moves by a KiB or so between runs): it counts Python objects only, not what the C libraries allocate for a
session (OpenSSL's per-connection state over TLS, the kernel's socket buffers), nor allocator overhead. Run it
from a checkout (its own .venv) to compare two versions side by side; the load on the machine does not move it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

from common import ROOT, fill_store

USER, PASSWORD = "ann@example.org", "secret-password"


def client(port: int, sessions: int, tls: bool) -> None:
    """`--client`: open `sessions` idle sessions, say "ready", wait for a line on stdin, then log them out."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate; loopback only
    opened = []
    for _ in range(sessions):
        raw = socket.create_connection(("127.0.0.1", port))
        sock = ctx.wrap_socket(raw) if tls else raw
        f = sock.makefile("rb")
        f.readline()
        for tag, command in ((b"a", b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode())), (b"b", b"SELECT INBOX")):
            sock.sendall(tag + b" " + command + b"\r\n")
            while not (line := f.readline()).startswith(tag + b" "):
                if not line:
                    raise SystemExit("connection closed")
            if not line.startswith(tag + b" OK"):
                raise SystemExit(line.decode(errors="replace"))
        sock.sendall(b"c IDLE\r\n")
        if not f.readline().startswith(b"+"):
            raise SystemExit("IDLE refused")
        opened.append((sock, f))
    print("ready", flush=True)
    sys.stdin.readline()
    for sock, _ in opened:
        sock.sendall(b"DONE\r\nd LOGOUT\r\n")
        sock.close()


def batch(port: int, sessions: int, tls: bool) -> subprocess.Popen[bytes]:
    p = subprocess.Popen([sys.executable, __file__, "--client", str(port), str(sessions), "tls" if tls else "plain"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None
    if p.stdout.readline().strip() != b"ready":
        p.kill()
        raise SystemExit("the client process failed")
    return p


def end(p: subprocess.Popen[bytes]) -> None:
    assert p.stdin is not None
    p.stdin.write(b"\n")
    p.stdin.flush()
    p.wait(60)


def where(frame: tracemalloc.Frame) -> str:
    """`postroom/imap/session.py:690`, or for the standard library `asyncio/base_events.py:436`."""
    path = Path(frame.filename)
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(path.parent.name, path.name)
    return f"{shown}:{frame.lineno}"


def settle() -> None:
    time.sleep(1.0)  # the server's loop finishes its last replies
    gc.collect()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--top", type=int, default=25, help="lines of code listed per kind (largest first)")
    args = ap.parse_args()

    from postroom import config as config_mod
    from postroom.app import Postroom, loop_factory

    sys.path.insert(0, str(ROOT / "bench"))
    from imap import make_messages

    work = Path(tempfile.mkdtemp(prefix="imap-idle-alloc-"))
    data = work / "data"
    data.mkdir()
    asyncio.run(fill_store(data, "example.org", USER, PASSWORD, make_messages(args.messages), with_meta=True))
    room = args.sessions + 100
    cfg = config_mod.load(None, {
        "server": {"data_dir": str(data), "shutdown_grace_seconds": 2.0},
        "listeners": {"imap": "127.0.0.1:0", "imaps": "127.0.0.1:0", "smtp": "", "submission": "",
                      "submissions": "", "pop3": "", "pop3s": "", "http": "", "https": ""},
        "delivery": {"enabled": False},
        "auth": {"allow_plaintext": True, "max_failures_per_ip": 100000},
        "limits": {"connections_per_ip": room, "connections_total": room}})
    server = Postroom(cfg)
    loop = loop_factory(cfg.server.event_loop)()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(60)
    rows: list[tuple[str, float, list[tuple[float, float, str]]]] = []
    try:
        for kind, listener, tls in (("plaintext", "imap", False), ("implicit TLS", "imaps", True)):
            port = server.addresses[listener][1]
            warm = batch(port, 20, tls)
            tracemalloc.start(1)
            settle()
            before = tracemalloc.take_snapshot()
            p = batch(port, args.sessions, tls)
            settle()
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            diff = after.compare_to(before, "lineno")
            total = sum(d.size_diff for d in diff) / args.sessions
            top = [(d.size_diff / args.sessions, d.count_diff / args.sessions, where(d.traceback[0]))
                   for d in diff[:args.top]]
            rows.append((kind, total, top))
            end(p)
            end(warm)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nPython allocations per idle IMAP session (tracemalloc; {args.sessions} sessions, each LOGIN, "
          f"SELECT INBOX ({args.messages} messages), IDLE), bytes")
    print("| | bytes per session |\n|---|---:|")
    for kind, total, _ in rows:
        print(f"| **{kind}** | **{total:,.0f}** |")
    for kind, _, top in rows:
        print(f"\n{kind}, by line of code (the {args.top} largest): bytes, objects per session")
        print("| line | bytes | objects |\n|---|---:|---:|")
        for size, count, at in top:
            print(f"| {at} | {size:,.0f} | {count:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "tls")
    else:
        main()
